"""The battery link against the simulated battery (a real pymodbus peer on 127.0.0.1): storage
models read, setpoints written with their revert timer and verified by reading them back."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from dynexport.modbus.client import BusPool
from dynexport.modbus.endpoints import TcpEndpoint
from dynexport.modbus.errors import ModbusConnectionError
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import (
    battery,
    common,
    fronius_battery_site,
    fronius_gateway,
    inverter_measurements,
)
from dynexport.sim.sunspec_device import ModelSpec, Site, SunSpecDevice
from dynexport.sunspec.links import BatteryDesired, BatteryLink
from dynexport.sunspec.storage import StorageConvention, not_controllable_reason


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Polls state that another task updates (the links have no events to wait on)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_the_link_reads_the_battery_and_keeps_a_gen24_style_charge_setpoint() -> None:
    site = fronius_battery_site(soc_pct=40.0, window=True)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = BatteryLink(
                "battery 3", bus, 3, revert_s=45, fast_s=0.2, convention=StorageConvention.WINDOW
            )
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.online and link.state.controllable is True)
            r = link.state.reading
            assert r is not None and r.capacity_wh == 10000.0 and r.max_charge_w == 5000.0
            assert r.soc_pct is not None and 39.0 <= r.soc_pct <= 41.0
            assert link.state.info.models and 124 in link.state.info.models

            link.command(BatteryDesired(-2000.0))
            await wait_until(lambda: link.state.setpoint_w == -2000.0)
            assert site.get(3, 124, "StorCtl_Mod") == 3
            assert site.get(3, 124, "InOutWRte_RvrtTms") == 45
            assert (site.get(3, 124, "InWRte"), site.get(3, 124, "OutWRte")) == (40.0, -40.0)
            await wait_until(lambda: abs((link.state.reading.power_w or 0) + 2000.0) < 50)  # type: ignore[union-attr]

            link.command(BatteryDesired(None))  # back to its own mode: the timer is not needed
            await wait_until(lambda: site.get(3, 124, "StorCtl_Mod") == 0)
            await wait_until(lambda: link.state.setpoint_w is None)
            nursery.cancel_scope.cancel()


async def test_a_setpoint_left_behind_reverts_to_the_batterys_own_mode() -> None:
    """The process stops rewriting (the link is gone): the battery's own timer ends it."""
    clock = FakeClock()
    site = Site({3: battery(soc_pct=60.0)}, load_w=0.0)
    with serve_tcp(site, clock=clock) as sim:
        async with BusPool(timeout=1.0) as pool:
            async with trio.open_nursery() as nursery:
                bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
                link = BatteryLink("battery", bus, 3, revert_s=30, fast_s=0.2)
                nursery.start_soon(link.run)
                await wait_until(lambda: link.state.controllable is True)
                link.command(BatteryDesired(1500.0))
                await wait_until(lambda: link.state.setpoint_w == 1500.0)
                assert site.get(3, 124, "OutWRte") == 30.0 and site.get(3, 124, "InWRte") == 0
                nursery.cancel_scope.cancel()
            clock.t += 29.0
            site.step(clock.t)
            assert site.get(3, 124, "StorCtl_Mod") == 3
            clock.t += 2.0
            site.step(clock.t)
            assert site.get(3, 124, "StorCtl_Mod") == 0


async def test_704_wset_is_used_where_the_battery_has_it() -> None:
    """...and it cannot be told "charge only" (WSet is a setpoint, not a bound): its state says
    so, for the controller to hold it with setpoints, and a "charge only" that reaches it anyway
    leaves it in its own mode, with no bound claimed."""
    site = Site({3: battery(wset=True, soc_pct=70.0)}, load_w=3000.0)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = BatteryLink("battery", bus, 3, revert_s=20, fast_s=0.2)
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.controllable is True)
            link.command(BatteryDesired(2500.0))
            await wait_until(lambda: link.state.setpoint_w == 2500.0)
            assert site.get(3, 704, "WSetEna") == 1 and site.get(3, 704, "WSetRvrtTms") == 20
            assert site.get(3, 124, "StorCtl_Mod") == 0
            await wait_until(lambda: abs(site.devices[3].power_w - 2500.0) < 50)  # type: ignore[attr-defined]
            assert link.state.charge_only_possible is False
            link.command(BatteryDesired(None, charge_only=True))
            await wait_until(lambda: link.state.setpoint_w is None)
            assert not link.state.charge_only and link.state.setpoint_expires is None
            assert site.get(3, 704, "WSetEna") == 0 and site.get(3, 124, "StorCtl_Mod") == 0
            nursery.cancel_scope.cancel()


async def test_a_device_without_storage_models_is_reported_not_a_battery() -> None:
    site = fronius_gateway()
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = BatteryLink("battery", bus, 1, fast_s=0.2)
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.error is not None)
            assert "no SunSpec storage model" in (link.state.error or "")
            assert not link.state.online
            nursery.cancel_scope.cancel()


def test_a_setpoint_moving_by_a_few_watts_is_not_rewritten_before_it_is_due() -> None:
    """Each write is three Modbus transactions; the law moves its setpoint by watts a second."""
    from dynexport.sunspec.links import _same_setpoint

    assert _same_setpoint(BatteryDesired(-4000.0), BatteryDesired(-4012.0))
    assert not _same_setpoint(BatteryDesired(-4000.0), BatteryDesired(-4030.0))
    assert not _same_setpoint(BatteryDesired(None), BatteryDesired(0.0))
    assert _same_setpoint(BatteryDesired(None), BatteryDesired(None))
    assert not _same_setpoint(BatteryDesired(-1.0), None)


def hybrid_without_802() -> Site:
    """A hybrid inverter at unit 1 whose storage is 124 (writable, GEN24 window) and 713 only:
    SoC and ratings, no battery power."""
    storage_124 = ModelSpec(
        124,
        {
            "WChaMax_SF": 0, "WChaMax": 5000.0, "WChaDisChaGra_SF": 0, "WChaGra": 100,
            "WDisChaGra": 100, "StorCtl_Mod": 0, "VAChaMax_SF": 0, "VAChaMax": 5000.0,
            "MinRsvPct_SF": 0, "MinRsvPct": 5, "ChaState_SF": -1, "ChaState": 60.0,
            "StorAval_SF": 0, "StorAval": 0, "InBatV_SF": -1, "InBatV": 400.0, "ChaSt": 6,
            "InOutWRte_SF": -2, "OutWRte": 100.0, "InWRte": 100.0, "InOutWRte_WinTms": 0,
            "InOutWRte_RvrtTms": 0, "InOutWRte_RmpTms": 0, "ChaGriSet": 0,
        },
        writable=frozenset({"StorCtl_Mod", "InWRte", "OutWRte", "InOutWRte_WinTms",
                            "InOutWRte_RvrtTms", "InOutWRte_RmpTms"}),
    )  # fmt: skip
    capacity_713 = ModelSpec(
        713,
        {"WH_SF": 0, "Pct_SF": -1, "WHRtg": 10000.0, "WHAvail": 6000.0, "SoC": 60.0,
         "SoH": 100.0, "Sta": 1},
    )  # fmt: skip
    device = SunSpecDevice(
        40000,
        [common("Fronius", "Primo GEN24 6.0 Plus", "SIMHYB01"), inverter_measurements(False),
         storage_124, capacity_713],
    )  # fmt: skip
    return Site({1: device})


async def test_a_hybrid_without_802_w_is_shown_but_never_written_and_says_why() -> None:
    """Against a real peer: the link reads its SoC and rating, marks it not controllable with
    the reason naming model 802 W, and a command never reaches the device."""
    site = hybrid_without_802()
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = BatteryLink(
                "battery 1", bus, 1, revert_s=45, fast_s=0.2, ac_coupled=False,
                convention=StorageConvention.WINDOW,
            )  # fmt: skip
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.online and link.state.controllable is False)
            r = link.state.reading
            assert r is not None and r.soc_pct == 60.0 and r.capacity_wh == 10000.0
            assert r.power_w is None
            why = not_controllable_reason(r, link.state.info.models, ac_coupled=False)
            assert why is not None and "model 802 W" in why and "124, 713" in why
            assert link.state.not_controllable == why  # the status and the web page say why
            link.command(BatteryDesired(-2000.0))
            for _ in range(3):  # a few polls: the command is never written
                seen = link.state.last_reading
                await wait_until(lambda: link.state.last_reading != seen)  # noqa: B023
            assert site.get(1, 124, "StorCtl_Mod") == 0
            assert link.state.setpoint_w is None and link.state.last_write is None
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["battery", "meter"])
async def test_a_link_to_the_wrong_device_stays_offline_but_never_looks_stuck(kind: str) -> None:
    """A meter or a battery configured at an inverter's unit: offline with the reason, and
    alive in the progress check all along. Before, its last activity stopped at the error: a
    minute later the service stopped the watchdog's pings, systemd restarted it, and its start
    limit rebooted the appliance every few minutes."""
    from dynexport.sunspec.links import MeterLink
    from dynexport.system.watchdog import ProgressTracker

    site = fronius_gateway()
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = BatteryLink(kind, bus, 1) if kind == "battery" else MeterLink(kind, bus, 1)
            link.idle_heartbeat_s = 0.05
            nursery.start_soon(link.run)
            await wait_until(lambda: link.state.error is not None)
            assert f"no SunSpec {'storage' if kind == 'battery' else 'meter'} model" in (
                link.state.error or ""
            )
            progress = ProgressTracker()
            since = trio.current_time()
            progress.register(kind, 0.5, since)
            for _ in range(3):  # the App's watchdog loop, passing the link's activity on
                seen = link.last_activity

                def moved(seen: float | None = seen) -> bool:
                    return link.last_activity != seen

                await wait_until(moved)
                assert link.last_activity is not None
                progress.progress(kind, link.last_activity)
                assert progress.stuck(link.last_activity + 0.1) == []
            assert not link.state.online
            nursery.cancel_scope.cancel()


# -- a command cut short between its writes ------------------------------------------------------


class _Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Gate:
    """The bus, with a switch that cuts it (a cable pulled, a TCP reset); with
    ``cut_after_write`` it cuts itself right after the next write, in the middle of a command."""

    def __init__(self, inner: object) -> None:
        self.inner, self.down, self.cut_after_write = inner, False, False
        self.writes: list[int] = []

    async def read_holding_registers(self, unit: int, address: int, count: int, **kw: object):
        if self.down:
            raise ModbusConnectionError("connection lost")
        return await self.inner.read_holding_registers(unit, address, count, **kw)  # type: ignore[attr-defined]

    async def write_registers(self, unit: int, address: int, values: list[int], **kw: object):
        if self.down:
            raise ModbusConnectionError("connection lost")
        self.writes.append(address)
        await self.inner.write_registers(unit, address, values, **kw)  # type: ignore[attr-defined]
        self.down = self.cut_after_write


@pytest.mark.parametrize(
    ("wset", "convention"),
    [(True, StorageConvention.SUNSPEC), (False, StorageConvention.WINDOW),
     (False, StorageConvention.SUNSPEC)],
    ids=["704", "124 window", "124"],
)  # fmt: skip
async def test_a_setpoint_cut_short_between_its_writes_is_never_left_without_its_revert_timer(
    wset: bool, convention: StorageConvention
) -> None:
    """The enable went first (by address): cut there, the device charged at the setpoint with
    its revert timer at 0 ("never") for good. Now the value and timer go first, the enable last."""
    clock = _Clock()
    window = convention is StorageConvention.WINDOW
    site = Site({3: battery(soc_pct=60.0, wset=wset, window=window)}, load_w=0.0)
    with serve_tcp(site, clock=clock) as sim:
        async with BusPool(timeout=1.0) as pool:
            bus = _Gate(pool.get(TcpEndpoint("127.0.0.1", sim.port)))
            link = BatteryLink("battery", bus, 3, revert_s=30, fast_s=0.2, convention=convention)  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                await wait_until(lambda: link.state.controllable is True, within=30.0)
                bus.cut_after_write = True
                link.command(BatteryDesired(-4000.0))
                await wait_until(lambda: bus.down, within=30.0)
                # sent, never read back: the load estimate still knows the output may move
                assert link.state.last_sent is not None and link.state.last_write is None
                nursery.cancel_scope.cancel()
    model = 704 if wset else 124
    enable = "WSetEna" if wset else "StorCtl_Mod"
    clock.t += 3600.0  # an hour on: whatever the cut left must have reverted by now
    site.step(clock.t)
    assert site.get(3, model, enable) in (0, None), "a setpoint left in force with no end"


async def test_a_battery_back_from_an_outage_waits_for_a_new_setpoint() -> None:
    """Its setpoint from before the outage was written again as soon as it answered, before the
    controller had decided anything (it had reverted to its own mode meanwhile)."""
    site = Site({3: battery(soc_pct=60.0, wset=True)}, load_w=3000.0)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=0.5) as pool:
            bus = _Gate(pool.get(TcpEndpoint("127.0.0.1", sim.port)))
            link = BatteryLink("battery", bus, 3, revert_s=30, fast_s=0.2)  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                await wait_until(lambda: link.state.controllable is True, within=30.0)
                link.command(BatteryDesired(-4000.0))
                await wait_until(lambda: link.state.setpoint_w == -4000.0, within=30.0)
                bus.down = True
                await wait_until(lambda: not link.state.online, within=30.0)
                bus.writes.clear()
                bus.down = False
                await wait_until(lambda: link.state.online, within=30.0)
                back = link.state.last_reading or 0.0
                # Two polls on: the old link had written after the first.
                await wait_until(lambda: (link.state.last_reading or 0.0) > back, within=30.0)
                second = link.state.last_reading or 0.0
                await wait_until(lambda: (link.state.last_reading or 0.0) > second, within=30.0)
                assert bus.writes == []
                link.command(BatteryDesired(-2000.0))  # the controller's next decision
                await wait_until(lambda: link.state.setpoint_w == -2000.0, within=30.0)
                nursery.cancel_scope.cancel()


async def test_a_124_setpoint_is_a_percentage_of_its_own_wchamax() -> None:
    """802 rates the battery at 5 kW, but 124 applies its percentages to a WChaMax of 2.5 kW:
    asked for 2.5 kW of charge, it was written 50 % and charged 1.25 kW."""
    bat = battery(soc_pct=50.0, window=True, max_charge_w=5000.0, tau_s=0.1)
    site = Site({3: bat}, load_w=0.0)
    site.devices[3].set(124, "WChaMax", 2500.0)
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool:
            link = BatteryLink(
                "battery", pool.get(TcpEndpoint("127.0.0.1", sim.port)), 3, revert_s=30,
                fast_s=0.2, convention=StorageConvention.WINDOW,
            )  # fmt: skip
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                await wait_until(lambda: link.state.controllable is True, within=30.0)
                assert link.state.reading is not None
                assert link.state.reading.max_charge_w == 5000.0
                link.command(BatteryDesired(-2500.0))
                await wait_until(lambda: link.state.setpoint_w == -2500.0, within=30.0)
                await wait_until(lambda: bat.power_w < -2400.0, within=30.0)
                nursery.cancel_scope.cancel()


@pytest.mark.parametrize("window", [False, True], ids=["sunspec", "gen24-window"])
async def test_charge_only_stops_the_own_modes_discharge_and_is_kept_in_force(
    window: bool,
) -> None:
    """The fail-safe's "charge only": a self-consumption battery covering a 3 kW load stops
    discharging, the link reads it back as charge only with a revert time, rewrites it before
    that runs out, and a release returns the battery to its own mode (discharging again)."""
    site = Site({3: battery(soc_pct=60.0, window=window, tau_s=0.2)}, load_w=3000.0)
    convention = StorageConvention.WINDOW if window else StorageConvention.SUNSPEC
    with serve_tcp(site) as sim:
        async with BusPool(timeout=1.0) as pool, trio.open_nursery() as nursery:
            bus = pool.get(TcpEndpoint("127.0.0.1", sim.port))
            link = BatteryLink("battery", bus, 3, revert_s=3, fast_s=0.1, convention=convention)
            nursery.start_soon(link.run)
            dev = site.devices[3]
            await wait_until(lambda: link.state.controllable is True)
            await wait_until(lambda: dev.power_w > 2800.0)  # type: ignore[attr-defined]
            link.command(BatteryDesired(None, charge_only=True))
            await wait_until(lambda: link.state.charge_only)
            assert link.state.setpoint_w is None and link.state.setpoint_expires is not None
            assert site.get(3, 124, "StorCtl_Mod") == 2 and site.get(3, 124, "OutWRte") == 0
            await wait_until(lambda: abs(dev.power_w) < 30.0)  # type: ignore[attr-defined]
            # Kept in force: rewritten (with its revert timer) before that runs out, twice over.
            for _ in range(2):
                last = link.state.last_write or 0.0
                await wait_until(lambda: (link.state.last_write or 0.0) > last)  # noqa: B023
                assert site.get(3, 124, "StorCtl_Mod") == 2
                assert site.get(3, 124, "InOutWRte_RvrtTms") == 3
            assert abs(dev.power_w) < 30.0  # type: ignore[attr-defined]
            link.command(BatteryDesired(None))
            await wait_until(lambda: site.get(3, 124, "StorCtl_Mod") == 0)
            await wait_until(lambda: not link.state.charge_only)
            await wait_until(lambda: dev.power_w > 2800.0)  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()
