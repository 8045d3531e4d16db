"""Memory of ``dynexport run`` with two inverters, a meter and the utility link, over time.

Starts the simulated site (Modbus TCP) and the simulated utility (mutual TLS) as their own
processes on 127.0.0.1, writes an installer-style configuration, runs the service for
``--minutes`` (default 10, the figure the goal is set for: under 50 MB), and prints its resident
set size (VmRSS) and CPU use every ``--every`` seconds. Stops what it started; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=60.0)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        modbus_port, utility_port = free_port(), free_port()

        def spawn(*argv: str) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            return proc

        try:
            spawn(py, "-m", "dynexport.sim.modbus_server", "--profile", "fronius_gateway",
                  "--port", str(modbus_port))  # fmt: skip
            spawn(py, "-m", "dynexport.sim.utility_server", "--pki", str(folder / "pki"),
                  "--port", str(utility_port), "--step", "5000,1500,0", "--every", "60",
                  "--poll-rate", "60", "--post-rate", "60")  # fmt: skip
            time.sleep(4.0)  # the PKI is made and both servers listen
            ep = f"127.0.0.1:{modbus_port}"
            config = {
                "inverters": [{"tcp": ep, "unit": 1}, {"tcp": ep, "unit": 2}],
                "meter": {"tcp": ep, "unit": 240},
                "utility": {
                    "server": f"https://127.0.0.1:{utility_port}",
                    "ca": str(folder / "pki" / "serca.pem"),
                    "cert": str(folder / "pki" / "device-chain.pem"),
                    "key": str(folder / "pki" / "device-key.pem"),
                    "nmi": "4312345678",
                    "pin": 111115,
                },
                "web": {"host": "127.0.0.1", "port": free_port()},
            }
            (folder / "config.json").write_text(json.dumps(config))
            service = spawn(py, "-m", "dynexport", "run", "--config", str(folder / "config.json"),
                            "--data", str(folder / "data"))  # fmt: skip
            start = time.monotonic()
            print(f"{'minute':>6}  {'RSS MiB':>8}  {'CPU % of one core':>17}")
            last_cpu, last_t = 0.0, start
            while time.monotonic() - start < args.minutes * 60:
                time.sleep(min(args.every, args.minutes * 60))
                if service.poll() is not None:
                    print(f"the service exited with {service.returncode}")
                    break
                now, used = time.monotonic(), cpu_s(service.pid)
                share = 100 * (used - last_cpu) / (now - last_t)
                last_cpu, last_t = used, now
                print(f"{(now - start) / 60:6.1f}  {rss_kib(service.pid) / 1024:8.1f}  "
                      f"{share:17.1f}")  # fmt: skip
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
