"""The law's safety in awkward states: ramps that move the limit (not the command), unreachable
inverters counted at the most they may make, the utility fallback, and bad inputs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.control.average import RollingMean
from dynexport.control.law import (
    ControllerState,
    ControlOutput,
    ControlSettings,
    InverterState,
    LimitRamp,
    control_step,
    margin_w,
    possible_output_w,
)
from dynexport.control.limits import FALLBACK_LABEL, EffectiveLimits, UtilityLimits, merge_limits

S = ControlSettings()


def meter_at(now: float, site_w: float, last: float | None = None) -> RollingMean:
    """A meter that has read ``site_w`` steadily every 0.5 s up to ``last`` (default ``now``)."""
    end = now if last is None else last
    m = RollingMean(S.average_s)
    for k in range(6, -1, -1):
        m = m.add(end - 0.5 * k, site_w)
    return m


def inv(id: str, rated: float, power: float, **kw: object) -> InverterState:
    online = bool(kw.pop("online", True))
    controllable = bool(kw.pop("controllable", True))
    return InverterState(id, online, controllable, rated, power, **kw)  # type: ignore[arg-type]


def utility(limit: float | None, **kw: object) -> EffectiveLimits:
    sources = {"export_w": "utility"} if limit is not None else {}
    return EffectiveLimits(export_w=limit, sources=sources, **kw)  # type: ignore[arg-type]


def run(
    steps: list[tuple[float, float, list[InverterState], EffectiveLimits]],
    state: ControllerState | None = None,
) -> list[ControlOutput]:
    """Calls at (t, site W) with those inverters and limits, threading the state."""
    st_ = state or ControllerState()
    outs = []
    for t, site, invs, limits in steps:
        out = control_step(meter_at(t, site), invs, limits, st_, t)
        st_ = out.state
        outs.append(out)
    return outs


# --------------------------------------------------------------------------------------
# 1. Ramps move the limit; the target follows the live load


def test_a_load_drop_during_a_ramp_up_reaches_the_inverters_at_once():
    # One 5 kW inverter making 3 kW for a 3 kW load; the limit goes 0 -> 500 W over 300 s.
    a = [inv("a", 5000, 3000)]
    ramp = utility(500, ramp_tms=30000)
    steps = [(0.0, 0.0, a, utility(0))]
    steps += [(float(t), 0.0, a, ramp) for t in range(1, 12)]
    # 10 s into the ramp the load falls to 500 W: the meter shows 2.5 kW of export.
    steps.append((12.0, -2500.0, a, ramp))
    out = run(steps)[-1]
    limit_now = 500 * 11 / 300  # 18 W of the way
    assert out.export_limit_w == pytest.approx(limit_now)
    assert out.load_estimate_w == pytest.approx(500)
    assert out.target_w == pytest.approx(500 + limit_now - margin_w(limit_now, S))


def test_a_load_drop_during_a_ramp_down_never_exceeds_the_old_limits_target():
    a = [inv("a", 10000, 8000)]
    ramp = utility(1500, ramp_tms=6000)  # 5000 -> 1500 W over 60 s
    steps = [(0.0, -5000.0, a, utility(5000)), (1.0, -5000.0, a, ramp)]
    steps += [(float(t), -5000.0, a, ramp) for t in range(2, 6)]
    steps.append((6.0, -7500.0, a, ramp))  # the 3 kW load falls to 500 W
    outs = run(steps)
    last = outs[-1]
    limit_now = 5000 - 3500 * 5 / 60
    assert last.export_limit_w == pytest.approx(limit_now)
    assert last.target_w == pytest.approx(500 + limit_now - margin_w(limit_now, S))
    for o in outs[1:]:  # during the ramp: never above the old limit's target
        assert o.target_w is not None and o.load_estimate_w is not None
        assert o.target_w <= o.load_estimate_w + 5000 - margin_w(5000, S) + 1e-6


def test_set_grad_w_ramps_a_utility_reduction_of_the_limit_and_load_still_applies_at_once():
    a = [inv("a", 10000, 5500)]
    cut = utility(1000, set_grad_w=100)  # 1 %/s of the site's 10 kW: 100 W/s
    steps = [(0.0, -5000.0, a, utility(5000)), (1.0, -5000.0, a, cut)]
    steps += [(float(t), -5000.0, a, cut) for t in range(2, 11)]
    steps.append((11.0, -5400.0, a, cut))  # the load falls from 500 to 100 W
    outs = run(steps)
    assert outs[1].export_limit_w == pytest.approx(5000)
    assert outs[6].export_limit_w == pytest.approx(4500)
    assert outs[-1].export_limit_w == pytest.approx(4000)
    assert outs[-1].target_w == pytest.approx(100 + 4000 - margin_w(4000, S))
    # The ramp ends at the new limit after (5000 - 1000) / 100 = 40 s, and stays there.
    later = run([(41.0, -1000.0, [inv("a", 10000, 1500)], cut)], outs[-1].state)[0]
    assert later.export_limit_w == pytest.approx(1000)
    assert later.state.ramps == ()


def test_ramp_tms_governs_when_both_are_given():
    a = [inv("a", 10000, 5500)]
    cut = utility(1000, ramp_tms=1000, set_grad_w=100)  # rampTms 10 s; setGradW would take 40 s
    outs = run([(0.0, -5000.0, a, utility(5000)), (1.0, -5000.0, a, cut), (6.0, -5000.0, a, cut)])
    assert outs[-1].export_limit_w == pytest.approx(3000)
    assert outs[-1].state.ramps[0].kind == "rampTms"


def test_reductions_not_made_by_the_utility_are_not_slowed_by_set_grad_w():
    a = [inv("a", 10000, 5500)]
    window = EffectiveLimits(export_w=0, set_grad_w=100, sources={"export_w": "window 10:00-16:00"})
    outs = run([(0.0, -5000.0, a, utility(5000, set_grad_w=100)), (1.0, -5000.0, a, window)])
    assert outs[-1].export_limit_w == 0
    assert outs[-1].target_w == pytest.approx(500 - margin_w(0, S))


def test_a_ramp_from_no_limit_starts_from_what_the_site_exports_now():
    a = [inv("a", 10000, 4000)]
    cut = utility(1000, ramp_tms=1000)
    outs = run([(0.0, -3500.0, a, utility(None)), (1.0, -3500.0, a, cut), (6.0, -3500.0, a, cut)])
    assert outs[1].export_limit_w == pytest.approx(3500)
    assert outs[-1].export_limit_w == pytest.approx(2250)


def test_the_fail_safe_is_never_slowed_by_a_ramp_down_nor_lifted_early_by_a_ramp_up():
    a = [inv("a", 10000, 5500)]
    down = utility(1000, ramp_tms=6000)
    state = run([(0.0, -5000.0, a, utility(5000)), (1.0, -5000.0, a, down)])[-1].state
    quiet = control_step(RollingMean(), a, down, state, 10.0)
    assert quiet.mode == "failsafe"
    assert quiet.target_w == pytest.approx(1000 - margin_w(1000, S))
    up = utility(5000, ramp_tms=1000)
    state = run([(0.0, -500.0, a, utility(1000)), (1.0, -500.0, a, up)])[-1].state
    quiet = control_step(RollingMean(), a, up, state, 6.0)
    assert quiet.target_w == pytest.approx(3000 - margin_w(3000, S))  # half way, not 5000


# --------------------------------------------------------------------------------------
# 2. Unreachable inverters count at the most they may make


def test_fail_safe_counts_an_unreachable_inverter_at_its_limit_then_its_rating():
    b = inv("b", 6000, 1700, online=False, last_limit_pct=30.0, limit_expires_t=100.0)
    invs = [inv("a", 6000, 1700), b]
    limits = utility(5000)
    early = control_step(RollingMean(), invs, limits, ControllerState(), 50.0)
    assert early.mode == "failsafe"
    assert early.target_w == pytest.approx(5000 - margin_w(5000, S) - 1800)
    assert early.offline_w == pytest.approx(1800)
    # From revert_lead_s before its revert time it may make its whole rating.
    late = control_step(RollingMean(), invs, limits, ControllerState(), 96.0)
    assert late.target_w == 0.0
    assert late.offline_w == pytest.approx(6000)
    # Nothing known about its limit: its rating, never its last reading.
    bare = [inv("a", 6000, 1700), inv("b", 6000, 1700, online=False)]
    out = control_step(RollingMean(), bare, utility(8000), ControllerState(), 50.0)
    assert out.target_w == pytest.approx(8000 - margin_w(8000, S) - 6000)


def test_possible_output_is_never_below_the_last_reading_and_unknown_rating_uses_it():
    b = inv("b", 6000, 2500, online=False, last_limit_pct=10.0, limit_expires_t=100.0)
    assert possible_output_w(b, 0.0) == 2500  # not yet down to its 600 W limit
    assert possible_output_w(inv("c", 0, 800, online=False), 0.0) == 800
    assert possible_output_w(inv("d", math.nan, math.nan, online=False), 0.0) == 0.0


def test_with_a_fresh_meter_an_unreachable_inverters_revert_is_reserved_around_its_time():
    # b was last written 80 % of 5 kW (its revert timer lifts that at t = 100) and makes 2 kW.
    b = inv(
        "b", 5000, 2000, online=False, last_limit_pct=80.0, limit_expires_t=100.0, sampled_t=0.0
    )
    invs = [inv("a", 5000, 1000), b]
    # Load 500 W: site = 500 - 3000. The meter sees b's output: the estimate (a's view) is
    # 500 - 2000, so a alone is held to what keeps the site at the limit, no guess needed...
    base = 500 - 2000 + 4000 - margin_w(4000, S)

    def target(t: float) -> float | None:
        return control_step(meter_at(t, -2500), invs, utility(4000), ControllerState(), t).target_w

    assert target(50.0) == pytest.approx(base)
    # ...except the rise its revert allows (rating - limit = 1 kW, whatever the sun does), from
    # revert_lead_s before its revert time to revert_guard_s after, by when the meter has seen it.
    assert target(96.0) == pytest.approx(base - 1000)
    assert target(104.0) == pytest.approx(base - 1000)
    assert target(106.0) == pytest.approx(base)


def test_an_inverter_just_lost_is_reserved_the_rise_to_its_last_limit():
    # b was read at t=10 making 1 kW on its way up to the 3 kW (60 %) last written to it.
    b = inv(
        "b", 5000, 1000, online=False, last_limit_pct=60.0, limit_expires_t=100.0, sampled_t=10.0
    )
    invs = [inv("a", 5000, 1000), b]
    base = 500 - 1000 + 4000 - margin_w(4000, S)  # load 500 W: site = 500 - 2000

    def out(t: float) -> ControlOutput:
        return control_step(meter_at(t, -1500), invs, utility(4000), ControllerState(), t)

    assert out(11.0).target_w == pytest.approx(base - 2000)  # it may still rise 2 kW unseen
    assert out(11.0).offline_w == pytest.approx(2000)
    assert out(16.0).target_w == pytest.approx(base)  # by now the meter has seen it


def test_an_inverter_going_offline_does_not_inflate_the_load_estimate():
    # Two inverters making 2 kW each, load 500 W. Then b stops answering (still making 2 kW).
    a, b = inv("a", 5000, 2000), inv("b", 5000, 2000)
    outs = run([(t, -3500.0, [a, b], utility(4000)) for t in (0.0, 1.0, 2.0)])
    gone = inv("b", 5000, 2000, online=False)
    out = control_step(meter_at(3.0, -3500), [a, gone], utility(4000), outs[-1].state, 3.0)
    # b's output now counts as negative load in every sample of the window, not half of them.
    assert out.load_estimate_w == pytest.approx(500 - 2000)
    assert out.target_w == pytest.approx(500 - 2000 + 4000 - margin_w(4000, S))


# --------------------------------------------------------------------------------------
# 3. The utility fallback


def test_the_fallback_limit_is_never_ramped_but_a_utility_limit_after_it_is():
    a = [inv("a", 10000, 5500)]
    fb = merge_limits(UtilityLimits(export_w=1500.0, ramp_tms=6000, label=FALLBACK_LABEL), None)
    assert fb.sources["export_w"] == FALLBACK_LABEL
    assert fb.ramp_tms is None  # the merge drops it
    # Even handed a rampTms directly, the law does not slow a change to the fallback.
    direct = EffectiveLimits(export_w=1500, ramp_tms=6000, sources={"export_w": FALLBACK_LABEL})
    for limits in (fb, direct):
        outs = run([(0.0, -5000.0, a, utility(5000, ramp_tms=6000)), (1.0, -5000.0, a, limits)])
        assert outs[-1].export_limit_w == 1500
        assert outs[-1].target_w == pytest.approx(500 + 1500 - margin_w(1500, S))
    # From the fallback to the utility's own control with a ramp: the utility's ramp applies.
    event = utility(5000, ramp_tms=1000)
    outs = run([(0.0, -1500.0, a, fb), (1.0, -1500.0, a, event), (6.0, -1500.0, a, event)])
    assert outs[-1].export_limit_w == pytest.approx(3250)


# --------------------------------------------------------------------------------------
# 5. Bad inputs, late meters and other states where the command could outrun the target


def test_a_time_that_is_not_a_number_is_a_clear_error():
    with pytest.raises(ValueError, match="now must be a finite time"):
        control_step(meter_at(0, 0), [inv("a", 5000, 0)], utility(0), ControllerState(), math.nan)


def test_non_finite_meter_samples_are_ignored_and_only_those_make_the_meter_stale():
    m = RollingMean(1.0, ((9.5, math.nan), (10.0, -1500.0)))
    out = control_step(m, [inv("a", 5000, 2000)], utility(1000), ControllerState(), 10.0)
    assert out.mode == "normal" and out.load_estimate_w == pytest.approx(500)
    bad = RollingMean(1.0, ((9.5, math.nan), (10.0, math.inf)))
    out = control_step(bad, [inv("a", 5000, 2000)], utility(1000), ControllerState(), 10.0)
    assert out.mode == "failsafe"
    assert RollingMean().add(0.0, math.nan).samples == ()


def test_an_inverter_with_an_unusable_reading_counts_as_unreachable():
    invs = [inv("a", 5000, 1000), inv("b", 5000, math.nan)]
    out = control_step(RollingMean(), invs, utility(3000), ControllerState(), 10.0)
    assert out.skipped == {"b": "no valid power reading"}
    assert out.target_w == 0.0  # b may make 5 kW: more than the 3 kW fail-safe by itself
    # Reachable, it is commanded its share of the fail-safe cap (tests/control/test_blind.py).
    assert out.blind == ("b",)
    assert [c.id for c in out.commands] == ["a", "b"]


def test_non_finite_limits_fail_closed():
    a = [inv("a", 5000, 2000)]
    nan = control_step(meter_at(0, -1500), a, utility(math.nan), ControllerState(), 0)
    assert nan.export_limit_w == 0.0
    assert nan.target_w == pytest.approx(500 - margin_w(0, S))
    inf = control_step(meter_at(0, -1500), a, utility(math.inf), ControllerState(), 0)
    assert inf.export_limit_w is None and inf.target_w is None
    merged = merge_limits(UtilityLimits(export_w=math.nan, generation_w=math.inf), None)
    assert (merged.export_w, merged.generation_w) == (0.0, None)


def test_an_inverter_without_a_usable_rating_is_not_commanded_but_its_output_counts():
    invs = [inv("a", 5000, 1000), inv("b", 0, 700), inv("c", math.nan, 300)]
    out = control_step(meter_at(0, -1500), invs, utility(1000), ControllerState(), 0)
    assert out.skipped == {"b": "no rating", "c": "no rating"}
    assert out.budget_w == pytest.approx(out.target_w - 1000)  # type: ignore[operator]
    assert all(c.limit_pct is not None and math.isfinite(c.limit_pct) for c in out.commands)


def test_a_reading_above_the_rating_cannot_inflate_the_load_estimate():
    out = control_step(meter_at(0, -8500), [inv("a", 5000, 9000)], utility(0), ControllerState(), 0)
    assert out.load_estimate_w == pytest.approx(-8500 + 5000)


def test_a_late_meter_allows_cuts_but_no_increase():
    a = [inv("a", 10000, 2000)]
    state = run([(0.0, -1500.0, a, utility(1500)), (1.0, -1500.0, a, utility(1500))])[-1].state
    assert state.gen_cmd_w is not None
    # Nothing from the meter for 3 s (stale only after 5 s): the limit rises, the command not.
    late = control_step(meter_at(4.0, -1500, last=1.0), a, utility(5000), state, 4.0)
    assert late.mode == "normal"
    assert late.state.gen_cmd_w == state.gen_cmd_w
    cut = control_step(meter_at(4.0, -1500, last=1.0), a, utility(500), state, 4.0)
    assert cut.target_w == pytest.approx(500 + 500 - margin_w(500, S))


def test_a_late_meter_reading_is_paired_with_the_output_of_its_own_time():
    # At t=10 the meter read -500 W while the inverter made 2 kW: load 1.5 kW. The inverter then
    # rose to 4 kW; the meter has said nothing since. The load is still 1.5 kW, not 3.5 kW.
    state = ControllerState()
    for t, p in ((8.0, 2000.0), (9.0, 2000.0), (10.0, 2000.0), (11.0, 3000.0), (12.0, 4000.0)):
        meter = meter_at(min(t, 10.0), -500.0)
        state = control_step(meter, [inv("a", 10000, p)], utility(9000), state, t).state
    out = control_step(meter_at(10.0, -500.0), [inv("a", 10000, 4000)], utility(9000), state, 13.0)
    assert out.load_estimate_w == pytest.approx(1500)


def test_an_inverter_back_in_reach_running_free_holds_increases_while_it_comes_down():
    # b ran free at 3.6 kW while unreachable; back in reach, the target for both is 500 W. The
    # next call's window still mixes samples from before it came down: no increase on it.
    a, b = inv("a", 6000, 0), inv("b", 6000, 3600)
    back = control_step(meter_at(0, -3100), [a, b], utility(0), ControllerState(0.0, 0.0), 1.0)
    assert back.target_w == 0.0
    next_ = control_step(meter_at(2, -3100), [a, inv("b", 6000, 300)], utility(0), back.state, 2.0)
    assert next_.state.gen_cmd_w == 0.0


# --------------------------------------------------------------------------------------
# Property: from any state, with any inputs, the command never exceeds the live target

finite_w = st.floats(-5000, 20000, allow_nan=False, allow_infinity=False)
odd_w = finite_w | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0])
inverter_st = st.builds(
    InverterState,
    id=st.uuids().map(str),
    online=st.booleans(),
    controllable=st.booleans(),
    rated_w=odd_w,
    power_w=odd_w,
    last_limit_pct=st.none() | st.floats(-10, 110, allow_nan=False),
    limit_expires_t=st.none() | st.floats(0, 200, allow_nan=False),
)
ramp_st = st.builds(
    LimitRamp,
    name=st.just("export_w"),
    t0=st.floats(0, 100),
    duration_s=st.floats(0.5, 600),
    start_w=st.floats(0, 20000),
    end_w=st.none() | st.floats(0, 20000),
    kind=st.sampled_from(["rampTms", "setGradW"]),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    invs=st.lists(inverter_st, max_size=4),
    site=odd_w,
    old_w=st.none() | st.floats(0, 20000),
    new_w=st.none() | odd_w,
    ramp=st.none() | ramp_st,
    prev=st.none() | finite_w,
    hold=st.floats(-10, 200),
    ramp_tms=st.none() | st.integers(1, 60000),
    set_grad_w=st.none() | st.integers(1, 10000),
    stale=st.booleans(),
)
def test_the_command_never_exceeds_the_live_target_from_any_state(
    invs, site, old_w, new_w, ramp, prev, hold, ramp_tms, set_grad_w, stale
):
    now = 100.0
    old = utility(old_w)
    names = ("export_w", "generation_w", "connect", "energize")
    key = tuple((getattr(old, n), old.sources.get(n, "")) for n in names)
    ramps = (ramp,) if ramp is not None and old_w is not None else ()
    state = ControllerState(now - 1, prev, (), key, ramps, "normal", hold)
    limits = utility(new_w, ramp_tms=ramp_tms, set_grad_w=set_grad_w)
    out = control_step(meter_at(now - 10 if stale else now, site), invs, limits, state, now)
    cmd = out.state.gen_cmd_w
    assert cmd is not None and math.isfinite(cmd) and cmd >= 0.0
    lim = out.export_limit_w
    if new_w is not None and not math.isfinite(new_w):
        new_w = None if new_w > 0 else 0.0  # NaN or -inf: 0 W (fail closed); +inf: no limit
    if lim is not None:
        # Never above the old or new limit, or the ramp's start; from no limit, never above what
        # the site exports now (-site); towards no limit, never above the site's rating.
        highest = max(x for x in (old_w, new_w, ramp and ramp.start_w) if x is not None)
        if old_w is None and math.isfinite(site):
            highest = max(highest, -site)
        rated = sum(i.rated_w for i in invs if math.isfinite(i.rated_w) and i.rated_w > 0)
        assert lim <= max(highest, rated) + 1e-6
    if out.mode == "normal" and lim is not None:
        assert out.load_estimate_w is not None
        aim = out.load_estimate_w + lim - margin_w(lim, S) - out.offline_w
        assert cmd <= max(aim, 0.0) + 1e-6
    if out.mode == "failsafe" and lim is not None:
        assert cmd <= max(lim - margin_w(lim, S) - out.offline_w, 0.0) + 1e-6
    # The budget is shared among the inverters that can be read; those that answer but cannot
    # be read ("blind") get their share of the zero-load cap instead, outside the budget.
    given_w = blind_w = 0.0
    for c in out.commands:
        if c.limit_pct is not None:
            assert math.isfinite(c.limit_pct) and 0.0 <= c.limit_pct <= 100.0
            w = next(i.rated_w for i in invs if i.id == c.id) * c.limit_pct / 100
            if c.id in out.blind:
                blind_w += w
            else:
                given_w += w
    if any(c.limit_pct is not None for c in out.commands if c.id not in out.blind):
        assert given_w <= out.budget_w + 1e-6
    if lim is not None:
        assert blind_w <= max(lim - margin_w(lim, S), 0.0) + 1e-6
