"""Poll plans: which registers to read at each rate, in as few requests as possible.

A plan is pure data made once after discovery. The fast plan (about every second) reads only
power, reactive power, voltage, frequency and status; the slow plan (every few minutes) reads
nameplate, settings and control state. Every value is read together with its scale factor in the
same pass, and neighbouring ranges are merged into requests of at most 125 registers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from dynexport.sunspec.bus import MAX_READ
from dynexport.sunspec.decode import (
    DecodedGroup,
    DecodeError,
    RegisterImage,
    Value,
    check_header,
    decode_model,
    decode_points,
    needed_points,
)
from dynexport.sunspec.discovery import ModelHeader, ReadRequest, SunSpecMap
from dynexport.sunspec.models import model_def

INVERTER_INT_MODELS = (101, 102, 103)
INVERTER_FLOAT_MODELS = (111, 112, 113)
DER_MEASUREMENT_MODEL = 701
INVERTER_MODELS = (*INVERTER_INT_MODELS, *INVERTER_FLOAT_MODELS)
METER_MODELS = (201, 202, 203, 204, 211, 212, 213, 214)

# Fast points per model family (names from the official definitions).
_FAST_INVERTER = ("A", "W", "VA", "VAr", "PF", "Hz", "PhVphA", "PhVphB", "PhVphC", "St", "DCW")
_FAST_DER = (
    *("St", "InvSt", "ConnSt", "W", "VA", "Var", "PF", "Hz", "LNV", "VL1", "VL2", "VL3"),
    *("WL1", "WL2", "WL3", "ThrotPct"),
)
_FAST_METER = (
    *("Hz", "W", "WphA", "WphB", "WphC", "VAR", "VARphA", "VARphB", "VARphC"),
    *("PhV", "PhVphA", "PhVphB", "PhVphC"),
    *("TotWhExp", "TotWhImp", "TotWh_SF"),
)
_FAST_STATUS = ("PVConn", "ECPConn", "WAval")
"""Model 122's connection bits: whether the inverter is really on the grid (it may trip, or be
opened through 123 Conn), read with the power so the utility hears of it within a poll; and
``WAval``, the power it could make now, from which the energy the limits curtailed is counted."""
_FAST_CONN = ("Conn",)
"""Model 123's connect control, the fallback when a device has no model 122."""
CONTROL_MODELS = (704, 123)
"""The models an inverter's limit is written through: 704 if the device has it, else 123."""
FAST_LIMIT: dict[int, tuple[str, ...]] = {
    704: ("WMaxLimPctEna", "WMaxLimPct"),
    123: ("WMaxLimPct", "WMaxLim_Ena"),
}
"""The limit in force, read with the power from the control model: a device reset that clears
only the limit written is found at the next fast poll, not at the slow one minutes later."""
FAST_MAX_GAP = 16
"""The fast plan runs every second: a gap of up to 16 registers (32 bytes, about 33 ms at 9600
baud, less than one more round trip with the device's turnaround) is read through, so the
limit's points and their scale factor ride on the status read (3 requests on a Fronius, not 5)."""
SLOW_MODELS = (1, 120, 121, 122, 123, 124, 702, 703, 704)
"""Models the slow plan reads whole (top-level points): identity, ratings, settings, controls."""


def fast_points(model_id: int) -> tuple[str, ...]:
    if model_id in INVERTER_MODELS:
        return _FAST_INVERTER
    if model_id == DER_MEASUREMENT_MODEL:
        return _FAST_DER
    if model_id in METER_MODELS:
        return _FAST_METER
    return ()


@dataclass(frozen=True)
class ModelPoll:
    """The top-level points to decode from one model; ``whole``: the model is read whole and
    its repeating groups' points come too, named as in :func:`group_key`."""

    header: ModelHeader
    names: tuple[str, ...]
    whole: bool = False


def group_key(group: str, index: int, point: str) -> str:
    """How a group instance's point is named among a model's decoded points: ``module[2].DCW``
    (0-based instance, as in the simulator's point paths)."""
    return f"{group}[{index}].{point}"


def group_instances(points: Mapping[str, Value], group: str) -> list[dict[str, Value]]:
    """The instances of a repeating group back out of a model's decoded points, in order."""
    out: list[dict[str, Value]] = []
    while True:
        prefix = group_key(group, len(out), "")
        inst = {k[len(prefix) :]: v for k, v in points.items() if k.startswith(prefix)}
        if not inst:
            return out
        out.append(inst)


def _flatten(groups: Mapping[str, Sequence[DecodedGroup]], prefix: str = "") -> dict[str, Value]:
    out: dict[str, Value] = {}
    for name, insts in groups.items():
        for i, inst in enumerate(insts):
            key = group_key(prefix + name, i, "")
            out.update({key + k: v for k, v in inst.points.items()})
            out.update(_flatten(inst.groups, key))
    return out


@dataclass(frozen=True)
class PollPlan:
    reads: tuple[ReadRequest, ...]
    models: tuple[ModelPoll, ...]

    @property
    def registers(self) -> int:
        return sum(r.count for r in self.reads)

    def decode(self, image: RegisterImage) -> dict[int, dict[str, Value]]:
        """Scaled values per model id, from an image holding at least this plan's reads."""
        out: dict[int, dict[str, Value]] = {}
        for mp in self.models:
            h = mp.header
            header = image.get(h.address, 2)
            if header is None:
                raise DecodeError(f"model {h.id}'s header at {h.address} was not read")
            check_header(h.id, h.length, h.address, header)  # MapChangedError if it moved
            mdef = model_def(mp.header.id)
            if mdef is None:
                continue
            if mp.whole:
                out[mp.header.id] = _decode_whole(mp.header, image)
                continue
            out[mp.header.id] = decode_points(
                mdef, mp.header.address, image, mp.names, length=mp.header.length
            )
        if "WAval" in out.get(122, {}):  # available power travels with the inverter's reading
            for mid in INVERTER_MODELS:
                if mid in out:
                    out[mid]["WAval"] = out[122]["WAval"]
        return out


def _decode_whole(header: ModelHeader, image: RegisterImage) -> dict[str, Value]:
    """All points of a model read whole, its groups flattened (:func:`group_key`). Registers
    the model definition cannot make sense of (a count that does not fit) give its top-level
    points only: the groups are then unknown, never guessed."""
    regs = image.get(header.address, header.length + 2)
    if regs is None:
        raise DecodeError(f"model {header.id} at {header.address} was not read whole")
    try:
        decoded = decode_model(model_def(header.id), header.address, regs)
    except DecodeError:
        return {}
    if decoded.errors:
        return dict(decoded.points)
    return {**decoded.points, **_flatten(decoded.groups)}


def coalesce(
    ranges: Iterable[tuple[int, int]], *, max_count: int = MAX_READ, max_gap: int = 8
) -> tuple[ReadRequest, ...]:
    """Merge (start, count) ranges into as few reads as possible, none longer than
    ``max_count``. Ranges closer than ``max_gap`` registers are merged too: inside a SunSpec
    map every register is readable, and a few extra registers cost less than a round trip."""
    spans = sorted((s, s + c) for s, c in ranges if c > 0)
    reads: list[ReadRequest] = []
    cur: tuple[int, int] | None = None
    for s, e in spans:
        if e - s > max_count:
            raise ValueError(f"range at {s} of {e - s} registers exceeds one read of {max_count}")
        if cur is not None and s <= cur[1] + max_gap and max(e, cur[1]) - cur[0] <= max_count:
            cur = (cur[0], max(e, cur[1]))
            continue
        if cur is not None:
            reads.append(ReadRequest(cur[0], cur[1] - cur[0]))
        cur = (s, e)
    if cur is not None:
        reads.append(ReadRequest(cur[0], cur[1] - cur[0]))
    return tuple(reads)


def make_plan(
    smap: SunSpecMap,
    wants: Mapping[int, Sequence[str] | None],
    *,
    whole: Collection[int] = (),
    max_count: int = MAX_READ,
    max_gap: int = 8,
) -> PollPlan:
    """A plan reading, for each wanted model id present in the map (first instance), the named
    top-level points, or all of them for None, plus the scale factors they need. Models in
    ``whole`` are read whole, repeating groups included (:func:`group_key`)."""
    ranges: list[tuple[int, int]] = []
    polls: list[ModelPoll] = []
    for mid, names in wants.items():
        header = smap.find(mid)
        mdef = model_def(mid)
        if header is None or mdef is None:
            continue
        if mid in whole:
            total = header.length + 2
            for off in range(0, total, max_count):
                ranges.append((header.address + off, min(max_count, total - off)))
            polls.append(ModelPoll(header, (), whole=True))
            continue
        chosen = [p.name for p in mdef.group.points] if names is None else list(names)
        chosen = [n for n in chosen if mdef.has_point(n)]
        end = header.end
        # Its header (ID, L) too, usually in the same request: every poll checks that the model
        # is still where discovery found it (PollPlan.decode).
        ranges.append((header.address, 2))
        for p in needed_points(mdef, chosen):
            start = header.address + p.offset
            if start + p.size <= end:  # points beyond L are not implemented by this device
                ranges.append((start, p.size))
        polls.append(ModelPoll(header, tuple(chosen)))
    return PollPlan(coalesce(ranges, max_count=max_count, max_gap=max_gap), tuple(polls))


def fast_plan(smap: SunSpecMap) -> PollPlan:
    """Power, reactive power, voltage, frequency and status of whatever the device is: the
    inverter measurement model (or 701) with its grid connection state (701 ConnSt, else 122
    PVConn/ECPConn, else 123 Conn) and the limit in force (``FAST_LIMIT``), and/or a meter
    model."""
    wants: dict[int, Sequence[str] | None] = {}
    inv = smap.first_of((*INVERTER_MODELS, DER_MEASUREMENT_MODEL))
    if inv is not None:
        wants[inv.id] = fast_points(inv.id)
        if inv.id != DER_MEASUREMENT_MODEL:  # 701 has ConnSt among its fast points
            if smap.find(122) is not None:
                wants[122] = _FAST_STATUS
            elif smap.find(123) is not None:
                wants[123] = _FAST_CONN
        control = smap.first_of(CONTROL_MODELS)
        if control is not None:
            wants[control.id] = (*(wants.get(control.id) or ()), *FAST_LIMIT[control.id])
    meter = smap.first_of(METER_MODELS)
    if meter is not None:
        wants[meter.id] = fast_points(meter.id)
    return make_plan(smap, wants, max_gap=FAST_MAX_GAP)


STORAGE_POINTS: dict[int, tuple[str, ...] | None] = {
    124: None,
    713: ("WHRtg", "WHAvail", "SoC", "SoH", "Sta"),
    802: ("WHRtg", "WChaRteMax", "WDisChaRteMax", "SoC", "ChaSt", "W", "State"),
    704: ("WSetEna", "WSetMod", "WSet", "WSetEnaRvrt", "WSetRvrtTms", "WSetRvrtRem"),
}
"""What a battery link reads every poll: the storage models (124 whole: it is small and holds
the controls in force) and the battery's AC power from its measurement model."""
MPPT_MODEL = 160
"""Multiple MPPT inverter extension: a Fronius GEN24 reports its battery's DC charge and
discharge power in two of its modules (``StCha``, ``StDisCha``), read whole with the storage."""


def storage_plan(smap: SunSpecMap) -> PollPlan:
    """SoC, ratings, power and the storage controls in force (docs/sunspec.md, storage); model
    160 whole where the device has it (a hybrid's battery power without 802 ``W``)."""
    wants: dict[int, Sequence[str] | None] = {
        mid: names for mid, names in STORAGE_POINTS.items() if smap.find(mid) is not None
    }
    inv = smap.first_of((*INVERTER_MODELS, DER_MEASUREMENT_MODEL))
    if inv is not None:
        wants[inv.id] = ("W",)
    if smap.find(MPPT_MODEL) is not None:
        wants[MPPT_MODEL] = None
    return make_plan(smap, wants, whole=(MPPT_MODEL,))


def slow_plan(smap: SunSpecMap) -> PollPlan:
    """Identity, nameplate, settings and control state: everything that changes rarely."""
    return make_plan(smap, {mid: None for mid in SLOW_MODELS})


def full_model_reads(header: ModelHeader, *, max_count: int = MAX_READ) -> tuple[ReadRequest, ...]:
    """Reads covering a whole model (ID, L and its L registers), for scans."""
    total = header.length + 2
    return tuple(
        ReadRequest(header.address + off, min(max_count, total - off))
        for off in range(0, total, max_count)
    )
