"""SunSpec polling figures against the simulator over Modbus TCP (prints, asserts nothing).

- wall and CPU time of one full fast poll of one inverter plus one meter;
- peak RSS of ``dynexport sunspec scan`` run as a subprocess.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time

import trio

from dynexport.modbus.client import open_bus
from dynexport.modbus.endpoints import TcpEndpoint
from dynexport.sim import profiles
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sunspec.device import SunSpecDevice

ROUNDS = 200


async def fast_polls(port: int) -> None:
    async with open_bus(TcpEndpoint("127.0.0.1", port), timeout=2.0) as bus:
        inv, meter = SunSpecDevice(bus, 1), SunSpecDevice(bus, 240)
        await inv.discover()
        await meter.discover()
        fi, fm = inv.fast_poll_plan, meter.fast_poll_plan
        reads = len(fi.reads) + len(fm.reads)
        regs = fi.registers + fm.registers
        wall: list[float] = []
        cpu: list[float] = []
        for _ in range(ROUNDS):
            w0, c0 = time.perf_counter(), time.process_time()
            await inv.poll_fast()
            await meter.poll_fast()
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        print(f"fast poll inverter+meter: {reads} requests, {regs} registers")
        print(
            f"  wall median {statistics.median(wall) * 1e3:.2f} ms, "
            f"p95 {sorted(wall)[int(ROUNDS * 0.95)] * 1e3:.2f} ms"
        )
        print(f"  CPU (this process) mean {statistics.fmean(cpu) * 1e3:.2f} ms per poll")


def scan_rss(port: int) -> None:
    cmd = [sys.executable, "-m", "dynexport", "sunspec", "scan", "--tcp", f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True, timeout=120)
    took = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        f"dynexport sunspec scan (default units): {took:.2f} s, peak RSS {peak_kib / 1024:.1f} MiB"
    )


def main() -> None:
    with serve_tcp(profiles.fronius_gateway(tau_s=0)) as server:
        assert server.port is not None
        trio.run(fast_polls, server.port)
        scan_rss(server.port)


if __name__ == "__main__":
    main()
