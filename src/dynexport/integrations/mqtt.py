"""The MQTT bridge: paho-mqtt driven from trio through paho's external event-loop API.

paho-mqtt (the client Buildroot packages) parses and builds MQTT packets and keeps the session
state; this adapter owns the socket and the waiting. It connects the TCP socket (and does the TLS
handshake) with trio, hands the connected socket to paho, then waits with trio for the socket to
become readable or writable and calls ``loop_read`` / ``loop_write``, and ``loop_misc`` once a
second for keepalive. There is no second event loop, no paho thread and no blocking call: the
broker being slow or gone can never hold up the controller.

Memory is bounded whatever the broker does: what waits to be published is only the *latest*
snapshot of the state topics (replaced each round, never queued), and a round is skipped while
paho still holds unsent bytes of the previous one. While the broker is away nothing accumulates;
on reconnect the retained state, the discovery configs and ``online`` are published afresh.
The retained topics of a device that went away (an inverter removed, the battery) are cleared:
those this connection published by the first round that no longer has them, and also those left
by an earlier connection or run: the broker's own retained store says what was left
(``owned_filters``), so nothing has to be remembered on the device.
The broker publishes ``offline`` (the last will) when the appliance disappears.

The optional command topic carries an installer export limit that expires (see
``limitsources.parse_command``); commands the broker delivers as retained are refused, because a
retained message would be delivered again on every reconnect and keep a dead publisher's limit
alive forever. A broker forwards a retained publish to a connected subscriber (and a bridge passes
one on) as ordinary, so those are obeyed until they expire (docs/integrations.md). A broker may
refuse the command topic's subscription (its ACL): that is on the status and the dashboard, since
no command can then arrive, and the subscription is asked for again every
``SUBSCRIBE_RETRY_S``, for a broker that applies a corrected ACL to new subscriptions only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from dynexport.integrations.energy import SAMPLE_EVERY_S, EnergyCounters, integrate, powers_of
from dynexport.integrations.homeassistant import discovery_messages
from dynexport.integrations.limitsources import CommandError, ExtraLimit, parse_command
from dynexport.integrations.topics import (
    AVAILABILITY,
    COMMAND,
    OFFLINE,
    ONLINE,
    Message,
    default_prefix,
    node_id,
    state_messages,
)
from dynexport.system.config import MqttConfig

log = logging.getLogger("dynexport.integrations")

MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 60.0
"""A session that lasted this long resets the reconnect backoff."""
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
CONFIG_CHECK_S = 1.0
MISC_EVERY_S = 1.0
SUBSCRIBE_RETRY_S = 60.0
"""While the broker refuses the command topic's subscription, it is asked again this often."""


def reconnect_delay(
    failures: int,
    jitter: float,
    low: float = MIN_BACKOFF_S,
    high: float = MAX_BACKOFF_S,
) -> float:
    """1, 2, 4 ... ``high`` s after the 1st, 2nd, 3rd ... failure, the upper half randomised
    (``jitter`` in [0, 1]) so that a fleet does not reconnect to a restarted broker in step."""
    full = min(high, low * 2.0 ** min(max(failures - 1, 0), 30))
    return full / 2 + full / 2 * min(1.0, max(0.0, jitter))


class SessionEnded(Exception):
    """The connection to the broker ended or could not be made; the message says why."""


@dataclass
class Snapshot:
    """The latest state to publish: replaced each round, never queued."""

    seq: int
    state: list[Message]
    discovery: list[Message]


def board_serial() -> str | None:
    """The board's serial number (Raspberry Pi device tree), None elsewhere."""
    for path in ("/sys/firmware/devicetree/base/serial-number", "/proc/device-tree/serial-number"):
        try:
            text = Path(path).read_bytes().rstrip(b"\0").decode("ascii", "replace").strip()
        except OSError:
            continue
        if text:
            return text.lstrip("0") or text
    return None


def _sw_version() -> str:
    try:
        from importlib.metadata import version

        return version("dynexport")
    except Exception:
        return ""


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """The client TLS context for an ``mqtts://`` broker; raises SessionEnded naming the file."""
    try:
        ctx = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise SessionEnded(f"mqtt.ca: cannot load {config.ca}: {exc}") from exc
    if config.cert is not None and config.key is not None:
        try:
            ctx.load_cert_chain(str(config.cert), str(config.key))
        except (OSError, ssl.SSLError) as exc:
            raise SessionEnded(f"mqtt.cert/key: cannot load {config.cert}: {exc}") from exc
    return ctx


async def open_socket(
    host: str, port: int, ctx: ssl.SSLContext | None, limit_s: float
) -> socket.socket:
    """A connected, non-blocking socket (TLS-wrapped and handshaken when ``ctx``), made with trio
    waits only: name lookup, connect and handshake never block the scheduler."""
    try:
        with trio.fail_after(limit_s):
            stream = await trio.open_tcp_stream(host, port)
            raw = socket.socket(fileno=stream.socket.detach())
            raw.setblocking(False)
            if ctx is None:
                return raw
            try:
                tls = ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
                while True:
                    try:
                        tls.do_handshake()
                        return tls
                    except ssl.SSLWantReadError:
                        await trio.lowlevel.wait_readable(tls)
                    except ssl.SSLWantWriteError:
                        await trio.lowlevel.wait_writable(tls)
            except BaseException:
                raw.close()
                raise
    except trio.TooSlowError:
        raise SessionEnded(f"connecting to {host}:{port} took over {limit_s:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise SessionEnded(
            f"the broker's certificate is not trusted ({exc.verify_message}); check mqtt.ca"
        ) from exc
    except ssl.SSLError as exc:
        raise SessionEnded(f"TLS handshake with {host}:{port} failed: {exc.reason}") from exc
    except OSError as exc:
        raise SessionEnded(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # UnicodeError: the name lookup cannot encode the host (IDNA)
        raise SessionEnded(
            f"the host {host[:100]!r} cannot be looked up ({exc.__cause__ or exc}); check mqtt.url"
        ) from exc


def _paho() -> Any:
    """paho-mqtt, imported only when MQTT is configured (the appliance runs without it)."""
    import paho.mqtt.client as mqtt

    return mqtt


def _make_client(sock: socket.socket, client_id: str) -> Any:
    """A paho client whose connect uses ``sock``, already connected by trio.

    paho's external event-loop API covers reading, writing and keepalive but not connecting
    (its connect is a blocking ``socket.create_connection`` and TLS handshake); overriding its
    one socket factory is how the connected socket is handed over. Pinned paho version: see
    pyproject.toml; tests/integrations prove the handover on every change.
    """
    mqtt = _paho()

    class _TrioSocketClient(mqtt.Client):  # type: ignore[misc, name-defined]
        _dynexport_sock: socket.socket | None = None

        def _create_socket(self) -> Any:
            prepared, self._dynexport_sock = self._dynexport_sock, None
            if prepared is None:  # paho asked to reconnect by itself: we do that, not paho
                raise OSError("connection lost")
            return prepared

    client = _TrioSocketClient(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,
    )
    client._dynexport_sock = sock
    client.max_queued_messages_set(256)
    return client


class MqttBridge:
    """Publishes the app's status to an MQTT broker; optionally accepts an export limit."""

    def __init__(
        self,
        get_config: Callable[[], MqttConfig | None],
        get_status: Callable[[], Mapping[str, Any]],
        *,
        wake: Callable[[], None] | None = None,
        identity: Callable[[], str | None] = board_serial,
        jitter: Callable[[], float] = random.random,
        min_backoff_s: float = MIN_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        subscribe_retry_s: float = SUBSCRIBE_RETRY_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._get_config = get_config
        self._get_status = get_status
        self._wake = wake
        self._identity = identity
        self._jitter = jitter
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.connect_timeout_s = connect_timeout_s
        self.subscribe_retry_s = subscribe_retry_s
        self._wall_clock = wall_clock
        self._default_prefix: str | None = None
        self._sw_version: str | None = None
        """Read on the first publish: importlib.metadata costs 1 MiB a site without MQTT never
        needs."""
        self.snapshot: Snapshot | None = None
        self._snapshot_changed = trio.Event()
        self._write_wanted = trio.Event()
        self.energy = EnergyCounters()
        self.command: ExtraLimit | None = None
        self.command_error: str | None = None
        self.state = "off"
        self.connected = False
        self.last_error: str | None = None
        self.connects = 0
        self.attempts = 0
        self.published = 0
        self.dropped_rounds = 0
        self.prefix: str | None = None
        self._connack: Any = None
        self._connack_event = trio.Event()
        self._end_reason: str | None = None
        self._refused = False
        self.subscription: str | None = None
        """The command topic's subscription: None (the command topic is off), ``pending``
        (not connected, or no answer yet), ``granted`` or ``refused`` (kept, across reconnects,
        until a subscription is granted)."""
        self._device_topics: tuple[str, ...] = ()
        """State topic prefixes of the devices that come and go (inverters, the battery)."""
        self._left_over: set[str] = set()
        """Per-device retained topics the broker's store sent back, to be checked against the
        round published: those it no longer has are cleared."""
        self._suback: tuple[int, trio.Event, list[bool]] | None = None
        """The subscription asked for: its message id, set when the broker answers, and the
        answer (granted or not)."""

    # -- what the app reads -------------------------------------------------------------------

    def extra_limits(self, now: float) -> list[ExtraLimit]:
        """The command topic's limit while it is enabled and not expired."""
        config = self._get_config()
        cmd = self.command
        if config is None or not config.command_topic or cmd is None or not cmd.active(now):
            return []
        return [cmd]

    def status(self, now: float) -> dict[str, Any]:
        config = self._get_config()
        cmd = self.command
        command = None
        if config is not None and config.command_topic and cmd is not None:
            left = None if cmd.expires_at is None else max(0.0, cmd.expires_at - now)
            command = {"exportW": cmd.export_w, "expiresInS": left, "lapsed": left == 0.0}
        return {
            "configured": config is not None,
            "state": self.state,
            "connected": self.connected,
            "broker": None if config is None else f"{config.host}:{config.port}",
            "topicPrefix": self.prefix,
            "lastError": self.last_error,
            "connects": self.connects,
            "published": self.published,
            "droppedRounds": self.dropped_rounds,
            "command": command,
            "commandError": self.command_error,
            "commandSubscription": (
                (self.subscription or "pending")
                if config is not None and config.command_topic
                else None
            ),
        }

    def topic_prefix(self, config: MqttConfig) -> str:
        """``mqtt.topicPrefix``, else ``dynexport/<serial or LFDI>``, fixed once chosen."""
        if config.topic_prefix is not None:
            return config.topic_prefix
        if self._default_prefix is None:
            utility = self._get_status().get("utility") or {}
            self._default_prefix = default_prefix(
                self._identity(), utility.get("lfdi"), socket.gethostname()
            )
        return self._default_prefix

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs for the life of the service; idles while ``mqtt`` is not configured and
        reconnects (with backoff) whenever the configuration or the connection changes."""
        while True:
            config = self._get_config()
            if config is None:
                self.state, self.connected, self.prefix = "off", False, None
                await trio.sleep(CONFIG_CHECK_S)
                continue
            self.prefix = self.topic_prefix(config)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sample_loop, config, self.prefix)
                await self._connect_loop(config)
                nursery.cancel_scope.cancel()

    async def _config_changed(self, config: MqttConfig) -> None:
        # the app replaces its configuration without telling its readers: look each second
        while self._get_config() == config:  # noqa: ASYNC110
            await trio.sleep(CONFIG_CHECK_S)

    async def _sample_loop(self, config: MqttConfig, prefix: str) -> None:
        """Every ``publishS``: the latest state (and energy counters) from the status, whether
        or not the broker is there. Only the newest snapshot is kept. The energy counters take
        a sample more often when ``publishS`` is long (every ``SAMPLE_EVERY_S`` at least):
        samples further apart than ``MAX_GAP_S`` are never bridged, and would count nothing."""
        seq = 0
        sample_every = min(config.publish_s, SAMPLE_EVERY_S)
        next_publish = trio.current_time()
        while True:
            now = trio.current_time()
            status = self._get_status()
            self.energy = integrate(self.energy, powers_of(status, now))
            if now >= next_publish:
                next_publish = now + config.publish_s
                seq += 1
                self.snapshot = self._snapshot_of(status, config, prefix, seq)
                self._snapshot_changed.set()
            await trio.sleep_until(min(next_publish, now + sample_every))

    def _snapshot_of(
        self, status: Mapping[str, Any], config: MqttConfig, prefix: str, seq: int
    ) -> Snapshot:
        energy = self.energy.as_dict()
        if self._sw_version is None:
            self._sw_version = _sw_version()
        return Snapshot(
            seq,
            state_messages(status, prefix, energy),
            discovery_messages(
                status,
                prefix,
                config.discovery_prefix,
                energy_keys=tuple(energy),
                sw_version=self._sw_version,
            ),
        )

    async def _connect_loop(self, config: MqttConfig) -> None:
        failures = 0
        while self._get_config() == config:
            started = trio.current_time()
            self.attempts += 1
            try:
                await self._session(config)
                return  # the configuration changed
            except SessionEnded as exc:
                reason = str(exc)
            if trio.current_time() - started >= HEALTHY_AFTER_S:
                failures = 0
            failures += 1
            delay = reconnect_delay(
                failures, self._jitter(), self.min_backoff_s, self.max_backoff_s
            )
            if reason != self.last_error:
                log.warning("mqtt: %s; retrying in %.0f s (and on, with backoff)", reason, delay)
            self.last_error = reason
            self.state = "refused" if self._refused else "disconnected"
            with trio.move_on_after(delay):
                await self._config_changed(config)

    async def _session(self, config: MqttConfig) -> None:
        """One connection: returns when the configuration changes, raises SessionEnded when the
        connection fails or ends."""
        if self.state != "refused":  # a refusal stays on show until the broker accepts us
            self.state = "connecting"
        self._refused = False
        if not config.command_topic:
            self.subscription = None  # a refusal stays on show until granted, or turned off
        ctx = tls_context(config) if config.tls else None
        sock = await open_socket(config.host, config.port, ctx, self.connect_timeout_s)
        assert self.prefix is not None
        prefix = self.prefix
        try:
            client = _make_client(sock, f"dynexport-{node_id(prefix)}"[:64])
        except ImportError as exc:
            sock.close()
            raise SessionEnded(f"paho-mqtt is not installed ({exc})") from exc
        self._connack, self._connack_event = None, trio.Event()
        self._left_over = set()
        self._end_reason = None
        self._write_wanted = trio.Event()
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message_for(config)
        client.on_socket_register_write = lambda *_: self._write_wanted.set()
        client.on_socket_unregister_write = lambda *_: None
        client.on_socket_close = lambda _c, _u, s: notify_closing(s)
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        client.will_set(f"{prefix}/{AVAILABILITY}", OFFLINE, qos=1, retain=True)
        try:
            client.connect_async(config.host, config.port, KEEPALIVE_S)
            client.reconnect()  # sends CONNECT on the socket trio connected
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, client, sock, nursery.cancel_scope)
                nursery.start_soon(self._writer, client, sock, nursery.cancel_scope)
                nursery.start_soon(self._misc, client, nursery.cancel_scope)
                with trio.move_on_after(self.connect_timeout_s):
                    await self._connack_event.wait()
                if not self._connack_event.is_set() and self._end_reason is None:
                    self._end_reason = "the broker did not answer the connect"
                if self._end_reason is None and self._connack is not None:
                    self._connected(client, config, prefix)
                    if config.command_topic:
                        nursery.start_soon(self._subscription_watch, client, prefix)
                    nursery.start_soon(self._publisher, client, prefix, nursery.cancel_scope)
                    await self._config_changed(config)
                nursery.cancel_scope.cancel()
        finally:
            self.connected = False
            self._suback = None
            if self.subscription == "granted":
                self.subscription = "pending"  # asked for again on the next connection
            _close(client, sock)
        if self._end_reason is not None:
            raise SessionEnded(self._end_reason)

    def _connected(self, client: Any, config: MqttConfig, prefix: str) -> None:
        self.connected, self.state, self.last_error = True, "connected", None
        self.connects += 1
        log.info("mqtt: connected to %s:%s as %s", config.host, config.port, prefix)
        if config.command_topic:
            # asked for before the first round is published: a command sent after the first
            # state arrived finds the subscription in place (the broker keeps the order)
            self._subscribe(client, prefix)
        self._subscribe_owned(client, config, prefix)
        client.publish(f"{prefix}/{AVAILABILITY}", ONLINE, qos=1, retain=True)

    def _subscribe_owned(self, client: Any, config: MqttConfig, prefix: str) -> None:
        """Subscribes to the per-device retained topics; what the broker's retained store
        sends back is checked against the round published (``_on_owned``,
        ``_clear_left_over``)."""
        filters = owned_filters(prefix, config.discovery_prefix)
        self._device_topics = device_topics(prefix)
        for topic_filter in filters:
            client.message_callback_add(topic_filter, self._on_owned)
        client.subscribe([(topic_filter, 0) for topic_filter in filters])

    def _on_owned(self, client: Any, userdata: Any, msg: Any) -> None:
        del client, userdata
        # only the retained store's copies are marked retained: our own publishes reach this
        # subscription unmarked, and an empty payload is a topic already cleared
        if not (msg.retain and msg.payload):
            return
        if msg.topic.endswith("/config"):  # a discovery config: only a device's entities
            try:
                state_topic = json.loads(msg.payload).get("state_topic")
            except (ValueError, AttributeError, RecursionError):
                return  # not a config this appliance wrote: not ours to judge
            if not (isinstance(state_topic, str) and state_topic.startswith(self._device_topics)):
                return  # an appliance entity that comes and goes (energy curtailed at night)
        self._left_over.add(msg.topic)
        self._snapshot_changed.set()  # checked against the round already published

    def _subscribe(self, client: Any, prefix: str) -> None:
        _, mid = client.subscribe(f"{prefix}/{COMMAND}", qos=1)
        self._suback = (mid, trio.Event(), [])

    async def _subscription_watch(self, client: Any, prefix: str) -> None:
        """Waits for the broker's answer to the command topic's subscription; while it is
        refused, says so and asks again every ``subscribe_retry_s``."""
        topic = f"{prefix}/{COMMAND}"
        while True:
            assert self._suback is not None
            _, answered, granted = self._suback
            await answered.wait()
            if granted == [True]:
                if self.subscription == "refused":
                    log.info("mqtt: the broker now grants the subscription to %s", topic)
                self.subscription = "granted"
                return
            if self.subscription != "refused":
                log.warning(
                    "mqtt: the broker refused the subscription to %s (its ACL?): export limit "
                    "commands cannot arrive; asking again every %g s",
                    topic,
                    self.subscribe_retry_s,
                )
            self.subscription = "refused"
            await trio.sleep(self.subscribe_retry_s)
            self._subscribe(client, prefix)

    def _end(self, scope: trio.CancelScope, reason: str) -> None:
        if self._end_reason is None:
            self._end_reason = reason
        scope.cancel()

    # paho callbacks (called synchronously from loop_read / loop_write) ------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        del client, userdata, flags, props
        if reason.is_failure:
            self.state, self._refused = "refused", True
            self._end_reason = f"the broker refused the connection: {reason}" + (
                " (check mqtt.username and mqtt.password)"
                if reason.value in (4, 5, 134, 135)
                else ""
            )
        else:
            self._connack = reason
        self._connack_event.set()

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        del client, userdata, props
        if self._suback is not None and self._suback[0] == mid:
            # MQTT 3.1.1 answers 0x80 for a refused topic; paho reports it as a failure
            self._suback[2].append(bool(reasons) and not any(r.is_failure for r in reasons))
            self._suback[1].set()

    def _on_message_for(self, config: MqttConfig) -> Callable[..., None]:
        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            del client, userdata
            if msg.retain:
                self.command_error = (
                    "a retained command was ignored: publish export limits without retain"
                )
                log.warning("mqtt: %s", self.command_error)
                return
            now = trio.current_time()
            try:
                cmd = parse_command(msg.payload, now, config.command_expiry_s)
            except CommandError as exc:
                self.command_error = f"command refused: {exc}"
                log.warning("mqtt: %s", self.command_error)
                return
            before = self.command if self.command and self.command.active(now) else None
            self.command, self.command_error = cmd, None
            was = None if before is None else before.export_w
            if was == (None if cmd is None else cmd.export_w):
                return  # the same limit again (kept alive): no log line, no extra control cycle
            log.info(
                "mqtt: export limit command %s",
                "cleared" if cmd is None else f"{cmd.export_w:.0f} W",
            )
            if self._wake is not None:
                self._wake()

        return on_message

    # the three loops of paho's external event-loop API ----------------------------------------

    async def _wait_for(
        self,
        wait: Callable[[socket.socket], Awaitable[None]],
        sock: socket.socket,
        scope: trio.CancelScope,
    ) -> bool:
        """Waits until ``sock`` is readable (or writable); False, the session ended, when the
        connection is closed. paho closes the socket itself (in ``loop_read``, ``loop_write`` or
        ``loop_misc``) when the broker drops the connection, e.g. right after its CONNACK: its
        descriptor is then -1, which trio refuses with ValueError (or, reused by another socket,
        BusyResourceError), so it is looked at before waiting and all of these end the session.
        """
        try:
            if sock.fileno() < 0:
                raise trio.ClosedResourceError
            await wait(sock)
        except (trio.ClosedResourceError, trio.BusyResourceError, OSError, ValueError):
            self._end(scope, "the connection was closed")
            return False
        return True

    async def _reader(self, client: Any, sock: socket.socket, scope: trio.CancelScope) -> None:
        mqtt = _paho()
        while True:
            if not await self._wait_for(trio.lowlevel.wait_readable, sock, scope):
                return
            rc = client.loop_read()
            while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(sock, ssl.SSLSocket):
                if sock.fileno() < 0 or not sock.pending():
                    break
                rc = client.loop_read()  # TLS may hold decrypted bytes the socket cannot show
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._end(scope, self._end_reason or f"connection lost ({mqtt.error_string(rc)})")
                return

    async def _writer(self, client: Any, sock: socket.socket, scope: trio.CancelScope) -> None:
        mqtt = _paho()
        while True:
            if not client.want_write():
                await self._write_wanted.wait()
                self._write_wanted = trio.Event()
                continue
            if not await self._wait_for(trio.lowlevel.wait_writable, sock, scope):
                return
            rc = client.loop_write()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._end(scope, f"connection lost ({mqtt.error_string(rc)})")
                return

    async def _misc(self, client: Any, scope: trio.CancelScope) -> None:
        mqtt = _paho()
        while True:
            await trio.sleep(MISC_EVERY_S)
            rc = client.loop_misc()
            if rc == mqtt.MQTT_ERR_NO_CONN:  # paho found the socket closed
                self._end(scope, "the connection was closed")
                return
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._end(scope, "the broker stopped answering (keepalive)")
                return

    async def _publisher(self, client: Any, prefix: str, scope: trio.CancelScope) -> None:
        """Publishes each new snapshot; skips a round while the last one has not left yet."""
        del scope
        sent_discovery: dict[str, str] = {}
        sent_state: set[str] = set()
        last_seq = -1
        last_sent: Any = None  # paho's MQTTMessageInfo of the previous round's last message
        published: Snapshot | None = None
        while True:
            snap = self.snapshot
            if snap is not None and snap.seq != last_seq:
                last_seq = snap.seq
                if last_sent is not None and not last_sent.is_published():
                    self.dropped_rounds += 1  # the broker is slow: never queue behind it
                else:
                    last_sent = self._publish(client, snap, sent_discovery, sent_state)
                    published = snap
            if published is not None and self._left_over:
                self._clear_left_over(client, published, sent_discovery)
            self._snapshot_changed = trio.Event()
            if self.snapshot is None or self.snapshot.seq == last_seq:
                await self._snapshot_changed.wait()

    def _clear_left_over(
        self, client: Any, published: Snapshot, sent_discovery: dict[str, str]
    ) -> None:
        """Clears the retained device topics the broker's store sent back that the round
        published no longer has: left by an earlier connection or run, the device went away."""
        current = {m.topic for m in published.discovery} | {m.topic for m in published.state}
        for topic in sorted(self._left_over - current):
            client.publish(topic, "", qos=1, retain=True)
            sent_discovery.pop(topic, None)
        self._left_over.clear()

    def _publish(
        self, client: Any, snap: Snapshot, sent_discovery: dict[str, str], sent_state: set[str]
    ) -> Any:
        """Publishes one round; returns the last message's info (``is_published()`` once its
        bytes are on the socket). The retained topics this connection published that the round
        no longer has (an entity, a device that went away) are cleared: discovery configs
        first, so that Home Assistant removes the entity before its state goes."""
        current = {m.topic: m.payload for m in snap.discovery}
        for topic in [t for t in sent_discovery if t not in current]:
            client.publish(topic, "", qos=1, retain=True)  # an entity that went away
            del sent_discovery[topic]
        state = {m.topic for m in snap.state if m.retain}
        for topic in sorted(sent_state - state):
            client.publish(topic, "", qos=1, retain=True)  # a device's state: it went away
        sent_state.intersection_update(state)
        for m in snap.discovery:
            if sent_discovery.get(m.topic) != m.payload:
                client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                sent_discovery[m.topic] = m.payload
        last = None
        for m in snap.state:
            last = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            if m.retain:
                sent_state.add(m.topic)
        self.published += 1
        return last


def device_topics(prefix: str) -> tuple[str, ...]:
    """The state topic prefixes of devices that come and go: an inverter, the battery."""
    return (f"{prefix}/inverter/", f"{prefix}/battery/")


def owned_filters(prefix: str, discovery_prefix: str) -> list[str]:
    """The topic filters of the retained topics that come and go with a device: an inverter's
    (or the battery's) state, and every Home Assistant discovery config of this appliance."""
    return [
        f"{discovery_prefix}/+/{node_id(prefix)}/+/config",
        *(f"{topic}#" for topic in device_topics(prefix)),
    ]


def notify_closing(sock: socket.socket) -> None:
    """Tells trio a socket paho is closing is going away. paho also closes it from its
    ``__del__``, outside trio, where nothing waits on it any more: that is not an error."""
    with contextlib.suppress(RuntimeError):  # no trio run (the garbage collector)
        trio.lowlevel.notify_closing(sock)


def _close(client: Any, sock: socket.socket) -> None:
    """Closes the connection without a DISCONNECT, so the broker publishes the last will."""
    del client
    try:
        if sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)
    finally:
        sock.close()
