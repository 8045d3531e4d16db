"""The whole service with a battery, against the simulated site over Modbus TCP: the battery
charges before any PV is curtailed, an import limit is held by discharging it, and the utility
hears that import and load limits are now enforced."""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio

from dynexport.app import PV_MEMORY_FILE, App, load_pv_memory
from dynexport.control.battery import PvDay, PvMemory
from dynexport.control.limits import LimitsConfig
from dynexport.sep2.controls import ControlType, doe_modes_supported, enforced_controls
from dynexport.sim.profiles import battery, gen24
from dynexport.system.config import Config
from tests.app.conftest import SimSite, make_app, simulated_site, site_config, wait_for


def battery_config(sim: SimSite, limits: dict[str, float]) -> Config:
    return site_config(
        sim,
        extra={
            "limits": limits,
            "batteries": [{"tcp": sim.endpoint("main"), "unit": 3, "convention": "window",
                           "plan": False}],
        },
    )  # fmt: skip


async def test_the_battery_charges_before_the_inverters_are_curtailed(tmp_path: Path) -> None:
    with simulated_site(load_w=1000.0) as sim:
        bat = battery(soc_pct=40.0, window=True, tau_s=0.3)
        bat.own_mode = "idle"  # nothing but dynexport makes it charge
        sim.site.devices[3] = bat
        app = make_app(battery_config(sim, {"exportW": 1500}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            # 13.2 kW of sun, 1 kW load, 1.5 kW allowed out: the battery takes its 5 kW first.
            await wait_for(lambda: bat.power_w < -4800.0, within=20.0)
            assert sim.site.get(3, 124, "StorCtl_Mod") == 3
            await wait_for(lambda: app.status()["der"]["powerW"] > 7000.0, within=15.0)
            exports = []
            for _ in range(8):
                await trio.sleep(0.5)
                exports.append(sim.export_w())
            assert max(exports) <= 1500 * 1.04 + 50, exports
            # the law learns when each device was last written to (the load estimate's pairing)
            now = trio.current_time()
            link = app.batteries[0]
            assert link.state.last_sent is not None
            assert (
                link.state.last_write is not None and link.state.last_sent <= link.state.last_write
            )
            assert app._battery_state(link, now).written_t == link.state.last_sent
            inv = app.inverters[0]
            assert inv.state.last_sent is not None
            assert app._law_state(inv, now).written_t == inv.state.last_sent
            st = app.status()["battery"]
            assert st["mode"] == "engaged" and "export limit" in st["reason"]
            assert st["socPct"] is not None and st["powerW"] < -4500
            assert st["storedInsteadOfCurtailedTodayWh"] > 0
            assert app.status()["limits"]["notEnforced"] == []
            info = app.der_info()
            assert info is not None and info.rated_wh == 10000.0
            assert info.enforced == enforced_controls(True)
            assert info.doe_modes_supported == doe_modes_supported(enforced_controls(True))
            assert ControlType.IMPORT_LIMIT_W in info.enforced
            # the commissioning report lists the battery with the inverters and the meter
            report = app.commissioning_report()
            batteries = [d for d in report["devices"] if d["role"] == "battery"]
            assert [(b["capacityWh"], b["online"]) for b in batteries] == [(10000.0, True)]
            nursery.cancel_scope.cancel()


async def test_an_import_limit_is_held_by_discharging_the_battery(tmp_path: Path) -> None:
    """Evening: no sun, 6 kW load, a charged battery that would sit idle by itself. An import
    limit of 2000 W is held within L × 1.04 + 50 W within 15 s of its start."""
    with simulated_site(load_w=6000.0) as sim:
        sim.site.set_available(1, 0.0)
        sim.site.set_available(2, 0.0)
        bat = battery(soc_pct=90.0, window=True, tau_s=0.3)
        bat.own_mode = "idle"
        sim.site.devices[3] = bat
        app = make_app(battery_config(sim, {}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["battery"]["socPct"] is not None, within=10.0)
            await wait_for(lambda: sim.site.site_w() > 5500.0, within=10.0)  # no sun now
            await trio.sleep(2.0)
            assert sim.site.site_w() > 5500.0  # nothing limits: the idle battery is left alone
            assert sim.site.get(3, 124, "StorCtl_Mod") == 0
            app.apply_config(dataclasses.replace(app.config, limits=LimitsConfig(import_w=2000)))
            started = trio.current_time()
            await wait_for(lambda: sim.site.site_w() <= 2000 * 1.04 + 50, within=15.0)
            assert trio.current_time() - started < 15.0
            imports = []
            for _ in range(6):
                await trio.sleep(0.5)
                imports.append(sim.site.site_w())
            assert max(imports) <= 2000 * 1.04 + 50, imports
            assert bat.power_w > 3500.0
            nursery.cancel_scope.cancel()


# --- the planner's memory of the previous days' sun (docs/control.md, "The planner") ---------

TODAY = date(2026, 12, 1)
ELEVEN_AM = datetime(2026, 12, 1, 11, 0, tzinfo=ZoneInfo("Australia/Sydney")).timestamp()
CLOUDY_YESTERDAY = PvMemory((PvDay("2026-11-30", measured=1.2, clear=4.0),))  # ratio 0.3


def planning_config(sim: SimSite) -> Config:
    return site_config(
        sim,
        extra={
            "site": {"timeZone": "Australia/Sydney"},
            "batteries": [{"tcp": sim.endpoint("main"), "unit": 3, "convention": "window"}],
        },
    )


async def plan_once_with_the_site_read(app: App) -> None:
    """Waits until the inverters have answered, unlimited, then plans (and saves) at once,
    rather than after the app's 5-minute planning period."""
    await wait_for(
        lambda: (
            app.site_rated_w() is not None
            and all(i.state.online and i.state.power_w for i in app.inverters)
            and all(i.state.limit_pct is None for i in app.inverters)
        ),
        within=20.0,
    )
    app.battery.pv_saved_t = -math.inf
    app._make_plan(trio.current_time())


async def test_the_planner_keeps_yesterdays_sun_and_adds_todays_across_a_restart(
    tmp_path: Path,
) -> None:
    """A cloudy yesterday on the data partition is the planner's prior this morning; today's
    unlimited production is added beside it and saved atomically, and a restarted service
    reads both back."""
    path = tmp_path / PV_MEMORY_FILE
    path.write_text(CLOUDY_YESTERDAY.to_json())
    with simulated_site(load_w=1000.0) as sim:
        sim.site.devices[3] = battery(soc_pct=40.0, window=True, tau_s=0.3)
        app = make_app(planning_config(sim), tmp_path, wall_clock=lambda: ELEVEN_AM)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await plan_once_with_the_site_read(app)
            assert app.battery.pv is not None
            assert app.battery.pv.prior_ratio(TODAY) == pytest.approx(0.3)
            nursery.cancel_scope.cancel()
    saved = load_pv_memory(path)
    assert [d.day for d in saved.days] == ["2026-11-30", "2026-12-01"]
    assert saved.days[0] == CLOUDY_YESTERDAY.days[0]
    assert saved.days[1].measured > 0 and saved.days[1].clear > 0
    restarted = App(app.config, app.options)
    restarted._make_plan(trio.current_time())  # no links yet: it only loads the memory
    assert restarted.battery.pv == saved


async def test_the_planner_neither_plans_nor_remembers_the_sun_while_the_time_is_not_known(
    tmp_path: Path,
) -> None:
    """After a power cut a Pi's clock restarts from its last saved time, hours behind, until a
    time server (or the utility's Time) sets it. The planner read the sun's hours and the date
    off that clock: it held the charging back at the wrong hours and filed today's sun under
    the wrong hours, or under yesterday, in the memory the next days' plans start from. Until
    the time is known it makes no plan (no hold back) and keeps nothing; once it is, both go
    on, by the true time."""
    path = tmp_path / PV_MEMORY_FILE
    path.write_text(CLOUDY_YESTERDAY.to_json())
    synchronised = [False]
    behind = ELEVEN_AM - 6 * 3600  # the clock says 05:00, before sunrise
    with simulated_site(load_w=1000.0) as sim:
        sim.site.devices[3] = battery(soc_pct=40.0, window=True, tau_s=0.3)
        app = make_app(
            planning_config(sim), tmp_path, wall_clock=lambda: behind if not synchronised[0]
            else ELEVEN_AM, clock_synchronised=lambda: synchronised[0],
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await plan_once_with_the_site_read(app)
            plan = app._make_plan(trio.current_time())
            assert plan is not None and plan.max_charge_w is None, "no hold back"
            assert plan.reason == "the time of day is not known yet"
            assert app.battery.observed == [] and app.battery.pv is None, "nothing kept"
            synchronised[0] = True  # a time server set the clock
            await plan_once_with_the_site_read(app)
            book = app.battery  # (a new name: mypy took ``pv`` for None from here on)
            assert book.pv is not None
            assert [d.day for d in book.pv.days] == ["2026-11-30", "2026-12-01"]
            assert [round(h) for h, _ in book.observed] == [11]
            nursery.cancel_scope.cancel()


async def test_the_days_count_starts_again_at_midnight_without_any_time_source(
    tmp_path: Path,
) -> None:
    """A site with no time server and no utility never knows its time for sure; the day's
    "stored instead of curtailed" count, a status figure, still starts again each day, by the
    wall clock (the planner's decisions wait for a known time; this count decides nothing)."""
    with simulated_site(load_w=1000.0) as sim:
        sim.site.devices[3] = battery(soc_pct=40.0, window=True, tau_s=0.3)
        app = make_app(
            planning_config(sim), tmp_path, wall_clock=lambda: ELEVEN_AM,
            clock_synchronised=lambda: None,
        )  # fmt: skip
        app.battery.day, app.battery.stored_wh = date(2026, 11, 30), 5000.0
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.battery.day == TODAY, within=20.0)
            assert app.battery.stored_wh < 100.0
            nursery.cancel_scope.cancel()


async def test_the_days_count_is_not_restarted_by_the_time_falling_back_while_unknown(
    tmp_path: Path,
) -> None:
    """A site whose clock is set right, then loses its time source for a while with the wall
    clock a day behind (the utility's offset gone while its link is rebuilt): the wall clock's
    date going back is no new day; the count goes on, and again once the time is known."""
    synchronised = [True]
    with simulated_site(load_w=1000.0) as sim:
        sim.site.devices[3] = battery(soc_pct=40.0, window=True, tau_s=0.3)
        app = make_app(
            planning_config(sim), tmp_path,
            wall_clock=lambda: ELEVEN_AM if synchronised[0] else ELEVEN_AM - 86400,
            clock_synchronised=lambda: synchronised[0],
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.battery.day == TODAY, within=20.0)
            app.battery.stored_wh = 4000.0
            synchronised[0] = False
            await trio.sleep(3.0)  # control cycles with the date a day behind, time unknown
            assert app.battery.day == TODAY and app.battery.stored_wh >= 4000.0
            synchronised[0] = True
            await trio.sleep(3.0)
            assert app.battery.day == TODAY and app.battery.stored_wh >= 4000.0
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "content", [b"\x00\x01 torn by a power cut", b'{"version": 1, "days": [{"day": "x"}]}']
)
async def test_a_corrupt_pv_memory_is_ignored_with_a_log_line_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / PV_MEMORY_FILE
    path.write_bytes(content)
    with simulated_site(load_w=1000.0) as sim:
        sim.site.devices[3] = battery(soc_pct=40.0, window=True, tau_s=0.3)
        app = make_app(planning_config(sim), tmp_path, wall_clock=lambda: ELEVEN_AM)
        with caplog.at_level(logging.ERROR, logger="dynexport.app"):
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                await plan_once_with_the_site_read(app)
                assert app.status()["faults"] == []  # not a fault: the planner carries on
                nursery.cancel_scope.cancel()
    assert any(
        PV_MEMORY_FILE in r.getMessage() and "unusable" in r.getMessage() for r in caplog.records
    )
    assert [d.day for d in load_pv_memory(path).days] == ["2026-12-01"]


async def test_a_pv_memory_that_cannot_be_saved_is_logged_once_and_kept_in_ram(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The data partition refuses the write (here: the file's place is a folder): one log line,
    the memory lives on, and the planner goes on planning."""
    (tmp_path / PV_MEMORY_FILE).mkdir()
    with simulated_site(load_w=1000.0) as sim:
        sim.site.devices[3] = battery(soc_pct=40.0, window=True, tau_s=0.3)
        app = make_app(planning_config(sim), tmp_path, wall_clock=lambda: ELEVEN_AM)
        with caplog.at_level(logging.ERROR, logger="dynexport.app"):
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                await plan_once_with_the_site_read(app)
                # The write runs in the pv-memory task's thread (retried with backoff).
                await wait_for(lambda: app.battery.pv_save_error is not None, within=20.0)
                await plan_once_with_the_site_read(app)
                assert app.battery.pv is not None and app.battery.pv.days
                await wait_for(lambda: app.pv_writer.failures >= 2, within=20.0)
                assert app.battery.pv_save_error is not None
                nursery.cancel_scope.cancel()
    saves = [r for r in caplog.records if "cannot save" in r.getMessage()]
    assert len(saves) == 1


async def test_a_hung_data_partition_does_not_hold_up_control_and_the_memory_lands_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner's save blocks in the kernel (a hung SD card: here the write waits on an
    event): the controller goes on deciding meanwhile, and once the card answers the newest
    memory is what lands on disk."""
    import threading

    import dynexport.app as app_module
    from dynexport.system.storage import atomic_write as real_write

    entered, release = threading.Event(), threading.Event()

    def hung_write(path: Path, data: bytes, **kwargs: Any) -> None:
        entered.set()
        release.wait(60.0)
        real_write(path, data, **kwargs)

    monkeypatch.setattr(app_module, "atomic_write", hung_write)
    path = tmp_path / PV_MEMORY_FILE
    try:
        with simulated_site(load_w=1000.0) as sim:
            sim.site.devices[3] = battery(soc_pct=40.0, window=True, tau_s=0.3)
            app = make_app(planning_config(sim), tmp_path, wall_clock=lambda: ELEVEN_AM)
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                await plan_once_with_the_site_read(app)
                await wait_for(entered.is_set, within=20.0)
                decided = app.progress.last["controller"]
                await wait_for(lambda: app.progress.last["controller"] > decided + 2.0, within=30.0)
                assert not path.exists()  # still hung: nothing written, nothing lost
                assert app.pv_writer.unwritten
                release.set()
                await wait_for(lambda: not app.pv_writer.unwritten, within=20.0)
                nursery.cancel_scope.cancel()
    finally:
        release.set()
    assert app.battery.pv is not None
    assert load_pv_memory(path) == app.battery.pv


# --- a Fronius GEN24 hybrid: its battery power from model 160, controlled through 124 --------


async def test_a_gen24_battery_charges_before_its_pv_is_cut_and_export_holds(
    tmp_path: Path,
) -> None:
    """The site's inverter is a GEN24 Plus (no model 802: its battery power only in model 160's
    StCha/StDisCha modules), configured as inverter and battery at the same unit. 7 kW of sun,
    1 kW load, 1.5 kW allowed out: the 4.5 kW over the limit fit its 5 kW charge rate, so the
    battery takes them and its PV is not cut, while export stays within the limit."""
    with simulated_site(load_w=1000.0) as sim:
        hybrid = gen24(soc_pct=40.0, available_w=7000.0, tau_s=0.3)
        hybrid.own_mode = "idle"  # nothing but dynexport makes it charge
        sim.site.devices[1] = hybrid
        del sim.site.devices[2]
        main = sim.endpoint("main")
        config = site_config(
            sim,
            extra={
                "inverters": [{"tcp": main, "unit": 1}],
                "limits": {"exportW": 1500},
                "batteries": [{"tcp": main, "unit": 1, "convention": "window", "plan": False}],
            },
        )
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: hybrid.power_w < -4000.0, within=20.0)
            assert sim.site.get(1, 124, "StorCtl_Mod") == 3  # through 124, with its timer
            assert sim.site.get(1, 124, "InOutWRte_RvrtTms") == 30
            assert sim.site.get(1, 124, "OutWRte") < 0  # the GEN24 window: charge, forced
            await wait_for(lambda: hybrid.output_w > 6900.0, within=15.0)
            exports, pv = [], []
            for _ in range(8):
                await trio.sleep(0.5)
                exports.append(sim.export_w())
                pv.append(hybrid.output_w)
            assert max(exports) <= 1500 * 1.04 + 50, exports
            assert min(pv) > 6800.0, pv  # the sun's 7 kW, not cut
            st = app.status()["battery"]
            assert st["mode"] == "engaged" and "export limit" in st["reason"]
            assert st["powerW"] < -4000  # as read from model 160's StCha module
            assert sim.site.get(1, 160, "module[2].DCW") > 4000
            nursery.cancel_scope.cancel()


async def test_a_gen24_charging_from_its_pv_leaves_its_share_of_the_budget_to_the_other(
    tmp_path: Path,
) -> None:
    """Issue #13's site: a GEN24 with 4 kW of sun and a 5 kW battery, beside the 8.2 kW
    inverter with 3 kW of sun; 1 kW load, 1.5 kW export limit. One common percentage (13.6 %)
    held the 8.2 kW inverter at 1.1 kW while the GEN24 could not use its share. Now the GEN24's
    battery takes its own PV (never more than that and a small band: charging past it would draw
    the other's PV through the GEN24's AC side), the GEN24 is held at about 0 % (its AC output is
    about 0), and the other gets the rest of the budget (about 2.5 kW), export within the limit
    throughout (tests/test_battery_mixed_site.py has the settled export)."""
    with simulated_site(load_w=1000.0) as sim:
        hybrid = gen24(soc_pct=40.0, available_w=4000.0, tau_s=0.3)
        hybrid.own_mode = "idle"  # nothing but dynexport makes it charge
        sim.site.devices[1] = hybrid
        sim.site.set_available(2, 3000.0)
        main = sim.endpoint("main")
        config = site_config(
            sim,
            extra={
                "limits": {"exportW": 1500},
                "batteries": [{"tcp": main, "unit": 1, "convention": "window", "plan": False}],
            },
        )
        app = make_app(config, tmp_path)

        def inverter(n: int) -> dict[str, Any]:
            found: dict[str, Any] = app.status()["inverters"][n]
            return found

        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: hybrid.power_w < -3500.0, within=20.0)

            def other_given_the_share() -> bool:
                # The common share would be 13.6 % of 8200 W: 1117 W.
                pct, power = inverter(1)["limitPct"], inverter(1)["powerW"] or 0.0
                return pct is not None and pct / 100 * 8200 >= 1900.0 and power >= 1900.0

            await wait_for(other_given_the_share, within=20.0)
            exports = []
            for _ in range(8):
                await trio.sleep(0.5)
                exports.append(sim.export_w())
            assert max(exports) <= 1500 * 1.04 + 50, exports
            assert inverter(0)["limitPct"] <= 0.5  # its PV goes to its battery, none to AC
            assert other_given_the_share()
            nursery.cancel_scope.cancel()
