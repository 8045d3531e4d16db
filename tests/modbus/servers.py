"""Real peers for Modbus tests: pymodbus servers in their own thread, socat pty pairs, and
hostile trio peers that misbehave on purpose.

Every peer listens on 127.0.0.1 (or a private pty) and is stopped by the context manager that
started it, so a test cannot leave a server running. Reusable by other test folders (sunspec).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import tty
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import trio
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

HOLDING_BASE = 40000
INPUT_BASE = 30000
REGISTERS = 200


def holding_values(unit: int) -> list[int]:
    """What unit ``unit`` holds at HOLDING_BASE.. (distinct per unit, so a mix-up shows)."""
    return [unit * 1000 + i for i in range(REGISTERS)]


def input_values(unit: int) -> list[int]:
    return [unit * 1000 + 500 + i for i in range(REGISTERS)]


def sim_devices(units: tuple[int, ...] = (1, 2)) -> list[SimDevice]:
    """Devices with separate holding and input register blocks; anything else is illegal."""
    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    return [
        SimDevice(
            id=unit,
            simdata=(
                bits,
                list(bits),
                [SimData(HOLDING_BASE, values=holding_values(unit), datatype=DataType.UINT16)],
                [SimData(INPUT_BASE, values=input_values(unit), datatype=DataType.UINT16)],
            ),
        )
        for unit in units
    ]


class PymodbusServer:
    """A pymodbus server running in a thread with its own asyncio loop.

    ``requests`` counts the requests the server decoded, so tests can check retries are bounded.
    """

    def __init__(self, factory: Callable[[Callable[..., Any]], Any]) -> None:
        self._factory = factory
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pymodbus-server", daemon=True)
        self.requests = 0
        self.port = 0

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.requests += 1
        return pdu

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = self._factory(self._trace_pdu)
        await self._server.serve_forever(background=True)
        sockets = getattr(self._server.transport, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._ready.set()
        await self._server.serving

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("pymodbus server did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"pymodbus server failed to start: {self._error!r}")

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(server.shutdown(), loop)
            fut.result(10)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("pymodbus server thread did not stop")


@contextmanager
def pymodbus_tcp_server(units: tuple[int, ...] = (1, 2)) -> Iterator[PymodbusServer]:
    """A pymodbus Modbus TCP server on 127.0.0.1 with an ephemeral port (``server.port``)."""
    server = PymodbusServer(
        lambda trace: ModbusTcpServer(sim_devices(units), address=("127.0.0.1", 0), trace_pdu=trace)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def pymodbus_rtu_server(
    device: str, baud: int = 115200, units: tuple[int, ...] = (1, 2)
) -> Iterator[PymodbusServer]:
    """A pymodbus RTU server on one end of a pty pair."""
    server = PymodbusServer(
        lambda trace: ModbusSerialServer(
            sim_devices(units),
            framer=FramerType.RTU,
            port=device,
            baudrate=baud,
            trace_pdu=trace,
        )
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def socat_pty_pair() -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals (``socat pty,raw,echo=0 pty,raw,echo=0``); socat is stopped
    on exit."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed (apt-get install socat)")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                # pread: socat writes through the same file description, so a seek here would
                # move its write position and its next line would overwrite the first PTY line
                fd = log.fileno()
                text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
                ptys = re.findall(r"PTY is (\S+)", text)
                if len(ptys) == 2 and "starting data transfer loop" in text:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"socat did not make a pty pair: {text!r}")
                time.sleep(0.01)
            yield ptys[0], ptys[1]
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextmanager
def raw_pty(path: str) -> Iterator[trio.lowlevel.FdStream]:
    """The far end of a pty pair as a raw trio stream, for peers that write bytes by hand."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    stream = trio.lowlevel.FdStream(fd)
    try:
        yield stream
    finally:
        stream.close()


Handler = Callable[[trio.abc.Stream, bytes, "HostilePeer"], Awaitable[None]]


class HostilePeer:
    """Counts what a hand-written peer saw; ``port`` is its TCP port (TCP peers only)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0


async def _serve_requests(
    stream: trio.abc.Stream, peer: HostilePeer, handler: Handler, frame_size: Callable[[bytes], int]
) -> None:
    buffer = b""
    while True:
        data = await stream.receive_some(1024)
        if not data:
            return
        buffer += data
        while buffer and len(buffer) >= (size := frame_size(buffer)):
            request, buffer = buffer[:size], buffer[size:]
            peer.requests.append(request)
            await handler(stream, request, peer)


def tcp_request_size(buffer: bytes) -> int:
    return 6 + int.from_bytes(buffer[4:6], "big") if len(buffer) >= 6 else 1 << 30


def rtu_request_size(buffer: bytes) -> int:
    """Requests for functions 3, 4 and 6 are 8 bytes; 16 carries a byte count at offset 6."""
    if len(buffer) >= 2 and buffer[1] == 16:
        return 9 + buffer[6] if len(buffer) >= 7 else 1 << 30
    return 8


@asynccontextmanager
async def hostile_tcp_peer(handler: Handler) -> AsyncIterator[HostilePeer]:
    """A TCP peer on 127.0.0.1 that answers each request through ``handler``."""
    peer = HostilePeer()

    async def connection(stream: trio.SocketStream) -> None:
        peer.connections += 1
        try:
            async with stream:
                await _serve_requests(stream, peer, handler, tcp_request_size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, connection, 0, host="127.0.0.1"))
        peer.port = listeners[0].socket.getsockname()[1]
        yield peer
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def hostile_rtu_peer(path: str, handler: Handler) -> AsyncIterator[HostilePeer]:
    """A peer on the far end of a pty pair that answers each RTU request through ``handler``."""
    peer = HostilePeer()
    with raw_pty(path) as stream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_requests, stream, peer, handler, rtu_request_size)
            yield peer
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------
# Hand-built answers for hostile peers (CRC computed here, independently of the code under test)


def crc16_modbus(data: bytes) -> bytes:
    """The Modbus RTU CRC as it goes on the wire (low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def read_answer_pdu(function: int, registers: list[int]) -> bytes:
    return bytes([function, 2 * len(registers)]) + b"".join(r.to_bytes(2, "big") for r in registers)


def tcp_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return (
        tid.to_bytes(2, "big") + b"\0\0" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu
    )


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16_modbus(body)
