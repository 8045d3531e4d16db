"""The broker away for ten minutes (trio's MockClock: virtual time, no waiting)."""

from __future__ import annotations

import socket
import tracemalloc

import trio
import trio.testing

from dynexport.integrations.mqtt import MqttBridge, notify_closing, reconnect_delay
from dynexport.system.config import parse_config
from tests.integrations.statusdoc import status


def test_reconnect_backoff_doubles_to_its_cap_with_the_upper_half_randomised() -> None:
    assert [reconnect_delay(n, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert reconnect_delay(50, 1.0) == 60.0
    assert reconnect_delay(50, 0.0) == 30.0
    assert reconnect_delay(1, 0.5) == 0.75


async def test_ten_minutes_without_a_broker_leave_control_on_time_and_memory_flat(
    autojump_clock: trio.testing.MockClock, refused_port: int
) -> None:
    cfg = parse_config(
        {"mqtt": {"url": f"mqtt://127.0.0.1:{refused_port}", "topicPrefix": "d/s", "publishS": 1}}
    ).mqtt
    assert cfg is not None
    b = MqttBridge(lambda: cfg, lambda: status(), jitter=lambda: 0.5)
    late: list[float] = []
    ticks = 0

    async def control_loop() -> None:
        """Stands for the controller: a decision every second, on time."""
        nonlocal ticks
        next_t = trio.current_time()
        while True:
            next_t += 1.0
            await trio.sleep_until(next_t)
            late.append(trio.current_time() - next_t)
            ticks += 1

    tracemalloc.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            nursery.start_soon(control_loop)
            await trio.sleep(60)
            before, _ = tracemalloc.get_traced_memory()
            attempts_after_a_minute = b.attempts
            await trio.sleep(540)
            after, _ = tracemalloc.get_traced_memory()
            nursery.cancel_scope.cancel()
    finally:
        tracemalloc.stop()
    assert ticks >= 599 and max(late) == 0.0  # control never waited on the broker
    assert after - before < 1_000_000  # nothing accumulates while the broker is away
    assert b.snapshot is not None and b.snapshot.seq >= 590  # state kept fresh, one copy
    # backoff: 1, 2, 4 ... capped at 60 s (45 s with this jitter): a few attempts a minute
    assert b.attempts - attempts_after_a_minute <= 540 / 30
    assert b.attempts >= 10
    assert b.connected is False and b.connects == 0
    assert "cannot connect" in (b.last_error or "") or "took over" in (b.last_error or "")
    assert b.status(0.0)["state"] == "disconnected"


def test_paho_closing_its_socket_outside_trio_raises_nothing() -> None:
    """paho's ``Client.__del__`` closes the socket through the bridge's close hook, from the
    garbage collector and outside trio: it printed "Exception ignored ... must be called from
    async context" for each client collected."""
    with socket.socket() as sock:
        notify_closing(sock)  # no trio run here: must return quietly
