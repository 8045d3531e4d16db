"""The battery in the control law: closed-loop examples with the plant, the decision's pieces,
and the planner. The property test (``test_battery_properties``) checks the safety rules in
random states; these pin the behaviour the issue asks for."""

from __future__ import annotations

import itertools
import math

import pytest

from dynexport.control.average import RollingMean
from dynexport.control.battery import (
    BatteryMemory,
    BatterySettings,
    BatteryState,
    ChargePlan,
    ForecastStep,
    SiteView,
    clear_sky_fraction,
    decide_batteries,
    forecast,
    latitude_for,
    plan_charge,
    pv_expectation,
)
from dynexport.control.law import (
    ControllerState,
    ControlOutput,
    DOEMode,
    InverterState,
    control_step,
    enforced_doe_modes,
    possible_battery_output_w,
)
from dynexport.control.limits import EffectiveLimits
from dynexport.control.plant import Plant, SimBattery, SimInverter, run_closed_loop

EXPORT_1500 = EffectiveLimits(export_w=1500.0, sources={"export_w": "utility"})


def site(pv_w: float, load_w: float, soc: float, **battery: object) -> Plant:
    plant = Plant(
        inverters=[SimInverter("inv1", 6000.0, pv_w / 2), SimInverter("inv2", 6000.0, pv_w / 2)],
        load_w=load_w,
        seed=3,
    )
    plant.batteries.append(SimBattery("bat", 10000.0, 5000.0, 5000.0, soc, **battery))  # type: ignore[arg-type]
    return plant


def allowed(limit_w: float) -> float:
    return limit_w * 1.04 + 50.0


def test_the_battery_charges_before_any_pv_is_curtailed() -> None:
    """PV 6 kW, load 500 W, limit 1500 W, the plan keeping room (no charging from what may be
    exported): the battery takes just the ~4 kW over the limit, the inverters run free
    (nothing curtailed), and export stays under the limit."""
    plant = site(6000.0, 500.0, 50.0, own_mode="idle")
    hold = ChargePlan(0.0, reason="test")
    trace = run_closed_loop(plant, lambda t: EXPORT_1500, 90.0, planner=lambda t, p: hold)
    assert max(p.export_w for p in trace if p.t >= 15) <= allowed(1500.0)
    inverters = sum(i.output_w for i in plant.inverters)
    assert inverters == pytest.approx(6000.0, abs=60.0)  # not curtailed
    assert -plant.batteries[0].power_w == pytest.approx(4000.0, abs=250.0)
    assert 1200.0 <= trace[-1].export_w <= 1500.0


def test_without_a_plan_the_engaged_battery_stores_the_whole_surplus() -> None:
    """No plan holding back: engaged, the battery takes the surplus as its own mode would."""
    plant = site(6000.0, 500.0, 50.0, own_mode="idle")
    trace = run_closed_loop(plant, lambda t: EXPORT_1500, 60.0)
    assert plant.batteries[0].power_w == pytest.approx(-5000.0, abs=60.0)
    assert sum(i.output_w for i in plant.inverters) == pytest.approx(6000.0, abs=60.0)
    assert max(p.export_w for p in trace if p.t >= 15) <= allowed(1500.0)


def test_without_the_battery_the_same_site_curtails() -> None:
    """The yardstick for the test above: the same site without a battery throws 4 kW away."""
    plant = site(6000.0, 500.0, 50.0)
    plant.batteries.clear()
    run_closed_loop(plant, lambda t: EXPORT_1500, 60.0)
    assert sum(i.output_w for i in plant.inverters) < 2100.0


def test_a_full_battery_leaves_the_surplus_to_curtailment() -> None:
    """At its maximum SoC the battery takes nothing more and the inverters hold the limit."""
    plant = site(8000.0, 500.0, 90.0, own_mode="idle")
    settings = BatterySettings(max_soc_pct=90.0)
    trace = run_closed_loop(plant, lambda t: EXPORT_1500, 60.0, battery_settings=settings)
    assert max(p.export_w for p in trace if p.t >= 15) <= allowed(1500.0)
    assert abs(plant.batteries[0].power_w) < 60.0
    assert plant.batteries[0].soc_pct <= 90.0 + 1e-6
    assert sum(i.output_w for i in plant.inverters) < 2200.0


def test_the_battery_filling_up_hands_over_to_curtailment_without_an_overshoot() -> None:
    """A small battery fills within the run; as it tapers, the inverters come down first."""
    plant = site(8000.0, 500.0, 93.0, own_mode="idle")
    plant.batteries[0].capacity_wh = 500.0
    settings = BatterySettings(max_soc_pct=98.0)
    trace = run_closed_loop(plant, lambda t: EXPORT_1500, 120.0, battery_settings=settings)
    assert plant.batteries[0].soc_pct == pytest.approx(98.0, abs=0.3)
    assert max(p.export_w for p in trace if p.t >= 15) <= allowed(1500.0)


def test_an_import_limit_is_held_by_discharging() -> None:
    """Evening, 6 kW load, no PV, a charged battery that would otherwise sit idle: an import
    limit of 2000 W is held within L × 1.04 + 50 W within 15 s."""
    plant = site(0.0, 6000.0, 80.0, own_mode="idle")
    limit = EffectiveLimits(import_w=2000.0, sources={"import_w": "utility"})
    trace = run_closed_loop(plant, lambda t: EffectiveLimits() if t < 20 else limit, 80.0)
    assert all(-p.export_w > 5000.0 for p in trace if 5 <= p.t < 20)  # before: 6 kW imported
    assert all(-p.export_w <= allowed(2000.0) for p in trace if p.t >= 35)
    assert plant.batteries[0].power_w == pytest.approx(4000.0, abs=200.0)


def test_the_reserve_soc_is_respected() -> None:
    """Discharging for an import limit stops at the owner's reserve: the limit then is not
    enforceable, and the battery is not taken below its reserve."""
    plant = site(0.0, 6000.0, 21.0, own_mode="idle")
    plant.batteries[0].capacity_wh = 1000.0
    limit = EffectiveLimits(import_w=2000.0, sources={"import_w": "utility"})
    lowest = [100.0]

    def observe(t: float, p: Plant, lim: EffectiveLimits, out: object) -> None:
        lowest[0] = min(lowest[0], p.batteries[0].soc_pct)

    trace = run_closed_loop(plant, lambda t: limit, 120.0, observe=observe)
    assert lowest[0] >= 20.0 - 0.05
    assert abs(plant.batteries[0].power_w) < 50.0
    assert -trace[-1].export_w > 5500.0  # nothing left to discharge


def test_an_unreachable_battery_leaves_export_to_curtailment() -> None:
    """The battery is absorbing the surplus when it stops answering; its revert timer returns
    it to its own mode (idle here), so its charge stops. The inverters take over: export is
    back within the limit within 15 s of its revert, and no command goes to it meanwhile."""
    plant = site(8000.0, 500.0, 50.0, own_mode="idle", revert_s=20.0)
    sent: list[tuple[float, str]] = []

    def hook(t: float, p: Plant) -> None:
        p.batteries[0].reachable = t < 30.0

    def observe(t: float, p: Plant, lim: EffectiveLimits, out: object) -> None:
        for c in out.battery_commands:  # type: ignore[attr-defined]
            sent.append((t, c.id))

    trace = run_closed_loop(plant, lambda t: EXPORT_1500, 120.0, hook=hook, observe=observe)
    assert all(t < 30.0 for t, _ in sent)
    assert plant.batteries[0].power_w == pytest.approx(0.0, abs=20.0)  # reverted, idle
    assert all(p.export_w <= allowed(1500.0) for p in trace if p.t >= 50 + 15)
    assert sum(i.output_w for i in plant.inverters) < 2200.0


def test_nothing_limits_so_the_battery_follows_its_own_mode() -> None:
    """No limit: the law sends "own mode" (None), and the battery self-consumes as it likes."""
    plant = site(6000.0, 500.0, 50.0)
    outs = []
    run_closed_loop(
        plant, lambda t: EffectiveLimits(), 30.0, observe=lambda t, p, lim, o: outs.append(o)
    )
    assert all(c.setpoint_w is None for o in outs for c in o.battery_commands)
    assert {o.battery_mode for o in outs} == {"own"}
    assert plant.batteries[0].power_w == pytest.approx(-5000.0, abs=50.0)


def test_a_quiet_meter_leaves_the_battery_charging_only_and_keeps_the_export_fail_safe() -> None:
    plant = site(6000.0, 500.0, 50.0, own_mode="idle")
    outs = []

    def hook(t: float, p: Plant) -> None:
        p.meter_alive = t < 30.0

    run_closed_loop(
        plant, lambda t: EXPORT_1500, 60.0, hook=hook, observe=lambda t, p, lim, o: outs.append(o)
    )
    late = [o for o in outs if o.mode == "failsafe"]
    assert late and all(
        c.setpoint_w is None and c.charge_only for o in late for c in o.battery_commands
    )
    assert all(o.battery_mode == "failsafe" for o in late)
    assert sum(i.output_w for i in plant.inverters) <= 1500.0


@pytest.mark.parametrize("charge_only", [True, False], ids=["charge-only", "held-704"])
def test_a_quiet_meter_never_hands_the_house_load_from_the_pv_to_the_battery(
    charge_only: bool,
) -> None:
    """3 kW of load, 6 kW of sun, a 1.5 kW limit and a self-consumption battery, then the
    meter goes quiet. Left in its own mode, the battery covered the load the fail-safe cap gave
    up, the inverters came down by what it discharged, and it ended carrying the whole house
    with the PV at 0 %; when the load then fell to 300 W its discharge went out at 2.7 kW. Told
    "charge only", it stops discharging, the inverters keep making the fail-safe's 1.5 kW (the
    grid covers the rest of the load), and the load's fall exports no more than the limit: the
    battery takes the surplus instead. A battery that cannot be told "charge only" (model 704)
    is held idle instead: the same export, the surplus curtailed."""
    plant = site(6000.0, 3000.0, 60.0, can_charge_only=charge_only)
    trace_outs: list[tuple[float, float, float]] = []

    def hook(t: float, p: Plant) -> None:
        p.meter_alive = t < 30.0
        if t >= 200.0:
            p.load_w = 300.0

    def observe(t: float, p: Plant, lim: object, o: object) -> None:
        trace_outs.append((t, sum(i.output_w for i in p.inverters), p.batteries[0].power_w))

    trace = run_closed_loop(plant, lambda t: EXPORT_1500, 260.0, hook=hook, observe=observe)
    outage = [x for x in trace_outs if 60.0 <= x[0] < 200.0]
    assert outage
    assert min(inv for _, inv, _ in outage) >= 1300.0  # the PV still covers what it may
    assert max(bat for _, _, bat in outage) <= 30.0  # the battery does not carry the house
    assert max(p.export_w for p in trace if p.t >= 30.0) <= allowed(1500.0)
    if charge_only:
        assert plant.batteries[0].power_w < -800.0  # after the load fell: it stores the surplus
    else:
        assert abs(plant.batteries[0].power_w) < 30.0  # held


def test_import_and_load_limits_are_enforced_only_with_a_battery() -> None:
    limits = EffectiveLimits(import_w=2000.0, load_w=3000.0, sources={"import_w": "utility"})
    meter = RollingMean(1.0).add(0.0, 1000.0)
    inv = [InverterState("inv1", True, True, 6000.0, 0.0)]
    bare = control_step(meter, inv, limits, ControllerState(), 0.0)
    assert bare.not_enforced == ("import_w", "load_w") and bare.battery_mode is None
    bat = BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 50.0, 0.0)
    with_bat = control_step(meter, inv, limits, ControllerState(), 0.0, batteries=[bat])
    assert with_bat.not_enforced == ()
    offline = control_step(
        meter,
        inv,
        limits,
        ControllerState(),
        0.0,
        batteries=[bat.__class__(**{**bat.__dict__, "online": False})],
    )
    assert offline.not_enforced == ("import_w", "load_w")
    assert enforced_doe_modes(False) == DOEMode.EXPORT | DOEMode.GENERATION
    assert (
        enforced_doe_modes(True)
        == DOEMode.EXPORT | DOEMode.GENERATION | DOEMode.IMPORT | DOEMode.LOAD
    )


def test_a_battery_nearing_its_maximum_soc_is_not_counted_on_by_the_inverters() -> None:
    """Charging 4 kW at 99.5 % of a 100 % maximum (taper 3 %): it may take only ~830 W more, so
    the inverters' target counts on no more than that, even though it charges 4 kW now."""
    meter = RollingMean(1.0).add(0.0, -1500.0)
    inv = [InverterState("inv1", True, True, 12000.0, 6000.0, limit_pct=50.0)]
    bat = BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 99.5, -4000.0)
    out = control_step(meter, inv, EXPORT_1500, ControllerState(), 0.0, batteries=[bat])
    assert out.battery_expected_w == pytest.approx(-5000.0 * 0.5 / 3.0)
    assert out.target_w is not None
    load = out.load_estimate_w
    assert load is not None
    assert out.target_w <= load + 1500.0 - 20.0 + 5000.0 * 0.5 / 3.0 + 1e-6


def test_bad_battery_readings_never_reach_a_command() -> None:
    meter = RollingMean(1.0).add(0.0, -3000.0)
    inv = [InverterState("inv1", True, True, 12000.0, 6000.0, limit_pct=50.0)]
    for bad in (
        BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, math.nan, -1000.0),
        BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 50.0, math.nan),
        BatteryState("bat", True, True, 10000.0, math.inf, -1.0, 50.0, 0.0),
    ):
        out = control_step(meter, inv, EXPORT_1500, ControllerState(), 0.0, batteries=[bad])
        for c in out.battery_commands:
            assert c.setpoint_w is None or math.isfinite(c.setpoint_w)
            assert c.setpoint_w is None or abs(c.setpoint_w) < 1e-9 or bad.soc_pct == 50.0
        assert out.target_w is None or math.isfinite(out.target_w)


# ---------------------------------------------------------------------------------------
# The planner


def _day(limit_w: float | None = 1500.0) -> list[ForecastStep]:
    """Hourly: PV 8 kW peak at noon, 500 W load, the limit from 10:00 to 15:00."""
    steps = []
    for h in range(6, 20):
        pv = max(0.0, 8000.0 * math.sin(math.pi * (h + 0.5 - 6.0) / 13.0))
        lim = limit_w if 10 <= h < 15 else None
        steps.append(ForecastStep(h * 3600.0, pv, 500.0, lim))
    return steps


def test_the_planner_holds_morning_charging_back_when_the_limit_will_need_the_room() -> None:
    bat = BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 40.0, 0.0)
    plan = plan_charge(8 * 3600.0, bat, _day(), BatterySettings())
    assert plan.need_wh > 6000.0 >= plan.room_wh
    assert plan.max_charge_w == 0.0


def test_the_planner_lets_the_battery_charge_when_there_is_room_to_spare() -> None:
    bat = BatteryState("bat", True, True, 40000.0, 5000.0, 5000.0, 20.0, 0.0)
    assert plan_charge(8 * 3600.0, bat, _day(), BatterySettings()).max_charge_w is None
    no_limit = plan_charge(8 * 3600.0, bat, _day(None), BatterySettings())
    assert no_limit.max_charge_w is None and no_limit.need_wh == 0.0


def test_the_planner_never_holds_back_at_the_cost_of_the_evening_reserve() -> None:
    """Little surplus over the limit expected: holding back would end the day below the
    owner's evening SoC, so the battery charges as it likes."""
    bat = BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 30.0, 0.0)
    small = [
        ForecastStep(f.t, f.pv_w, f.load_w, None if f.export_limit_w is None else 5000.0)
        for f in _day()
    ]
    plan = plan_charge(8 * 3600.0, bat, small, BatterySettings(), evening_soc_pct=80.0)
    assert plan.max_charge_w is None and plan.reason == "evening reserve first"


def test_the_clear_sky_curve_and_the_pv_expectation() -> None:
    assert clear_sky_fraction(172, 0.0, -34.9) == 0.0  # midnight
    noon = clear_sky_fraction(355, 12.0, -34.9)
    assert noon == pytest.approx(1.0)
    assert 0.0 < clear_sky_fraction(355, 8.0, -34.9) < noon
    hours = [8.0, 12.0]
    full = pv_expectation(8000.0, 355, hours, -34.9)
    assert full[1] == pytest.approx(8000.0)
    half = pv_expectation(
        8000.0,
        355,
        hours,
        -34.9,
        observed=[(9.0, 0.5 * 8000.0 * clear_sky_fraction(355, 9.0, -34.9))],
    )
    assert half[1] == pytest.approx(4000.0)


def test_the_forecast_follows_the_limits_outlook_and_the_sun() -> None:
    """From 08:00: half-hour steps to midnight, the limit in force at each, no PV at night, and
    the curve scaled by what was produced this morning."""
    now = 1_000_000.0
    outlook = [(now, None), (now + 2 * 3600.0, 1500.0), (now + 7 * 3600.0, None)]
    steps = forecast(now, 8.0, 355, -34.9, 8000.0, 400.0, outlook)
    assert len(steps) == 32 and steps[0].t == now and steps[1].t == now + 1800.0
    by_hour = {8.0 + (s.t - now) / 3600.0: s for s in steps}
    assert by_hour[9.5].export_limit_w is None
    assert by_hour[10.0].export_limit_w == 1500.0 and by_hour[14.5].export_limit_w == 1500.0
    assert by_hour[15.0].export_limit_w is None
    assert by_hour[12.0].pv_w > by_hour[9.0].pv_w > 0.0 and by_hour[22.0].pv_w == 0.0
    assert all(s.load_w == 400.0 for s in steps)
    half = forecast(now, 8.0, 355, -34.9, 8000.0, 400.0, outlook, observed=[(7.0, 1000.0)])
    assert half[0].pv_w < steps[0].pv_w


def test_zone_latitude_defaults_to_sydney() -> None:
    assert latitude_for("Australia/Adelaide") == -34.9
    assert latitude_for(None) == latitude_for("Europe/Paris") == -33.9


def test_a_hybrids_battery_is_not_counted_twice() -> None:
    """A hybrid's battery power is inside its inverter's AC reading: the load estimate must not
    add it again, and the inverters' target does not count on it (its charge is behind the AC
    limit already)."""
    meter = RollingMean(1.0).add(0.0, -1500.0)  # exporting 1.5 kW
    inv = [InverterState("gen24", True, True, 10000.0, 2000.0)]  # AC: 5 kW PV − 3 kW charge
    hybrid = BatteryState(
        "bat", True, True, 10000.0, 5000.0, 5000.0, 50.0, -3000.0, ac_coupled=False
    )
    ac = BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 50.0, -3000.0)
    out_h = control_step(meter, inv, EXPORT_1500, ControllerState(), 0.0, batteries=[hybrid])
    out_a = control_step(meter, inv, EXPORT_1500, ControllerState(), 0.0, batteries=[ac])
    assert out_h.load_estimate_w == pytest.approx(500.0)
    assert out_a.load_estimate_w == pytest.approx(-2500.0)  # AC-coupled: its output is added
    assert out_h.battery_expected_w == 0.0


def test_a_push_that_brings_no_pv_up_never_charges_the_battery_from_the_grid() -> None:
    """The inverters look curtailed (one is held at its limit by its share of the budget), so the
    law pushes the charge up to reveal hidden PV; but the PV does not come up and the site
    imports to charge. The battery must back off to the surplus (plus the band), not push deeper:
    grid energy stored at the owner's cost is no saving."""
    from dynexport.control.battery import BatteryMemory, SiteView, decide_batteries

    s = BatterySettings()
    bat = BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 50.0, power_w=-5000.0)
    # 5 kW of PV, 4 kW of load: 1 kW of surplus, the battery takes 5 kW -> 4 kW from the grid.
    view = SiteView(
        load_w=4000.0, inverters_w=5000.0, export_limit_w=1500.0, export_margin_w=60.0,
        import_limit_w=None, load_limit_w=None, generation_limit_w=None, curtailed=True,
    )  # fmt: skip
    memory = BatteryMemory(engaged_until=100.0, setpoint_w=-5000.0)
    charge = []
    for step in range(30):
        d = decide_batteries([bat], view, memory, 10.0 + step, 1.0, None, s)
        [cmd] = d.commands
        assert cmd.setpoint_w is not None
        charge.append(-cmd.setpoint_w)
        memory = d.memory
        bat = BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 50.0, cmd.setpoint_w)
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(charge)), charge
    assert charge[-1] <= 1000.0 + s.release_band_w + 1.0, charge  # the surplus and the band
    # While the site exports, the same push goes on (hidden PV is still sought).
    exporting = SiteView(
        load_w=1000.0, inverters_w=5000.0, export_limit_w=1500.0, export_margin_w=60.0,
        import_limit_w=None, load_limit_w=None, generation_limit_w=None, curtailed=True,
    )  # fmt: skip
    low = BatteryState("bat", True, True, 10000.0, 5000.0, 5000.0, 50.0, power_w=-2500.0)
    d = decide_batteries([low], exporting, BatteryMemory(100.0, -2500.0), 10.0, 1.0, None, s)
    assert d.commands[0].setpoint_w is not None and d.commands[0].setpoint_w < -2500.0


@pytest.mark.parametrize("revert_s", [20.0, 60.0])
def test_an_unreachable_batterys_charge_ending_at_its_revert_time_is_made_room_for(
    revert_s: float,
) -> None:
    """A battery charging 5 kW of surplus (1.5 kW export limit) stops answering; at its revert
    time its own mode (idle) stops the charge and it comes back as export at once. The law knew
    when, but kept no room for it: 5.8 kW exported for several seconds."""
    limit = 1500.0
    limits = EffectiveLimits(export_w=limit, sources={"export_w": "utility"})
    plant = Plant(
        inverters=[SimInverter("inv1", 6000.0, 4000.0), SimInverter("inv2", 6000.0, 4000.0)],
        load_w=500.0,
        seed=3,
    )
    plant.batteries.append(
        SimBattery("bat", 10000.0, 5000.0, 5000.0, 50.0, own_mode="idle", revert_s=revert_s)
    )

    def hook(t: float, p: Plant) -> None:
        p.batteries[0].reachable = t < 30.0

    trace = run_closed_loop(plant, lambda t: limits, 30.0 + revert_s + 40.0, hook=hook)
    assert plant.batteries[0].power_w > -100.0, "its charge did stop"
    worst = max(pt.export_w for pt in trace if pt.t >= 20.0)
    assert worst <= limit * 1.04 + 50.0


def test_an_unreachable_battery_told_charge_only_may_discharge_no_more_than_last_seen() -> None:
    """Until its revert time a charge-only battery cannot discharge more than it last did (it
    is only coming down); from then on its own mode may cover any load, at its whole rate."""
    b = BatteryState(
        "bat", False, True, 10000.0, 5000.0, 4000.0, 50.0, 150.0,
        setpoint_w=None, setpoint_expires_t=100.0, charge_only=True,
    )  # fmt: skip
    assert possible_battery_output_w(b, 50.0) == 150.0
    assert possible_battery_output_w(b, 50.0, lead_s=60.0) == 4000.0  # about to revert
    assert possible_battery_output_w(b, 100.0) == 4000.0
    released = BatteryState("bat", False, True, 10000.0, 5000.0, 4000.0, 50.0, 150.0)
    assert possible_battery_output_w(released, 50.0) == 4000.0


@pytest.mark.parametrize(
    ("battery", "counted_w"),
    [
        (BatteryState("bat", False, True, 10000.0, 5000.0, 3000.0, 50.0, 400.0), 3000.0),
        (
            BatteryState(
                "bat", False, True, 10000.0, 5000.0, 3000.0, 50.0, 400.0,
                setpoint_w=800.0, setpoint_expires_t=100.0,
            ),
            800.0,
        ),
        (
            BatteryState(
                "bat", False, True, 10000.0, 5000.0, 3000.0, 50.0, 400.0,
                setpoint_expires_t=100.0, charge_only=True,
            ),
            400.0,
        ),
    ],
    ids=["own-mode", "setpoint", "charge-only"],
)  # fmt: skip
def test_in_the_fail_safe_an_unreachable_batterys_possible_discharge_comes_off_the_inverters(
    battery: BatteryState, counted_w: float
) -> None:
    """The meter quiet, a 5 kW export limit, two 6 kW inverters and an AC battery that does not
    answer: the inverters' fail-safe cap leaves room for the most it may discharge unseen (in
    its own mode its whole rate, since it covers whatever load it sees and lags when that load
    falls; its setpoint until its revert time; told "charge only", its last reading). Without
    it, the fail-safe's zero-load cap plus that discharge is more than the limit."""
    inverters = [
        InverterState("inv1", True, True, 6000.0, 3000.0),
        InverterState("inv2", True, True, 6000.0, 3000.0),
    ]
    limits = EffectiveLimits(export_w=5000.0, sources={"export_w": "utility"})

    def decide(batteries: list[BatteryState]) -> ControlOutput:
        quiet = RollingMean(1.0)  # no sample: the meter has said nothing
        return control_step(quiet, inverters, limits, ControllerState(), 50.0, batteries=batteries)

    alone, beside = decide([]), decide([battery])
    assert alone.mode == beside.mode == "failsafe"
    assert beside.battery_commands == ()  # unreachable: nothing is written to it
    assert alone.budget_w - beside.budget_w == pytest.approx(counted_w)
    assert beside.budget_w + counted_w <= 5000.0


def test_a_held_battery_lets_its_charge_down_no_faster_than_the_inverters_come_down() -> None:
    """Charging 4 kW of a 6 kW surplus when the meter goes quiet: a 704 battery (no "charge
    only") is held, its charge let down as the inverters come down to the fail-safe cap, so the
    charge stopping never goes out over the limit while they lag."""
    plant = site(10000.0, 500.0, 50.0, can_charge_only=False, own_mode="idle")
    plant.inverters[0].rated_w = plant.inverters[1].rated_w = 6000.0
    hold = ChargePlan(None, reason="test")
    setpoints: list[tuple[float, float | None]] = []

    def hook(t: float, p: Plant) -> None:
        p.meter_alive = t < 60.0

    def observe(t: float, p: Plant, lim: object, o: object) -> None:
        assert isinstance(o, ControlOutput)
        setpoints.extend((t, c.setpoint_w) for c in o.battery_commands)

    trace = run_closed_loop(
        plant, lambda t: EXPORT_1500, 120.0, hook=hook, observe=observe,
        planner=lambda t, p: hold,
    )  # fmt: skip
    before = [sp for t, sp in setpoints if 50.0 <= t < 60.0]
    assert before and all(sp is not None and sp < -3000.0 for sp in before)  # charging hard
    quiet = [sp for t, sp in setpoints if t >= 61.0]
    assert all(sp is not None and sp <= 0.0 for sp in quiet)  # never a discharge
    assert quiet[-1] == pytest.approx(0.0, abs=20.0)  # idle once they are down
    assert max(p.export_w for p in trace if p.t >= 15.0) <= allowed(1500.0)


def test_in_the_fail_safe_one_batterys_charge_never_hides_anothers_discharge() -> None:
    """A held 704 battery charging 2 kW and another still discharging 1.5 kW as the meter goes
    quiet: the inverters' cap counts the 1.5 kW (the held charge is let down as they come down,
    so it cannot cover it; summed, the two counted nothing)."""
    held = BatteryState(
        "a", True, True, 10000.0, 5000.0, 5000.0, 50.0, -2000.0, charge_only_possible=False
    )
    other = BatteryState("b", True, True, 10000.0, 5000.0, 5000.0, 50.0, 1500.0)
    out = decide_batteries(
        [held, other], None, BatteryMemory(), 10.0, 1.0, None, BatterySettings(), 800.0
    )
    assert out.expected_w == 1500.0
    assert [(c.id, c.setpoint_w, c.charge_only) for c in out.commands] == [
        ("a", -800.0, False),
        ("b", None, True),
    ]


def _own_mode_battery(power_w: float) -> BatteryState:
    return BatteryState(
        id="bat",
        online=True,
        controllable=True,
        capacity_wh=10000.0,
        max_charge_w=5000.0,
        max_discharge_w=5000.0,
        soc_pct=50.0,
        power_w=power_w,
    )


def _night_site(
    *, load_w: float, export_limit_w: float | None, import_limit_w: float | None
) -> SiteView:
    return SiteView(
        load_w=load_w,
        inverters_w=0.0,
        export_limit_w=export_limit_w,
        export_margin_w=20.0 if export_limit_w is not None else 0.0,
        import_limit_w=import_limit_w,
        load_limit_w=None,
        generation_limit_w=None,
        curtailed=False,
    )


def test_a_battery_whose_own_mode_grid_charges_past_the_import_limit_is_taken_over_at_once() -> (
    None
):
    """Found by review: the law looked at the site as if the batteries were idle (500 W
    import, far from 2 kW), and left a 5 kW off-peak grid charge of the battery's own schedule
    alone for hours: 5.5 kW imported. It is taken over, and held for the owner's schedule's
    sake longer than a limit the idle site brings (it would break the limit again)."""
    site = _night_site(load_w=500.0, export_limit_w=None, import_limit_w=2000.0)
    settings = BatterySettings()
    d = decide_batteries(
        [_own_mode_battery(-5000.0)], site, BatteryMemory(), 1000.0, 1.0, None, settings
    )
    assert d.mode == "engaged" and "its own mode near the import limit" in d.reason
    assert d.total_w is not None
    assert site.load_w - d.total_w <= 2000.0, "under the limit from the first command"
    assert d.memory.engaged_until == 1000.0 + settings.own_breach_hold_s


def test_a_battery_whose_own_mode_keeps_the_site_clear_of_its_limits_is_left_alone() -> None:
    """Self-consumption at night (a discharge covering the house, at a zero export limit) and a
    small grid charge well under the import limit are the owner's business."""
    for power_w, import_limit_w in ((500.0, 2000.0), (-800.0, 2000.0)):
        site = _night_site(load_w=500.0, export_limit_w=0.0, import_limit_w=import_limit_w)
        d = decide_batteries(
            [_own_mode_battery(power_w)],
            site,
            BatteryMemory(),
            1000.0,
            1.0,
            None,
            BatterySettings(),
        )
        assert d.mode == "own", (power_w, d.mode, d.reason)
