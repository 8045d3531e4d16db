"""trio-native Modbus client for Modbus TCP and RTU over RS485 (function codes 3, 4, 6, 16).

A :class:`ModbusBus` is one TCP connection or one serial bus. Requests on it take turns (a
``trio.Lock``), each attempt is bounded by the request timeout, failed attempts are retried a
bounded number of times (never after an exception response: that is the device's answer), and a
lost connection is re-opened lazily with exponential backoff. An attempt that does not finish
cleanly (timeout, cancellation, bad frame) leaves no half-read frame behind: on TCP the connection
is closed, on RTU the line is drained until silent and the input flushed before the next request.
The bytes themselves are the codec's business (``dynexport.modbus.codec``); see docs/modbus.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import select
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import trio

from dynexport.modbus import codec
from dynexport.modbus.endpoints import Endpoint, SerialEndpoint, TcpEndpoint
from dynexport.modbus.errors import (
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTimeout,
)

if TYPE_CHECKING:
    from dynexport.modbus.serial_port import SerialPort

log = logging.getLogger("dynexport.modbus")

_RECEIVE_SIZE = 512
_BACKOFF, _CONNECT, _ANSWER = "backoff", "connect", "answer"


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``initial`` after the first failure, times ``factor`` up to ``maximum``."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.maximum or self.factor < 1:
            raise ValueError(f"backoff {self}: need 0 <= initial <= maximum and factor >= 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait before reconnecting after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        return min(self.initial * self.factor ** min(failures - 1, 64), self.maximum)


class PortInUseError(ModbusConnectionError):
    """The serial port is already open in this process, by another bus (under this name or
    another: a ``/dev/serial/by-id/`` link and its tty are one port)."""


def _port_in_use(endpoint: SerialEndpoint, holder: SerialEndpoint, real: str) -> PortInUseError:
    same = "" if holder.device == endpoint.device else f"; {_same_port(endpoint, holder, real)}"
    return PortInUseError(
        f"{endpoint}: serial port {endpoint.device} is in use by the running service (its bus "
        f"{holder} has it open{same})"
    )


def real_device(device: str) -> str:
    """The port a serial device name stands for: symbolic links (``/dev/serial/by-id/...``)
    resolved (``os.path.realpath``; a name that does not exist stays as it is)."""
    return os.path.realpath(device)


def _same_port(a: SerialEndpoint, b: SerialEndpoint, real: str) -> str:
    return f"{a.device} and {b.device} are the same serial port, {real}"


_OPEN_PORTS: dict[str, _RtuLink] = {}
"""Serial ports open in this process, by real path (:func:`real_device`), and the link holding
each: a second bus on the same port (another name for it, or the device scan while the service
runs) gets a :class:`PortInUseError` naming both, not pyserial's "could not exclusively lock"."""


class _Link(Protocol):
    """One kind of wire (TCP or RTU): connect, one request/answer exchange, clean up."""

    received: int

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    def wire_time(self, request: codec.Request) -> float:
        """Seconds the request and its answer take on the wire (nil on TCP)."""
        ...

    async def exchange(self, request: codec.Request, deadline: float) -> codec.Reply: ...

    def abandon(self) -> None:
        """An exchange did not finish cleanly: make sure its leftovers cannot be misread."""

    def close(self) -> None: ...


class _TcpLink:
    """Modbus TCP over one ``trio.SocketStream`` with incrementing transaction ids."""

    def __init__(self, endpoint: TcpEndpoint) -> None:
        self.endpoint = endpoint
        self._stream: trio.SocketStream | None = None
        self._tid = 0
        self._used = False
        self.received = 0

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def connect(self) -> None:
        try:
            # An ASCII host as bytes: a str goes through the idna codec (encodings.idna and
            # stringprep, about 0.5 MiB resident) even for an address (httpio/names.py).
            host = self.endpoint.host
            self._stream = await trio.open_tcp_stream(
                host.encode("ascii") if host.isascii() else host, self.endpoint.port
            )
            self._used = False
        except OSError as exc:
            raise ModbusConnectionError(f"{self.endpoint}: cannot connect: {exc}") from exc
        log.info("%s: connected", self.endpoint)

    async def _ready_stream(self) -> trio.SocketStream:
        """Drop bytes nobody asked for, and notice a peer that closed the connection.

        A connection that served requests and was then closed by the peer while idle (devices
        drop idle clients) is re-opened once, transparently; a fresh one that closes is an error.
        """
        while (stream := self._stream) is not None:
            poller = select.poll()
            poller.register(stream.socket.fileno(), select.POLLIN)
            if not poller.poll(0):
                return stream
            data = await stream.receive_some(_RECEIVE_SIZE)
            if data:
                log.warning("%s: discarded %d stale bytes", self.endpoint, len(data))
                continue
            self.close()
            if not self._used:
                raise ModbusConnectionError(f"{self.endpoint}: connection closed by peer")
            log.info("%s: peer closed the idle connection; reconnecting", self.endpoint)
            await self.connect()
        raise ModbusConnectionError(f"{self.endpoint}: not connected")

    def wire_time(self, request: codec.Request) -> float:
        return 0.0

    async def exchange(self, request: codec.Request, deadline: float) -> codec.Reply:
        self.received = 0
        try:
            stream = await self._ready_stream()
            self._tid = self._tid % 0xFFFF + 1
            tid = self._tid
            await stream.send_all(codec.encode_tcp(request, tid))
            buffer = bytearray()
            while (reply := codec.decode_tcp(buffer, request, tid)) is None:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    part = f" after {len(buffer)} bytes of a frame" if buffer else ""
                    raise ModbusConnectionError(
                        f"{self.endpoint} {request.describe()}: connection closed by peer{part}"
                    )
                buffer += data
                self.received = len(buffer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ModbusConnectionError(
                f"{self.endpoint} {request.describe()}: connection lost: {exc!r}"
            ) from exc
        if len(buffer) > reply.size:
            log.warning(
                "%s: %d unexpected bytes after the answer; reconnecting",
                self.endpoint,
                len(buffer) - reply.size,
            )
            self.close()
        self._used = True
        return reply

    def abandon(self) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.socket.close()
            self._stream = None


class _RtuLink:
    """Modbus RTU on a serial port: inter-frame silence, flushed input, CRC-checked answers."""

    def __init__(self, endpoint: SerialEndpoint) -> None:
        # pyserial (serial_port) loads only on sites with an RS485 device.
        from dynexport.modbus.serial_port import char_time, frame_silence

        self.endpoint = endpoint
        self._port: SerialPort | None = None
        self._char = char_time(endpoint)
        self._silence = frame_silence(endpoint)
        # A late answer can arrive in several chunks (USB adapters batch bytes), so "quiet" after
        # a failed exchange means a longer gap than the bare inter-frame silence.
        self._drain_quiet = max(4 * self._silence, 0.05)
        self._quiet_from = -math.inf  # trio time from which the line is idle
        self._dirty = False
        self._answer_due = -math.inf  # deadline of a request whose answer may still come
        self._real: str | None = None  # the port's real path while open (_OPEN_PORTS)
        self.received = 0

    @property
    def connected(self) -> bool:
        return self._port is not None

    async def connect(self) -> None:
        from dynexport.modbus.serial_port import SerialPort

        real = real_device(self.endpoint.device)
        holder = _OPEN_PORTS.get(real)
        if holder is not None and holder is not self:
            raise _port_in_use(self.endpoint, holder.endpoint, real)
        self._port = SerialPort(self.endpoint)
        self._real = real
        _OPEN_PORTS[real] = self
        self._dirty = True  # whatever the line carried before we opened it is not ours
        log.info("%s: serial port open", self.endpoint)
        await trio.lowlevel.checkpoint()

    async def _receive(self, port: SerialPort) -> bytes:
        data = await port.stream.receive_some(_RECEIVE_SIZE)
        if not data:
            raise ModbusConnectionError(f"{self.endpoint}: serial port closed")
        self._quiet_from = trio.current_time()
        return data

    async def _drain(self, port: SerialPort) -> None:
        """Discard what arrives until the line is quiet, so a late answer is not misread.

        RTU answers carry no transaction id: the answer to an abandoned (cancelled) request
        looks exactly like the answer to the next one. So until the abandoned request's own
        deadline has passed, silence is not proof it will not come; once bytes have arrived, or
        that deadline is over, a short quiet gap ends the frame. The caller's deadline bounds it.
        """
        dropped = 0
        while True:
            wait = self._drain_quiet
            if not dropped:
                wait = max(wait, self._answer_due - trio.current_time())
            with trio.move_on_after(wait):
                dropped += len(await self._receive(port))
                continue
            break
        if dropped:
            log.warning("%s: discarded %d stale bytes", self.endpoint, dropped)

    def wire_time(self, request: codec.Request) -> float:
        # a read's answer: unit, function, byte count, the registers, CRC; a write's: 8 bytes
        reads = (codec.READ_HOLDING_REGISTERS, codec.READ_INPUT_REGISTERS)
        answer = 5 + 2 * request.count if request.function in reads else 8
        return (len(codec.encode_rtu(request)) + answer) * self._char + 2 * self._silence

    async def exchange(self, request: codec.Request, deadline: float) -> codec.Reply:
        port = self._port
        if port is None:
            raise ModbusConnectionError(f"{self.endpoint}: serial port not open")
        self.received = 0
        try:
            if self._dirty:
                await self._drain(port)
                self._dirty = False
            await trio.sleep_until(self._quiet_from + self._silence)
            port.flush_input()
            frame = codec.encode_rtu(request)
            await port.stream.send_all(frame)
            self._quiet_from = trio.current_time() + len(frame) * self._char
            self._answer_due = deadline
            buffer = bytearray()
            while (reply := codec.decode_rtu(buffer, request)) is None:
                buffer += await self._receive(port)
                self.received = len(buffer)
                self._answer_due = -math.inf  # an answer is coming: quiet ends it
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ModbusConnectionError(
                f"{self.endpoint} {request.describe()}: serial port lost: {exc}"
            ) from exc
        self._answer_due = -math.inf
        if len(buffer) > reply.size:
            log.warning("%s: %d bytes after the answer", self.endpoint, len(buffer) - reply.size)
            self._dirty = True
        return reply

    def abandon(self) -> None:
        self._dirty = True

    def close(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None
        if self._real is not None:
            if _OPEN_PORTS.get(self._real) is self:
                del _OPEN_PORTS[self._real]
            self._real = None


class _RefusedLink:
    """A bus that cannot be: every connect fails with ``message`` (one serial port configured
    under two names with different line settings, :meth:`BusPool.get`)."""

    def __init__(self, endpoint: Endpoint, message: str) -> None:
        self.endpoint = endpoint
        self.message = message
        self.received = 0

    @property
    def connected(self) -> bool:
        return False

    async def connect(self) -> None:
        await trio.lowlevel.checkpoint()
        raise ModbusConnectionError(f"{self.endpoint}: {self.message}")

    def wire_time(self, request: codec.Request) -> float:
        return 0.0

    async def exchange(self, request: codec.Request, deadline: float) -> codec.Reply:
        raise ModbusConnectionError(f"{self.endpoint}: {self.message}")

    def abandon(self) -> None:
        pass

    def close(self) -> None:
        pass


class ModbusBus:
    """One TCP connection or one serial bus; requests on it are serialized."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 1.0,
        retries: int = 2,
        backoff: Backoff | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout {timeout!r}: must be > 0 seconds")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries {retries!r}: must be an integer >= 0")
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff or Backoff()
        self._link: _Link
        if isinstance(endpoint, TcpEndpoint):
            self._link = _TcpLink(endpoint)
        elif isinstance(endpoint, SerialEndpoint):
            self._link = _RtuLink(endpoint)
        else:
            raise TypeError(f"not a Modbus endpoint: {endpoint!r}")
        self._lock = trio.Lock()
        self._closed = False
        self._failures = 0
        self._reconnect_at = -math.inf
        self._last_connection_error: ModbusConnectionError | None = None

    async def read_holding_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[int]:
        """Function 3: ``count`` (1..125) registers from raw wire address ``address``."""
        request = codec.read_request(codec.READ_HOLDING_REGISTERS, unit, address, count)
        return list((await self._request(request, timeout)).registers)

    async def read_input_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[int]:
        """Function 4: ``count`` (1..125) input registers from raw wire address ``address``."""
        request = codec.read_request(codec.READ_INPUT_REGISTERS, unit, address, count)
        return list((await self._request(request, timeout)).registers)

    async def write_register(
        self,
        unit: int,
        address: int,
        value: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Function 6: one register; returns once the device has echoed it."""
        await self._request(codec.write_single_request(unit, address, value), timeout)

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Function 16: 1..123 consecutive registers; returns once the device confirmed."""
        await self._request(codec.write_multiple_request(unit, address, tuple(values)), timeout)

    async def aclose(self) -> None:
        """Close the connection or port; requests still running fail with ModbusConnectionError."""
        self._closed = True
        self._link.close()
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise ModbusConnectionError(f"{self.endpoint}: bus is closed")

    async def _request(
        self,
        request: codec.Request,
        timeout: float | None,  # noqa: ASYNC109
    ) -> codec.Reply:
        limit = self.timeout if timeout is None else timeout
        if not limit > 0:
            raise ValueError(f"timeout {limit!r}: must be > 0 seconds")
        self._check_open()
        attempts = self.retries + 1
        async with self._lock:
            for attempt in range(1, attempts + 1):
                self._check_open()
                try:
                    return await self._attempt(request, limit)
                except ModbusExceptionResponse:
                    raise
                except ModbusError as exc:
                    if attempt == attempts or self._closed:
                        if attempts == 1:
                            raise
                        raise type(exc)(f"{exc} (after {attempts} attempts)") from exc
                    log.info(
                        "%s: attempt %d of %d failed: %s", self.endpoint, attempt, attempts, exc
                    )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, request: codec.Request, limit: float) -> codec.Reply:
        """One try, connect included, bounded by ``limit`` seconds (on RTU, plus the line's
        own time for the bytes)."""
        # The timeout is the device's time to answer: a slow serial line's own time for the
        # bytes comes on top (a 125-register answer takes over a second at 2400 baud).
        deadline = trio.current_time() + limit + self._link.wire_time(request)
        what = f"{self.endpoint} {request.describe()}"
        clean = False
        phase = _ANSWER
        try:
            with trio.move_on_at(deadline):
                if not self._link.connected:
                    phase = _BACKOFF
                    await self._wait_backoff(deadline, what)
                    phase = _CONNECT
                    await self._link.connect()
                    phase = _ANSWER
                reply = await self._link.exchange(request, deadline)
                clean = True
                self._failures = 0
                return reply
            if phase != _ANSWER:
                raise ModbusConnectionError(f"{what}: could not connect within {limit:g} s")
            got = self._link.received
            part = f" (got {got} bytes of a frame)" if got else ""
            raise ModbusTimeout(f"{what}: no answer within {limit:g} s{part}")
        except ModbusExceptionResponse as exc:
            clean = True
            self._failures = 0
            raise ModbusExceptionResponse(
                exc.unit, exc.function, exc.address, exc.code, str(self.endpoint)
            ) from None
        except ModbusConnectionError as exc:
            self._link.close()
            if phase != _BACKOFF:  # a deferred reconnect is not a new failure
                self._failures += 1
                self._reconnect_at = trio.current_time() + self.backoff.delay(self._failures)
                self._last_connection_error = exc
            raise
        except ModbusFrameError as exc:
            raise ModbusFrameError(f"{self.endpoint} {exc}") from exc
        finally:
            if not clean:
                self._link.abandon()

    async def _wait_backoff(self, deadline: float, what: str) -> None:
        """Honour the reconnect backoff, but never past the request deadline."""
        if self._reconnect_at <= trio.current_time():
            return
        if self._reconnect_at > deadline:
            wait = self._reconnect_at - trio.current_time()
            raise ModbusConnectionError(
                f"{what}: not reconnecting for another {wait:.2f} s (backoff after: "
                f"{self._last_connection_error})"
            )
        await trio.sleep_until(self._reconnect_at)

    def __repr__(self) -> str:
        return f"ModbusBus({self.endpoint})"


@asynccontextmanager
async def open_bus(
    endpoint: Endpoint,
    *,
    timeout: float = 1.0,  # noqa: ASYNC109
    retries: int = 2,
    backoff: Backoff | None = None,
) -> AsyncIterator[ModbusBus]:
    """A bus for ``endpoint`` that connects on its first request and is closed on exit."""
    bus = ModbusBus(endpoint, timeout=timeout, retries=retries, backoff=backoff)
    try:
        yield bus
    finally:
        with trio.CancelScope(shield=True):
            await bus.aclose()


def _pool_key(endpoint: Endpoint) -> Endpoint:
    """What makes two endpoints one bus: a serial port by its real path (:func:`real_device`),
    so a ``/dev/serial/by-id/`` link and its tty share one bus; TCP as given."""
    if isinstance(endpoint, SerialEndpoint):
        return dataclasses.replace(endpoint, device=real_device(endpoint.device))
    return endpoint


class BusPool:
    """One bus per endpoint, shared by every device that names it; closes them all on exit.

    A serial port is one bus whatever it is called: names are resolved (``os.path.realpath``)
    when a bus is asked for. The configuration check compares names only (it must not depend on
    the filesystem), so two names for one port with different line settings reach the pool: the
    second gets a bus that never opens, its error (and a logged error) naming both names."""

    def __init__(
        self, *, timeout: float = 1.0, retries: int = 2, backoff: Backoff | None = None
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._buses: dict[Endpoint, ModbusBus] = {}
        self._refused: dict[Endpoint, ModbusBus] = {}
        self._closed = False

    def get(self, endpoint: Endpoint) -> ModbusBus:
        """The shared bus for ``endpoint``, created (not yet connected) on first use."""
        if self._closed:
            raise ModbusConnectionError(f"{endpoint}: bus pool is closed")
        key = _pool_key(endpoint)
        bus = self._buses.get(key) or self._refused.get(endpoint)
        if bus is not None:
            return bus
        if isinstance(endpoint, SerialEndpoint) and isinstance(key, SerialEndpoint):
            other = self.serial_bus(endpoint.device)
            if other is not None:
                held = other.endpoint
                assert isinstance(held, SerialEndpoint)
                if held.device == endpoint.device:
                    raise ValueError(
                        f"serial port {endpoint.device} used with different line settings: "
                        f"{held} and {endpoint}"
                    )
                return self._refuse(endpoint, held, key.device)
        bus = ModbusBus(endpoint, timeout=self.timeout, retries=self.retries, backoff=self.backoff)
        self._buses[key] = bus
        return bus

    def serial_bus(self, device: str) -> ModbusBus | None:
        """The pool's bus on this serial port, under whatever name (and line settings) it was
        asked for, or None."""
        real = real_device(device)
        for key, bus in self._buses.items():
            if isinstance(key, SerialEndpoint) and key.device == real:
                return bus
        return None

    def _refuse(self, endpoint: SerialEndpoint, held: SerialEndpoint, real: str) -> ModbusBus:
        message = (
            f"{_same_port(endpoint, held, real)}, already used at {held.baud} baud, parity "
            f"{held.parity}, {held.stopbits} stop bit(s) ({held}): one RS485 bus has one set of "
            "line settings; give every device on it the same baud rate, parity and stop bits"
        )
        log.error("%s: %s", endpoint, message)
        bus = ModbusBus(endpoint, timeout=self.timeout, retries=self.retries, backoff=self.backoff)
        bus._link = _RefusedLink(endpoint, message)
        self._refused[endpoint] = bus
        return bus

    async def aclose(self) -> None:
        self._closed = True
        buses = [*self._buses.values(), *self._refused.values()]
        self._buses, self._refused = {}, {}
        for bus in buses:
            await bus.aclose()

    async def __aenter__(self) -> BusPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()
