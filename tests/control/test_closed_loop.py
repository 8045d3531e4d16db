"""Closed loop: the law driving the simulated site at a 1 s interval, in simulated time."""

from __future__ import annotations

import pytest

from dynexport.control.law import ControlOutput, ControlSettings, margin_w
from dynexport.control.limits import EffectiveLimits
from dynexport.control.plant import (
    SAPN_STEPS_W,
    Hook,
    Plant,
    SimInverter,
    TracePoint,
    _measure,
    run_closed_loop,
    simulate_steps,
    tolerance_w,
    two_inverter_site,
)

S = ControlSettings()
SETTLE_S = 10.0
"""What "well inside 15 s" means here: the plant's own lag is 1.5 s."""


def export_limit(w: float | None, **kw: object) -> EffectiveLimits:
    return EffectiveLimits(export_w=w, sources={"export_w": "utility"}, **kw)  # type: ignore[arg-type]


def over_limit(pt: TracePoint, limit: float) -> float:
    return pt.export_w - (limit + tolerance_w(limit))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sapn_step_sequence_settles_well_inside_15_s_and_holds(seed):
    result = simulate_steps(SAPN_STEPS_W, hold_s=30.0, plant=two_inverter_site(seed=seed))
    assert [m.limit_w for m in result.steps] == list(SAPN_STEPS_W)
    for m in result.steps:
        assert m.settling_s is not None and m.settling_s <= SETTLE_S, m
        assert abs(m.steady_state_error_w) <= m.tolerance_w, m
        assert m.overshoot_w <= m.tolerance_w, m  # no ringing past the band
        held = [pt for pt in result.trace if m.t_step + SETTLE_S <= pt.t < m.t_step + 30]
        assert held and all(abs(pt.export_w - m.limit_w) <= m.tolerance_w for pt in held), m


@pytest.mark.parametrize(
    ("tau", "seed", "settle_s"), [(0.3, 7, 2.0), (0.3, 8, 2.0), (2.0, 7, 10.0)]
)
def test_steps_settle_with_fast_and_slow_inverters(tau, seed, settle_s):
    """With fast inverters the law itself costs at most two ticks (no re-rise after a cut)."""
    plant = two_inverter_site(seed=seed)
    plant.tau_s = tau
    result = simulate_steps(SAPN_STEPS_W, hold_s=20.0, plant=plant)
    for m in result.steps:
        assert m.settling_s is not None and m.settling_s <= settle_s, m
        assert m.overshoot_w <= m.tolerance_w, m


def test_pv_ramps_and_load_jumps_keep_export_within_the_limit():
    plant = two_inverter_site(seed=3, pv_w=2000.0)

    def world(t: float, p: Plant) -> None:
        for inv in p.inverters:
            inv.pv_w = 2000.0 + 4000.0 * min(t / 60.0, 1.0)  # morning ramp to 6 kW each
        p.load_w = 3000.0 if 40.0 <= t < 80.0 else 500.0 if t < 80 else 300.0

    trace = run_closed_loop(plant, lambda t: export_limit(1500.0), 120.0, hook=world)
    for pt in trace:
        # Start-up, and a load drop: disturbances the controller answers after they happen.
        if pt.t < SETTLE_S or 80.0 <= pt.t < 80.0 + SETTLE_S:
            continue
        assert over_limit(pt, 1500.0) <= 0, pt
    # Enough PV for the limit all along: export tracks it, and recovers from each jump in time.
    for pt in trace:
        if not any(jump <= pt.t < jump + SETTLE_S for jump in (0.0, 40.0, 80.0)):
            assert abs(pt.export_w - 1500.0) <= tolerance_w(1500.0) + 50, pt


def test_an_inverter_that_drops_out_hands_its_share_to_the_other():
    plant = two_inverter_site(seed=4)

    def world(t: float, p: Plant) -> None:
        if t >= 40.0:  # inv2 trips and its comms go with it
            p.inverters[1].reachable = False
            p.inverters[1].pv_w = 0.0

    trace = run_closed_loop(plant, lambda t: export_limit(3000.0), 80.0, hook=world)
    before = [pt for pt in trace if 25 <= pt.t < 40]
    after = [pt for pt in trace if pt.t >= 40 + SETTLE_S]
    assert all(abs(pt.export_w - 3000) <= tolerance_w(3000) for pt in before + after)
    # inv1 now makes load + limit on its own (about 3.5 kW) instead of half of it.
    assert plant.inverters[0].output_w == pytest.approx(3500 - 30, abs=150)
    assert all(over_limit(pt, 3000.0) <= 0 for pt in trace if pt.t >= 25)


def test_an_unreachable_inverter_reverting_to_full_output_is_compensated():
    plant = two_inverter_site(seed=5)
    plant.revert_s = 20.0

    def world(t: float, p: Plant) -> None:
        if t >= 40.0:
            p.inverters[1].reachable = False  # still producing at its last limit

    trace = run_closed_loop(plant, lambda t: export_limit(7000.0), 100.0, hook=world)
    # Its revert timer lapses at about t = 60 s: it jumps to 6 kW; inv1 must give way.
    late = [pt for pt in trace if pt.t >= 60 + 1 + SETTLE_S]
    assert all(abs(pt.export_w - 7000) <= tolerance_w(7000) for pt in late)
    assert plant.inverters[1].output_w == pytest.approx(6000, abs=50)
    assert plant.inverters[0].output_w == pytest.approx(7500 - 70 - 6000, abs=200)


def test_an_uncontrollable_inverter_output_is_taken_out_of_the_budget():
    plant = Plant(
        inverters=[
            SimInverter("new", rated_w=6000, pv_w=6000),
            SimInverter("old", rated_w=4000, pv_w=3500, controllable=False),
        ],
        seed=6,
    )
    trace = run_closed_loop(plant, lambda t: export_limit(5000.0), 40.0)
    assert all(abs(pt.export_w - 5000) <= tolerance_w(5000) for pt in trace if pt.t >= SETTLE_S)
    assert plant.inverters[1].output_w == pytest.approx(3500, abs=1)
    assert plant.inverters[0].output_w == pytest.approx(5500 - 50 - 3500, abs=150)


def test_losing_the_meter_applies_the_fail_safe_within_the_stale_timeout():
    plant = two_inverter_site(seed=8)
    plant.load_w = 2000.0
    settings = ControlSettings(stale_s=5.0)

    def world(t: float, p: Plant) -> None:
        p.meter_alive = not (40.0 <= t < 80.0)

    trace = run_closed_loop(plant, lambda t: export_limit(1500.0), 110.0, settings, hook=world)
    by_t = {round(pt.t): pt for pt in trace}
    assert by_t[39].mode == "normal" and by_t[39].der_w > 3000  # load + limit before
    # The last sample was taken at 40 s: stale after 45 s, so the next tick (46 s) is fail-safe.
    assert by_t[45].mode == "normal"
    assert all(by_t[t].mode == "failsafe" for t in range(46, 80))
    # Generation ≤ the export limit, so even with zero load export could not exceed it.
    assert all(by_t[t].der_w <= 1500 for t in range(46 + int(SETTLE_S), 80))
    assert by_t[85].mode == "normal"
    assert all(abs(by_t[t].export_w - 1500) <= tolerance_w(1500) for t in range(80 + 15, 110))


def test_energize_false_brings_output_to_zero_and_back():
    plant = two_inverter_site(seed=9)

    def limits(t: float) -> EffectiveLimits:
        return export_limit(5000.0, energize=not (20 <= t < 40))

    trace = run_closed_loop(plant, limits, 70.0)
    by_t = {round(pt.t): pt for pt in trace}
    assert all(by_t[t].der_w < 50 for t in range(28, 40))
    assert by_t[30].mode == "deenergized"
    assert abs(by_t[69].export_w - 5000) <= tolerance_w(5000)


def test_connect_false_disconnects_the_inverters():
    plant = two_inverter_site(seed=10)
    trace = run_closed_loop(plant, lambda t: export_limit(None, connect=t < 10), 25.0)
    assert not trace[-1].connect
    assert all(not inv.connected for inv in plant.inverters)
    assert plant.der_w < 10


def test_ramp_tms_slows_an_increase_to_the_time_asked():
    plant = two_inverter_site(seed=11)

    def limits(t: float) -> EffectiveLimits:
        return export_limit(1000.0 if t < 30 else 6000.0, ramp_tms=2000)  # 20 s

    trace = run_closed_loop(plant, limits, 70.0)
    by_t = {round(pt.t): pt for pt in trace}
    assert 2500 <= by_t[40].export_w <= 4500  # half way at half time, not already there
    assert by_t[35].export_w < by_t[40].export_w < by_t[45].export_w
    assert all(abs(by_t[t].export_w - 6000) <= tolerance_w(6000) for t in range(56, 70))


def test_set_grad_w_limits_how_fast_output_rises():
    plant = two_inverter_site(seed=12)
    grad = 100  # 1 %/s of the site's 12 kW = 120 W/s

    def limits(t: float) -> EffectiveLimits:
        return export_limit(1000.0 if t < 30 else 6000.0, set_grad_w=grad)

    trace = run_closed_loop(plant, limits, 110.0)
    by_t = {round(pt.t): pt for pt in trace}
    base = by_t[29].export_w
    for t in range(30, 60):
        assert by_t[t].export_w <= base + 120 * (t - 30) + tolerance_w(1000), t
    assert by_t[45].export_w > base + 1000  # it does rise
    assert all(abs(by_t[t].export_w - 6000) <= tolerance_w(6000) for t in range(80, 110))


def test_step_metrics_measure_settling_overshoot_and_error():
    pts = [
        TracePoint(float(t), e, 1000.0, 0.0, "normal", None, True)
        for t, e in enumerate([3000, 2000, 1200, 700, 950, 990, 980, 1000, 990])
    ]
    m = _measure(pts, 1000.0, 0.0, 3000.0)
    assert m.tolerance_w == 100
    assert m.settling_s == 4.0  # 700 at t=3 is the last sample outside ±100 W
    assert m.steady_state_error_w == pytest.approx(-10.0)
    assert m.overshoot_w == pytest.approx(990 - 700)
    assert m.max_excess_w == 0.0


# --------------------------------------------------------------------------------------
# Ramps move the limit, not the command; unreachable inverters count at their most


FOLLOW_S = 3.0
"""How far export may trail a moving limit: one tick, then the inverters' lag (τ = 1.5 s)."""


def react_s(tau: float) -> float:
    """How long a load fall takes to answer: the meter window, a tick, then the lag (5 τ)."""
    return 3.0 + 5.0 * tau


def test_a_load_drop_mid_ramp_up_is_followed_at_once_not_by_the_ramp_fraction():
    # Review figures: limit 0 -> 500 W over 300 s, one 5 kW inverter, load 3000 -> 500 W 10 s
    # into the ramp: export was +2.4 kW a second later and still +1.35 kW at 170 s.
    plant = Plant(inverters=[SimInverter("a", 5000, 5000)], load_w=3000.0, seed=21)

    def limits(t: float) -> EffectiveLimits:
        return export_limit(0.0 if t < 30 else 500.0, ramp_tms=30000)

    def world(t: float, p: Plant) -> None:
        p.load_w = 3000.0 if t < 40 else 500.0

    commands: list[tuple[float, float]] = []

    def observe(t: float, p: Plant, lim: EffectiveLimits, out: ControlOutput) -> None:
        assert out.load_estimate_w is not None and out.export_limit_w is not None
        aim = out.load_estimate_w + out.export_limit_w - margin_w(out.export_limit_w, S)
        commands.append((out.state.gen_cmd_w or 0.0, max(aim, 0.0)))

    trace = run_closed_loop(plant, limits, 220.0, hook=world, observe=observe)
    for pt in trace:
        ramped = 0.0 if pt.t < 30 else 500.0 * min((pt.t - 30) / 300, 1.0)
        if pt.t >= 40 + react_s(plant.tau_s):
            assert pt.export_w <= ramped * 1.04 + 50, pt
    assert all(cmd <= aim + 1e-6 for cmd, aim in commands)  # never more than the live target


def test_a_load_drop_mid_ramp_down_never_exports_above_the_old_limit():
    # Review figures: 5000 -> 1500 W over 60 s, load drop 5 s in: export reached 6.85 kW.
    plant = two_inverter_site(seed=22)
    plant.load_w = 3000.0

    def limits(t: float) -> EffectiveLimits:
        return export_limit(5000.0 if t < 30 else 1500.0, ramp_tms=6000)

    def world(t: float, p: Plant) -> None:
        p.load_w = 3000.0 if t < 35 else 500.0

    trace = run_closed_loop(plant, limits, 120.0, hook=world)
    for pt in trace:
        if pt.t >= 35 + react_s(plant.tau_s):
            # The ramp as it was FOLLOW_S ago: a tick and the inverters' lag behind it.
            ramped = 5000.0 - 3500.0 * min(max(pt.t - FOLLOW_S - 30, 0) / 60, 1.0)
            assert pt.export_w <= ramped * 1.04 + 50, pt
            assert pt.export_w <= 5000.0, pt


def test_set_grad_w_ramps_a_utility_reduction_down_at_its_rate():
    plant = two_inverter_site(seed=23)
    grad = 100  # 1 %/s of the site's 12 kW: 120 W/s; 6000 -> 1200 W takes 40 s

    def limits(t: float) -> EffectiveLimits:
        return export_limit(6000.0 if t < 30 else 1200.0, set_grad_w=grad)

    trace = run_closed_loop(plant, limits, 100.0)
    by_t = {round(pt.t): pt for pt in trace}
    for t in range(32, 70):
        ramped = max(6000.0 - 120.0 * (t - 30), 1200.0)
        behind = max(6000.0 - 120.0 * (t - FOLLOW_S - 30), 1200.0)
        assert ramped - 300 <= by_t[t].export_w <= behind * 1.04 + 50, t  # follows the ramp
    assert all(abs(by_t[t].export_w - 1200) <= tolerance_w(1200) for t in range(80, 100))


def test_ramp_tms_zero_steps_a_reduction_at_once_whatever_set_grad_w_says():
    """sep.xsd: only an *absent* rampTms means "use setGradW"; rampTms 0 asks for the change in
    0 s. It was taken for absent, so a 6000 -> 1200 W step took setGradW's 40 s."""
    plant = two_inverter_site(seed=23)

    def limits(t: float) -> EffectiveLimits:
        return export_limit(6000.0 if t < 30 else 1200.0, set_grad_w=100, ramp_tms=0)

    trace = run_closed_loop(plant, limits, 60.0)
    by_t = {round(pt.t): pt for pt in trace}
    assert by_t[29].export_w > 5000  # it was exporting near the old limit
    # setGradW's ramp would still allow 6000 - 120 W/s x 6 s = 5280 W at 36 s; the step is
    # followed as fast as the inverters come down
    assert all(by_t[t].export_w <= 1200 * 1.04 + 50 for t in range(36, 60))


def b_lost_at_30_s(b: SimInverter, seed: int, *, meter_too: bool) -> tuple[Plant, Hook]:
    """Inverter a (6 kW, PV 6 kW) and ``b`` behind a 500 W load, with 20 s revert timers, and
    the hook that makes b unreachable from 30 s (and, with ``meter_too``, the meter quiet)."""
    plant = Plant(inverters=[SimInverter("a", 6000, 6000), b], load_w=500.0, seed=seed)
    plant.revert_s = 20.0

    def world(t: float, p: Plant) -> None:
        if t >= 30:
            if meter_too:
                p.meter_alive = False
            p.inverters[1].reachable = False

    return plant, world


def test_an_unreachable_inverter_with_a_quiet_meter_is_counted_at_its_rating_after_revert():
    # Review figures: export limit, meter and one inverter lost: the inverter was counted at its
    # last output, its revert timer lifted its limit, and the site exported far over the limit.
    plant, world = b_lost_at_30_s(SimInverter("b", 2000, 2000), seed=24, meter_too=True)
    trace = run_closed_loop(plant, lambda t: export_limit(3000.0), 120.0, hook=world)
    assert trace[-1].mode == "failsafe"
    assert plant.inverters[1].output_w == pytest.approx(2000, abs=5)  # b runs free since ~50 s
    # Fail-safe: generation within the limit, b counted at its rating, even at zero load.
    assert all(pt.der_w <= 3000.0 for pt in trace if pt.t >= 40)
    assert all(pt.export_w <= 3000.0 * 1.04 + 50 for pt in trace if pt.t >= 40)


def test_an_unreachable_inverters_revert_is_anticipated_with_a_fresh_meter():
    # b (PV 1.5 kW) cannot be reached from 30 s; its revert timer frees it at about 49 s. Its
    # rise (about 500 W here) is reserved from 5 s before, so export never goes over.
    plant, world = b_lost_at_30_s(SimInverter("b", 6000, 1500), seed=25, meter_too=False)
    trace = run_closed_loop(plant, lambda t: export_limit(1500.0), 100.0, hook=world)
    assert plant.inverters[1].output_w == pytest.approx(1500, abs=5)
    assert all(pt.export_w <= 1500 * 1.04 + 50 for pt in trace if pt.t >= 10)
    assert all(abs(pt.export_w - 1500) <= tolerance_w(1500) for pt in trace if pt.t >= 75)


def test_written_limits_rounded_down_to_the_register_step_keep_export_below_the_limit():
    plant = two_inverter_site(seed=26)
    plant.limit_step_pct = 1.0  # WMaxLimPct_SF = 0: whole percent
    trace = run_closed_loop(plant, lambda t: export_limit(1500.0), 60.0)
    assert all(pct is None or pct == int(pct) for pct in (i.limit_pct for i in plant.inverters))
    assert all(pt.export_w <= 1500 + tolerance_w(1500) for pt in trace if pt.t >= SETTLE_S)


def test_a_shaded_array_leaves_its_share_to_the_sunny_one():
    """East array in shade (800 W of sun on 5 kW), west in full sun, 1 kW load, 3 kW export
    limit. One common percentage (39.7 %) held west at 1985 W while east could use only 800 W:
    export 1.8 kW. Shared, east keeps what it makes plus its headroom (200 W) and west takes the
    rest: export is the limit less the margin and that headroom, and never over the limit."""
    plant = Plant(
        inverters=[
            SimInverter("east", rated_w=5000, pv_w=800),
            SimInverter("west", rated_w=5000, pv_w=5000),
        ],
        load_w=1000.0,
        seed=12,
    )
    trace = run_closed_loop(plant, lambda t: export_limit(3000.0), 60.0)
    assert all(over_limit(pt, 3000.0) <= 0 for pt in trace if pt.t >= SETTLE_S)
    late = [pt for pt in trace if pt.t >= SETTLE_S]
    aim = 3000.0 - margin_w(3000.0, S)
    assert all(aim - 200.0 - 150.0 <= pt.export_w <= 3000.0 + tolerance_w(3000) for pt in late)
    assert plant.inverters[0].output_w == pytest.approx(800.0, abs=1.0)  # all its sun
    assert plant.inverters[1].output_w == pytest.approx(1000.0 + aim - 800.0 - 200.0, abs=150)
    assert plant.inverters[0].limit_pct == pytest.approx(100 * (800 + 200) / 5000, abs=2.0)


def test_the_shaded_array_gets_its_share_back_when_the_sun_returns():
    """The cloud passes: east climbs to its limit (what it made + headroom), is seen at its
    limit, and the two end at one common percentage, export at the limit throughout."""
    plant = Plant(
        inverters=[
            SimInverter("east", rated_w=5000, pv_w=800),
            SimInverter("west", rated_w=5000, pv_w=5000),
        ],
        load_w=1000.0,
        seed=13,
    )

    def world(t: float, p: Plant) -> None:
        if t >= 40.0:
            p.inverters[0].pv_w = 5000.0

    trace = run_closed_loop(plant, lambda t: export_limit(3000.0), 80.0, hook=world)
    assert all(over_limit(pt, 3000.0) <= 0 for pt in trace if pt.t >= SETTLE_S)
    late = [pt for pt in trace if pt.t >= 40.0 + SETTLE_S]
    assert all(abs(pt.export_w - 3000) <= tolerance_w(3000) for pt in late)
    east, west = plant.inverters
    assert east.limit_pct == pytest.approx(west.limit_pct, abs=1.0)
    assert east.output_w == pytest.approx(west.output_w, abs=100)
