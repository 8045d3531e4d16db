"""Connections that fail in ways the broker or the configuration can bring about end the session
(``lastError``, then a reconnect with backoff); none of them may escape the bridge's task,
which the supervisor would record as a fault and restart with a traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Callable
from functools import partial

import pytest
import trio

from dynexport.integrations.mqtt import MqttBridge, SessionEnded, open_socket
from dynexport.system.config import MqttConfig, parse_config
from tests.integrations.statusdoc import status

CONNACK_ACCEPTED = bytes([0x20, 2, 0, 0])
"""MQTT 3.1.1 CONNACK: session present 0, return code 0 (accepted)."""


def mqtt_config(url: str) -> MqttConfig:
    cfg = parse_config({"mqtt": {"url": url, "topicPrefix": "d/s", "publishS": 1}}).mqtt
    assert cfg is not None
    return cfg


async def until(predicate: Callable[[], object], within: float = 20.0) -> None:
    """Waits for state another task changes; fails after ``within`` s."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_a_connection_dropped_right_after_connack_is_lost_and_retried_with_backoff() -> None:
    """A broker that accepts the connection and drops it at once (an ACL that disconnects a
    client, a client-id takeover, a broker restarting): paho closes the socket inside its
    loop, and trio's wait on the closed descriptor (-1) raised ValueError out of the bridge's
    task. It is the session ending, followed by a reconnect with backoff."""
    accepted = 0

    async def connack_then_close(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        try:
            await stream.receive_some(4096)  # CONNECT
        except trio.BrokenResourceError:
            await stream.aclose()
            return
        # the CONNACK and the close in one go, no checkpoint between them for the bridge to
        # answer in: the bridge reads the CONNACK, then its first writes find the socket gone
        with socket.socket(fileno=stream.socket.detach()) as raw, contextlib.suppress(OSError):
            raw.send(CONNACK_ACCEPTED)

    delays = 0

    def jitter() -> float:
        nonlocal delays
        delays += 1  # asked once for each reconnect delay (the backoff)
        return 0.5

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, connack_then_close, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        cfg = mqtt_config(f"mqtt://127.0.0.1:{port}")
        b = MqttBridge(lambda: cfg, status, min_backoff_s=0.01, max_backoff_s=0.05, jitter=jitter)
        nursery.start_soon(b.run)  # an exception out of run() fails the test through the nursery
        # waiting out a reconnect delay: the session that ended says why
        await until(lambda: accepted >= 3 and delays >= 3 and b.state == "disconnected")
        reason = b.last_error
        nursery.cancel_scope.cancel()
    assert reason is not None
    assert "connection was closed" in reason or "connection lost" in reason
    assert b.attempts >= 3
    assert b.connected is False


async def test_a_host_the_name_lookup_cannot_encode_is_a_session_error_naming_it() -> None:
    """Defence behind the configuration's check: a host name IDNA cannot encode (a label over 63
    characters, a snowman) made the name lookup raise UnicodeError, which escaped the bridge's
    task as a fault, forever, with no ``lastError``."""
    for host in ("a" * 64 + ".example", "\N{SNOWMAN}.local"):
        with pytest.raises(SessionEnded, match=r"cannot be looked up.*check mqtt\.url") as err:
            await open_socket(host, 1883, None, 10.0)
        assert repr(host) in str(err.value)


async def test_a_bridge_given_a_host_it_cannot_look_up_keeps_running_and_says_why() -> None:
    valid = mqtt_config("mqtt://broker.example")
    cfg = dataclasses.replace(valid, host="a" * 64 + ".example")  # past the config's check
    b = MqttBridge(lambda: cfg, status, min_backoff_s=0.01, max_backoff_s=0.02, jitter=lambda: 0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run)  # an exception out of run() fails the test through the nursery
        await until(lambda: b.attempts >= 3)
        nursery.cancel_scope.cancel()
    assert "cannot be looked up" in (b.last_error or "")
    assert "a" * 64 in (b.last_error or "")
    assert b.status(0.0)["state"] == "disconnected"
