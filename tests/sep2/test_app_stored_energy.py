"""App.sample gives the utility link the batteries' stored energy (SoC × capacity) as
("der", "Wh"), which the client mirrors for the storage procedures (STO-01); without a battery
nothing is invented. The whole service against the simulated site over Modbus TCP."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dynexport.sim.profiles import battery
from tests.app.conftest import make_app, simulated_site, site_config, wait_for


async def test_the_sample_carries_the_batteries_stored_energy(tmp_path: Path) -> None:
    with simulated_site(load_w=1000.0) as sim:
        bat = battery(soc_pct=40.0, window=True, tau_s=0.3)
        bat.own_mode = "idle"
        sim.site.devices[3] = bat
        config = site_config(
            sim,
            extra={"batteries": [{"tcp": sim.endpoint("main"), "unit": 3,
                                  "convention": "window", "plan": False}]},
        )  # fmt: skip
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: ("der", "Wh") in app.sample(0.0).values, within=20.0)
            devices = app.status()["battery"]["devices"]
            soc, capacity = devices[0]["socPct"], devices[0]["capacityWh"]
            assert capacity == 10000.0
            stored = {tuple(k): v for k, v in app.sample(0.0).values.items()}.get(("der", "Wh"))
            assert stored is not None and stored == pytest.approx(soc / 100.0 * capacity)
            assert 3000.0 < stored < 5000.0  # about 40 % of 10 kWh
            nursery.cancel_scope.cancel()


async def test_without_a_battery_the_sample_has_no_stored_energy(tmp_path: Path) -> None:
    with simulated_site(load_w=1000.0) as sim:
        app = make_app(site_config(sim), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: ("der", "W") in app.sample(0.0).values, within=20.0)
            assert ("der", "Wh") not in app.sample(0.0).values
            nursery.cancel_scope.cancel()


async def test_a_meter_that_stops_answering_is_not_reported_with_its_last_reading(
    tmp_path: Path,
) -> None:
    """The meter link keeps its last reading when the meter goes silent: it was sampled every
    5 s for the whole outage and posted to the utility as real interval readings."""
    with simulated_site(("inverters", "meter"), load_w=1000.0) as sim:
        config = site_config(sim, inverter_servers=("inverters", "inverters"), meter_server="meter")
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: ("site", "W") in app.sample(0.0).values, within=20.0)
            sim.servers["meter"].stop()
            await wait_for(lambda: app.status()["site"]["meterOnline"] is False)
            values = app.sample(0.0).values
            assert not [k for k in values if k[0] == "site"]
            assert ("der", "W") in values  # the inverters still answer
            nursery.cancel_scope.cancel()
