"""Pure decoding of SunSpec registers into values: no I/O, no clock.

A value is scaled with the scale factor read in the same pass as the value itself (a scale factor
from an earlier read may have changed since, which would turn 4200 W into 42000 W).
Not-implemented sentinels (int16 0x8000, uint16 0xFFFF, acc 0, float NaN, all-zero string, ...)
become None so no sentinel ever reaches a controller as a real number; so do values that are not
finite (float infinity) and values whose scale factor is outside the -10..10 SunSpec allows.
Decoding never raises anything but :class:`DecodeError`, whatever the registers hold.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynexport.sunspec.models import TYPE_SIZES, GroupDef, ModelDef, PointDef

Value = int | float | str | None

_UNIMPL_INT: dict[str, int] = {
    "int16": -0x8000,
    "sunssf": -0x8000,
    "uint16": 0xFFFF,
    "count": 0xFFFF,
    "enum16": 0xFFFF,
    "bitfield16": 0xFFFF,
    "acc16": 0,
    "int32": -0x80000000,
    "uint32": 0xFFFFFFFF,
    "enum32": 0xFFFFFFFF,
    "bitfield32": 0xFFFFFFFF,
    "acc32": 0,
    "int64": -0x8000000000000000,
    "uint64": 0xFFFFFFFFFFFFFFFF,
    "acc64": 0,
}
_SIGNED = {"int16", "sunssf", "int32", "int64"}
_INT_TYPES = frozenset(_UNIMPL_INT)
# SunSpec allows scale factors -10..10; anything else is a device bug, not a number to trust.
SF_RANGE = range(-10, 11)


class DecodeError(ValueError):
    """Registers that cannot be decoded as the model says (too few, inconsistent counts)."""


class DeviceNotReadyError(DecodeError):
    """A model's header reads zeros: a device starting up (its link retries, and discovers the
    device again if that lasts: the zeros may be where a moved map left nothing)."""


class MapChangedError(DecodeError):
    """A model's registers no longer start with the header discovery found there: the device's
    map changed (a firmware update, a reboot into another mode). Its link discovers it again;
    read on with the old map, every value would come from the wrong registers."""


def check_header(
    header_id: int, header_length: int, address: int, registers: Sequence[int]
) -> None:
    """Raises MapChangedError unless ``registers`` (read at ``address``) start with the model
    header ``header_id``, ``header_length`` found at discovery."""
    if len(registers) < 2 or registers[0] != header_id or registers[1] != header_length:
        found = tuple(registers[:2])
        if found == (0, 0):
            # A device still starting (a reboot) reads zeros: not a new map; rediscovered now,
            # its chain would end at the first zero header, its controls missing.
            raise DeviceNotReadyError(
                f"model {header_id} at register {address} reads zeros: the device is not ready"
            )
        raise MapChangedError(
            f"model {header_id} (length {header_length}) was found at register {address}, which "
            f"now holds {found}: the device's SunSpec map changed"
        )


def _as_int(regs: Sequence[int], signed: bool) -> int:
    v = 0
    for r in regs:
        v = (v << 16) | (r & 0xFFFF)
    if signed and regs and regs[0] & 0x8000:
        v -= 1 << (16 * len(regs))
    return v


def _as_bytes(regs: Sequence[int]) -> bytes:
    return b"".join(struct.pack(">H", r & 0xFFFF) for r in regs)


def decode_value(ptype: str, regs: Sequence[int]) -> Value:
    """The unscaled value of one point from its registers; None when not implemented."""
    if ptype in _INT_TYPES:
        v = _as_int(regs, ptype in _SIGNED)
        return None if v == _UNIMPL_INT[ptype] else v
    if ptype == "pad":
        return None  # padding carries no information
    if ptype == "float32":
        (f,) = struct.unpack(">f", _as_bytes(regs[:2]).ljust(4, b"\0"))
        return f if math.isfinite(f) else None  # NaN = not implemented; inf is never a reading
    if ptype == "float64":
        (f,) = struct.unpack(">d", _as_bytes(regs[:4]).ljust(8, b"\0"))
        return f if math.isfinite(f) else None
    if ptype == "string":
        raw = _as_bytes(regs).split(b"\0", 1)[0]
        return raw.decode("utf-8", errors="replace") if raw else None
    if ptype == "ipaddr":
        v = _as_int(regs[:2], False)
        return None if v == 0 else str(ipaddress.IPv4Address(v))
    if ptype == "ipv6addr":
        b = _as_bytes(regs[:8])
        return None if not any(b) else str(ipaddress.IPv6Address(b))
    if ptype == "eui48":
        b = _as_bytes(regs[:4])[2:]
        if not any(b) or all(x == 0xFF for x in b):
            return None
        return ":".join(f"{x:02X}" for x in b)
    raise DecodeError(f"unknown SunSpec point type {ptype!r}")


def encode_value(ptype: str, value: int | float) -> tuple[int, ...]:
    """Registers for a value of an integer or float type (used for control writes)."""
    if ptype == "float32":
        return struct.unpack(">HH", struct.pack(">f", float(value)))
    if ptype not in _INT_TYPES or not isinstance(value, int):
        raise ValueError(f"cannot encode {value!r} as SunSpec {ptype}")
    nregs = TYPE_SIZES[ptype]
    bits = 16 * nregs
    lo, hi = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if ptype in _SIGNED else (0, (1 << bits) - 1)
    )
    if not lo <= value <= hi:
        raise ValueError(f"{value} does not fit a SunSpec {ptype}")
    v = value & ((1 << bits) - 1)
    return tuple((v >> (16 * (nregs - 1 - i))) & 0xFFFF for i in range(nregs))


def valid_sf(sf: Value) -> int | None:
    """A scale factor as read, if SunSpec allows it (-10..10); None when unknown or invalid."""
    return sf if isinstance(sf, int) and sf in SF_RANGE else None


def scale(raw: Value, sf: Value) -> Value:
    """``raw * 10**sf``; None if either is unknown, the scale factor is outside -10..10 (a device
    bug: 10**400 would overflow, 10**-400 divide by zero) or the result is not finite.
    Dividing by an exact power of ten gives the nearest float to the decimal value (2413, -1 ->
    241.3, not 241.29999999999998)."""
    if raw is None or isinstance(raw, str):
        return None
    exp = valid_sf(sf)
    if exp is None:
        return None
    power: int = 10 ** abs(exp)
    try:
        out = raw / power if exp < 0 else float(raw * power)
    except (OverflowError, ZeroDivisionError):  # pragma: no cover - finite raw, bounded exp
        return None
    return out if math.isfinite(out) else None


@dataclass(frozen=True)
class DecodedGroup:
    """One instance of a group: scaled point values and its nested group instances."""

    name: str
    points: dict[str, Value]
    groups: dict[str, tuple[DecodedGroup, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.points)
        for name, insts in self.groups.items():
            out[name] = [g.to_json() for g in insts]
        return out


@dataclass(frozen=True)
class DecodedModel:
    """A whole model as read from a device. ``address`` is the register holding the model id;
    ``length`` is the L register (registers after ID and L)."""

    id: int
    address: int
    length: int
    name: str | None
    points: dict[str, Value]
    raw: dict[str, Value]
    groups: dict[str, tuple[DecodedGroup, ...]] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "length": self.length,
            "points": dict(self.points),
            "groups": {n: [g.to_json() for g in insts] for n, insts in self.groups.items()},
        }


def _sf_for(point: PointDef, local_raw: Mapping[str, Value], top_raw: Mapping[str, Value]) -> Value:
    sf = point.sf
    if sf is None or isinstance(sf, int):
        return sf
    if sf in local_raw:
        return local_raw[sf]
    return top_raw.get(sf)


UNSCALED_WHEN_SF_UNIMPLEMENTED = frozenset({"WMaxLimPct", "WMaxLimPctRvrt"})
"""Points read in whole units when their scale factor is not implemented (0x8000), as they are
written (``control.limit_sf``): a limit written as 30 then read back as 30 %, not as unknown (the
status showed no limit, and the law took a curtailed inverter for a free one)."""


def _scaled(
    points: Iterable[PointDef], raw: Mapping[str, Value], top_raw: Mapping[str, Value]
) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for p in points:
        v = raw.get(p.name)
        if p.sf is None:
            out[p.name] = v
            continue
        sf = _sf_for(p, raw, top_raw)
        if sf is None and p.name in UNSCALED_WHEN_SF_UNIMPLEMENTED:
            sf = 0
        out[p.name] = scale(v, sf)
    return out


def _count_of(g: GroupDef, top_raw: Mapping[str, Value], remaining: int, mid: int) -> int:
    if g.count is None:
        return 1
    if isinstance(g.count, int) and g.count > 0:
        return g.count
    if isinstance(g.count, str):
        n = top_raw.get(g.count)
        if not isinstance(n, int) or n < 0:
            raise DecodeError(f"model {mid}: group {g.name} count point {g.count} is {n!r}")
        return n
    inst = _instance_len(g, top_raw)
    if inst <= 0:
        raise DecodeError(f"model {mid}: group {g.name} has zero length")
    return max(remaining, 0) // inst


def _instance_len(g: GroupDef, top_raw: Mapping[str, Value]) -> int:
    n = g.points_len
    for sub in g.groups:
        if sub.count is None:
            c = 1
        elif isinstance(sub.count, int):
            c = sub.count
        else:
            cv = top_raw.get(sub.count)
            c = cv if isinstance(cv, int) else 0
        n += c * _instance_len(sub, top_raw)
    return n


def _decode_group(
    g: GroupDef,
    regs: Sequence[int],
    start: int,
    end: int,
    top_raw: dict[str, Value] | None,
    mid: int,
    errors: list[str],
) -> tuple[DecodedGroup, dict[str, Value], int]:
    pos = start
    raw: dict[str, Value] = {}
    for p in g.points:
        if pos + p.size <= end:
            raw[p.name] = decode_value(p.type, regs[pos : pos + p.size])
        else:
            raw[p.name] = None
        pos += p.size
    top = raw if top_raw is None else top_raw
    points = _scaled(g.points, raw, top)
    groups: dict[str, tuple[DecodedGroup, ...]] = {}
    for sub in g.groups:
        count = _count_of(sub, top, end - pos, mid)
        insts: list[DecodedGroup] = []
        for _ in range(count):
            if pos >= end:
                errors.append(
                    f"model {mid}: group {sub.name} says {count} instances but only "
                    f"{len(insts)} fit in the model length"
                )
                break
            inst, _, pos = _decode_group(sub, regs, pos, end, top, mid, errors)
            insts.append(inst)
        groups[sub.name] = tuple(insts)
    return DecodedGroup(g.name, points, groups), raw, pos


def decode_model(mdef: ModelDef | None, address: int, registers: Sequence[int]) -> DecodedModel:
    """Decode a whole model from its registers, starting with the ID register.

    ``registers`` must hold ID, L and the L registers that follow. A model without an official
    definition (vendor models) is still listed with its id, address and length.
    """
    if len(registers) < 2:
        raise DecodeError(f"model at {address}: need at least the ID and L registers")
    mid, length = registers[0], registers[1]
    if len(registers) < length + 2:
        raise DecodeError(
            f"model {mid} at {address}: L says {length} registers, only {len(registers) - 2} given"
        )
    if mdef is None:
        return DecodedModel(mid, address, length, None, {}, {})
    if mdef.id != mid:
        raise DecodeError(f"register {address} holds model id {mid}, expected {mdef.id}")
    errors: list[str] = []
    group, raw, used = _decode_group(mdef.group, registers, 0, length + 2, None, mid, errors)
    if used < length + 2 and not errors:
        # Longer than the definition: extra registers are not ours to interpret.
        errors.append(f"model {mid}: {length + 2 - used} registers beyond the definition ignored")
    return DecodedModel(
        id=mid,
        address=address,
        length=length,
        name=mdef.name,
        points=group.points,
        raw=raw,
        groups=group.groups,
        errors=tuple(errors),
    )


class RegisterImage:
    """A sparse copy of a device's registers, filled by whatever reads a poll plan made."""

    def __init__(self) -> None:
        self._regs: dict[int, int] = {}

    def put(self, address: int, values: Sequence[int]) -> None:
        for i, v in enumerate(values):
            self._regs[address + i] = v

    def get(self, address: int, count: int) -> list[int] | None:
        try:
            return [self._regs[address + i] for i in range(count)]
        except KeyError:
            return None

    def __contains__(self, address: object) -> bool:
        return address in self._regs


def needed_points(mdef: ModelDef, names: Iterable[str]) -> list[PointDef]:
    """The top-level points to read for ``names``: the points plus their scale factors."""
    wanted: dict[str, PointDef] = {}
    for name in names:
        p = mdef.point(name)
        wanted[p.name] = p
        if isinstance(p.sf, str) and mdef.has_point(p.sf):
            sfp = mdef.point(p.sf)
            wanted[sfp.name] = sfp
    return sorted(wanted.values(), key=lambda p: p.offset)


def decode_points(
    mdef: ModelDef, address: int, image: RegisterImage, names: Iterable[str], *, length: int
) -> dict[str, Value]:
    """Scaled values of some top-level points of the model at ``address`` from a register image.

    Points (or their scale factors) beyond the model's length L are not implemented: None.
    """
    pts = needed_points(mdef, names)
    raw: dict[str, Value] = {}
    for p in pts:
        if p.offset + p.size > length + 2:
            raw[p.name] = None
            continue
        regs = image.get(address + p.offset, p.size)
        if regs is None:
            raise DecodeError(
                f"model {mdef.id} point {p.name} (register {address + p.offset}) was not read"
            )
        raw[p.name] = decode_value(p.type, regs)
    wanted = [mdef.point(n) for n in names]
    return _scaled(wanted, raw, raw)
