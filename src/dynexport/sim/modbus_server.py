"""Serve a simulated ``Site`` over Modbus TCP or RTU with pymodbus' asyncio server.

This is the only module of the simulator that imports pymodbus. The server runs in a background
thread with its own asyncio loop, so synchronous tests and trio tests can both use it::

    with serve_tcp(profiles.fronius_gateway()) as server:
        ...connect to 127.0.0.1:server.port...

Works with pymodbus 3.13 and 3.16: we hand the server a ``ModbusServerContext`` subclass whose
async get/set methods answer from the site (both versions call those directly).

With ``control_port`` the same thread also serves the simulator control channel: JSON lines on
127.0.0.1 (``Site.apply``; docs/modbus.md, "Simulator control channel"), so a test or an
operator can make an inverter trip or stop on its own while a ``dynexport`` process controls it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from dynexport.sim.profiles import PROFILES
from dynexport.sim.sunspec_device import ControlError, ModbusError, Site

log = logging.getLogger("dynexport.sim")

STEP_INTERVAL_S = 0.1
CONTROL_LINE_LIMIT = 64 * 1024
_REGISTER_FUNCTIONS = frozenset({3, 4, 6, 16, 23})


class SiteContext(ModbusServerContext):
    """pymodbus datastore answering from a ``Site`` (several unit ids, one server)."""

    def __init__(self, site: Site, clock: Callable[[], float] = time.monotonic) -> None:
        # Deliberately not calling super().__init__: it builds pymodbus' own device stores.
        self.site = site
        self.clock = clock
        self.simdevices = []
        self.old_simulator = True  # pymodbus 3.16: "use my async get/set as they are"
        self._devices = {}

    def _check(self, device_id: int, func_code: int) -> ExcCodes | None:
        if device_id not in self.site.devices:
            raise NoSuchIdException(f"unit {device_id} not simulated")
        if func_code not in _REGISTER_FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        return None

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        bad = self._check(device_id, func_code)
        if bad is not None:
            return bad
        try:
            return self.site.read(device_id, address, count)
        except ModbusError as exc:
            return ExcCodes(exc.code)

    async def async_setValues(
        self,
        device_id: int,
        func_code: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        bad = self._check(device_id, func_code)
        if bad is not None:
            return bad
        try:
            self.site.write(device_id, address, [int(v) for v in values], self.clock())
        except ModbusError as exc:
            log.info("unit %d: write %d rejected: %s", device_id, address, exc)
            return ExcCodes(exc.code)
        return None

    def device_ids(self) -> list[int]:
        return self.site.units()


@dataclass
class SimServer:
    """A running simulator; ``port`` is the TCP port (0 for RTU), ``device_path`` the RTU device."""

    site: Site
    port: int = 0
    device_path: str | None = None
    host: str = "127.0.0.1"
    control_port: int | None = None
    """Port of the control channel on 127.0.0.1 once started (None: not served)."""
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _error: list[BaseException] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the server and wait for its thread; safe to call twice."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _run(
    site: Site,
    make_server: Callable[[SiteContext], Any],
    on_ready: Callable[[Any, int | None], None],
    stop: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
    control_port: int | None = None,
) -> None:
    """Serve until ``stop`` is set, stepping the simulation every ``STEP_INTERVAL_S``."""
    server = make_server(SiteContext(site, clock))
    await server.serve_forever(background=True)
    control: asyncio.Server | None = None
    try:
        if control_port is not None:
            control = await asyncio.start_server(
                lambda r, w: _control_client(site, clock, r, w),
                "127.0.0.1",
                control_port,
                limit=CONTROL_LINE_LIMIT,
            )
        site.step(clock())
        on_ready(server, None if control is None else control.sockets[0].getsockname()[1])
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STEP_INTERVAL_S)
            site.step(clock())
    finally:
        if control is not None:
            control.close()
            await control.wait_closed()
        await server.shutdown()


def control_reply(site: Site, line: bytes, now: float) -> dict[str, Any]:
    """The answer to one control-channel line: ``{"ok": true, "state": ...}`` or
    ``{"ok": false, "error": "..."}``; never raises for bad input."""
    try:
        command = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    try:
        return {"ok": True, "state": site.apply(command, now)}
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}


async def _control_client(
    site: Site,
    clock: Callable[[], float],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One control connection: a JSON object per line in, a JSON object per line out."""
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than CONTROL_LINE_LIMIT
                writer.write(b'{"ok": false, "error": "line too long"}\n')
                break
            if not line:
                break
            if not line.strip():
                continue
            reply = control_reply(site, line, clock())
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    except Exception:  # a simulator bug must not kill the server thread
        log.exception("control channel")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def send_control(port: int, command: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Sends one command to a simulator's control channel on 127.0.0.1 and returns its answer
    (blocking; from trio use ``trio.to_thread.run_sync``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(json.dumps(command).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("control channel closed without an answer")
            data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError(f"control channel answered {answer!r}")
    return answer


def _tcp_port(server: Any) -> int:
    sockets = server.transport.sockets
    return int(sockets[0].getsockname()[1])


def _start(
    sim: SimServer,
    make_server: Callable[[SiteContext], Any],
    clock: Callable[[], float] = time.monotonic,
    control_port: int | None = None,
) -> SimServer:
    pymodbus_log = logging.getLogger("pymodbus")
    if pymodbus_log.level == logging.NOTSET:
        # pymodbus reports every request to an absent unit (what a scan does) as an error, with
        # frame dumps; for a simulator those are expected, not news. Configure the logger
        # explicitly to see them.
        pymodbus_log.setLevel(logging.CRITICAL)
    ready = threading.Event()

    def on_ready(server: Any, control: int | None) -> None:
        if sim.device_path is None:
            sim.port = _tcp_port(server)
        sim.control_port = control
        ready.set()

    def thread_main() -> None:
        loop = asyncio.new_event_loop()
        sim._loop = loop
        sim._stop = asyncio.Event()
        try:
            loop.run_until_complete(
                _run(sim.site, make_server, on_ready, sim._stop, clock, control_port)
            )
        except BaseException as exc:
            sim._error.append(exc)
        finally:
            ready.set()
            loop.close()

    sim._thread = threading.Thread(target=thread_main, name="sunspec-sim", daemon=True)
    sim._thread.start()
    ready.wait(timeout=10)
    if sim._error or not ready.is_set() or sim._thread is None or not sim._thread.is_alive():
        sim.stop()
        raise RuntimeError(f"simulator did not start: {sim._error!r}")
    return sim


def serve_tcp(
    site: Site,
    port: int = 0,
    *,
    silent_missing_units: bool = False,
    control_port: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SimServer:
    """Serve ``site`` on 127.0.0.1 (``port=0``: an ephemeral port, see ``.port``).

    Unknown unit ids answer exception 0x0B (gateway target failed), like a gateway; with
    ``silent_missing_units`` they get no answer at all. ``control_port`` (0: any free port, see
    ``.control_port``) also serves the control channel. ``clock`` is the simulation's time
    source (tests pass a fake one to expire revert timers without waiting).
    """

    def make(ctx: SiteContext) -> Any:
        return ModbusTcpServer(
            ctx,
            framer=FramerType.SOCKET,
            address=("127.0.0.1", port),
            ignore_missing_devices=silent_missing_units,
        )

    return _start(SimServer(site), make, clock, control_port)


def serve_rtu(
    site: Site,
    device_path: str,
    baud: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
) -> SimServer:
    """Serve ``site`` as RTU slaves on a serial device (e.g. one end of a socat pty pair).

    Unknown unit ids get no answer, as on a real RS485 bus.
    """

    def make(ctx: SiteContext) -> Any:
        return ModbusSerialServer(
            ctx,
            framer=FramerType.RTU,
            port=device_path,
            baudrate=baud,
            parity=parity,
            stopbits=stopbits,
            bytesize=8,
            ignore_missing_devices=True,
        )

    return _start(SimServer(site, device_path=device_path), make)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: serve a profile until interrupted (TCP on 127.0.0.1, or RTU)."""
    parser = argparse.ArgumentParser(
        prog="python -m dynexport.sim.modbus_server", description=main.__doc__
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fronius_gateway")
    parser.add_argument("--port", type=int, default=5020, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--rtu", metavar="DEVICE", help="serve RTU on this serial device instead")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    parser.add_argument(
        "--control-port",
        type=int,
        metavar="PORT",
        help="also serve the JSON control channel on 127.0.0.1:PORT (0: any; TCP only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    site = PROFILES[args.profile]()
    # Interrupts only set a flag, from before the first line is printed: a caller may stop the
    # server as soon as it has read the address, and the exit is then always clean.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    if args.rtu:
        server = serve_rtu(site, args.rtu, args.baud, args.parity, args.stopbits)
        print(f"serving {args.profile} on {args.rtu} units {site.units()}", flush=True)
    else:
        server = serve_tcp(site, args.port, control_port=args.control_port)
        print(f"serving {args.profile} on 127.0.0.1:{server.port} units {site.units()}", flush=True)
        if server.control_port is not None:
            print(f"control channel on 127.0.0.1:{server.control_port}", flush=True)
    try:
        while not stopping.is_set() and server._thread is not None and server._thread.is_alive():
            stopping.wait(0.5)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
