"""Pure tests of the simulated SunSpec devices: register images, plant behaviour, fake clock."""

from __future__ import annotations

import math
import struct

import pytest

from dynexport.sim import profiles
from dynexport.sim.sunspec_device import (
    ILLEGAL_ADDRESS,
    ILLEGAL_VALUE,
    ControlError,
    Inverter,
    ModbusError,
    Site,
    SunSpecDevice,
)


def walk_chain(device) -> list[tuple[int, int, int]]:
    """Follow the model chain in the raw registers: (model id, address of id, length)."""
    regs = device.read(device.base, device.end - device.base)
    assert regs[0:2] == [0x5375, 0x6E53]
    out = []
    i = 2
    while regs[i] != 0xFFFF:
        out.append((regs[i], device.base + i, regs[i + 1]))
        i += 2 + regs[i + 1]
    assert regs[i + 1] == 0
    assert i + 2 == len(regs)
    return out


def reg(device: SunSpecDevice, model_id: int, path: str, count: int = 1) -> list[int]:
    return device.read(device.point_address(model_id, path), count)


def f32(regs: list[int]) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", *regs))[0])


@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_every_profile_has_a_valid_model_chain(name):
    site = profiles.PROFILES[name]()
    for device in site.devices.values():
        chain = walk_chain(device)
        assert chain[0][0] == 1
        assert [m for m, _, _ in chain] == list(device.model_addresses)
        assert [a for _, a, _ in chain] == list(device.model_addresses.values())


def test_fronius_gateway_layout():
    site = profiles.fronius_gateway()
    assert site.units() == [1, 2, 240]
    inv = site.devices[1]
    assert [m for m, _, _ in walk_chain(inv)] == [1, 103, 120, 121, 122, 123, 160]
    assert inv.base == 40000
    assert [m for m, _, _ in walk_chain(site.devices[240])] == [1, 203]
    assert site.get(1, 1, "Mn") == "Fronius"


def test_bases_of_other_profiles():
    assert profiles.base0_device().devices[1].read(0, 2) == [0x5375, 0x6E53]
    der = profiles.der2018_inverter().devices[1]
    assert der.base == 50000
    assert [m for m, _, _ in walk_chain(der)] == [1, 701, 702, 703, 704]
    sma = profiles.sma_like()
    assert sma.units() == [126]
    assert sma.get(126, 1, "Mn") == "SMA"
    assert not profiles.no_control_inverter().devices[1].has(123)


def test_int_model_stores_raw_values_with_scale_factors():
    inv = profiles.fronius_gateway().devices[1]
    assert reg(inv, 103, "V_SF") == [0xFFFF]  # -1
    assert reg(inv, 103, "PhVphA") == [2300]  # 230.0 V at 10^-1
    assert reg(inv, 103, "W") == [4000]
    assert reg(inv, 123, "WMaxLimPct") == [10000]  # 100 % at 10^-2
    assert inv.get(103, "PhVphA") == pytest.approx(230.0)


def test_float_model_stores_float32():
    inv = profiles.float_inverter().devices[1]
    assert f32(reg(inv, 113, "W", 2)) == pytest.approx(4000.0)
    assert f32(reg(inv, 113, "Hz", 2)) == pytest.approx(50.0)


def test_not_implemented_points_keep_their_sentinel():
    inv = profiles.fronius_gateway().devices[1]
    assert reg(inv, 103, "PPVphAB") == [0xFFFF]  # uint16
    assert reg(inv, 103, "TmpSnk") == [0x8000]  # int16
    assert reg(inv, 103, "PF_SF") == [0x8000]  # sunssf
    assert inv.get(103, "PPVphAB") is None
    flt = profiles.float_inverter().devices[1]
    assert reg(flt, 113, "PPVphAB", 2) == [0x7FC0, 0x0000]  # float32 NaN


def test_reads_outside_the_map_are_illegal_addresses():
    inv = profiles.fronius_gateway().devices[1]
    for address, count in ((39999, 2), (inv.end - 1, 2), (0, 1)):
        with pytest.raises(ModbusError) as err:
            inv.read(address, count)
        assert err.value.code == ILLEGAL_ADDRESS


def write_point(site: Site, unit: int, model_id: int, path: str, raw: int, now: float) -> None:
    site.write(unit, site.devices[unit].point_address(model_id, path), [raw], now)


def limit_123(site: Site, unit: int, pct: float, now: float, rvrt_s: int = 0) -> None:
    dev = site.devices[unit]
    start = dev.point_address(123, "WMaxLimPct")
    # WMaxLimPct, WinTms, RvrtTms, RmpTms, Ena: one write of five registers.
    site.write(unit, start, [round(pct * 100), 0, rvrt_s, 0, 1], now)


def test_model_123_limit_reduces_output_with_first_order_lag():
    site = profiles.fronius_gateway(tau_s=1.0)
    site.step(0.0)
    assert site.output_w(1) == pytest.approx(4000.0)
    limit_123(site, 1, 50.0, now=0.0)
    site.step(1.0)
    expected = 2500 + 1500 * math.exp(-1.0)
    assert site.output_w(1) == pytest.approx(expected, rel=1e-6)
    site.step(20.0)
    assert site.output_w(1) == pytest.approx(2500.0, rel=1e-4)
    assert site.get(1, 103, "W") == pytest.approx(2500.0, abs=1)
    assert site.get(1, 103, "St") == 5  # THROTTLED
    assert site.output_w(2) == pytest.approx(6000.0)  # the other inverter is unaffected


def test_limit_above_available_power_changes_nothing():
    site = profiles.fronius_gateway(tau_s=0.5)
    site.step(0.0)
    limit_123(site, 1, 90.0, now=0.0)  # 4500 W > 4000 W available
    site.step(10.0)
    assert site.output_w(1) == pytest.approx(4000.0)
    site.set_available(1, 4800.0)
    site.step(30.0)
    assert site.output_w(1) == pytest.approx(4500.0, rel=1e-4)


def test_model_123_revert_timeout_restores_full_power():
    site = profiles.fronius_gateway(tau_s=0.5)
    site.step(0.0)
    limit_123(site, 1, 20.0, now=0.0, rvrt_s=30)
    site.step(29.0)
    assert site.output_w(1) == pytest.approx(1000.0, rel=1e-3)
    assert site.get(1, 123, "WMaxLim_Ena") == 1
    site.step(31.0)
    assert site.get(1, 123, "WMaxLim_Ena") == 0
    site.step(45.0)
    assert site.output_w(1) == pytest.approx(4000.0, rel=1e-3)


def test_model_123_rewrite_before_timeout_keeps_the_limit():
    site = profiles.fronius_gateway(tau_s=0.5)
    site.step(0.0)
    limit_123(site, 1, 20.0, now=0.0, rvrt_s=30)
    limit_123(site, 1, 20.0, now=25.0, rvrt_s=30)
    site.step(50.0)
    assert site.get(1, 123, "WMaxLim_Ena") == 1
    assert site.output_w(1) == pytest.approx(1000.0, rel=1e-3)
    site.step(56.0)
    assert site.get(1, 123, "WMaxLim_Ena") == 0


def test_revert_expiring_inside_a_long_step_splits_the_step():
    site = profiles.fronius_gateway(tau_s=1.0)
    site.step(0.0)
    limit_123(site, 1, 0.0, now=0.0, rvrt_s=10)
    site.step(10.5)  # limited for 10 s (→ ~0 W), then 0.5 s at full target
    expected = 4000 * (1 - math.exp(-0.5)) + 4000 * math.exp(-10.0) * math.exp(-0.5)
    assert site.output_w(1) == pytest.approx(expected, rel=1e-6)


def test_model_704_limit_and_reversion():
    site = profiles.der2018_inverter(tau_s=0.5)
    dev = site.devices[1]
    site.step(0.0)
    assert site.output_w(1) == pytest.approx(5000.0)
    start = dev.point_address(704, "WMaxLimPctEna")
    assert dev.point_address(704, "WMaxLimPctRvrtTms") == start + 4
    # Ena, Pct, PctRvrt, EnaRvrt, RvrtTms (uint32: high, low)
    site.write(1, start, [1, 4000, 10000, 0, 0, 60], now=0.0)
    site.step(10.0)
    assert site.output_w(1) == pytest.approx(2400.0, rel=1e-3)  # 40 % of 6000 W
    assert site.get(1, 701, "W") == pytest.approx(2400.0, abs=1)
    assert site.get(1, 704, "WMaxLimPctRvrtRem") == 50
    site.step(61.0)
    assert site.get(1, 704, "WMaxLimPctEna") == 0
    assert site.get(1, 704, "WMaxLimPct") == pytest.approx(100.0)
    site.step(80.0)
    assert site.output_w(1) == pytest.approx(5000.0, rel=1e-3)


def test_conn_zero_stops_output_and_conn_revert_reconnects():
    site = profiles.fronius_gateway(tau_s=0.5)
    dev = site.devices[1]
    site.step(0.0)
    # Conn_RvrtTms then Conn
    site.write(1, dev.point_address(123, "Conn_RvrtTms"), [100, 0], now=0.0)
    site.step(20.0)
    assert site.output_w(1) == pytest.approx(0.0, abs=1e-3)
    assert site.get(1, 103, "St") == 1  # OFF
    assert site.get(240, 203, "W") == pytest.approx(1500 - 6000, abs=1)
    site.step(101.0)
    assert site.get(1, 123, "Conn") == 1
    site.step(130.0)
    assert site.output_w(1) == pytest.approx(4000.0, rel=1e-3)


def test_enter_service_disabled_stops_a_der_inverter():
    site = profiles.der2018_inverter(tau_s=0.5)
    site.step(0.0)
    write_point(site, 1, 703, "ES", 0, now=0.0)
    site.step(20.0)
    assert site.output_w(1) == pytest.approx(0.0, abs=1e-3)
    assert site.get(1, 701, "ConnSt") == 0


@pytest.mark.parametrize(
    ("model_id", "path", "raw", "code"),
    [
        (103, "W", 1, ILLEGAL_ADDRESS),  # read-only measurement
        (1, "DA", 7, ILLEGAL_ADDRESS),  # RW in the model, not exposed by this device
        (123, "OutPFSet", 900, ILLEGAL_ADDRESS),  # implemented but not writable here
        (123, "WMaxLimPct", 15000, ILLEGAL_VALUE),  # 150 %
        (123, "WMaxLimPct", 0xFFFF, ILLEGAL_VALUE),  # the not-implemented value
        (123, "WMaxLim_Ena", 2, ILLEGAL_VALUE),  # not an enum symbol
        (123, "Conn", 5, ILLEGAL_VALUE),
    ],
)
def test_illegal_writes_are_refused(model_id, path, raw, code):
    site = profiles.fronius_gateway()
    before = site.get(1, model_id, path)
    with pytest.raises(ModbusError) as err:
        write_point(site, 1, model_id, path, raw, now=0.0)
    assert err.value.code == code
    assert site.get(1, model_id, path) == before


def test_writes_outside_the_map_or_splitting_a_point_are_illegal_addresses():
    site = profiles.der2018_inverter()
    dev = site.devices[1]
    for address in (dev.end, dev.end + 100, dev.base):  # beyond, far beyond, the SunS marker
        with pytest.raises(ModbusError) as err:
            site.write(1, address, [0], now=0.0)
        assert err.value.code == ILLEGAL_ADDRESS
    low_half = dev.point_address(704, "WMaxLimPctRvrtTms") + 1
    with pytest.raises(ModbusError) as err:
        site.write(1, low_half, [60], now=0.0)
    assert err.value.code == ILLEGAL_ADDRESS


def test_a_refused_write_changes_nothing():
    site = profiles.fronius_gateway()
    start = site.devices[1].point_address(123, "WMaxLimPct")
    with pytest.raises(ModbusError):
        site.write(1, start, [5000, 0, 0, 0, 7], now=0.0)  # valid percent, invalid Ena
    assert site.get(1, 123, "WMaxLimPct") == pytest.approx(100.0)
    assert site.get(1, 123, "WMaxLim_Ena") == 0


def test_no_control_inverter_refuses_writes_where_123_would_be():
    site = profiles.no_control_inverter()
    dev = site.devices[1]
    with pytest.raises(ModbusError) as err:
        site.write(1, dev.model_addresses[160] + 2, [0], now=0.0)
    assert err.value.code == ILLEGAL_ADDRESS


def test_meter_measures_load_minus_pv_per_phase():
    site = profiles.fronius_gateway(tau_s=0.5)
    site.step(0.0)
    meter = site.meters[240]
    assert site.get(240, 203, "W") == pytest.approx(1500 - 10000, abs=1)  # export
    phases = [site.get(240, 203, f"Wph{p}") for p in "ABC"]
    assert sum(phases) == pytest.approx(-8500, abs=3)
    assert site.get(240, 203, "Hz") == pytest.approx(50.0)
    assert site.get(240, 203, "PhVphA") > 230.0  # export raises the voltage
    site.set_load(12000.0, var=600.0)
    site.step(1.0)
    assert site.get(240, 203, "W") == pytest.approx(2000, abs=1)  # import
    assert site.get(240, 203, "VAR") == pytest.approx(600, abs=1)
    site.step(3601.0)
    assert meter.import_wh == pytest.approx(2000.0, rel=1e-3)
    assert site.get(240, 203, "TotWhImp") == pytest.approx(2000.0, abs=1)
    assert meter.export_wh == pytest.approx(8500.0 / 3600.0, rel=1e-3)


def test_float_meter_reports_site_power():
    site = profiles.float_inverter()
    site.step(0.0)
    assert site.get(240, 213, "W") == pytest.approx(500 - 4000)
    assert f32(reg(site.devices[240], 213, "W", 2)) == pytest.approx(-3500.0)


def test_energy_accumulates_while_producing():
    site = profiles.fronius_gateway()
    site.step(0.0)
    site.step(3600.0)
    inv = site.devices[1]
    assert isinstance(inv, Inverter)
    assert inv.energy_wh == pytest.approx(4000.0, rel=1e-6)
    assert site.get(1, 103, "WH") == pytest.approx(4000.0, abs=1)


def test_opening_conn_stops_output_at_once_and_the_status_says_disconnected():
    site = profiles.fronius_gateway(tau_s=5.0)
    dev = site.devices[1]
    site.step(0.0)
    assert site.get(1, 122, "ECPConn") == 1 and site.get(1, 122, "PVConn") == 7
    site.write(1, dev.point_address(123, "Conn_WinTms"), [0, 30, 0], now=0.0)  # Conn 0, 30 s
    assert site.output_w(1) == 0.0  # a relay opens: no lag
    assert site.get(1, 103, "W") == 0.0
    assert site.get(1, 103, "St") == 1  # OFF
    assert site.get(1, 122, "ECPConn") == 0 and site.get(1, 122, "PVConn") == 0
    site.step(29.0)
    assert site.output_w(1) == 0.0 and site.get(1, 122, "ECPConn") == 0
    site.step(30.5)  # Conn_RvrtTms expired: reconnected, ramping up again
    assert site.get(1, 123, "Conn") == 1
    assert site.get(1, 122, "ECPConn") == 1
    assert 0.0 < site.output_w(1) < 4000.0


def test_an_inverter_can_trip_or_stop_on_its_own():
    site = profiles.der2018_inverter(tau_s=1.0)
    site.step(0.0)
    state = site.apply({"unit": 1, "set": {"connected": False}}, now=1.0)
    assert state["inverters"]["1"]["connected"] is False
    assert site.output_w(1) == 0.0
    assert site.get(1, 701, "ConnSt") == 0 and site.get(1, 701, "St") == 0
    site.apply({"unit": 1, "set": {"connected": True}}, now=2.0)
    assert site.get(1, 701, "ConnSt") == 1
    site.step(30.0)
    site.apply({"set": {"operating": False}}, now=30.0)  # every inverter
    assert site.output_w(1) == 0.0
    assert site.get(1, 701, "ConnSt") == 1  # still on the grid
    assert site.get(1, 701, "St") == 0 and site.get(1, 701, "InvSt") == 0
    fronius = profiles.fronius_gateway()
    fronius.step(0.0)
    fronius.apply({"unit": 2, "set": {"operating": False}}, now=1.0)
    assert fronius.get(2, 103, "St") == 8  # STANDBY
    assert fronius.get(2, 122, "ECPConn") == 1 and fronius.get(2, 122, "PVConn") == 1
    assert fronius.get(1, 122, "PVConn") == 7  # the other inverter is untouched


def test_control_channel_load_and_available_power_override_the_drivers():
    site = profiles.fronius_gateway(tau_s=0.0)
    site.step(0.0)
    site.apply({"set": {"loadW": 500}}, now=1.0)
    site.set_load(3000.0)  # a demo's household driver: overridden
    site.step(2.0)
    assert site.get(240, 203, "W") == pytest.approx(500 - 10000, abs=1)
    site.apply({"unit": 1, "set": {"availableW": 1000}}, now=3.0)
    site.set_available(1, 4500.0)
    site.step(4.0)
    assert site.output_w(1) == pytest.approx(1000.0)
    state = site.apply({"set": {"loadW": None}}, now=5.0)  # back to the driver's load
    assert state["loadW"] == 3000.0


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([1, 2], "JSON object"),
        ({"device": "inverter 1"}, "unknown command fields"),
        ({"set": {"colour": "red"}}, "unknown settings"),
        ({"set": []}, "must be a JSON object"),
        ({"unit": 7, "set": {"connected": False}}, "no simulated inverter at unit 7"),
        ({"unit": 240, "set": {"connected": False}}, "no simulated inverter at unit 240"),
        ({"unit": "1", "set": {"connected": False}}, "integer"),
        ({"set": {"connected": "no"}}, "true or false"),
        ({"set": {"loadW": float("inf")}}, "finite number"),
        ({"set": {"loadW": True}}, "finite number"),
        ({"set": {"hold": 1}}, "true or false"),
    ],
)
def test_bad_control_commands_name_the_problem_and_change_nothing(command, message):
    site = profiles.fronius_gateway()
    site.step(0.0)
    before = site.snapshot()
    with pytest.raises(ControlError, match=message):
        site.apply(command, now=1.0)
    assert site.snapshot() == before


def test_hold_freezes_energy_counters_and_timers_until_released():
    site = profiles.fronius_gateway(tau_s=0.0)
    site.step(0.0)
    limit_123(site, 1, 20.0, now=0.0, rvrt_s=30)
    site.hold(10.0)
    wh = site.get(1, 103, "WH")
    exp = site.get(240, 203, "TotWhExp")
    site.step(1000.0)
    assert site.get(1, 103, "WH") == wh and site.get(240, 203, "TotWhExp") == exp
    assert site.get(1, 123, "WMaxLim_Ena") == 1  # the 30 s revert timer did not run
    site.release(1000.0)
    site.step(1019.0)  # 29 s of simulated time since the write
    assert site.get(1, 123, "WMaxLim_Ena") == 1
    site.step(1021.0)
    assert site.get(1, 123, "WMaxLim_Ena") == 0
    assert site.get(1, 103, "WH") > wh
