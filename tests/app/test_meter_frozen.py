"""A meter gateway that keeps answering with its last values, in the whole service against a
simulated site over Modbus TCP (``control/meter_watch.py``).

Before, every poll of the frozen meter succeeded, so it never went stale: frozen near zero while
the export limit was raised to 3 kW, the controller kept raising the inverters towards their full
13 kW, since the export it read never came.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio

from dynexport.control import meter_watch
from dynexport.control.limits import LimitsConfig
from dynexport.web.api import alerts
from tests.app.conftest import make_app, simulated_site, site_config, wait_for, wait_settled

LOAD_W = 500.0


async def test_a_frozen_meter_is_found_and_the_fail_safe_holds_export_within_the_limit(
    tmp_path: Path,
) -> None:
    with simulated_site(load_w=LOAD_W) as sim:
        app = make_app(site_config(sim, extra={"limits": {"exportW": 0}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_settled(sim.export_w, 0.0, 100.0)
            (meter,) = sim.site.meters.values()
            with sim.site.lock:
                meter.frozen = True  # the gateway now serves what it read last
            app.apply_config(dataclasses.replace(app.config, limits=LimitsConfig(export_w=3000.0)))
            await wait_for(lambda: app.status()["site"]["meterFrozen"] is True)
            assert app.status()["site"]["meterOnline"], "every poll still succeeds"
            shown = alerts(app.status(), app.config, 2e9)
            assert "meter-frozen" in {a["code"] for a in shown}
            # The fail-safe: generation within the export limit, safe at zero load.
            await wait_for(lambda: app.status()["control"]["mode"] == "failsafe")
            await wait_settled(lambda: max(sim.export_w(), 0.0), 0.0, 3000.0 - LOAD_W + 100.0)
            assert sim.site.output_w(1) + sim.site.output_w(2) <= 3000.0 + 100.0

            with sim.site.lock:
                meter.frozen = False  # the meter is back
            await wait_for(lambda: app.status()["site"]["meterFrozen"] is False)
            await wait_for(lambda: app.status()["control"]["mode"] == "normal")
            await wait_settled(sim.export_w, 3000.0, 150.0)
            nursery.cancel_scope.cancel()


async def test_a_meter_frozen_while_nothing_moves_is_found_by_its_energy_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site holds 1.5 kW of export, steady, when the gateway freezes: no output moves under
    the reading, so only its energy counters (frozen too) can tell. Found, the fail-safe holds
    generation to the limit, so a load that then falls from 2 kW to 300 W exports no more than
    the limit (the frozen reading would have kept generation at 3.5 kW: 3.2 kW out)."""
    # Shortened so the test does not wait two minutes: still 10 s, 3 Wh through the meter.
    monkeypatch.setattr(meter_watch, "FROZEN_ENERGY_AFTER_S", 10.0)
    monkeypatch.setattr(meter_watch, "FROZEN_ENERGY_WH", 3.0)
    with simulated_site(load_w=2000.0) as sim:
        app = make_app(site_config(sim, extra={"limits": {"exportW": 1500}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_settled(sim.export_w, 1500.0, 100.0)
            assert app.meter is not None and app.meter.state.reading is not None
            assert app.meter.state.reading.export_wh is not None  # the counters are read
            (meter,) = sim.site.meters.values()
            with sim.site.lock:
                meter.frozen = True
            await wait_for(lambda: app.status()["site"]["meterFrozen"] is True)
            assert app.meter_watch.why == "energy"
            await wait_for(lambda: app.status()["control"]["mode"] == "failsafe")
            await wait_for(lambda: sim.site.output_w(1) + sim.site.output_w(2) <= 1500.0)
            sim.site.set_load(300.0)
            exports = []
            for _ in range(6):
                await trio.sleep(0.5)
                exports.append(sim.export_w())
            assert max(exports) <= 1500.0 * 1.04 + 50.0, exports
            with sim.site.lock:
                meter.frozen = False
            await wait_for(lambda: app.status()["control"]["mode"] == "normal")
            nursery.cancel_scope.cancel()
