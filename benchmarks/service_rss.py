"""Memory of ``dynexport run`` with two inverters, a meter and the utility link, over time.

Starts the simulated site (Modbus TCP) and the simulated utility (mutual TLS) as their own
processes on 127.0.0.1, writes an installer-style configuration, runs the service for
``--minutes`` (default 10, the figure the goal is set for: at most 45 MB), and prints its
resident set size (VmRSS) and CPU use every ``--every`` seconds, with the two simulators' RSS
beside it (the demo runs them too, so their growth matters).

Every process runs a snapshot of ``src/dynexport`` copied to a scratch folder (so edits made
during a two-hour soak do not change what is measured). The appliance's image ships compiled
bytecode (``compileall`` at build time, read-only root), so the snapshot is compiled first and
run from its ``.pyc`` files, even where ``PYTHONDONTWRITEBYTECODE`` is set, as it is on the build
machine; ``--from-source`` measures without them (every module compiled at every start).

``--json`` adds one summary line for scripts; ``--modules FILE`` writes the modules the service
imported (from ``-X importtime``), so a heavy import that slipped onto the runtime path shows.
Stops what it started; asserts nothing.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_listening(port: int, proc: subprocess.Popen[bytes], within_s: float) -> None:
    """Returns once 127.0.0.1:``port`` accepts; raises if the server exits or never listens."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {within_s:.0f} s")


def imported_modules(importtime_log: str) -> list[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = []
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                names.append(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    parser.add_argument(
        "--modules", type=Path, help="write the modules the service imported to this file"
    )
    parser.add_argument(
        "--from-source", action="store_true", help="no bytecode cache: compile at every start"
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=60,
        help="the utility's poll and post rates and seconds per limit step (default 60; "
        "smaller: an accelerated soak, more traffic per hour)",
    )
    parser.add_argument(
        "--src",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "src" / "dynexport",
        help="the dynexport package to measure (default: this checkout's; for A/B comparisons)",
    )
    args = parser.parse_args()
    machine = f"{platform.machine()}, python {platform.python_version()}"
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "from source" if args.from_source else "from bytecode"
    mode += f", utility rates {args.rate} s"
    print(f"machine: {machine}, {os.cpu_count()} cores; {mode}; started {started_at}", flush=True)
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    samples: list[dict[str, float]] = []
    exit_note = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        modbus_port, utility_port, web_port = free_port(), free_port(), free_port()
        stderr_log: IO[bytes] | None = None
        repo = Path(__file__).resolve().parents[1]
        snapshot = folder / "src"
        shutil.copytree(
            args.src,
            snapshot / "dynexport",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(snapshot), env.get("PYTHONPATH")]))
        env.setdefault("DYNEXPORT_WHEELS", str(repo / "build" / "wheels"))  # the XSD
        if args.from_source:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            compileall.compile_dir(snapshot, quiet=1)

        def spawn(*argv: str, stderr: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL, env=env
            )
            procs.append(proc)
            return proc

        try:
            site = spawn(py, "-m", "dynexport.sim.modbus_server", "--profile", "fronius_gateway",
                         "--port", str(modbus_port))  # fmt: skip
            utility = spawn(py, "-m", "dynexport.sim.utility_server", "--pki", str(folder / "pki"),
                            "--port", str(utility_port), "--step", "5000,1500,0",
                            "--every", str(args.rate), "--poll-rate", str(args.rate),
                            "--post-rate", str(args.rate))  # fmt: skip
            wait_listening(modbus_port, site, 60.0)
            wait_listening(utility_port, utility, 60.0)  # its PKI is written before it listens
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
                "web": {"host": "127.0.0.1", "port": web_port},
            }
            (folder / "config.json").write_text(json.dumps(config))
            flags = ["-X", "importtime"] if args.modules else []
            if args.modules:
                stderr_log = (folder / "service.err").open("wb")
            service = spawn(py, *flags, "-m", "dynexport", "run", "--config",
                            str(folder / "config.json"), "--data", str(folder / "data"),
                            stderr=stderr_log)  # fmt: skip
            start = time.monotonic()
            print(f"{'minute':>6}  {'RSS MiB':>8}  {'CPU % of one core':>17}  "
                  f"{'site sim MiB':>12}  {'utility sim MiB':>15}", flush=True)  # fmt: skip
            last_cpu, last_t = 0.0, start
            while time.monotonic() - start < args.minutes * 60:
                time.sleep(min(args.every, args.minutes * 60))
                if service.poll() is not None:
                    exit_note = f"the service exited with {service.returncode}"
                    print(exit_note, flush=True)
                    break
                now, used = time.monotonic(), cpu_s(service.pid)
                share = 100 * (used - last_cpu) / (now - last_t)
                last_cpu, last_t = used, now
                sample = {
                    "minute": round((now - start) / 60, 2),
                    "rss_mib": round(rss_kib(service.pid) / 1024, 2),
                    "cpu_percent": round(share, 2),
                    "site_sim_mib": round(rss_kib(site.pid) / 1024, 2),
                    "utility_sim_mib": round(rss_kib(utility.pid) / 1024, 2),
                }
                samples.append(sample)
                print(f"{sample['minute']:6.1f}  {sample['rss_mib']:8.1f}  {share:17.1f}  "
                      f"{sample['site_sim_mib']:12.1f}  {sample['utility_sim_mib']:15.1f}",
                      flush=True)  # fmt: skip
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if stderr_log is not None:
                stderr_log.close()
                names = imported_modules((folder / "service.err").read_text("utf-8", "replace"))
                assert args.modules is not None
                args.modules.write_text("".join(f"{n}\n" for n in names))
                print(f"{len(names)} modules imported: {args.modules}", flush=True)
    if args.json:
        summary: dict[str, Any] = {
            "machine": machine,
            "mode": mode,
            "started": started_at,
            "minutes": args.minutes,
            "samples": samples,
            "exit": exit_note,
        }
        if samples:
            first, last = samples[0], samples[-1]
            summary["rss_first_mib"] = first["rss_mib"]
            summary["rss_last_mib"] = last["rss_mib"]
            summary["growth_mib"] = round(last["rss_mib"] - first["rss_mib"], 2)
            for sim in ("site_sim_mib", "utility_sim_mib"):
                summary[f"{sim[:-4]}_growth_mib"] = round(last[sim] - first[sim], 2)
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
