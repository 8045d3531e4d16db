"""Discovery, poll plans, control encoding and views: the pure cores, no I/O."""

from __future__ import annotations

import pytest

from dynexport.sunspec import control
from dynexport.sunspec.control import CommandError, LimitCommand, NotControllableError
from dynexport.sunspec.decode import RegisterImage, decode_model
from dynexport.sunspec.discovery import (
    Discovery,
    DiscoveryError,
    ModelHeader,
    NotSunSpecError,
    ReadRequest,
    SunSpecMap,
)
from dynexport.sunspec.models import model_def
from dynexport.sunspec.polling import coalesce, fast_plan, make_plan, slow_plan
from dynexport.sunspec.views import InverterReading, MeterReading, rated_w
from tests.sunspec.images import device_image, model_registers


def run_discovery(image: dict[int, int], bases=(40000, 50000, 0)) -> tuple[SunSpecMap, int]:
    """Drive the sans-I/O walk against a register dict (missing registers = refused)."""
    d = Discovery(bases)
    n = 0
    while (req := d.next_request()) is not None:
        n += 1
        try:
            regs = [image[req.address + i] for i in range(req.count)]
        except KeyError:
            d.refused()
        else:
            d.feed(regs)
    return d.result, n


def gateway_inverter(base: int = 40000) -> dict[int, int]:
    return device_image(
        base,
        [
            model_registers(1, {"Mn": "Fronius", "Md": "Symo", "SN": "1"}),
            model_registers(103, {"W": 4200, "W_SF": 0, "Hz": 5000, "Hz_SF": -2}),
            model_registers(120, {"WRtg": 500, "WRtg_SF": 1}),
            model_registers(121, {"WMax": 5000, "WMax_SF": 0}),
            model_registers(123, {"WMaxLimPct_SF": -2}),
        ],
    )


@pytest.mark.parametrize("base", [40000, 50000, 0])
def test_discovery_finds_the_map_at_each_base(base: int) -> None:
    smap, _ = run_discovery(gateway_inverter(base))
    assert smap.base == base
    assert smap.ids == [1, 103, 120, 121, 123]
    assert smap.models[0] == ModelHeader(1, base + 2, 66)
    assert smap.models[1].address == base + 70  # 'SunS' 2 + common 68
    assert smap.models[1].length == 50


def test_discovery_without_marker_is_a_clear_error() -> None:
    with pytest.raises(NotSunSpecError, match="40000, 50000, 0"):
        run_discovery({40000: 1, 40001: 2})


def test_chain_without_end_marker_ends_where_the_device_refuses() -> None:
    image = gateway_inverter()
    last = max(image)
    del image[last], image[last - 1]  # no 0xFFFF end block
    smap, _ = run_discovery(image)
    assert smap.ids == [1, 103, 120, 121, 123]


def test_corrupt_length_is_reported() -> None:
    image = {40000: 0x5375, 40001: 0x6E53, 40002: 1, 40003: 0xFFF0}
    with pytest.raises(DiscoveryError, match="runs past register 65535"):
        run_discovery(image)


def test_coalesce_merges_neighbours_and_caps_at_125() -> None:
    assert coalesce([(10, 2), (12, 3), (40, 1)], max_gap=0) == (
        ReadRequest(10, 5),
        ReadRequest(40, 1),
    )
    reads = coalesce([(0, 100), (100, 100), (200, 10)], max_gap=0)
    assert all(r.count <= 125 for r in reads)
    assert sum(r.count for r in reads) == 210
    with pytest.raises(ValueError, match="exceeds"):
        coalesce([(0, 126)])


def test_fast_plan_reads_values_with_their_scale_factors_only() -> None:
    image = gateway_inverter()
    smap, _ = run_discovery(image)
    plan = fast_plan(smap)
    inv = smap.find(103)
    assert inv is not None
    mdef = model_def(103)
    assert mdef is not None
    covered = {a for r in plan.reads for a in range(r.address, r.address + r.count)}
    for name in ("W", "W_SF", "Hz", "Hz_SF", "PhVphA", "V_SF", "St"):
        assert inv.address + mdef.point(name).offset in covered, name
    in_model = covered & set(range(inv.address, inv.address + inv.length + 2))
    assert len(in_model) < inv.length, "the fast plan must not read the whole model"
    img = RegisterImage()
    for r in plan.reads:
        img.put(r.address, [image[r.address + i] for i in range(r.count)])
    reading = InverterReading.from_points(103, plan.decode(img)[103])
    assert reading.w == 4200.0 and reading.hz == 50.0


def test_slow_plan_gives_rating_and_wmax() -> None:
    image = gateway_inverter()
    smap, _ = run_discovery(image)
    plan = slow_plan(smap)
    assert all(r.count <= 125 for r in plan.reads)
    img = RegisterImage()
    for r in plan.reads:
        img.put(r.address, [image[r.address + i] for i in range(r.count)])
    values = plan.decode(img)
    assert rated_w(values) == 5000.0
    assert values[1]["Mn"] == "Fronius"


def test_make_plan_skips_points_beyond_a_short_model() -> None:
    smap = SunSpecMap(40000, (ModelHeader(103, 40002, 10),))
    plan = make_plan(smap, {103: ["A", "W"]})
    assert all(r.address + r.count <= 40002 + 12 for r in plan.reads)


def _controls(mid: int, raw: dict[str, int]) -> tuple[ModelHeader, dict[str, int]]:
    regs = model_registers(mid, raw)
    return ModelHeader(mid, 40100, regs[1]), raw


def test_limit_via_704_is_one_write_with_reversion() -> None:
    header, _ = _controls(704, {"WMaxLimPct_SF": -1})
    writes = control.encode_limit(header, -1, LimitCommand(pct=42.5, revert_s=90))
    mdef = model_def(704)
    assert mdef is not None
    ena = mdef.point("WMaxLimPctEna").offset
    assert writes == (control.RegisterWrite(40100 + ena, (1, 425, 1000, 0, 0, 90)),)


def test_limit_via_123_carries_revert_window_and_ramp() -> None:
    header, _ = _controls(123, {"WMaxLimPct_SF": -2})
    writes = control.encode_limit(header, -2, LimitCommand(pct=50, revert_s=60, ramp_s=5))
    mdef = model_def(123)
    assert mdef is not None
    first = mdef.point("WMaxLimPct").offset
    assert writes == (control.RegisterWrite(40100 + first, (5000, 0, 60, 5, 1)),)
    clear = control.encode_limit(header, -2, LimitCommand(pct=None))
    assert clear == (control.RegisterWrite(40100 + mdef.point("WMaxLim_Ena").offset, (0,)),)


def test_written_limit_decodes_back_from_the_registers() -> None:
    """Apply the writes to the image and decode: the limit reads back as commanded."""
    regs = model_registers(704, {"WMaxLimPct_SF": -1})
    header = ModelHeader(704, 0, regs[1])
    cmd = LimitCommand(pct=37.5, revert_s=120, revert_pct=80)
    for w in control.encode_limit(header, -1, cmd):
        regs[w.address : w.address + len(w.values)] = w.values
    mdef = model_def(704)
    assert mdef is not None
    m = decode_model(mdef, 0, regs)
    assert m.points["WMaxLimPct"] == 37.5 and m.points["WMaxLimPctRvrt"] == 80.0
    assert m.raw["WMaxLimPctEna"] == 1 and m.raw["WMaxLimPctRvrtTms"] == 120
    assert control.verify(control.limit_values(header, -1, cmd), m.raw) == []
    assert control.verify({"WMaxLimPct": 1}, m.raw) == ["WMaxLimPct: wrote 1, reads 375"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pct": 101}, "0..100"),
        ({"pct": -1}, "0..100"),
        ({"pct": float("nan")}, "0..100"),
        ({"pct": 50, "revert_s": 0}, "must expire"),
        ({"pct": 50, "revert_s": 70000}, "1..65534"),
    ],
)
def test_bad_commands_are_refused(kwargs, match) -> None:
    with pytest.raises(CommandError, match=match):
        LimitCommand(**kwargs)


def test_no_control_model_names_the_likely_cause() -> None:
    smap = SunSpecMap(40000, (ModelHeader(1, 40002, 66), ModelHeader(103, 40070, 50)))
    with pytest.raises(NotControllableError, match="not enabled in the inverter's web UI"):
        control.control_model(smap, "Fronius")
    with pytest.raises(NotControllableError, match="no SunSpec control model"):
        control.control_model(smap, "Acme")
    meter = SunSpecMap(40000, (ModelHeader(1, 40002, 66), ModelHeader(203, 40070, 105)))
    with pytest.raises(NotControllableError, match="is a meter"):
        control.control_model(meter, None)


def test_704_is_preferred_over_123() -> None:
    smap = SunSpecMap(0, (ModelHeader(123, 2, 24), ModelHeader(704, 28, 65)))
    assert control.control_model(smap).id == 704


def test_connect_via_123_has_a_revert_timer() -> None:
    header, _ = _controls(123, {})
    mdef = model_def(123)
    assert mdef is not None
    (w,) = control.encode_connect(header, False, 30)
    assert w == control.RegisterWrite(40100 + mdef.point("Conn_WinTms").offset, (0, 30, 0))


def test_watts_to_percent_of_wmax() -> None:
    assert control.watts_to_pct(2500, 5000) == 50.0
    assert control.watts_to_pct(9000, 5000) == 100.0
    with pytest.raises(CommandError, match="no WMax"):
        control.watts_to_pct(100, None)


def test_meter_site_power_is_positive_for_import() -> None:
    """SunSpec meters report W > 0 when the site draws from the grid: kept as import."""
    mdef = model_def(203)
    assert mdef is not None
    raw = {"W": -3000, "WphA": -1000, "WphB": -1000, "WphC": -1000, "W_SF": 0}
    raw |= {"Hz": 4998, "Hz_SF": -2, "PhVphA": 2401, "V_SF": -1, "VAR": 200, "VAR_SF": 0}
    m = decode_model(mdef, 0, model_registers(203, raw))
    r = MeterReading.from_points(203, m.points)
    assert r.site_w == -3000.0, "negative W from the meter is export"
    assert r.phase_w == (-1000.0, -1000.0, -1000.0)
    assert r.hz == 49.98 and r.phase_v[0] == 240.1 and r.var == 200.0
    assert MeterReading.from_points(203, m.points, invert=True).site_w == 3000.0
    with pytest.raises(ValueError, match="not a SunSpec meter"):
        MeterReading.from_points(103, m.points)


def test_meter_energy_counters_follow_the_readings_direction_and_their_resolution() -> None:
    """TotWhImp/TotWhExp as read (0 is "not implemented"); a meter read inverted swaps them with
    its power; their step is 10^TotWh_SF, or a float32's step at their size (model 213)."""
    r = MeterReading.from_points(
        203, {"W": -3000.0, "TotWhImp": 52000.0, "TotWhExp": 0, "TotWh_SF": 1}
    )
    assert (r.import_wh, r.export_wh, r.energy_step_wh) == (52000.0, None, 10.0)
    inv = MeterReading.from_points(
        203, {"W": -3000.0, "TotWhImp": 52000.0, "TotWhExp": 0}, invert=True
    )
    assert (inv.import_wh, inv.export_wh) == (None, 52000.0)
    big = MeterReading.from_points(213, {"W": 0.0, "TotWhImp": 20_000_000.0, "TotWhExp": 5.0})
    assert big.energy_step_wh == 2.0  # float32 at 20 MWh: 2 Wh
    small = MeterReading.from_points(213, {"W": 0.0, "TotWhImp": 5000.0})
    assert small.energy_step_wh == 1.0 and small.export_wh is None
    assert MeterReading.from_points(213, {"W": 0.0}).energy_step_wh is None
