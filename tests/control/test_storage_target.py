"""The utility's storage target (CSIP-AUS v1.3 ``opModStorageTargetW``) in the battery law:
the batteries aim at it instead of their own mode, and every limit still wins over it. Closed
loop with the plant; the property over random sites and schedules is in
``test_battery_properties`` (``..._under_a_storage_target_...``)."""

from __future__ import annotations

import math

import pytest

from dynexport.control.battery import BatterySettings
from dynexport.control.limits import EffectiveLimits
from dynexport.control.plant import Plant, SimBattery, SimInverter, run_closed_loop


def site(pv_w: float, load_w: float, soc: float) -> Plant:
    plant = Plant(
        inverters=[SimInverter("inv1", 6000.0, pv_w / 2), SimInverter("inv2", 6000.0, pv_w / 2)],
        load_w=load_w,
        seed=5,
    )
    plant.batteries.append(SimBattery("bat", 10000.0, 5000.0, 5000.0, soc, own_mode="idle"))
    return plant


def target(w: float, **limits: float) -> EffectiveLimits:
    sources = {f"{k}": "utility" for k in limits}
    return EffectiveLimits(storage_target_w=w, sources=sources, **limits)  # type: ignore[arg-type]


def allowed(limit_w: float) -> float:
    return limit_w * 1.04 + 50.0


def test_a_discharge_target_is_followed_when_nothing_limits() -> None:
    """Evening, 2 kW load, no PV: the battery (idle in its own mode) delivers the 3 kW asked,
    and the site exports the kilowatt the load does not take."""
    plant = site(0.0, 2000.0, 60.0)
    trace = run_closed_loop(plant, lambda t: target(3000.0), 60.0)
    assert plant.batteries[0].power_w == pytest.approx(3000.0, abs=100.0)
    assert trace[-1].export_w == pytest.approx(1000.0, abs=150.0)


def test_a_target_beyond_the_rate_is_held_to_the_rate() -> None:
    plant = site(0.0, 2000.0, 60.0)
    run_closed_loop(plant, lambda t: target(9000.0), 60.0)
    assert plant.batteries[0].power_w == pytest.approx(5000.0, abs=100.0)


def test_the_export_limit_wins_over_a_discharge_target() -> None:
    """The same evening with a 500 W export limit: the discharge is cut so the site exports
    no more than the limit."""
    plant = site(0.0, 2000.0, 60.0)
    trace = run_closed_loop(plant, lambda t: target(3000.0, export_w=500.0), 60.0)
    assert max(p.export_w for p in trace if p.t >= 15) <= allowed(500.0)
    assert 2000.0 <= plant.batteries[0].power_w <= 2500.0 + 60.0


def test_a_charge_target_charges_and_an_import_limit_stops_it() -> None:
    """Midday, no PV, 1 kW load: a -4 kW target charges at 4 kW from the grid (the utility asked
    for it); with a 2 kW import limit the charge stops at what the limit leaves."""
    plant = site(0.0, 1000.0, 40.0)
    run_closed_loop(plant, lambda t: target(-4000.0), 60.0)
    assert plant.batteries[0].power_w == pytest.approx(-4000.0, abs=100.0)
    plant = site(0.0, 1000.0, 40.0)
    trace = run_closed_loop(plant, lambda t: target(-4000.0, import_w=2000.0), 60.0)
    assert max(-p.export_w for p in trace if p.t >= 15) <= allowed(2000.0)
    assert -1000.0 - 60.0 <= plant.batteries[0].power_w <= -800.0


def test_the_reserve_and_the_maximum_soc_bound_a_target() -> None:
    """At its reserve the battery does not discharge for a target; at its maximum SoC it does
    not charge for one."""
    plant = site(0.0, 2000.0, 20.0)
    lowest = [100.0]

    def observe(t: float, p: Plant, lim: EffectiveLimits, out: object) -> None:
        lowest[0] = min(lowest[0], p.batteries[0].soc_pct)

    run_closed_loop(plant, lambda t: target(3000.0), 60.0, observe=observe)
    assert lowest[0] >= 20.0 - 0.05 and plant.batteries[0].power_w < 60.0
    plant = site(0.0, 1000.0, 95.0)
    settings = BatterySettings(max_soc_pct=95.0)
    run_closed_loop(plant, lambda t: target(-3000.0), 60.0, battery_settings=settings)
    assert plant.batteries[0].soc_pct <= 95.0 + 1e-6 and plant.batteries[0].power_w > -60.0


def test_a_target_that_is_not_a_number_is_no_target() -> None:
    """The battery stays in its own mode (idle here): nothing is commanded from a NaN."""
    plant = site(0.0, 2000.0, 60.0)
    run_closed_loop(plant, lambda t: target(math.nan), 30.0)
    assert abs(plant.batteries[0].power_w) < 60.0


def test_without_a_meter_reading_the_battery_returns_to_its_own_mode() -> None:
    """The meter goes quiet mid-discharge: the battery's own mode (idle) and the export
    fail-safe, whatever the utility asked."""
    plant = site(0.0, 2000.0, 60.0)

    def quiet_meter(t: float, p: Plant) -> None:
        p.meter_alive = t < 30.0

    run_closed_loop(plant, lambda t: target(3000.0), 90.0, hook=quiet_meter)
    assert abs(plant.batteries[0].power_w) < 60.0
