"""A quiet meter with a self-consumption battery, in the whole service against a simulated site
over Modbus TCP (docs/control.md, "Batteries").

Before, the fail-safe left the battery in its own mode and counted its discharge as possible
export: the inverters came down by what it discharged, so it covered more of the load, until
it carried the whole house with the PV curtailed to nothing (draining it), and a load that then
fell sent its discharge out over the limit while it caught up. Now it is told "charge only".
"""

from __future__ import annotations

from pathlib import Path

import trio

from dynexport.sim.profiles import battery
from tests.app.conftest import make_app, simulated_site, site_config, wait_for, wait_settled

LIMIT_W = 1500.0


async def test_a_quiet_meter_leaves_the_battery_charge_only_and_the_pv_carrying_the_load(
    tmp_path: Path,
) -> None:
    with simulated_site(("inverters", "meter"), load_w=5000.0) as sim:
        bat = battery(soc_pct=60.0, tau_s=0.3)  # self-consumption by itself
        sim.site.devices[3] = bat
        config = site_config(
            sim,
            inverter_servers=("inverters", "inverters"),
            meter_server="meter",
            extra={
                "limits": {"exportW": LIMIT_W},
                "batteries": [{"tcp": sim.endpoint("inverters"), "unit": 3, "plan": False}],
            },
        )
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["battery"]["socPct"] is not None, within=20.0)
            await wait_settled(sim.export_w, LIMIT_W, 150.0)
            sim.servers["meter"].stop()
            await wait_for(lambda: app.status()["control"]["mode"] == "failsafe")
            await wait_for(lambda: app.status()["battery"]["devices"][0]["chargeOnly"] is True)
            assert sim.site.get(3, 124, "StorCtl_Mod") == 2 and sim.site.get(3, 124, "OutWRte") == 0
            # The PV keeps making what the fail-safe allows; the battery does not take the load.
            await wait_for(lambda: abs(bat.power_w) < 50.0, within=20.0)
            await wait_settled(lambda: sim.site.output_w(1) + sim.site.output_w(2), 1400.0, 150.0)
            samples = []
            for _ in range(6):
                await trio.sleep(0.5)
                samples.append((bat.power_w, sim.site.output_w(1) + sim.site.output_w(2)))
            assert max(b for b, _ in samples) < 50.0, samples
            assert min(pv for _, pv in samples) > 1200.0, samples
            # The load falls: what the PV makes beyond it is charged, not exported over the limit.
            sim.site.set_load(300.0)
            exports = []
            for _ in range(8):
                await trio.sleep(0.5)
                exports.append(sim.export_w())
            assert max(exports) <= LIMIT_W * 1.04 + 50.0, exports
            await wait_for(lambda: bat.power_w < -500.0, within=20.0)
            nursery.cancel_scope.cancel()
