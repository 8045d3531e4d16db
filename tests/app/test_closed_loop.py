"""The whole service against a simulated site over Modbus TCP: export follows each limit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from dynexport.control.limits import LimitsConfig
from tests.app.conftest import (
    make_app,
    simulated_site,
    site_config,
    wait_for,
    wait_settled,
)

SAPN_STEPS_W = (10000.0, 7500.0, 5000.0, 1500.0, 500.0, 0.0)


def tolerance_w(limit_w: float) -> float:
    """±4 % of the limit (SAPN test procedure 5.2.1), and never tighter than the 100 W
    measurement accuracy CSIP-AUS allows (which is what matters at 500 W and 0 W)."""
    return max(0.04 * limit_w, 100.0)


async def test_sapn_step_sequence_export_settles_within_tolerance_well_inside_15_s(
    tmp_path: Path,
):
    with simulated_site() as sim:
        config = site_config(sim, extra={"limits": {"exportW": SAPN_STEPS_W[0]}})
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            # Start-up: generation rises gently from the fail-safe to the first limit.
            first = SAPN_STEPS_W[0]
            await wait_settled(sim.export_w, first, tolerance_w(first))
            for limit in SAPN_STEPS_W[1:]:
                app.apply_config(
                    dataclasses.replace(app.config, limits=LimitsConfig(export_w=limit))
                )
                stepped = trio.current_time()
                # Within 8 s of the step (the requirement is 15 s) export is within tolerance...
                ceiling = limit + tolerance_w(limit)
                await wait_for(lambda: sim.export_w() <= ceiling, within=8.0)  # noqa: B023
                settled_after = trio.current_time() - stepped
                # ...and it stays there (never above, whatever happens), close to the limit rather
                # than far below it while the controller sees the site: a window in which it went
                # to its fail-safe (its meter reading stale: on a loaded CI machine the test
                # process itself was starved for seconds, and export fell to the fail-safe's, as
                # it should) is settled and sampled again; the fail-safe has its own tests.
                for _ in range(5):
                    exports, modes = [], set()
                    for _ in range(8):
                        await trio.sleep(0.5)
                        exports.append(sim.export_w())
                        modes.add(app.output.mode if app.output is not None else None)
                    assert max(exports) <= limit + tolerance_w(limit), (limit, exports)
                    if modes == {"normal"}:
                        break
                    await wait_settled(sim.export_w, limit, tolerance_w(limit))
                else:
                    raise AssertionError(f"no 4 s in normal mode at {limit} W (last: {modes})")
                assert min(exports) >= limit - tolerance_w(limit) - 0.01 * limit, (limit, exports)
                assert settled_after < 8.0
                assert app.status()["limits"]["source"]["export_w"] == "config"
            nursery.cancel_scope.cancel()


async def test_load_jump_is_followed_without_exceeding_the_limit_for_long(tmp_path: Path):
    with simulated_site(load_w=500.0) as sim:
        app = make_app(site_config(sim, extra={"limits": {"exportW": 3000}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_settled(sim.export_w, 3000, tolerance_w(3000))
            sim.site.set_load(4000.0)  # a kettle and an oven: more generation is allowed
            await wait_for(lambda: app.status()["der"]["powerW"] > 6000)
            await wait_for(lambda: abs(sim.export_w() - 3000) <= tolerance_w(3000))
            sim.site.set_load(300.0)  # and off again: generation must come down at once
            await wait_for(lambda: sim.export_w() <= 3000 + tolerance_w(3000), within=6.0)
            nursery.cancel_scope.cancel()


async def test_generation_limit_caps_total_inverter_output(tmp_path: Path):
    with simulated_site(load_w=5000.0) as sim:
        config = site_config(sim, extra={"limits": {"generationW": 4000}})
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(
                lambda: sim.site.output_w(1) + sim.site.output_w(2) <= 4000 + tolerance_w(4000)
            )
            status = app.status()
            assert status["limits"]["generationW"] == 4000
            # split in proportion to rated W: both inverters get the same percentage
            pcts = [inv["limitPct"] for inv in status["inverters"]]
            assert pcts[0] is not None and pcts[0] == pcts[1]
            nursery.cancel_scope.cancel()
