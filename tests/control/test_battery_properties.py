"""Property: with a battery, the law still keeps the export limit in every state hypothesis can
reach, and the battery's own rules hold: the battery charging, filling up, tapering, discharging
for an import limit, going unreachable (its revert timer returning it to its own mode), the
meter going quiet, inverters dropping out — on top of the random loads and limit schedules of
``test_law_properties``.

Rules (``dynexport.control.scenario``): the export rule (L × 1.04 + 50 W after 15 s, whatever
the battery does; only a battery the law does not command is excused, as household load), the
command rule (inverter command + what the battery is counted at within the target), and the
battery rules (no command to an unreachable battery, never a discharge at or below the reserve
SoC nor a charge at or above the maximum SoC, setpoints within the rates).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.control.scenario import (
    BatterySpec,
    InverterSpec,
    LimitChange,
    Scenario,
    Span,
    run_scenario,
)

DURATION_S = 120


@st.composite
def battery_scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 2))
    invs = []
    for k in range(n):
        rated = draw(st.sampled_from([3000.0, 5000.0, 6000.0, 8200.0]))
        invs.append(
            InverterSpec(rated, rated * draw(st.floats(0.3, 1.0)), k == 0 or draw(st.booleans()))
        )
    limit_w = st.none() | st.sampled_from([0.0, 500.0, 1500.0]) | st.floats(0, 10000)
    import_w = st.none() | st.sampled_from([0.0, 2000.0]) | st.floats(0, 6000)
    gaps = draw(st.lists(st.integers(8, 50), min_size=0, max_size=4))
    times = [0]
    for g in gaps:
        if times[-1] + g < DURATION_S - 15:
            times.append(times[-1] + g)
    changes = tuple(
        LimitChange(
            t,
            draw(limit_w),
            draw(st.none() | st.integers(100, 6000)),
            draw(st.none() | st.integers(10, 500)),
            draw(import_w),
        )
        for t in times
    )
    steps = sorted(
        draw(st.lists(st.tuples(st.integers(1, DURATION_S - 1), st.floats(0, 7000)), max_size=5))
    )
    span = st.integers(1, DURATION_S - 1).flatmap(
        lambda a: st.builds(Span, st.just(a), st.integers(a + 1, a + 80), st.integers(0, n - 1))
    )
    max_soc = draw(st.sampled_from([80.0, 95.0, 100.0]))
    reserve = draw(st.sampled_from([10.0, 20.0, 50.0]))
    battery = BatterySpec(
        capacity_wh=draw(st.sampled_from([300.0, 1000.0, 10000.0])),
        max_charge_w=draw(st.sampled_from([1000.0, 3000.0, 5000.0])),
        max_discharge_w=draw(st.sampled_from([1000.0, 3000.0, 5000.0])),
        soc_pct=draw(st.floats(reserve - 5.0, max_soc + 0.5)),
        max_soc_pct=max_soc,
        reserve_soc_pct=reserve,
        tau_s=draw(st.sampled_from([0.2, 0.5, 1.0])),
        outages=tuple(draw(st.lists(span, max_size=2))),
    )
    return Scenario(
        inverters=tuple(invs),
        limits=changes,
        load_w=draw(st.floats(0, 7000)),
        load_steps=tuple(steps),
        load_noise_w=draw(st.floats(0, 40)),
        tau_s=draw(st.sampled_from([0.3, 1.0, 1.5])),
        revert_s=draw(st.sampled_from([20.0, 60.0])),
        limit_step_pct=draw(st.sampled_from([0.0, 1.0, 0.1, 0.01])),
        dropouts=tuple(draw(st.lists(span, max_size=2))),
        meter_outages=tuple(draw(st.lists(span, max_size=2))),
        duration_s=DURATION_S,
        seed=draw(st.integers(0, 2**32 - 1)),
        battery=battery,
    )


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(sc=battery_scenarios())
def test_with_a_battery_the_law_keeps_the_export_limit_and_the_battery_rules(sc: Scenario) -> None:
    result = run_scenario(sc)
    assert result.ticks == DURATION_S + 1
    assert not result.violations, (result.violations[:5], sc)
