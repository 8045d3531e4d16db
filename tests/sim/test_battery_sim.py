"""The simulated battery: its own self-consumption mode, SoC bounds, the two readings of model
124's InWRte/OutWRte (SunSpec caps, the GEN24 window), 704 WSet, and the revert timers."""

from __future__ import annotations

import pytest

from dynexport.sim import profiles
from dynexport.sim.sunspec_device import Battery, ModbusError, Site


def write(site: Site, unit: int, model: int, values: dict[str, float], now: float) -> None:
    """Writes points through the register image (as a Modbus client would), one at a time."""
    dev = site.devices[unit]
    for name, value in values.items():
        slot = dev._by_path[(model, name)]
        point = slot.point
        sf = 0
        if point.sf is not None:
            sf_point = dev._by_path[(model, point.sf)].point
            sf = sf_point.value or 0
        raw = round(value / 10**sf)
        regs = [raw & 0xFFFF] if slot.length == 1 else [(raw >> 16) & 0xFFFF, raw & 0xFFFF]
        site.write(unit, slot.address, regs, now)


def site_with(load_w: float, pv_w: float, **kw: object) -> tuple[Site, Battery]:
    site = profiles.fronius_gateway(load_w=load_w, tau_s=0.0)
    site.set_available(1, pv_w)
    site.set_available(2, 0.0)
    bat = profiles.battery(tau_s=0.0, **kw)  # type: ignore[arg-type]
    site.devices[3] = bat
    return site, bat


def test_its_own_mode_stores_the_surplus_and_covers_the_load() -> None:
    site, bat = site_with(500.0, 3500.0)
    for t in range(1, 6):
        site.step(float(t))
    assert bat.power_w == pytest.approx(-3000.0, abs=30.0)  # charging the surplus
    assert abs(site.site_w()) < 30.0
    site.set_available(1, 0.0)
    site.set_load(2000.0)
    for t in range(6, 12):
        site.step(float(t))
    assert bat.power_w == pytest.approx(2000.0, abs=30.0)
    assert site.get(3, 101, "W") == pytest.approx(bat.power_w, abs=1.0)
    assert site.get(3, 713, "SoC") == pytest.approx(bat.soc_pct, abs=0.1)


def test_the_gen24_window_forces_charging_with_a_negative_out_rate() -> None:
    """No surplus at all, yet OutWRte −40 % with InWRte 40 % charges at 2 kW from the grid."""
    site, bat = site_with(1000.0, 0.0, window=True)
    write(site, 3, 124, {"InWRte": 40.0, "OutWRte": -40.0, "InOutWRte_RvrtTms": 60}, 0.0)
    write(site, 3, 124, {"StorCtl_Mod": 3}, 0.0)
    site.step(2.0)
    assert bat.power_w == pytest.approx(-2000.0, abs=1.0)
    assert site.site_w() == pytest.approx(3000.0, abs=1.0)


def test_sunspec_caps_only_limit_the_own_mode_and_a_negative_rate_is_refused() -> None:
    site, bat = site_with(500.0, 4500.0)
    write(site, 3, 124, {"InWRte": 20.0, "OutWRte": 0.0, "InOutWRte_RvrtTms": 60}, 0.0)
    write(site, 3, 124, {"StorCtl_Mod": 3}, 0.0)
    site.step(2.0)
    assert bat.power_w == pytest.approx(-1000.0, abs=1.0)  # capped at 20 % of 5 kW
    with pytest.raises(ModbusError):
        write(site, 3, 124, {"OutWRte": -40.0}, 3.0)


def test_the_revert_timer_returns_it_to_its_own_mode() -> None:
    site, bat = site_with(500.0, 4500.0)
    write(site, 3, 124, {"InWRte": 0.0, "OutWRte": 0.0, "InOutWRte_RvrtTms": 10}, 0.0)
    write(site, 3, 124, {"StorCtl_Mod": 3}, 0.0)
    site.step(5.0)
    assert bat.power_w == pytest.approx(0.0, abs=1.0)  # held
    site.step(11.0)
    assert site.get(3, 124, "StorCtl_Mod") == 0
    site.step(13.0)
    assert bat.power_w == pytest.approx(-4000.0, abs=30.0)


def test_wset_sets_the_power_and_reverts() -> None:
    site, bat = site_with(3000.0, 0.0, wset=True)
    write(site, 3, 704, {"WSet": 1200.0, "WSetRvrtTms": 5, "WSetMod": 1}, 0.0)
    write(site, 3, 704, {"WSetEna": 1}, 0.0)
    site.step(1.0)
    assert bat.power_w == pytest.approx(1200.0, abs=1.0)
    site.step(6.0)
    assert site.get(3, 704, "WSetEna") == 0


def test_a_full_battery_stops_charging_and_an_empty_one_discharging() -> None:
    site, bat = site_with(500.0, 4500.0, soc_pct=99.99, capacity_wh=1000.0)
    for t in range(1, 20):
        site.step(float(t))
    assert bat.soc_pct == 100.0 and bat.power_w == 0.0
    site2, bat2 = site_with(3000.0, 0.0, soc_pct=0.01, capacity_wh=1000.0)
    for t in range(1, 20):
        site2.step(float(t))
    assert bat2.soc_pct == 0.0 and bat2.power_w == 0.0
