"""The utility's storage target (CSIP-AUS v1.3 opModStorageTargetW) as battery setpoints.

Pure, like the rest of ``control/``. The utility may ask for a *target aggregate output* of the
site's storage: positive discharges (adds to the site's output), negative charges, the sign
convention of `control.battery` too. This module turns it, the batteries' states and the
limits in force into the power each battery should be commanded, with the reason. The rules, in
the order they are applied:

1. **Aim at the target.** The batteries together aim at ``target_w``.
2. **No grid charging beyond the import limit.** A charge never makes the site import more than
   the import limit in force (the target is raised toward 0, or to a discharge, as far as needed
   and possible).
3. **The export limit always wins.** The aggregate is cut so the site's export stays within the
   export limit in force, even below the target and even into charging (storing a surplus is the
   site's preferred way to hold export, before curtailing PV).
4. **Physical bounds.** Each battery discharges only above the owner's reserve SoC and charges
   only below the maximum SoC, both tapering to 0 over ``taper_pct``, never beyond its rates;
   only online, controllable batteries with a known SoC take part. Whatever the batteries cannot
   do is left to the rest of the law (PV curtailment holds export as always).

Export here is the site's measured export with the participating batteries' present power
taken out (``base``): a battery's power adds 1:1 to the site's export, whether it is AC-coupled
or behind a hybrid inverter's AC output, so ``export = base + Σ setpoints``.

Bad input (a NaN target or reading, a stale meter) never raises: the answer then commands no
battery (each follows its own mode, the law's fail-safe) and the reason says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dynexport.control.battery import BatterySettings, BatteryState


@dataclass(frozen=True)
class StorageTargetDecision:
    """What to command for a storage target. ``setpoints``: (battery id, W) for each battery
    that takes part (+ discharge, − charge); empty when none can (they keep their own mode)."""

    total_w: float
    setpoints: tuple[tuple[str, float], ...]
    reason: str
    expected_export_w: float | None = None
    """The site's export once the setpoints are reached (None when not computed)."""


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _taper(distance_pct: float, settings: BatterySettings) -> float:
    """0 at the bound, 1 from ``taper_pct`` away (never below the reserve, never above max)."""
    width = max(settings.taper_pct, 1e-9)
    return min(max(distance_pct / width, 0.0), 1.0)


def _usable(b: BatteryState) -> str | None:
    """Why ``b`` cannot take part, or None."""
    if not b.online:
        return "offline"
    if not b.controllable:
        return "not controllable"
    if b.soc_pct is None or not math.isfinite(b.soc_pct):
        return "state of charge unknown"
    if not _finite(b.power_w) or not _finite(b.max_charge_w) or not _finite(b.max_discharge_w):
        return "reading not a number"
    return None


def battery_bounds(b: BatteryState, settings: BatterySettings) -> tuple[float, float]:
    """(most charge as a negative W, most discharge W) this battery may be commanded now."""
    assert b.soc_pct is not None
    discharge = max(b.max_discharge_w, 0.0) * _taper(b.soc_pct - settings.reserve_soc_pct, settings)
    charge = max(b.max_charge_w, 0.0) * _taper(settings.max_soc_pct - b.soc_pct, settings)
    return -charge, discharge


def storage_target_power(
    target_w: float,
    batteries: Sequence[BatteryState],
    settings: BatterySettings,
    *,
    site_export_w: float | None,
    export_limit_w: float | None,
    import_limit_w: float | None,
) -> StorageTargetDecision:
    """The batteries' setpoints for ``target_w`` (see the module docstring for the rules).

    ``site_export_w``: the site's measured power at the connection point, + export, − import
    (None: the meter is stale). ``export_limit_w``/``import_limit_w``: the limits in force
    (None: none). ``settings``: the owner's reserve and maximum SoC and the taper width."""
    if not _finite(target_w):
        return StorageTargetDecision(0.0, (), f"storage target {target_w!r} is not a number")
    if site_export_w is None or not math.isfinite(site_export_w):
        return StorageTargetDecision(
            0.0, (), "meter reading stale or not a number: storage target not followed"
        )
    for name, limit in (("export", export_limit_w), ("import", import_limit_w)):
        if limit is not None and not (math.isfinite(limit) and limit >= 0):
            return StorageTargetDecision(
                0.0, (), f"{name} limit {limit!r} is not a usable number: target not followed"
            )
    taking: list[tuple[BatteryState, float, float]] = []
    left_out: list[str] = []
    for b in batteries:
        why = _usable(b)
        if why is not None:
            left_out.append(f"{b.id} {why}")
            continue
        lo, hi = battery_bounds(b, settings)
        taking.append((b, lo, hi))
    if not taking:
        detail = "; ".join(left_out) or "no battery configured"
        return StorageTargetDecision(0.0, (), f"storage target {target_w:.0f} W: {detail}")
    base = site_export_w - sum(b.power_w for b, _, _ in taking)
    lo = sum(low for _, low, _ in taking)
    hi = sum(high for _, _, high in taking)

    total = target_w
    notes = [f"storage target {target_w:.0f} W"]
    if import_limit_w is not None:
        floor = -import_limit_w - base  # export = base + total ≥ −import limit
        if total < floor:
            total = floor
            notes.append(f"raised to {total:.0f} W by the import limit {import_limit_w:.0f} W")
    if export_limit_w is not None:
        cap = export_limit_w - base  # export = base + total ≤ export limit
        if total > cap:
            total = cap
            notes.append(f"cut to {total:.0f} W by the export limit {export_limit_w:.0f} W")
    if total > hi:
        total = hi
        notes.append(f"held to {hi:.0f} W by discharge rates and the reserve")
    if total < lo:
        total = lo
        notes.append(f"held to {lo:.0f} W by charge rates and the maximum SoC")
    if left_out:
        notes.append("left out: " + "; ".join(left_out))

    setpoints: list[tuple[str, float]] = []
    for b, low, high in taking:
        if total >= 0:
            share = 0.0 if hi <= 0 else total * high / hi
        else:
            share = 0.0 if lo >= 0 else total * low / lo
        setpoints.append((b.id, min(max(share, low), high)))
    total = sum(w for _, w in setpoints)
    return StorageTargetDecision(total, tuple(setpoints), ", ".join(notes), base + total)
