"""Decoding every official model, cross-checked point by point against pysunspec2's decoder."""

from __future__ import annotations

import ipaddress
import math
import random
import struct
from typing import Any

import pytest
import sunspec2.device as ss_device

from dynexport.sunspec.decode import (
    DecodeError,
    RegisterImage,
    decode_model,
    decode_points,
    decode_value,
    encode_value,
    scale,
)
from dynexport.sunspec.models import GroupDef, known_model_ids, model_def
from tests.sunspec.images import model_registers


def _random_point(rng: random.Random, ptype: str, size: int) -> list[int]:
    if ptype == "sunssf":
        return [rng.randint(-3, 3) & 0xFFFF]
    if ptype == "string":
        n = rng.randint(0, size * 2)
        text = bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -") for _ in range(n))
        data = text.ljust(size * 2, b"\0")
        return list(struct.unpack(f">{size}H", data))
    if ptype == "float32":
        return list(struct.unpack(">HH", struct.pack(">f", rng.uniform(-1e5, 1e5))))
    if ptype == "float64":
        return list(struct.unpack(">4H", struct.pack(">d", rng.uniform(-1e9, 1e9))))
    # Mostly ordinary numbers, sometimes the not-implemented sentinels and extremes.
    return [rng.choice([0, 0xFFFF, 0x8000, rng.randint(0, 0xFFFF)]) for _ in range(size)]


def _random_group(
    rng: random.Random, g: GroupDef, top: dict[str, int], out: list[int], is_top: bool
) -> None:
    for p in g.points:
        if is_top and p.name == "ID":
            out.append(0)  # patched by the caller
            continue
        if is_top and p.name == "L":
            out.append(0)
            continue
        if is_top and p.type in ("count", "uint16") and _is_count_point(g, p.name):
            n = rng.randint(1, 3)  # pysunspec2 reads a count of 0 as "fill the model"
            top[p.name] = n
            out.append(n)
            continue
        out.extend(_random_point(rng, p.type, p.size))
    for sub in g.groups:
        if sub.count is None:
            count = 1
        elif isinstance(sub.count, int):
            count = sub.count if sub.count > 0 else rng.randint(0, 3)
        else:
            count = top[sub.count]
        for _ in range(count):
            _random_group(rng, sub, top, out, False)


def _is_count_point(g: GroupDef, name: str) -> bool:
    def refs(grp: GroupDef) -> bool:
        return any(s.count == name or refs(s) for s in grp.groups)

    return refs(g)


def _random_model(rng: random.Random, mid: int) -> list[int]:
    mdef = model_def(mid)
    assert mdef is not None
    regs: list[int] = []
    _random_group(rng, mdef.group, {}, regs, True)
    regs[0] = mid
    regs[1] = len(regs) - 2
    return regs


def _theirs(mid: int, regs: list[int]) -> dict[str, Any]:
    data = struct.pack(f">{len(regs)}H", *regs)
    m = ss_device.Model(model_id=mid, model_len=regs[1], data=data)
    assert not m.error_info, m.error_info
    return m.get_dict(computed=True)  # type: ignore[no-any-return]


def _same(mine: Any, theirs: Any, ptype: str) -> bool:
    if ptype == "ipaddr" and theirs is not None:
        theirs = ".".join(str((theirs >> s) & 0xFF) for s in (24, 16, 8, 0))
    if ptype == "ipv6addr" and theirs is not None:
        theirs = str(ipaddress.IPv6Address(bytes.fromhex(theirs.replace(":", ""))))
    if ptype == "eui48" and theirs == "00:00:00:00:00:00":
        theirs = None  # pysunspec2 only checks the two pad bytes too; an all-zero MAC is unset
    if isinstance(mine, float) or isinstance(theirs, float):
        if mine is None or theirs is None:
            return False
        return math.isclose(float(mine), float(theirs), rel_tol=1e-9, abs_tol=1e-9)
    return bool(mine == theirs)


def _compare_group(g: GroupDef, mine: dict[str, Any], theirs: dict[str, Any], where: str) -> int:
    checked = 0
    for p in g.points:
        if p.type == "pad":
            assert mine[p.name] is None, f"{where}.{p.name}: padding decodes to None"
            continue
        assert _same(mine[p.name], theirs.get(p.name), p.type), (
            f"{where}.{p.name} ({p.type}): ours {mine[p.name]!r}, pysunspec2 {theirs.get(p.name)!r}"
        )
        checked += 1
    for sub in g.groups:
        ours = mine.get(sub.name, [])
        ref = theirs.get(sub.name, [])
        if isinstance(ref, dict):
            ref = [ref]
        assert len(ours) == len(ref), f"{where}.{sub.name}: {len(ours)} vs {len(ref)} instances"
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            checked += _compare_group(sub, a, b, f"{where}.{sub.name}[{i}]")
    return checked


@pytest.mark.parametrize("mid", known_model_ids())
def test_every_official_model_decodes_like_pysunspec2(mid: int) -> None:
    """Random register images of each model decode to the same values as pysunspec2's decoder."""
    mdef = model_def(mid)
    assert mdef is not None
    rng = random.Random(mid)
    checked = 0
    for _ in range(4):
        regs = _random_model(rng, mid)
        decoded = decode_model(mdef, 40002, regs)
        assert decoded.id == mid and decoded.length == regs[1]
        assert not decoded.errors, decoded.errors
        mine = decoded.to_json()
        mine_flat: dict[str, Any] = dict(mine["points"])
        mine_flat.update(mine["groups"])
        checked += _compare_group(mdef.group, mine_flat, _theirs(mid, regs), f"model {mid}")
    assert checked > 0


def test_inverter_values_are_scaled_with_their_own_scale_factor() -> None:
    regs = model_registers(103, {"W": 4200, "W_SF": 0, "PhVphA": 2413, "V_SF": -1, "Hz": 5002})
    mdef = model_def(103)
    assert mdef is not None
    m = decode_model(mdef, 40070, regs)
    assert m.points["W"] == 4200.0
    assert m.points["PhVphA"] == 241.3
    assert m.points["Hz"] is None, "Hz without an implemented Hz_SF cannot be scaled"
    assert m.points["PhVphB"] is None, "0xFFFF in a uint16 is not implemented"
    assert m.raw["W_SF"] == 0
    assert m.to_json()["address"] == 40070 and m.to_json()["length"] == 50


@pytest.mark.parametrize(
    ("ptype", "regs", "expected"),
    [
        ("int16", [0x8000], None),
        ("int16", [0xFFFE], -2),
        ("uint16", [0xFFFF], None),
        ("acc16", [0], None),
        ("enum16", [0xFFFF], None),
        ("bitfield16", [0xFFFF], None),
        ("int32", [0x8000, 0], None),
        ("int32", [0xFFFF, 0xFFFF], -1),
        ("uint32", [0xFFFF, 0xFFFF], None),
        ("uint32", [1, 2], 65538),
        ("acc32", [0, 0], None),
        ("uint64", [0xFFFF] * 4, None),
        ("uint64", [0, 0, 1, 0], 65536),
        ("acc64", [0, 0, 0, 0], None),
        ("int64", [0x8000, 0, 0, 0], None),
        ("float32", [0x7FC0, 0], None),
        ("float32", [0x4049, 0x0FDB], struct.unpack(">f", b"\x40\x49\x0f\xdb")[0]),
        ("string", [0, 0, 0], None),
        ("string", [0x4672, 0x6F6E, 0x6975, 0x7300], "Fronius"),
        ("sunssf", [0x8000], None),
        ("pad", [0x1234], None),
        ("ipaddr", [0xC0A8, 0x0132], "192.168.1.50"),
        ("ipaddr", [0, 0], None),
        ("eui48", [0, 0x0011, 0x2233, 0x4455], "00:11:22:33:44:55"),
        ("eui48", [0xFFFF] * 4, None),
        ("ipv6addr", [0xFE80, 0, 0, 0, 0, 0, 0, 1], "fe80::1"),
        ("ipv6addr", [0] * 8, None),
    ],
)
def test_point_types_and_not_implemented_sentinels(ptype: str, regs: list[int], expected: Any):
    assert decode_value(ptype, regs) == expected


def test_scale_factor_out_of_range_or_missing_gives_none() -> None:
    assert scale(100, 11) is None
    assert scale(100, None) is None
    assert scale(None, 2) is None
    assert scale(25, 2) == 2500.0
    assert scale(-1234, -3) == -1.234


def test_encode_round_trips_and_rejects_out_of_range() -> None:
    assert encode_value("uint32", 70000) == (1, 4464)
    assert decode_value("int16", list(encode_value("int16", -5))) == -5
    assert decode_value("int32", list(encode_value("int32", -70000))) == -70000
    with pytest.raises(ValueError, match="does not fit"):
        encode_value("uint16", 70000)
    with pytest.raises(ValueError, match="cannot encode"):
        encode_value("string", 1)


def test_repeating_groups_follow_their_count_point() -> None:
    regs = model_registers(
        160,
        {
            "N": 2,
            "DCW_SF": 1,
            "module": [{"ID": 1, "IDStr": "MPPT1", "DCW": 150}, {"ID": 2, "DCW": 99}],
        },
    )
    mdef = model_def(160)
    assert mdef is not None
    m = decode_model(mdef, 40000, regs)
    mods = m.groups["module"]
    assert [g.points["ID"] for g in mods] == [1, 2]
    assert mods[0].points["IDStr"] == "MPPT1" and mods[1].points["IDStr"] is None
    assert [g.points["DCW"] for g in mods] == [1500.0, 990.0]


def test_legacy_common_model_of_65_registers_decodes() -> None:
    regs = model_registers(1, {"Mn": "Fronius", "SN": "123", "DA": 1})[:67]
    regs[1] = 65
    mdef = model_def(1)
    assert mdef is not None
    m = decode_model(mdef, 40002, regs)
    assert m.points["Mn"] == "Fronius" and m.points["SN"] == "123" and m.points["DA"] == 1
    assert m.points["Pad"] is None


def test_short_or_mismatched_registers_are_clear_errors() -> None:
    mdef = model_def(103)
    assert mdef is not None
    with pytest.raises(DecodeError, match="L says 50 registers"):
        decode_model(mdef, 40070, [103, 50, 1, 2])
    with pytest.raises(DecodeError, match="expected 103"):
        decode_model(mdef, 40070, [101, 0])


def test_nested_repeating_groups_and_an_oversized_count() -> None:
    """Model 705: NCrv curves of NPt points each; a count the model cannot hold is reported."""
    data = {
        "NPt": 2,
        "NCrv": 1,
        "V_SF": -1,
        "Crv": [{"ActPt": 2, "Pt": [{"V": 1000, "Var": 5}, {"V": 1100, "Var": 7}]}],
    }
    regs = model_registers(705, data)
    mdef = model_def(705)
    assert mdef is not None
    m = decode_model(mdef, 0, regs)
    assert not m.errors
    (crv,) = m.groups["Crv"]
    assert [p.points["V"] for p in crv.groups["Pt"]] == [100.0, 110.0]
    regs[6] = 40  # NCrv claims 40 curves, the model holds one
    m = decode_model(mdef, 0, regs)
    assert len(m.groups["Crv"]) == 1
    assert any("40 instances" in e for e in m.errors)


def test_unknown_vendor_model_is_listed_without_points() -> None:
    m = decode_model(None, 40100, [64999, 3, 1, 2, 3])
    assert (m.id, m.length, m.points, m.groups) == (64999, 3, {}, {})


def test_partial_decode_reads_values_with_their_scale_factors() -> None:
    regs = model_registers(103, {"W": 4200, "W_SF": -1, "Hz": 5001, "Hz_SF": -2})
    mdef = model_def(103)
    assert mdef is not None
    img = RegisterImage()
    img.put(40070, regs)
    pts = decode_points(mdef, 40070, img, ["W", "Hz"], length=50)
    assert pts == {"W": 420.0, "Hz": 50.01}
    img2 = RegisterImage()
    img2.put(40070, regs[:10])
    with pytest.raises(DecodeError, match="was not read"):
        decode_points(mdef, 40070, img2, ["W"], length=50)
