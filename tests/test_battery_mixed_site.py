"""Issue #13's mixed site, the whole service against the simulated site over Modbus TCP: a
Fronius GEN24-style hybrid (its DC battery behind its AC output, read from model 160's
StCha/StDisCha modules, controlled through model 124) beside a plain 8.2 kW inverter, 1 kW load,
export limit 1.5 kW.

Before: the hybrid's battery charged 5 kW from 4 kW of its PV (its AC output −1 kW), the split
gave the hybrid its 400 W headroom it could not use, and the plain inverter was held at 2.08 kW:
the site exported +80 W of its 1.5 kW. Now the hybrid's battery charges its own PV (plus
``hybrid_band_w``), the hybrid is given its AC output (0 %), and the rest of the budget goes to
the plain inverter: export settles at L − margin − band (1330 W). See docs/control.md,
"Hybrid inverters".

Bounds: export within L·1.04 + 50 W (the utility's tolerance) and above L − 250 W: the law aims
the margin (20 W) below the limit, the hybrid's battery charges up to 150 W past its PV (to find
hidden sun), and 80 W is left for the meter's and the inverters' reading noise and register
rounding."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport.app import App
from dynexport.sim.profiles import gen24
from dynexport.sim.sunspec_device import Hybrid
from tests.app.conftest import (
    SimSite,
    make_app,
    simulated_site,
    site_config,
    wait_for,
    wait_settled,
)

LIMIT = 1500.0
ALLOWED = LIMIT * 1.04 + 50.0
FLOOR = LIMIT - 250.0


def mixed_site(sim: SimSite, hybrid_pv_w: float, other_pv_w: float, soc_pct: float) -> Hybrid:
    hybrid = gen24(soc_pct=soc_pct, available_w=hybrid_pv_w, tau_s=0.3)
    hybrid.own_mode = "idle"  # nothing but dynexport makes it charge
    sim.site.devices[1] = hybrid
    sim.site.set_available(2, other_pv_w)
    return hybrid


def mixed_app(sim: SimSite, tmp_path: Path) -> App:
    main = sim.endpoint("main")
    config = site_config(
        sim,
        extra={
            "limits": {"exportW": LIMIT},
            "batteries": [{"tcp": main, "unit": 1, "convention": "window", "plan": False}],
        },
    )
    return make_app(config, tmp_path)


async def settled_while_seeing(
    app: App, sim: SimSite, target: float = LIMIT - 20.0, within: float = 30.0, tries: int = 5
) -> list[float]:
    """Export settled near the limit, then sampled over 4 s in which the controller saw the
    site throughout (mode normal). A window in which it went to its fail-safe (its meter reading
    older than ``meterStaleS``: on a loaded CI machine the test process itself was starved for
    seconds, and export dropped to the fail-safe's, as it should) is settled and sampled again;
    the fail-safe itself is judged by its own tests."""
    modes: set[str | None] = set()
    for _ in range(tries):
        await wait_settled(sim.export_w, target, 80.0, within=within)
        exports, modes = [], set()
        for _ in range(8):
            await trio.sleep(0.5)
            exports.append(sim.export_w())
            modes.add(app.output.mode if app.output is not None else None)
        if modes == {"normal"}:
            return exports
    raise AssertionError(f"no 4 s in normal mode in {tries} tries (last: {modes})")


def inverter(app: App, n: int) -> dict[str, Any]:
    found: dict[str, Any] = app.status()["inverters"][n]
    return found


async def test_the_mixed_site_uses_its_export_limit_while_the_hybrid_stores_its_own_pv(
    tmp_path: Path,
) -> None:
    """The finding: GEN24 with 4 kW of sun and a 5 kW battery, the other inverter with 3 kW.
    Export settles near 1.5 kW (was +80 W), the hybrid's PV is not cut (its battery takes all
    of it), the hybrid is given 0 %, and only the part of the other's PV that neither the
    limit nor the hybrid's battery (on its DC side) can take is curtailed."""
    with simulated_site(load_w=1000.0) as sim:
        hybrid = mixed_site(sim, 4000.0, 3000.0, soc_pct=40.0)
        app = mixed_app(sim, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            exports = await settled_while_seeing(app, sim, LIMIT - 170.0, within=40.0)
            assert min(exports) >= FLOOR and max(exports) <= ALLOWED, exports
            assert hybrid.output_w > 3950.0  # its 4 kW of sun, not cut
            assert -hybrid.power_w > 3950.0  # all of it into its battery
            assert -hybrid.power_w < 4000.0 + 200.0  # not the other's PV through its AC side
            assert inverter(app, 0)["limitPct"] <= 0.5  # its AC output (≤ 0) + 150 W: ~0 %
            assert sim.site.output_w(2) > 2400.0  # the rest of the budget: L + load − margin
            st = app.status()["battery"]
            assert st["mode"] == "engaged" and "export limit" in st["reason"]
            nursery.cancel_scope.cancel()


async def test_a_shaded_hybrid_never_charges_its_battery_from_the_export_allowance(
    tmp_path: Path,
) -> None:
    """GEN24 with 2 kW of sun, the other with 6 kW. Before, the push (the other is held)
    charged the GEN24's battery 3.4 kW through its AC side: the site imported 300 W while
    3.9 kW of the other's PV was cut. Now the battery takes the GEN24's own PV (plus the band)
    and export settles near the limit."""
    with simulated_site(load_w=1000.0) as sim:
        hybrid = mixed_site(sim, 2000.0, 6000.0, soc_pct=40.0)
        app = mixed_app(sim, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            exports = await settled_while_seeing(app, sim, LIMIT - 170.0, within=40.0)
            assert min(exports) >= FLOOR and max(exports) <= ALLOWED, exports
            assert 1950.0 < -hybrid.power_w < 2000.0 + 200.0
            assert hybrid.output_w > 1950.0
            nursery.cancel_scope.cancel()


BLIND_BEFORE_S = 2.0
"""A Modbus request is logged as failed when its 1 s timeout ran out: the controller had seen
nothing of the site since up to this long before the log record."""
BLIND_AFTER_S = 5.0
"""How long after such a record the site may still show the moments the controller missed: the
next poll, the next decision and the plant's lag (τ 0.3 s) to the new limit."""


def blind_windows(records: list[logging.LogRecord]) -> list[tuple[float, float]]:
    """Wall-clock spans in which the controller could not see the site: around every Modbus
    request that went unanswered (retried, or a link gone offline). On a loaded machine the
    simulator, a thread of the test's own process, can be starved for more than the 1 s a request
    waits (seen once in CI with two qemu VMs beside the suite)."""
    return [
        (r.created - BLIND_BEFORE_S, r.created + BLIND_AFTER_S)
        for r in records
        if r.name.startswith(("dynexport.modbus", "dynexport.sunspec"))
        and ("failed" in r.getMessage() or "no answer" in r.getMessage())
    ]


async def test_a_filling_hybrid_battery_hands_over_to_curtailment_without_an_overshoot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A small GEN24 battery (1 kWh) at 97 % on the finding's site fills up under the limit.
    Before, its charge was held at its rate until its BMS stopped it at 100 % in one step,
    faster than the GEN24's PV could come down to its limit (export 2.3 kW against the
    1.61 kW allowed, for a moment); now the charge follows the SoC taper (a hybrid
    held at its limit cannot raise export by charging less), export stays within the limit
    throughout, and ends curtailed near the limit with the battery idle.

    "Throughout" is while the controller can see the site: a moment over the limit is excused
    only within a blind window (``blind_windows``) around a Modbus request the simulator did
    not answer in time; in a run where every request was answered, none is."""
    with simulated_site(load_w=1000.0) as sim, caplog.at_level(logging.INFO, logger="dynexport"):
        hybrid = gen24(soc_pct=97.0, available_w=4000.0, tau_s=0.3, capacity_wh=1000.0)
        hybrid.own_mode = "idle"
        sim.site.devices[1] = hybrid
        sim.site.set_available(2, 3000.0)
        app = mixed_app(sim, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["battery"]["mode"] == "engaged", within=20.0)
            await wait_for(lambda: sim.export_w() <= ALLOWED, within=10.0)
            exports: list[tuple[float, float]] = []

            def full_and_settled() -> bool:
                exports.append((time.time(), sim.export_w()))
                return hybrid.soc_pct >= 99.9 and abs(hybrid.power_w) < 50.0

            # The taper makes the last per cent slow (about a minute here, more on a loaded
            # machine): a generous bound, since only the export along the way is judged.
            await wait_for(full_and_settled, within=300.0)
            blind = blind_windows(caplog.records)
            over = [(t, e) for t, e in exports if e > ALLOWED]
            unexcused = [(t, e) for t, e in over if not any(a <= t <= b for a, b in blind)]
            assert not unexcused, (unexcused[:5], len(over), blind[:5])
            settled = await settled_while_seeing(app, sim)
            assert min(settled) >= FLOOR and max(settled) <= ALLOWED, settled
            assert hybrid.output_w < 2000.0 and sim.site.output_w(2) < 2000.0  # curtailed
            nursery.cancel_scope.cancel()


async def test_a_hybrid_battery_that_drops_out_leaves_export_held_by_curtailment(
    tmp_path: Path,
) -> None:
    """Settled as in the finding, then the GEN24's battery drops out (it stops, and model 160's
    storage modules read not-implemented): the law sees no battery, the hybrid is an inverter
    like the other, and export is held by curtailment within the limit.

    Excused, as for any battery the law does not command (docs/control.md, "Safety rules with
    a battery"): the fraction of a second in which the stopping battery's charge turns into AC
    output before the GEN24's PV comes down to its 0 % limit (up to about 0.37 × the charge in
    the simulator, PV and battery lagging with the same τ): like a load falling, no controller
    can see it coming. From 3 s after the drop export is within the limit."""
    with simulated_site(load_w=1000.0) as sim:
        hybrid = mixed_site(sim, 4000.0, 3000.0, soc_pct=40.0)
        app = mixed_app(sim, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_settled(sim.export_w, LIMIT - 170.0, 80.0, within=40.0)
            with sim.site.lock:
                hybrid.battery_fault = True
            dropped = trio.current_time()
            exports: list[tuple[float, float]] = []

            def watch() -> bool:
                exports.append((trio.current_time() - dropped, sim.export_w()))
                return exports[-1][0] > 10.0 and app.status()["battery"]["mode"] == "offline"

            await wait_for(watch, within=20.0)
            after = [w for t, w in exports if t >= 3.0]
            assert max(after) <= ALLOWED, max(after)
            settled = await settled_while_seeing(app, sim)
            assert min(settled) >= FLOOR and max(settled) <= ALLOWED, settled
            assert abs(hybrid.power_w) < 50.0
            assert hybrid.output_w > 500.0  # its PV now goes out through its AC share
            nursery.cancel_scope.cancel()
