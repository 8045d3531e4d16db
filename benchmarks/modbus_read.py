"""Latency and CPU time per 50-register read, Modbus TCP and RTU (prints figures, asserts nothing).

TCP: a pymodbus server on 127.0.0.1. RTU: a pymodbus RTU server on one end of a socat pty pair
at 115200 baud (a pty does not pace bytes like a real line: at 115200 baud a 105-byte answer
alone takes about 9 ms on RS485). The servers run in a thread of this process, so CPU time is
measured with ``time.thread_time`` on the trio thread (the client only); ``process_time`` would
add the server's work. Usage: ``python benchmarks/modbus_read.py [TCP_READS [RTU_READS]]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.modbus.servers

import trio
from tests.modbus.servers import (
    HOLDING_BASE,
    pymodbus_rtu_server,
    pymodbus_tcp_server,
    socat_pty_pair,
)

from dynexport.modbus.client import open_bus
from dynexport.modbus.endpoints import Endpoint, SerialEndpoint, TcpEndpoint


async def measure(endpoint: Endpoint, reads: int) -> tuple[list[float], list[float]]:
    wall: list[float] = []
    cpu: list[float] = []
    async with open_bus(endpoint, timeout=2.0) as bus:
        await bus.read_holding_registers(1, HOLDING_BASE, 50)  # connect and settle first
        for _ in range(reads):
            w0, c0 = time.perf_counter(), time.thread_time()
            await bus.read_holding_registers(1, HOLDING_BASE, 50)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - w0)
    return wall, cpu


def report(name: str, wall: list[float], cpu: list[float]) -> None:
    wall_ms = sorted(w * 1000 for w in wall)
    p95 = wall_ms[min(len(wall_ms) - 1, int(0.95 * len(wall_ms)))]
    print(
        f"{name}: {len(wall)} reads of 50 registers: median {statistics.median(wall_ms):.3f} ms, "
        f"p95 {p95:.3f} ms, client CPU {statistics.mean(cpu) * 1e6:.0f} µs per read"
    )


def main() -> int:
    tcp_reads = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rtu_reads = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    with pymodbus_tcp_server() as server:
        wall, cpu = trio.run(measure, TcpEndpoint("127.0.0.1", server.port), tcp_reads)
    report("modbus tcp (127.0.0.1)", wall, cpu)
    with socat_pty_pair() as (server_end, client_end), pymodbus_rtu_server(server_end, 115200):
        wall, cpu = trio.run(measure, SerialEndpoint(client_end, 115200, "N", 1), rtu_reads)
    report("modbus rtu (socat pty, 115200 baud)", wall, cpu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
