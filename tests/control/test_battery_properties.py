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

from hypothesis import given
from hypothesis import strategies as st

from dynexport.control.scenario import BatterySpec, Scenario, run_scenario
from tests.control.strategies import (
    DURATION_S,
    PROPERTY_SETTINGS,
    inverters,
    limit_changes,
    load_steps,
    scenario,
    spans,
)

STORAGE_TARGET_W = st.none() | st.sampled_from([-5000.0, -1000.0, 0.0, 1000.0, 5000.0])
"""The utility's storage targets (CSIP-AUS v1.3): charge, idle, discharge, beyond the rates."""


@st.composite
def battery_scenarios(draw: st.DrawFn, storage: bool = False) -> Scenario:
    """One or two PV inverters and a battery (any size, rates, SoC bounds, lag, up to two spans
    out of reach), loads up to 7 kW, export and import limit schedules; with ``storage``, the
    utility's storage targets too."""
    invs = inverters(draw, 2, [3000.0, 5000.0, 6000.0, 8200.0])
    import_w = st.none() | st.sampled_from([0.0, 2000.0]) | st.floats(0, 6000)
    changes = limit_changes(draw, import_w, STORAGE_TARGET_W if storage else None)
    steps = load_steps(draw, 7000.0)
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
        outages=tuple(draw(st.lists(spans(len(invs)), max_size=2))),
        can_charge_only=draw(st.booleans()),  # False: a model 704 battery, held instead
    )
    return scenario(draw, invs, changes, steps, max_load_w=7000.0, battery=battery)


@PROPERTY_SETTINGS
@given(sc=battery_scenarios())
def test_with_a_battery_the_law_keeps_the_export_limit_and_the_battery_rules(sc: Scenario) -> None:
    result = run_scenario(sc)
    assert result.ticks == DURATION_S + 1
    assert not result.violations, (result.violations[:5], sc)


@PROPERTY_SETTINGS
@given(sc=battery_scenarios(storage=True))
def test_under_a_storage_target_the_export_limit_and_the_battery_rules_still_hold(
    sc: Scenario,
) -> None:
    """The utility's storage target moves the battery (discharge or charge, beyond its rates
    too), and every rule above still holds: the export limit wins over a discharge, the reserve
    and the maximum SoC bound it, the setpoints stay within the rates."""
    result = run_scenario(sc)
    assert result.ticks == DURATION_S + 1
    assert not result.violations, (result.violations[:5], sc)
