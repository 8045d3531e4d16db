"""An inverter that answers but whose output cannot be read, in the whole service against a
simulated site over Modbus TCP: it is still brought down when the export limit falls.

Before, the law gave it no command while its device link kept rewriting its last limit (before
each revert), so a lower export limit was met only as far as the other inverter could make
room: here the site kept exporting about 3.5 kW over a 0 W limit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from dynexport.control.limits import LimitsConfig
from dynexport.web.api import alerts
from tests.app.conftest import make_app, simulated_site, site_config, wait_for, wait_settled

TOLERANCE_W = 100.0


async def test_an_inverter_whose_power_cannot_be_read_still_follows_a_lower_limit(
    tmp_path: Path,
) -> None:
    with simulated_site(load_w=500.0) as sim:
        app = make_app(site_config(sim, extra={"limits": {"exportW": 10000}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: sim.export_w() > 8000)  # the sun, unlimited
            # Inverter 1's power scale factor turns "not implemented": W cannot be read.
            sim.site.devices[1].set(103, "W_SF", None)
            first = app.inverters[0]
            await wait_for(lambda: first.state.online and first.state.power_w is None)
            await wait_for(lambda: app.status()["inverters"][0]["unread"] is True)
            inv = app.status()["inverters"][0]
            assert inv["skipped"] == "no valid power reading" and inv["online"]
            shown = alerts(app.status(), app.config, 2e9)
            assert "inverter-unread" in {a["code"] for a in shown}

            app.apply_config(dataclasses.replace(app.config, limits=LimitsConfig(export_w=0.0)))
            await wait_settled(sim.export_w, 0.0, TOLERANCE_W)
            # Held at its share of the zero-load cap: nothing (the limit is 0 W)...
            assert sim.site.devices[1].get(123, "WMaxLim_Ena") == 1
            assert sim.site.devices[1].get(123, "WMaxLimPct") == 0.0
            # ...while the readable one covers the household's 500 W.
            assert abs(sim.site.devices[2].get(103, "W") - 500.0) < 150.0
            nursery.cancel_scope.cancel()
