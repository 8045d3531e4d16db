"""The connection and operating state the utility is told comes from what the inverters really
do (CSIP-AUS ALL-07, ALL-08, ALL-12, ALL-27), end to end: the service against a simulated site
over Modbus TCP and the simulated utility over mutual TLS. The site's control channel makes the
inverters trip or stop on their own, as the procedures need."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from dynexport.sep2.resources import DERStatus
from dynexport.sim.modbus_server import send_control
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import parse_config
from tests.app.conftest import (
    SimSite,
    make_app,
    simulated_site,
    site_document,
    utility_section,
    wait_for,
)

DERS = "/edev/1/der/1/ders"


def _statuses(utility: UtilityServer) -> list[DERStatus]:
    out = []
    for r in utility.received:
        if r.method == "PUT" and r.path == DERS and isinstance(r.resource, DERStatus):
            out.append(r.resource)
    return out


def _bits(utility: UtilityServer) -> int | None:
    statuses = _statuses(utility)
    if not statuses or statuses[-1].gen_connect_status is None:
        return None
    return int(statuses[-1].gen_connect_status.value)


def _bits_are(utility: UtilityServer, mask: int, value: int) -> bool:
    """The last DERStatus's genConnectStatus bits under ``mask`` are ``value`` (False: none)."""
    bits = _bits(utility)
    return bits is not None and bits & mask == value


def _mode(utility: UtilityServer) -> int | None:
    """The last DERStatus's operationalModeStatus (1 off, 2 operational)."""
    statuses = _statuses(utility)
    if not statuses or statuses[-1].operational_mode_status is None:
        return None
    return int(statuses[-1].operational_mode_status.value)


def _config(sim: SimSite, utility: UtilityServer) -> dict[str, Any]:
    return {**site_document(sim), "utility": utility_section(utility, pen=46273)}


async def _control(sim: SimSite, command: dict[str, Any]) -> None:
    port = sim.servers["main"].control_port
    assert port is not None
    answer = await trio.to_thread.run_sync(send_control, port, command)
    assert answer.get("ok") is True, answer


@asynccontextmanager
async def _service(tmp_path: Path) -> AsyncIterator[tuple[UtilityServer, SimSite]]:
    """The simulated utility (10 s polls, a 5 kW default export limit) and a simulated site
    with its control channel, the service running against both until the block ends."""
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10, expected_pen=46273)
    async with server.running() as utility:
        utility.set_default(export_limit_w=5000)
        with simulated_site(control_channel=True) as sim:
            app = make_app(parse_config(_config(sim, utility)), tmp_path / "data")
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                yield utility, sim
                nursery.cancel_scope.cancel()


async def test_a_disconnect_control_opens_the_inverters_and_the_utility_is_told(
    tmp_path: Path,
) -> None:
    """ALL-12 / ALL-27: PUT-DERSTATUS-DISCONNECT, then PUT-DERSTATUS-CONNECT."""
    async with _service(tmp_path) as (utility, sim):
        await wait_for(lambda: _bits_are(utility, 1, 1))
        now = int(utility.now())
        utility.add_control(start=now, duration=40, connect=False)
        # the inverters are opened through model 123 Conn, not only limited to 0 %
        await wait_for(lambda: all(sim.site.get(u, 123, "Conn") == 0 for u in (1, 2)), within=30)
        # ALL-12 PUT-DERSTATUS-DISCONNECT: connected, available and operating all false (an
        # inverter opened by the control was still "available"), operational mode off
        await wait_for(lambda: _bits_are(utility, 0b111, 0), within=30)
        await wait_for(lambda: _mode(utility) == 1, within=30)
        assert sim.site.output_w(1) + sim.site.output_w(2) < 50
        # when the control ends they are closed again, and the utility is told
        await wait_for(lambda: all(sim.site.get(u, 123, "Conn") == 1 for u in (1, 2)))
        await wait_for(lambda: _bits_are(utility, 0b111, 0b111), within=30)
        await wait_for(lambda: _mode(utility) == 2, within=30)
        assert [v.message for v in utility.violations] == []


async def test_an_inverter_that_trips_or_stops_on_its_own_is_reported(tmp_path: Path) -> None:
    """ALL-07 (connection status) and ALL-08 (operational state), driven through the site's
    control channel, as the procedures need the DER itself to change."""
    async with _service(tmp_path) as (utility, sim):
        await wait_for(lambda: _bits_are(utility, 5, 5))
        for unit in (1, 2):
            await _control(sim, {"unit": unit, "set": {"connected": False}})
        await wait_for(lambda: _bits_are(utility, 1, 0), within=30)
        for unit in (1, 2):
            await _control(sim, {"unit": unit, "set": {"connected": True}})
        await wait_for(lambda: _bits_are(utility, 1, 1), within=30)
        await _control(sim, {"set": {"operating": False}})
        await wait_for(lambda: _bits_are(utility, 4, 0), within=30)
        # ALL-08 PUT-DERSTATUS-DISCONNECT, then -CONNECT: operational mode off, then on (it
        # was 2 throughout)
        await wait_for(lambda: _mode(utility) == 1, within=30)
        await _control(sim, {"set": {"operating": True}})
        await wait_for(lambda: _bits_are(utility, 4, 4), within=30)
        await wait_for(lambda: _mode(utility) == 2, within=30)


async def test_one_inverter_of_two_off_leaves_the_site_connected_and_both_off_do_not(
    tmp_path: Path,
) -> None:
    """MUL-01: the site is one DER. One inverter powered off (here tripped off the grid) while
    the other generates: still connected, available, operating and operational (one tripped
    inverter of two said the whole site was disconnected); both off: none of these, mode off."""
    async with _service(tmp_path) as (utility, sim):
        await wait_for(lambda: _bits_are(utility, 0b111, 0b111))
        await _control(sim, {"unit": 1, "set": {"connected": False}})
        await wait_for(lambda: sim.site.output_w(1) < 1.0)
        await trio.sleep(3)  # reported by now (every poll, every change)
        assert _bits_are(utility, 0b111, 0b111) and _mode(utility) == 2
        await _control(sim, {"unit": 2, "set": {"connected": False}})
        await wait_for(lambda: _bits_are(utility, 0b111, 0), within=30)
        await wait_for(lambda: _mode(utility) == 1, within=30)


def test_consuming_or_a_working_battery_is_operating_and_standby_noise_is_not() -> None:
    """ALL-08 says "generating or consuming": a hybrid charging from the grid, or a battery
    discharging while the PV makes nothing, was reported off (mode 1) since only positive
    inverter power counted; a few watts of standby are not operation."""
    from types import SimpleNamespace

    from dynexport.app import App
    from dynexport.sunspec.links import InverterState

    def state(inverter_w: float, battery_w: float | None = None) -> dict[str, Any]:
        reading = SimpleNamespace(power_w=battery_w)
        batteries = [] if battery_w is None else [
            SimpleNamespace(state=SimpleNamespace(online=True, reading=reading))
        ]  # fmt: skip
        app = SimpleNamespace(output=SimpleNamespace(mode="normal"), batteries=batteries)
        inverter = InverterState(id="a", online=True, rated_w=5000.0, power_w=inverter_w)
        return App._der_state(app, [inverter])  # type: ignore[arg-type]

    assert state(-3000.0)["operational_mode"] == 2  # charging a hybrid's battery from the grid
    assert state(0.0, battery_w=5000.0)["operational_mode"] == 2  # an AC battery discharging
    assert state(4.0)["operational_mode"] == 1 and not state(4.0)["operating"]
    assert state(2500.0)["operating"] and state(2500.0)["connected"]
