"""Batteries over SunSpec, as pure data: what a storage device reports and what to write to it.

Reading: model 713 (DER storage capacity: WHRtg, SoC), 802 (battery base: WHRtg, WChaRteMax,
WDisChaRteMax, SoC, W) and 124 (basic storage controls: WChaMax, ChaState, MinRsvPct,
StorCtl_Mod, InWRte/OutWRte with their revert timer). The most specific source wins: SoC from
713, else 802, else 124 ChaState; energy from 713, else 802; rates from 802, else 124 WChaMax
(124 has no discharge rating: WChaMax is used for both, as devices do).

The battery's power (+ discharging, − charging): an AC-coupled battery is its own inverter,
so its model 103/701 ``W`` is exactly that. A hybrid inverter's AC ``W`` includes its PV, so its
battery power comes from model 802 ``W``, whose sign the model does not define: the installer
says which way it counts (``w_discharge_positive``); else from model 160, where a Fronius GEN24
(which has no 802) reports its battery as two MPPT modules labelled ``StCha <n>`` (DC power
into the battery) and ``StDisCha <n>`` (DC power out of it): power = StDisCha − StCha. The
modules are found by label, never by position, and a reading that is missing, ambiguous or
beyond the battery's ratings is no reading (``mppt_battery_power``).

Writing: every command carries a revert timeout and is read back, like inverter limits.
Through model 704 ``WSet`` (watts, + discharge; WSetEna with WSetRvrtTms, reverting to
WSetEna = 0, i.e. the device's own mode) when the device has 704 with WSet and declares storage
(713 or 802); else through model 124: a charge/discharge *window* set with InWRte/OutWRte and
StorCtl_Mod = 3, reverting after InOutWRte_RvrtTms to the device's own mode.

Model 124's two conventions. SunSpec defines InWRte and OutWRte as the most the battery may
charge and discharge, in percent of WChaMax (0..100): that can stop or cap charging, not make
it charge. Fronius GEN24 (documented in its "Modbus TCP & RTU" storage notes) reads them as a
power *window* in which negative values force the other direction: OutWRte = −x % with
InWRte = x % means "charge at exactly x %", InWRte = −y % with OutWRte = y % "discharge at
exactly y %". ``StorageConvention`` says which one a device speaks; the standard one gives a
setpoint as a cap (charge at most, discharge at most), which is all that charge-before-curtail
(the battery's own mode charges from any surplus anyway) and holding an import limit by a
battery whose own mode discharges need.

"Charge only" (the controller's answer to a quiet meter): StorCtl_Mod = 2 (the discharge bound
alone) with OutWRte = 0 % and its revert timer. Both conventions read it as "discharge at most
0", leaving charging to the device's own mode (Fronius documents StorCtl_Mod's bit 0 as the
charge bound, bit 1 as the discharge bound, as SunSpec does). Model 704 has no bound, only a
setpoint: it cannot say "charge only" (``storage_values`` refuses; the link leaves such a battery
in its own mode).

Never written: ``ChaGriSet`` (grid charging allowed) and ``MinRsvPct`` have no revert timer,
so a controller that died after writing them would have changed the owner's settings for ever;
grid charging is stopped by the charge window instead, and the reserve is the law's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction

from dynexport.sunspec.control import (
    CommandError,
    RegisterWrite,
    encode_writes,
    implemented_only,
    limit_sf,
)
from dynexport.sunspec.decode import Value
from dynexport.sunspec.discovery import ModelHeader, SunSpecMap
from dynexport.sunspec.models import model_def
from dynexport.sunspec.polling import (
    DER_MEASUREMENT_MODEL,
    INVERTER_MODELS,
    MPPT_MODEL,
    group_instances,
)

STORAGE_MODELS = (124, 713, 802)
"""Any of these makes a device a battery (``dynexport sunspec scan`` reports it so)."""
DEFAULT_REVERT_S = 60
StorCtlMod = int
STORCTL_CHARGE = 1
STORCTL_DISCHARGE = 2

Points = Mapping[str, Value]


class StorageConvention(Enum):
    """How a device reads model 124's InWRte/OutWRte (see the module docstring)."""

    SUNSPEC = "sunspec"
    WINDOW = "window"  # Fronius GEN24: negative values force the other direction


def is_storage(smap: SunSpecMap) -> bool:
    """The device offers storage models (a battery, or a hybrid inverter's battery)."""
    return any(m in STORAGE_MODELS for m in smap.ids)


def _f(pts: Points | None, name: str) -> float | None:
    if pts is None:
        return None
    v = pts.get(name)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _i(pts: Points | None, name: str) -> int | None:
    if pts is None:
        return None
    v = pts.get(name)
    return v if isinstance(v, int) else None


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _soc(*values: float | None) -> float | None:
    """The first state of charge that is one (0..100 %, with a little slack for rounding): 1000 %
    (a wrong scale factor) held the owner's reserve for nothing, so it is unknown instead."""
    return _first(*(v for v in values if v is None or (math.isfinite(v) and -0.5 <= v <= 100.5)))


@dataclass(frozen=True)
class StorageReading:
    """One battery as read: unknown is None. Power: + discharging, − charging (AC)."""

    soc_pct: float | None
    capacity_wh: float | None
    max_charge_w: float | None
    max_discharge_w: float | None
    power_w: float | None
    min_reserve_pct: float | None = None
    charge_status: int | None = None
    """124/802 ChaSt: 1 OFF, 2 EMPTY, 3 DISCHARGING, 4 CHARGING, 5 FULL, 6 HOLDING, 7 TESTING."""
    storctl_mod: int | None = None
    in_w_rte_pct: float | None = None
    out_w_rte_pct: float | None = None
    revert_s: int | None = None
    w_set_ena: int | None = None
    w_set: float | None = None
    grid_charging: bool | None = None
    """124 ChaGriSet: whether the device may charge from the grid (read, never written)."""
    power_source: str | None = None
    """Where ``power_w`` comes from ("103 W", "802 W", "160 StCha/StDisCha"); None: nowhere."""
    power_problem: str | None = None
    """Why model 160's storage modules gave no power, when the device has model 160."""

    @property
    def own_mode(self) -> bool:
        """No control of ours is in force: the device follows its own mode."""
        return not (self.storctl_mod or 0) and not (self.w_set_ena or 0)

    @property
    def controllable(self) -> bool:
        """Enough is known to control it: SoC, a charge rating and its power."""
        return (
            self.soc_pct is not None
            and self.max_charge_w is not None
            and self.max_charge_w > 0
            and self.power_w is not None
        )


def read_storage(
    models: Mapping[int, Points], w_discharge_positive: bool = True, *, ac_coupled: bool = True
) -> StorageReading:
    """Decode a storage device from its models' scaled points (never raises: unknown is None).

    ``ac_coupled``: the device is the battery's own inverter, so its measurement model's W is
    the battery's power; a hybrid's (False) includes its PV, and only 802 W or model 160's
    storage modules will do."""
    m124, m713, m802 = models.get(124), models.get(713), models.get(802)
    w_cha = _f(m124, "WChaMax")
    max_charge = _first(_f(m802, "WChaRteMax"), w_cha)
    max_discharge = _first(_f(m802, "WDisChaRteMax"), w_cha)
    power: float | None = None
    source: str | None = None
    if ac_coupled:
        for mid in (DER_MEASUREMENT_MODEL, *INVERTER_MODELS):
            if mid in models:
                power = _f(models[mid], "W")
                source = None if power is None else f"{mid} W"
                break
    if power is None and m802 is not None:
        w = _f(m802, "W")
        power = None if w is None else (w if w_discharge_positive else -w)
        source = None if power is None else "802 W"
    problem: str | None = None
    if power is None and MPPT_MODEL in models:
        power, problem = mppt_battery_power(
            models[MPPT_MODEL], max_charge_w=max_charge, max_discharge_w=max_discharge
        )
        source = None if power is None else "160 StCha/StDisCha"
    return StorageReading(
        soc_pct=_soc(_f(m713, "SoC"), _f(m802, "SoC"), _f(m124, "ChaState")),
        capacity_wh=_first(_f(m713, "WHRtg"), _f(m802, "WHRtg")),
        max_charge_w=max_charge,
        max_discharge_w=max_discharge,
        power_w=power,
        min_reserve_pct=_f(m124, "MinRsvPct"),
        charge_status=_first_int(_i(m124, "ChaSt"), _i(m802, "ChaSt")),
        storctl_mod=_i(m124, "StorCtl_Mod"),
        in_w_rte_pct=_f(m124, "InWRte"),
        out_w_rte_pct=_f(m124, "OutWRte"),
        revert_s=_i(m124, "InOutWRte_RvrtTms"),
        w_set_ena=_i(models.get(704), "WSetEna"),
        w_set=_f(models.get(704), "WSet"),
        grid_charging=None if _i(m124, "ChaGriSet") is None else _i(m124, "ChaGriSet") == 1,
        power_source=source,
        power_problem=problem,
    )


MPPT_CHARGE_LABEL = "stcha"
MPPT_DISCHARGE_LABEL = "stdischa"
RATING_SLACK = 1.1
"""A battery's measured power may pass its rating by this factor (ratings are nominal, a
measurement has its error); beyond it the reading is garbage, not power."""


def mppt_module_kind(label: Value) -> str | None:
    """``stcha``/``stdischa`` for a model 160 module's IDStr naming a battery's charge or
    discharge power (``"StCha 3"``, ``" stdischa4 "``: case, spaces and the module number do
    not matter), else None (a PV string such as ``"MPPT 1"``, or anything else)."""
    if not isinstance(label, str):
        return None
    word = "".join(label.split()).casefold().rstrip("0123456789")
    return word if word in (MPPT_CHARGE_LABEL, MPPT_DISCHARGE_LABEL) else None


def mppt_battery_power(
    points: Points, *, max_charge_w: float | None, max_discharge_w: float | None
) -> tuple[float | None, str | None]:
    """A hybrid's battery power (W, + discharging) from model 160's decoded points (modules as
    ``polling.group_key`` names them): StDisCha DCW − StCha DCW, with the model's DCW_SF. Returns
    (power, None), or (None, why not): no reading rather than a wrong one when the modules are
    missing or duplicated, N disagrees with the modules read, a DCW or DCW_SF is not
    implemented or out of range, a value is negative, or the result passes the battery's
    ratings (× ``RATING_SLACK``; no rating known: nothing to judge it by, so no reading)."""
    modules = group_instances(points, "module")
    n = points.get("N")
    if isinstance(n, int) and n != len(modules):
        return None, f"model 160 says N = {n} modules but {len(modules)} were read"
    found: dict[str, list[Points]] = {MPPT_CHARGE_LABEL: [], MPPT_DISCHARGE_LABEL: []}
    for m in modules:
        kind = mppt_module_kind(m.get("IDStr"))
        if kind is not None:
            found[kind].append(m)
    watts: dict[str, float] = {}
    for kind, label in ((MPPT_CHARGE_LABEL, "StCha"), (MPPT_DISCHARGE_LABEL, "StDisCha")):
        mods = found[kind]
        if len(mods) != 1:
            return None, (
                f"model 160 has no module labelled {label}"
                if not mods
                else f"model 160 has {len(mods)} modules labelled {label}"
            )
        w = _f(mods[0], "DCW")
        if w is None:
            return None, (
                f"model 160's {label} module reports no DCW (not implemented, or DCW_SF "
                f"{points.get('DCW_SF')!r} is not a valid scale factor)"
            )
        if w < 0:
            return None, f"model 160's {label} module reports {w} W"
        watts[kind] = w
    power = watts[MPPT_DISCHARGE_LABEL] - watts[MPPT_CHARGE_LABEL]
    rating = max_discharge_w if power > 0 else max_charge_w
    if rating is None or not rating > 0:
        return None, "the battery reports no rating to check model 160's power against"
    if abs(power) > rating * RATING_SLACK:
        return None, (
            f"model 160's storage modules read {power:g} W, beyond the battery's "
            f"{rating:g} W rating"
        )
    return power, None


def not_controllable_reason(
    reading: StorageReading, model_ids: Sequence[int], *, ac_coupled: bool = True
) -> str | None:
    """Why the law must leave this battery in its own mode, in words for the owner (the status
    and the web page show it); None when it can be controlled.

    A hybrid whose battery power is measured neither by model 802 ``W`` nor by model 160's
    StCha/StDisCha modules is never controlled, whatever else it offers: its AC output mixes PV
    and battery, model 124 (InWRte/OutWRte are setpoints, not measurements), 713 (SoC and
    stored energy, which move too slowly and coarsely to say what the battery does second by
    second) and 704 (setpoints) have no battery power, and a setpoint is not a measurement (a
    full, empty, hot or BMS-limited battery does less than it is told). Without it the law could
    not tell the battery from the PV: it would misjudge the surplus, and an import limit held by
    discharging would be missed. The inverter's own export limit still holds export."""
    if reading.controllable:
        return None
    rated = reading.max_charge_w is not None and reading.max_charge_w > 0
    if reading.power_w is None and not ac_coupled and rated:
        has = ", ".join(str(m) for m in model_ids) or "none"
        if 802 in model_ids:
            where = "its model 802 does not implement W"
        elif MPPT_MODEL in model_ids:
            where = "it has no model 802 (battery base)"
        else:
            where = "it has no model 802 (battery base) and no model 160 (MPPT modules)"
        if reading.power_problem is not None:
            where += f"; {reading.power_problem}"
        return (
            "not controlled: this hybrid inverter does not report its battery's own power "
            f"(model 802 W, or model 160's StCha/StDisCha modules; {where}; models: {has}), so "
            "its charging cannot be told apart from its PV. It is shown and left in its own "
            "mode; export is still held by limiting the inverter"
        )
    missing = []
    if reading.soc_pct is None:
        missing.append("state of charge (713 SoC, 802 SoC or 124 ChaState)")
    if not rated:
        missing.append("charge rating (802 WChaRteMax or 124 WChaMax)")
    if reading.power_w is None:
        missing.append(
            "power (its measurement model's W, 802 W or model 160's StCha/StDisCha modules)"
        )
    return "not controlled: the battery reports no " + ", no ".join(missing)


def _first_int(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True)
class StorageCommand:
    """A battery setpoint in W (+ discharge, − charge); None: back to the device's own mode, or
    with ``charge_only`` its own mode with its discharge bound at 0."""

    setpoint_w: float | None
    revert_s: int = DEFAULT_REVERT_S
    charge_only: bool = False

    def __post_init__(self) -> None:
        if self.setpoint_w is not None and not math.isfinite(self.setpoint_w):
            raise CommandError(f"battery setpoint {self.setpoint_w} W must be a finite number")
        if self.charge_only and self.setpoint_w is not None:
            raise CommandError("a charge-only command has no setpoint")
        if not 1 <= self.revert_s <= 65534:
            raise CommandError(
                f"revert timeout {self.revert_s} s must be 1..65534: every command must expire"
            )


def storage_control_model(smap: SunSpecMap, points_704: Points | None = None) -> ModelHeader:
    """704 (WSet) when the device has it implemented and declares storage; else 124; else
    CommandError naming what is missing."""
    h704 = smap.find(704)
    if (
        h704 is not None
        and any(m in smap.ids for m in (713, 802))
        and points_704 is not None
        and points_704.get("WSetEna") is not None
        and points_704.get("WSetRvrtTms") is not None
    ):
        return h704
    h124 = smap.find(124)
    if h124 is not None:
        return h124
    raise CommandError(
        "not controllable as a battery: the device has no model 124 (storage controls) and no "
        f"model 704 with WSet (models found: {smap.ids})"
    )


def _pct_raw(pct: float, sf: Value) -> int:
    """Percent to InWRte/OutWRte's register value, rounded towards zero (a rate asked for is
    never exceeded), as a signed int16."""
    exp = limit_sf(sf, "InOutWRte_SF")
    raw = int(Fraction(pct) / Fraction(10) ** exp)  # int() truncates towards zero
    if not -32767 <= raw <= 32767:
        raise CommandError(f"{pct}% does not fit InWRte/OutWRte with scale factor {exp}")
    return raw


def storage_values(
    header: ModelHeader,
    cmd: StorageCommand,
    *,
    max_charge_w: float | None,
    sf: Value,
    convention: StorageConvention = StorageConvention.SUNSPEC,
) -> dict[str, int]:
    """Raw point values a battery command writes (in write order). ``sf`` is the scale factor
    of the setpoint's register (InOutWRte_SF for 124, WSet_SF for 704) as just read."""
    sp = cmd.setpoint_w
    if cmd.charge_only:
        if header.id != 124:
            raise CommandError(
                f"model {header.id} cannot bound a battery's discharge alone (charge only needs "
                "model 124)"
            )
        return {
            "OutWRte": 0,
            "InOutWRte_WinTms": 0,
            "InOutWRte_RvrtTms": cmd.revert_s,
            "InOutWRte_RmpTms": 0,
            "StorCtl_Mod": STORCTL_DISCHARGE,
        }
    if header.id == 704:
        if sp is None:
            return {"WSetEna": 0}
        exp = limit_sf(sf, "WSet_SF")
        raw = int(Fraction(sp) / Fraction(10) ** exp)
        if not -(2**31) + 1 <= raw <= 2**31 - 1:
            raise CommandError(f"{sp} W does not fit WSet with scale factor {exp}")
        return {
            "WSetMod": 1,
            "WSet": raw,
            "WSetEnaRvrt": 0,
            "WSetRvrtTms": cmd.revert_s,
            "WSetEna": 1,
        }
    if header.id != 124:
        raise CommandError(f"model {header.id} is not a storage control model")
    if sp is None:
        return {"StorCtl_Mod": 0}
    if max_charge_w is None or max_charge_w <= 0:
        raise CommandError("cannot convert watts to percent: the battery reports no WChaMax")
    pct = min(abs(sp) / max_charge_w * 100.0, 100.0)
    if convention is StorageConvention.WINDOW:
        # The GEN24 window: [-OutWRte, InWRte] as charge; exactly one point.
        if sp < 0:
            in_raw, out_raw = _pct_raw(pct, sf), _pct_raw(-pct, sf)
        else:
            in_raw, out_raw = _pct_raw(-pct, sf), _pct_raw(pct, sf)
    else:
        # SunSpec: caps. Charging at x: charge at most x, discharge not at all; and so on.
        in_raw = _pct_raw(pct, sf) if sp < 0 else 0
        out_raw = _pct_raw(pct, sf) if sp > 0 else 0
    return {
        "InWRte": in_raw,
        "OutWRte": out_raw,
        "InOutWRte_WinTms": 0,
        "InOutWRte_RvrtTms": cmd.revert_s,
        "InOutWRte_RmpTms": 0,
        "StorCtl_Mod": STORCTL_CHARGE | STORCTL_DISCHARGE,
    }


def percent_base_w(
    header: ModelHeader, points: Mapping[str, Value], fallback_w: float | None
) -> float | None:
    """What 124's InWRte/OutWRte are percentages of: its own WChaMax, as the device applies them
    (802's WChaRteMax, the battery's rating, can differ: asked for 2500 W of a 5000 W rating,
    50 % of a 2500 W WChaMax charged 1250 W). None for 704 (watts) falls back to ``fallback_w``."""
    if header.id == 124:
        w = points.get("WChaMax")
        if isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w > 0:
            return float(w)
    return fallback_w


def encode_storage(
    header: ModelHeader,
    cmd: StorageCommand,
    *,
    max_charge_w: float | None,
    sf: Value,
    convention: StorageConvention = StorageConvention.SUNSPEC,
    before: Mapping[str, Value] | None = None,
) -> tuple[tuple[RegisterWrite, ...], dict[str, int]]:
    """The writes for a battery command, and the raw values the read-back must show; without
    the optional points ``before`` (the model's raw values as read just before) shows the device
    does not implement (``control.implemented_only``)."""
    values = storage_values(header, cmd, max_charge_w=max_charge_w, sf=sf, convention=convention)
    if before is not None:
        values = implemented_only(values, before)
    mdef = model_def(header.id)
    if mdef is None:  # pragma: no cover - 124 and 704 ship with pysunspec2
        raise CommandError(f"no definition for model {header.id}")
    return encode_writes(mdef, header, values), values


def setpoint_from_raw(
    header: ModelHeader,
    raw: Mapping[str, Value],
    *,
    max_charge_w: float | None,
    sf: Value,
    convention: StorageConvention = StorageConvention.SUNSPEC,
) -> float | None:
    """The setpoint (W, + discharge) a read-back stands for; None: the device's own mode, or
    charge only (:func:`charge_only_from_raw`)."""
    if header.id == 704:
        if raw.get("WSetEna") != 1:
            return None
        v = raw.get("WSet")
        if not isinstance(v, int):
            return None
        return float(Fraction(v) * Fraction(10) ** limit_sf(sf, "WSet_SF"))
    mod = raw.get("StorCtl_Mod")
    if not isinstance(mod, int) or mod == 0 or max_charge_w is None:
        return None
    scale = Fraction(10) ** limit_sf(sf, "InOutWRte_SF")

    def pct(name: str) -> float:
        v = raw.get(name)
        if not isinstance(v, int):
            return 0.0
        return float(Fraction(v) * scale)

    if charge_only_from_raw(header, raw):
        return None
    in_pct, out_pct = pct("InWRte"), pct("OutWRte")
    if mod == STORCTL_DISCHARGE:
        in_pct = 0.0  # the charge bound is off: InWRte is whatever it was last
    if convention is StorageConvention.WINDOW:
        w = out_pct if out_pct > 0 else -in_pct if in_pct > 0 else 0.0
    else:
        w = out_pct if out_pct > 0 else -in_pct
    return w / 100.0 * max_charge_w


def charge_only_from_raw(header: ModelHeader, raw: Mapping[str, Value]) -> bool:
    """Whether a read-back of model 124 shows "charge only": the discharge bound alone, at 0."""
    return (
        header.id == 124 and raw.get("StorCtl_Mod") == STORCTL_DISCHARGE and raw.get("OutWRte") == 0
    )
