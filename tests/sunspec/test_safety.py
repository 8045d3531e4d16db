"""Safety rules of the pure SunSpec cores: limits never round up, scale factors and register
contents from a device can never crash the service, disconnect never relies on a timer-less
control."""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sunspec import control
from dynexport.sunspec.control import (
    CommandError,
    InvalidScaleFactorError,
    LimitCommand,
    NotControllableError,
)
from dynexport.sunspec.decode import (
    DecodedGroup,
    DecodeError,
    MapChangedError,
    RegisterImage,
    decode_model,
    decode_value,
    scale,
)
from dynexport.sunspec.discovery import ModelHeader, SunSpecMap
from dynexport.sunspec.models import known_model_ids, model_def
from dynexport.sunspec.polling import fast_plan
from tests.sunspec.images import model_registers

# -- 1. limits round down ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pct", "sf", "raw"),
    [
        (2.6, 0, 2),  # to the nearest step this was 3: +0.4 % of WMax exported for ever
        (2.6, -1, 26),
        (3.0, -1, 30),
        (3.0000000001, -1, 30),
        (2.9999999999999996, -1, 30),  # float noise for 3.0 does not lose a whole step
        (2.95, -1, 29),
        (0.29, -2, 29),
        (0.3, -1, 3),
        (99.999, -2, 9999),
        (100.0, 0, 100),
        (0.0, -2, 0),
        (55.0, 1, 5),  # SF +1: a 10 % step, 50 % written for 55 % asked
    ],
)
def test_limit_is_rounded_down_to_the_register_step(pct: float, sf: int, raw: int) -> None:
    assert control.pct_to_raw(pct, sf) == raw


def test_two_10kw_inverters_at_2_6_pct_write_2_not_3_pct() -> None:
    """0 W export limit, 540 W load: the controller asks 2.6 % of each 10 kW inverter."""
    header = ModelHeader(704, 40000, model_registers(704)[1])
    values = control.limit_values(header, 0, LimitCommand(pct=2.6, revert_s=60))
    assert values["WMaxLimPct"] == 2
    assert 2 * 10_000 / 100 * 2 <= 540  # both inverters together stay within the load


@settings(max_examples=400, deadline=None)
@given(
    pct=st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
    sf=st.integers(min_value=-10, max_value=0),
)
def test_a_written_limit_is_never_above_the_asked_one(pct: float, sf: int) -> None:
    """For every percent and scale factor: the written value is at most the asked one (up to
    the documented 1e-9 percentage point of float noise), and less than one step below it."""
    try:
        raw = control.pct_to_raw(pct, sf)
    except CommandError as exc:
        # Only when even the rounded-down value needs more than a uint16 (SF -3 and below).
        assert "does not fit" in str(exc)
        assert Fraction(pct) * Fraction(10) ** -sf > 0xFFFE
        return
    step = Fraction(10) ** sf
    written = raw * step
    asked = Fraction(pct)
    assert written <= asked + control.LIMIT_TOLERANCE_PCT
    assert asked - written < step
    assert 0 <= raw <= 0xFFFE
    assert control.raw_to_pct(raw, sf) == float(written)


def test_written_limit_reads_back_as_the_rounded_down_value() -> None:
    """The read-back check compares register values, so the rounded-down limit verifies."""
    regs = model_registers(123, {"WMaxLimPct_SF": 0})
    header = ModelHeader(123, 0, regs[1])
    cmd = LimitCommand(pct=2.6, revert_s=60)
    for w in control.encode_limit(header, 0, cmd):
        regs[w.address : w.address + len(w.values)] = w.values
    mdef = model_def(123)
    assert mdef is not None
    m = decode_model(mdef, 0, regs)
    assert control.verify(control.limit_values(header, 0, cmd), m.raw) == []
    assert m.points["WMaxLimPct"] == 2.0


# -- 3. scale factors out of range ---------------------------------------------------------------


@pytest.mark.parametrize("sf", [400, -400, 11, -11, 0x7FFF])
def test_a_limit_scale_factor_outside_sunspec_range_makes_the_device_not_controllable(
    sf: int,
) -> None:
    header = ModelHeader(123, 40000, model_registers(123)[1])
    with pytest.raises(InvalidScaleFactorError) as err:
        control.limit_values(header, sf, LimitCommand(pct=50))
    assert str(err.value) == f"not controllable: invalid scale factor (WMaxLimPct_SF={sf})"
    assert isinstance(err.value, NotControllableError)


@pytest.mark.parametrize("sf", [400, -400, 11, -11])
def test_a_value_read_with_an_out_of_range_scale_factor_is_unknown(sf: int) -> None:
    raw = {"WMaxLimPct_SF": sf, "WMaxLimPct": 5000, "WMaxLim_Ena": 1}
    mdef = model_def(123)
    assert mdef is not None
    m = decode_model(mdef, 0, model_registers(123, raw))
    assert m.points["WMaxLimPct"] is None
    assert m.raw["WMaxLimPct_SF"] == sf  # kept as read, to name it in the reason
    assert scale(5000, sf) is None


def test_float_infinity_and_nan_decode_as_unknown() -> None:
    for value in (math.inf, -math.inf, math.nan):
        regs32 = list(struct.unpack(">HH", struct.pack(">f", value)))
        regs64 = list(struct.unpack(">4H", struct.pack(">d", value)))
        assert decode_value("float32", regs32) is None
        assert decode_value("float64", regs64) is None


def _numbers(points: dict[str, Any], groups: dict[str, tuple[DecodedGroup, ...]]) -> list[Any]:
    out = [v for v in points.values() if not isinstance(v, str)]
    for insts in groups.values():
        for g in insts:
            out += _numbers(g.points, g.groups)
    return out


_MODEL_IDS = known_model_ids()
_FLOAT_MODEL_IDS = [
    m
    for m in _MODEL_IDS
    if any(p.type.startswith("float") for p in model_def(m).group.points)  # type: ignore[union-attr]
]
_chunks = st.one_of(
    st.tuples(st.integers(min_value=0, max_value=0xFFFF)),
    st.sampled_from([(0,), (0x8000,), (0xFFFF,), (400,), (0xFE70,), (11,)]),
    # float32 +inf, -inf and NaN; float64 +inf
    st.sampled_from([(0x7F80, 0), (0xFF80, 0), (0x7FC0, 0), (0x7FF0, 0, 0, 0)]),
)


@settings(max_examples=300, deadline=None)
@given(
    mid=st.one_of(st.sampled_from(_MODEL_IDS), st.sampled_from(_FLOAT_MODEL_IDS)),
    length=st.integers(min_value=0, max_value=400),
    data=st.data(),
)
def test_decoding_any_registers_never_crashes_and_gives_finite_numbers(
    mid: int, length: int, data: st.DataObject
) -> None:
    """Whatever a device answers, decoding raises only DecodeError, and every number it gives
    is finite or None (no inf, no NaN, no 10**400)."""
    chunks = data.draw(st.lists(_chunks, min_size=0, max_size=length + 4))
    regs = [mid, length, *(w for chunk in chunks for w in chunk)]
    try:
        m = decode_model(model_def(mid), 40000, regs)
    except DecodeError:
        return
    for v in _numbers(m.points, m.groups):
        assert v is None or (isinstance(v, int | float) and math.isfinite(v)), v


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fast_plan_decoding_of_any_registers_never_crashes(data: st.DataObject) -> None:
    """The per-second poll (only some points, their scale factors) obeys the same rule."""
    inverter = data.draw(st.sampled_from([103, 113]))
    meter = data.draw(st.sampled_from([203, 213]))
    smap = SunSpecMap(
        40000,
        (
            ModelHeader(inverter, 40002, 60),
            ModelHeader(122, 40064, 44),
            ModelHeader(meter, 40110, 124),
        ),
    )
    plan = fast_plan(smap)
    img = RegisterImage()
    for r in plan.reads:
        words = [w for chunk in data.draw(st.lists(_chunks, min_size=r.count)) for w in chunk]
        img.put(r.address, words[: r.count])
    for h in smap.models:  # each model still where discovery found it...
        img.put(h.address, [h.id, h.length])
    moved = data.draw(st.sampled_from([None, *smap.models]))
    if moved is not None:  # ...but one: its header now holds anything else
        other = data.draw(
            st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)).filter(
                lambda w: w != (moved.id, moved.length)
            )
        )
        img.put(moved.address, list(other))
        if other == (0, 0):  # a device still starting: not a new map
            with pytest.raises(DecodeError, match="reads zeros: the device is not ready"):
                plan.decode(img)
            return
        with pytest.raises(MapChangedError, match="the device's SunSpec map changed"):
            plan.decode(img)
        return
    for points in plan.decode(img).values():
        for v in points.values():
            assert v is None or (isinstance(v, int | float) and math.isfinite(v)), v


# -- 2 and 4. connect control -------------------------------------------------------------------


def test_disconnect_goes_only_through_123_conn_with_its_revert_timer() -> None:
    der = SunSpecMap(50000, (ModelHeader(701, 50002, 153), ModelHeader(703, 50157, 17)))
    assert control.connect_model(der) is None  # 703 ES has no timer: never written
    with pytest.raises(CommandError, match="revert timer"):
        control.connect_values(ModelHeader(703, 50157, 17), False, 60)
    header = ModelHeader(123, 40100, 24)
    assert control.connect_values(header, False, 30) == {
        "Conn_WinTms": 0,
        "Conn_RvrtTms": 30,
        "Conn": 0,
    }
    with pytest.raises(CommandError, match=r"1\.\.65534"):
        control.connect_values(header, False, 0)


def test_connect_control_needs_conn_and_its_timer_implemented() -> None:
    assert control.has_connect_control({"Conn": 1, "Conn_RvrtTms": 0})
    assert not control.has_connect_control({"Conn": None, "Conn_RvrtTms": 0})
    assert not control.has_connect_control({"Conn": 1, "Conn_RvrtTms": None})
    assert not control.has_connect_control(None)


def test_fast_plan_reads_the_connection_state() -> None:
    with_status = SunSpecMap(
        40000,
        (ModelHeader(103, 40002, 50), ModelHeader(122, 40054, 44), ModelHeader(123, 40100, 24)),
    )
    plan = fast_plan(with_status)
    # and WAval, the power it could make now (curtailed energy = WAval less output), and the
    # limit in force (a reset that clears it is found within a second)
    names = {mp.header.id: mp.names for mp in plan.models}
    assert names[122] == ("PVConn", "ECPConn", "WAval")
    assert names[123] == ("WMaxLimPct", "WMaxLim_Ena")
    only_123 = SunSpecMap(40000, (ModelHeader(103, 40002, 50), ModelHeader(123, 40054, 24)))
    assert {mp.header.id: mp.names for mp in fast_plan(only_123).models}[123] == (
        "Conn",
        "WMaxLimPct",
        "WMaxLim_Ena",
    )
    with_704 = SunSpecMap(
        40000,
        (ModelHeader(701, 40002, 153), ModelHeader(123, 40157, 24), ModelHeader(704, 40183, 65)),
    )
    names = {mp.header.id: mp.names for mp in fast_plan(with_704).models}
    assert names[704] == ("WMaxLimPctEna", "WMaxLimPct") and 123 not in names
