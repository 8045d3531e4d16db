"""Closed-loop figures of the whole service against the simulated site over Modbus TCP.

For each SAPN step (10000 → 7500 → 5000 → 1500 → 500 → 0 W) prints the time from the new limit to
export within tolerance (±4 %, at least 100 W), the overshoot beyond the limit after that, and the
steady-state error over the last seconds of the hold; then the CPU time per control cycle. The
simulated inverters follow their limit with a first-order lag (``--tau``, default 1 s, about a
Fronius Primo's response). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

import trio

from dynexport.app import App, AppOptions
from dynexport.control.limits import LimitsConfig
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway
from dynexport.system.config import parse_config
from dynexport.system.watchdog import Notifier

STEPS_W = (10000.0, 7500.0, 5000.0, 1500.0, 500.0, 0.0)


def tolerance(limit: float) -> float:
    return max(0.04 * limit, 100.0)


async def run(tau: float, hold: float) -> None:
    site = fronius_gateway(load_w=1000.0, tau_s=tau)
    site.set_available(1, 5000.0)
    site.set_available(2, 8200.0)
    with serve_tcp(site) as sim, tempfile.TemporaryDirectory() as tmp:
        ep = f"127.0.0.1:{sim.port}"
        config = parse_config(
            {
                "inverters": [{"tcp": ep, "unit": 1}, {"tcp": ep, "unit": 2}],
                "meter": {"tcp": ep, "unit": 240},
                "limits": {"exportW": STEPS_W[0]},
            }
        )
        app = App(config, AppOptions(data_dir=Path(tmp), notifier=Notifier()))
        cycles = 0
        cpu = 0.0
        original = app.control_once

        def timed(now: float):  # type: ignore[no-untyped-def]
            nonlocal cycles, cpu
            t0 = time.thread_time()
            out = original(now)
            cpu += time.thread_time() - t0
            cycles += 1
            return out

        app.control_once = timed  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await trio.sleep(hold * 2)  # start-up and the first limit
            print(f"{'step':>16}  {'settle s':>8}  {'overshoot W':>11}  {'steady err W':>12}")
            previous = STEPS_W[0]
            for limit in STEPS_W[1:]:
                app.apply_config(
                    dataclasses.replace(app.config, limits=LimitsConfig(export_w=limit))
                )
                t0 = trio.current_time()
                settle: float | None = None
                samples: list[tuple[float, float]] = []
                while trio.current_time() - t0 < hold:
                    await trio.sleep(0.1)
                    t = trio.current_time() - t0
                    export = -site.site_w()
                    samples.append((t, export))
                    if settle is None and abs(export - limit) <= tolerance(limit):
                        settle = t
                after = [e for t, e in samples if settle is not None and t >= settle]
                overshoot = max((e - limit for e in after), default=float("nan"))
                tail = [e for t, e in samples if t >= hold - 3.0]
                error = statistics.fmean(tail) - limit
                shown = "never" if settle is None else f"{settle:.1f}"
                name = f"{previous:.0f}→{limit:.0f}"
                print(f"{name:>16}  {shown:>8}  {max(overshoot, 0):11.0f}  {error:12.0f}")
                previous = limit
            nursery.cancel_scope.cancel()
        print(f"control cycles: {cycles}, CPU per cycle (law + bookkeeping): "
              f"{1e6 * cpu / max(cycles, 1):.0f} µs")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tau", type=float, default=1.0, help="inverter lag time constant, s")
    parser.add_argument("--hold", type=float, default=12.0, help="seconds per step")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}; "
          f"inverter lag tau {args.tau} s; control interval 1 s")  # fmt: skip
    trio.run(run, args.tau, args.hold)


if __name__ == "__main__":
    main()
