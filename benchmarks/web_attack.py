"""The web UI under attack from the LAN, with the controller running in the same process.

Runs a real App (two simulated inverters and a meter over Modbus TCP, 1 s control interval, its
web server on 127.0.0.1) and, from a separate attacker process, (1) 200 slow clients sending a
header line every 3 s plus 70 idle ones, then (2) 200 parallel wrong logins from 200 loopback
addresses. For each phase it prints the control cycle period (median, max), how many of a
legitimate client's requests were served, and the service's RSS (baseline, peak). Asserts
nothing (docs/web.md, "Threat model").
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from dynexport.app import App, AppOptions
from dynexport.system.config import parse_config


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- the attacker (its own process, so its memory and CPU are not the service's) --------------


async def _connect(source: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def _slow(port: int, seconds: float) -> None:
    async def one(i: int) -> None:
        end = trio.current_time() + seconds
        while trio.current_time() < end:  # reconnect whenever the server drops it
            try:
                stream = await _connect("127.0.0.2", port)
                async with stream:
                    await stream.send_all(b"GET / HTTP/1.1\r\n")
                    while trio.current_time() < end:
                        await trio.sleep(3)
                        await stream.send_all(f"X-{i}: y\r\n".encode())
            except OSError:
                await trio.sleep(1)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.sleep(0.5)

    async def idle() -> None:
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            try:
                stream = await _connect("127.0.0.4", port)
                async with stream:
                    while trio.current_time() < end:
                        if await stream.receive_some(1) == b"":
                            break
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.sleep(0.5)

    with trio.move_on_after(seconds + 5):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
            for _ in range(70):
                nursery.start_soon(idle)


async def _logins(port: int, rounds: int) -> None:
    body = json.dumps({"password": "a wrong guess"}).encode()
    head = (
        f"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    async def one(i: int) -> None:
        try:
            stream = await _connect(f"127.0.{1 + i // 250}.{1 + i % 250}", port)
            async with stream:
                await stream.send_all(head + body)
                while await stream.receive_some(65536):
                    pass
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    for r in range(rounds):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, r * 200 + i)


def attacker(mode: str, port: int, seconds: float) -> None:
    if mode == "slow":
        trio.run(_slow, port, seconds)
    else:
        trio.run(_logins, port, max(1, int(seconds // 10)))


# -- the service ---------------------------------------------------------------------------------


async def _legit(port: int, count: int, every: float) -> int:
    served = 0
    for _ in range(count):
        try:
            with trio.fail_after(5):
                stream = await _connect("127.0.0.3", port)
                async with stream:
                    await stream.send_all(
                        b"GET /api/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    )
                    reply = b""
                    while chunk := await stream.receive_some(65536):
                        reply += chunk
            served += reply.startswith(b"HTTP/1.1 200 ")
        except (trio.TooSlowError, OSError, trio.BrokenResourceError):
            pass
        await trio.sleep(every)
    return served


async def _phase(
    name: str, app: App, cycles: list[float], attack: list[str] | None, seconds: float
) -> None:
    port = app.web_port or 0
    cycles.clear()
    base = rss_kib()
    peak = base
    proc = None
    if attack is not None:
        command = [sys.executable, __file__, "--attacker", *attack, str(port), str(seconds)]
        proc = await trio.lowlevel.open_process(command)
    served = 0
    async with trio.open_nursery() as nursery:

        async def legit() -> None:
            nonlocal served
            served = await _legit(port, int(seconds / 1.5), 1.5)

        nursery.start_soon(legit)
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            peak = max(peak, rss_kib())
            await trio.sleep(0.05)
    if proc is not None:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
    periods = [b - a for a, b in itertools.pairwise(cycles)]
    med = statistics.median(periods) if periods else float("nan")
    worst = max(periods) if periods else float("nan")
    print(f"{name:<34} cycle period median {med * 1000:6.0f} ms, max {worst * 1000:6.0f} ms; "
          f"legit served {served}/{int(seconds / 1.5)}; RSS {base / 1024:.1f} MiB, "
          f"peak {peak / 1024:.1f} MiB (+{(peak - base) / 1024:.1f})")  # fmt: skip


async def service(seconds: float) -> None:
    from dynexport.sim.modbus_server import serve_tcp
    from dynexport.sim.profiles import fronius_gateway

    with tempfile.TemporaryDirectory() as tmp, serve_tcp(fronius_gateway(tau_s=1.0)) as modbus:
        folder = Path(tmp)
        ep = f"127.0.0.1:{modbus.port}"
        document = {
            "inverters": [{"tcp": ep, "unit": 1}, {"tcp": ep, "unit": 2}],
            "meter": {"tcp": ep, "unit": 240},
            "limits": {"exportW": 3000},
        }
        (folder / "config.json").write_text(json.dumps(document))
        app = App(
            parse_config(document, base_dir=folder),
            AppOptions(
                config_path=folder / "config.json",
                data_dir=folder / "data",
                web_host="127.0.0.1",
                web_port=0,
            ),
        )
        cycles: list[float] = []
        real = app.control_once

        def timed(now: float) -> Any:
            cycles.append(time.monotonic())
            return real(now)

        app.control_once = timed  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await trio.sleep(5)  # links up, first cycles done
            port = app.web_port or 0
            body = json.dumps({"password": "the owner's password"}).encode()
            stream = await _connect("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    b"POST /api/setup/password HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                while await stream.receive_some(65536):
                    pass
            await _phase("no attack", app, cycles, None, seconds)
            await _phase("200 slow + 70 idle clients", app, cycles, ["slow"], seconds)
            await _phase("200 parallel wrong logins, repeated", app, cycles, ["login"], seconds)
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--attacker", nargs=3, metavar=("MODE", "PORT", "SECONDS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.attacker:
        mode, port, seconds = args.attacker
        attacker(mode, int(port), float(seconds))
        return
    print(f"machine: {platform.machine()}, python {platform.python_version()}, pid {os.getpid()}")
    trio.run(service, args.seconds)


if __name__ == "__main__":
    main()
