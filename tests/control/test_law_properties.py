"""Property: the control law in closed loop with the plant model keeps the export limit in every
state hypothesis can reach: random load trajectories (steps and noise), limit schedules with and
without rampTms and setGradW, inverters dropping out and returning (their revert timers freeing
them), the meter going quiet, written limits rounded down to the register step.

The rules and the precise meaning of "export", with the physically forced exceptions, are in
``dynexport.control.scenario`` (shared with ``benchmarks/control_property.py``, the long run):

1. the command never exceeds load estimate + limit in use − margin (less what unreachable
   inverters may add), the limit in use is never above the reference ramp (so within max(old,
   new) during a ramp), and with a quiet meter the fail-safe cap counts unreachable inverters at
   no less than they really make;
2. export ≤ L × 1.04 + 50 W, L the highest reference limit of the last 15 s of plant time.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dynexport.control.law import ControlSettings
from dynexport.control.scenario import (
    InverterSpec,
    LimitChange,
    Scenario,
    reference_limits,
    run_scenario,
)
from tests.control.strategies import (
    DURATION_S,
    PROPERTY_SETTINGS,
    inverters,
    limit_changes,
    load_steps,
    scenario,
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Up to three PV inverters, loads up to 5 kW, export limit schedules."""
    invs = inverters(draw, 3, [2000.0, 3000.0, 5000.0, 6000.0, 8200.0])
    changes = limit_changes(draw)
    steps = load_steps(draw, 5000.0)
    return scenario(draw, invs, changes, steps, max_load_w=5000.0)


@PROPERTY_SETTINGS
@given(sc=scenarios())
def test_the_law_keeps_the_export_limit_in_closed_loop(sc: Scenario) -> None:
    result = run_scenario(sc)
    assert result.ticks == DURATION_S + 1
    assert not result.violations, (result.violations[:5], sc)


def test_the_reference_limit_ramps_as_the_utility_asked():
    """The yardstick itself: steps, rampTms both ways, setGradW for reductions only."""
    sc = Scenario(
        inverters=(InverterSpec(10000.0, 10000.0),),
        limits=(
            LimitChange(0, 5000.0),
            LimitChange(10, 1000.0, ramp_tms=1000),  # 10 s down
            LimitChange(30, 3000.0, set_grad_w=100),  # increase: a step (setGradW caps output)
            LimitChange(40, 2000.0, set_grad_w=100),  # 100 W/s down: 10 s
            LimitChange(60, None),
        ),
        duration_s=70,
    )
    ref = reference_limits(sc, 10000.0)
    assert ref[0] == ref[10] == 5000.0
    assert ref[15] == 3000.0 and ref[20] == ref[29] == 1000.0
    assert ref[30] == 3000.0
    assert ref[45] == 2500.0 and ref[50] == 2000.0
    assert ref[60] == float("inf")


def test_the_checker_reports_a_law_that_breaks_the_limit_and_excuses_only_forced_export():
    """The rules can fail: a law tuned to aim 10 % over the limit is caught; an uncontrollable
    inverter exporting more than the limit by itself is excused (and counted), not hidden."""
    sc = Scenario(
        inverters=(InverterSpec(6000.0, 6000.0),),
        limits=(LimitChange(0, 1500.0),),
        load_noise_w=0.0,
        duration_s=40,
    )
    assert not run_scenario(sc).violations
    greedy = ControlSettings(margin_pct=-10.0, margin_min_w=-1000.0)
    broken = run_scenario(sc, greedy)
    assert broken.violations and {v.rule for v in broken.violations} == {"export"}
    assert broken.worst_excess_w > 50
    forced = Scenario(
        inverters=(InverterSpec(5000.0, 5000.0, controllable=False),),
        limits=(LimitChange(0, 0.0),),
        load_w=0.0,
        load_noise_w=0.0,
        duration_s=40,
    )
    result = run_scenario(forced)
    assert not result.violations and result.excused_forced > 0 and result.checked == 0
