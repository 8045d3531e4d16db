"""Inverter commands as pure data: which registers to write, and what must read back.

A generation limit goes through model 704 (WMaxLimPct, WMaxLimPctEna and its reversion) when
the device has it, else model 123 (WMaxLimPct, WMaxLim_Ena, WMaxLimPct_RvrtTms/WinTms/RmpTms).
Every command carries a revert timeout, so an inverter whose controller dies falls back by
itself; the controller rewrites the command before it expires (:func:`rewrite_interval`).

Limits are rounded DOWN to the register step (:func:`pct_to_raw`): a limit is a ceiling, and
rounding to the nearest step could let an inverter export up to half a step (0.5 % of WMax with
scale factor 0) more than the utility allows, for ever.

Disconnecting opens the inverter through model 123 ``Conn`` with ``Conn_RvrtTms`` (the only
SunSpec connect control with a revert timer). Model 703 ``ES`` (permit enter service) has no
timer: a controller that died after writing ES=0 would leave the inverter off for ever, so it is
never written; an inverter without 123 Conn is "disconnected" by a 0 % limit instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from dynexport.sunspec.decode import SF_RANGE, Value, encode_value
from dynexport.sunspec.discovery import ModelHeader, SunSpecMap
from dynexport.sunspec.models import ModelDef, model_def
from dynexport.sunspec.polling import CONTROL_MODELS, INVERTER_MODELS, METER_MODELS

DEFAULT_REVERT_S = 60
CONNECT_MODEL = 123
LIMIT_TOLERANCE_PCT = Fraction(1, 10**9)
"""How far (in percentage points) below a register step a limit may be and still be written as
that step: float noise such as 2.9999999999999996 for 3 must not lose a whole step. The written
limit is thus never more than 1e-9 % of WMax (10 microwatts on 10 kW) above the one asked."""


class NotControllableError(Exception):
    """The device has no control model; the message says the likely cause."""


class CommandError(ValueError):
    """A command the inverter cannot take as asked (out of range, missing point...)."""


class InvalidScaleFactorError(NotControllableError):
    """The control model's scale factor is outside -10..10: no limit can be expressed safely."""


def limit_sf(sf: Value, name: str = "WMaxLimPct_SF") -> int:
    """The exponent a limit is written with. Not implemented (None) means 0 (the value is then
    in whole percent); anything outside -10..10 makes the device not controllable, because the
    register value it would read back as cannot be known."""
    if sf is None:
        return 0
    if not isinstance(sf, int) or sf not in SF_RANGE:
        raise InvalidScaleFactorError(f"not controllable: invalid scale factor ({name}={sf!r})")
    return sf


@dataclass(frozen=True)
class RegisterWrite:
    address: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class LimitCommand:
    """A generation limit in percent of WMax; ``pct`` None clears it."""

    pct: float | None
    revert_s: int = DEFAULT_REVERT_S
    ramp_s: int = 0
    window_s: int = 0
    revert_pct: float | None = None
    """Model 704 only: the limit to fall back to when the timer expires; None = no limit."""

    def __post_init__(self) -> None:
        if self.pct is not None and not (math.isfinite(self.pct) and 0 <= self.pct <= 100):
            raise CommandError(f"limit {self.pct}% must be 0..100")
        if self.revert_pct is not None and not 0 <= self.revert_pct <= 100:
            raise CommandError(f"reversion limit {self.revert_pct}% must be 0..100")
        if not 1 <= self.revert_s <= 65534:
            raise CommandError(
                f"revert timeout {self.revert_s} s must be 1..65534: every command must expire"
            )
        if not 0 <= self.ramp_s <= 65534 or not 0 <= self.window_s <= 65534:
            raise CommandError("ramp and window times must be 0..65534 s")


def rewrite_interval(revert_s: float) -> float:
    """How often to rewrite a command so it never expires while the controller is alive (a
    missed rewrite or two still leaves margin)."""
    return max(1.0, revert_s / 3)


def not_controllable_reason(smap: SunSpecMap, manufacturer: str | None) -> str:
    ids = smap.ids
    if manufacturer and "fronius" in manufacturer.lower():
        return (
            "not controllable: control via Modbus is not enabled in the inverter's web UI "
            "(Communication > Modbus: allow inverter control); models found: "
            f"{ids}"
        )
    if not any(m in INVERTER_MODELS or m == 701 for m in ids) and any(
        m in METER_MODELS for m in ids
    ):
        return f"not controllable: this device is a meter (models {ids}), not an inverter"
    return (
        "not controllable: the device offers no SunSpec control model (123 or 704); "
        "enable remote/Modbus control in the inverter's settings "
        f"(models found: {ids})"
    )


def control_model(smap: SunSpecMap, manufacturer: str | None = None) -> ModelHeader:
    """The model limits go through: 704 if present, else 123; else NotControllableError."""
    header = smap.first_of(CONTROL_MODELS)
    if header is None:
        raise NotControllableError(not_controllable_reason(smap, manufacturer))
    return header


def _def(header: ModelHeader) -> ModelDef:
    mdef = model_def(header.id)
    if mdef is None:  # pragma: no cover - 123 and 704 ship with pysunspec2
        raise CommandError(f"no definition for model {header.id}")
    return mdef


def encode_writes(
    mdef: ModelDef, header: ModelHeader, raw: Mapping[str, int]
) -> tuple[RegisterWrite, ...]:
    """Register writes setting top-level points to raw values; adjacent points become one
    write (function 16 writes them together, so the inverter never sees half a command).

    ``raw`` is in write order, the enable last: when the points are not one block, the writes
    go in the order of their last point, so the value and its revert timer are in place before
    the enable. (By address, a battery's WSetEna (704) or StorCtl_Mod (124) went first: a link
    lost before the timer's write left a setpoint in force with no revert, charging from the grid
    for good.)"""
    cells: list[tuple[int, tuple[int, ...], int]] = []
    for order, (name, value) in enumerate(raw.items()):
        p = mdef.point(name)
        if not p.writable:
            raise CommandError(f"model {mdef.id} point {name} is read-only")
        if p.offset + p.size > header.length + 2:
            raise CommandError(f"model {mdef.id} on this device is too short for {name}")
        try:
            regs = encode_value(p.type, value)
        except ValueError as exc:
            raise CommandError(f"model {mdef.id} {name}: {exc}") from None
        cells.append((header.address + p.offset, regs, order))
    cells.sort()
    runs: list[tuple[RegisterWrite, int]] = []  # each write, and the write order of its last point
    for addr, regs, order in cells:
        if runs and runs[-1][0].address + len(runs[-1][0].values) == addr:
            last, last_order = runs.pop()
            runs.append((RegisterWrite(last.address, last.values + regs), max(last_order, order)))
        else:
            runs.append((RegisterWrite(addr, regs), order))
    runs.sort(key=lambda run: run[1])
    return tuple(write for write, _ in runs)


def pct_to_raw(pct: float, sf: Value) -> int:
    """Percent to the register value under WMaxLimPct_SF, rounded DOWN to the register step
    (never above the limit asked, at most :data:`LIMIT_TOLERANCE_PCT` for float noise).

    Exact rational arithmetic: 2.6 with SF -1 is 26, 3.0 is 30 (not 29 from 29.999999999999996).
    """
    exp = limit_sf(sf)
    if not math.isfinite(pct) or pct < 0:
        raise CommandError(f"limit {pct}% must be a finite number >= 0")
    raw = math.floor((Fraction(pct) + LIMIT_TOLERANCE_PCT) / Fraction(10) ** exp)
    if not 0 <= raw <= 0xFFFE:
        raise CommandError(f"{pct}% does not fit WMaxLimPct with scale factor {exp}")
    return raw


def raw_to_pct(raw: int, sf: Value) -> float:
    """The percent a register value stands for (what the inverter will apply)."""
    return float(Fraction(raw) * Fraction(10) ** limit_sf(sf))


def limit_values(header: ModelHeader, sf: Value, cmd: LimitCommand) -> dict[str, int]:
    """Raw point values a limit command writes to model 704 or 123 (in write order)."""
    if header.id == 704:
        if cmd.pct is None:
            return {"WMaxLimPctEna": 0}
        rv = 100.0 if cmd.revert_pct is None else cmd.revert_pct
        return {
            "WMaxLimPct": pct_to_raw(cmd.pct, sf),
            "WMaxLimPctRvrt": pct_to_raw(rv, sf),
            "WMaxLimPctEnaRvrt": 0 if cmd.revert_pct is None else 1,
            "WMaxLimPctRvrtTms": cmd.revert_s,
            "WMaxLimPctEna": 1,
        }
    if header.id == 123:
        if cmd.pct is None:
            return {"WMaxLim_Ena": 0}
        return {
            "WMaxLimPct": pct_to_raw(cmd.pct, sf),
            "WMaxLimPct_WinTms": cmd.window_s,
            "WMaxLimPct_RvrtTms": cmd.revert_s,
            "WMaxLimPct_RmpTms": cmd.ramp_s,
            "WMaxLim_Ena": 1,
        }
    raise CommandError(f"model {header.id} is not a control model")


WRITTEN_WHERE_IMPLEMENTED = frozenset(
    {
        *("WMaxLimPct_WinTms", "WMaxLimPct_RvrtTms", "WMaxLimPct_RmpTms"),  # 123
        *("WMaxLimPctRvrt", "WMaxLimPctEnaRvrt", "WMaxLimPctRvrtTms"),  # 704
        *("InOutWRte_WinTms", "InOutWRte_RmpTms"),  # 124
    }
)
"""Points SunSpec makes optional that a command writes only where the device implements them
(reads them as other than the not-implemented value). A device without a limit's window or ramp
time read every write back as failed (they read "not implemented", not the 0 written) and was
taken offline for good, its limit in force all along. 124's revert timer is not among them: a
battery command must expire."""
REVERT_TIMERS = {123: "WMaxLimPct_RvrtTms", 704: "WMaxLimPctRvrtTms"}
"""Each control model's limit revert timer: without one a limit written stays in force."""


def implemented_only(values: Mapping[str, int], before: Mapping[str, Value]) -> dict[str, int]:
    """``values`` (raw, in write order) without the optional points (``WRITTEN_WHERE_IMPLEMENTED``)
    that ``before``, the model's raw values as read just before the write, shows the device does
    not implement."""
    return {
        name: value
        for name, value in values.items()
        if name not in WRITTEN_WHERE_IMPLEMENTED or before.get(name) is not None
    }


def encode_limit(header: ModelHeader, sf: Value, cmd: LimitCommand) -> tuple[RegisterWrite, ...]:
    """The writes for a limit command; ``sf`` is WMaxLimPct_SF as just read from the device."""
    return encode_writes(_def(header), header, limit_values(header, sf, cmd))


def connect_values(header: ModelHeader, connect: bool, revert_s: int) -> dict[str, int]:
    """Raw values to connect or disconnect through model 123: Conn with its revert timer, so an
    inverter this process left open reconnects by itself if the process dies."""
    if header.id != CONNECT_MODEL:
        raise CommandError(
            f"model {header.id} cannot connect or disconnect the inverter with a revert timer"
        )
    if not 1 <= revert_s <= 65534:
        raise CommandError(f"revert timeout {revert_s} s must be 1..65534")
    return {"Conn_WinTms": 0, "Conn_RvrtTms": revert_s, "Conn": 1 if connect else 0}


def connect_model(smap: SunSpecMap) -> ModelHeader | None:
    """Model 123 when the device has it (whether Conn is implemented needs a read: see
    :func:`has_connect_control`); None = disconnect by a 0 % limit."""
    return smap.find(CONNECT_MODEL)


def has_connect_control(points_123: Mapping[str, Value] | None) -> bool:
    """Model 123 as read implements Conn and its revert timer (not the not-implemented value)."""
    if points_123 is None:
        return False
    return points_123.get("Conn") is not None and points_123.get("Conn_RvrtTms") is not None


def encode_connect(header: ModelHeader, connect: bool, revert_s: int) -> tuple[RegisterWrite, ...]:
    return encode_writes(_def(header), header, connect_values(header, connect, revert_s))


def verify(expected: Mapping[str, int], readback_raw: Mapping[str, Value]) -> list[str]:
    """Points whose read-back raw value differs from what was written (empty = verified)."""
    return [
        f"{name}: wrote {value}, reads {readback_raw.get(name)!r}"
        for name, value in expected.items()
        if readback_raw.get(name) != value
    ]


def watts_to_pct(watts: float, w_max: float | None) -> float:
    """A limit in watts as percent of WMax (what WMaxLimPct is relative to)."""
    if w_max is None or w_max <= 0:
        raise CommandError("cannot convert watts to percent: the inverter reports no WMax/rating")
    if watts < 0:
        raise CommandError(f"limit {watts} W must not be negative")
    return min(100.0, watts / w_max * 100.0)
