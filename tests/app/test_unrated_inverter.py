"""An inverter whose rating cannot be read, in the whole service against a simulated site: the
law gives it no limit (a percentage of nothing), only a disconnect; once the site may connect
again, it is connected again (its link rewrote the disconnect for good before)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from dynexport.control.limits import LimitsConfig
from tests.app.conftest import make_app, simulated_site, site_config, wait_for


async def test_an_inverter_without_a_rating_is_disconnected_and_connected_again(
    tmp_path: Path,
) -> None:
    with simulated_site(load_w=500.0) as sim:
        dev = sim.site.devices[1]
        for mid, sf in ((120, "WRtg_SF"), (121, "WMax_SF")):
            if dev.has(mid):
                dev.set(mid, sf, None)  # its rating reads "not implemented"
        app = make_app(site_config(sim, extra={"limits": {"exportW": 20000}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["inverters"][0]["skipped"] == "no rating")
            limits = LimitsConfig(export_w=20000.0, connect=False)
            app.apply_config(dataclasses.replace(app.config, limits=limits))
            await wait_for(lambda: sim.site.get(1, 123, "Conn") == 0)
            app.apply_config(dataclasses.replace(app.config, limits=LimitsConfig(export_w=20000.0)))
            await wait_for(lambda: sim.site.get(1, 123, "Conn") == 1)
            await wait_for(lambda: sim.site.output_w(1) > 1000.0)
            nursery.cancel_scope.cancel()
