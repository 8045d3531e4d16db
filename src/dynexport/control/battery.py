"""Batteries in the control law: charge before curtailing, discharge to hold an import limit.

Pure, like the rest of ``control/``: readings, limits and time come in, a decision and the state
to remember come out. ``control_step`` calls :func:`decide_batteries` before it works out the
inverters' target, so the inverters always make room for what the battery is told to do, and
:func:`plan_charge` (also pure) turns the 24 h limits outlook and a PV expectation into how much
the battery may charge now while export is still allowed. See docs/control.md, "Batteries".

Sign convention everywhere in this module: a battery's ``power_w`` and ``setpoint_w`` are its AC
power seen as generation: positive discharges (adds to the site's output), negative charges.

Why the rules are what they are:

- **Charge before curtail.** The battery aims ``battery_margin_w`` below the inverters' export
  aim. While the inverters are curtailed it pushes its charge up each second (revealing the PV
  the limit hides); once they run free, the proportional rule holds export at its own aim, so
  every watt the limit would have thrown away goes into the battery first.
- **The inverters make room first.** The inverters' target counts on a battery's charge only as
  far as it is measured *and* commanded (``expected_w``): a battery told to charge more gives the
  inverters room only once it does; told to charge less (full, a limit lifted), the inverters
  are cut at once, and the battery's charge is released only as fast as export has room for it
  (``room``), so a fast battery never outruns a slow inverter.
- **Its own mode when nothing limits.** The battery is engaged only while a limit is near (the
  export it would make without its battery within ``release_band_w`` of the limit, an import or
  load limit near, or the plan holding charging back) and released ``release_after_s`` after
  the last of those; released, it follows its own (self-consumption) mode. Release happens only
  when export would stay under the limit even if the battery stopped charging at once.
- **Fail-safes.** With the meter quiet an AC-coupled battery is told "charge only": its own mode
  may still charge from what it sees, but it may not discharge, and the inverters hold the export
  fail-safe as before (counting a discharge until it has stopped). Left in its own mode it would
  cover the household's load, which the fail-safe must count as possible export: the inverters
  came down by what it discharged, so it took more of the load, until it carried the whole house
  and the PV stood curtailed to nothing; a load that then fell left its discharge going out over
  the limit while it caught up. One that cannot be told "charge only" (model 704) is held: never
  a discharge, its charge let down no faster than the inverters come down to the cap, then idle.
  A hybrid's battery keeps its own mode (its inverter's limit holds its output whatever it does).
  An unreachable
  battery gets no command (its revert timer returns it to its own mode) and is, for the law, part
  of the household: the meter sees it, and the inverters hold export by curtailment.
- **SoC bounds.** Charge tapers to 0 over ``taper_pct`` below the maximum SoC; discharge tapers to
  0 over ``taper_pct`` above the reserve, so the law never discharges below the owner's reserve.
  An unknown SoC means neither.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Literal, TypeGuard

BatteryMode = Literal["own", "engaged", "offline", "failsafe"]


@dataclass(frozen=True)
class BatteryState:
    """One battery as its device link last saw it (power: + discharging, − charging)."""

    id: str
    online: bool
    controllable: bool
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_pct: float | None
    power_w: float
    ac_coupled: bool = True
    """False: a hybrid inverter's battery, whose power is already inside that inverter's AC
    reading (it must not be added to the DER output a second time)."""
    sampled_t: float | None = None
    written_t: float | None = None
    """When a command was last sent to it (same clock; None: never, or not known): see
    ``InverterState.written_t``."""
    setpoint_w: float | None = None
    """The setpoint last written and read back; None: its own mode."""
    setpoint_expires_t: float | None = None
    charge_only: bool = False
    """A "charge only" command is in force (read back) until ``setpoint_expires_t``: its own mode,
    with its discharge bound at 0."""
    charge_only_possible: bool = True
    """Its control model can say "charge only" (model 124). False (model 704, whose WSet is a
    setpoint, not a bound): the fail-safe holds it with setpoints instead."""
    inverter_id: str | None = None
    """A hybrid's battery: the id of the inverter whose AC output includes it (its PV is that
    output less the battery's power). None: AC-coupled, or not known (then its charge is not
    held to its inverter's PV, and its inverter's share is split as any other's)."""


@dataclass(frozen=True)
class BatteryCommand:
    """What to write to one battery. ``setpoint_w`` None: release it to its own mode."""

    id: str
    setpoint_w: float | None
    reason: str = ""
    charge_only: bool = False
    """With ``setpoint_w`` None: its own mode may charge but not discharge (model 124's
    discharge bound at 0 %, with its revert timer); see ``decide_batteries``'s fail-safe."""


@dataclass(frozen=True)
class BatterySettings:
    """Tuning and the owner's choices, with the reasons in docs/control.md."""

    max_soc_pct: float = 100.0
    """Charge no further than this."""
    reserve_soc_pct: float = 20.0
    """Never discharge below this (the owner's evening reserve)."""
    taper_pct: float = 3.0
    taper_s: float = 30.0
    """…or, if wider, the SoC the battery's full rate moves in this long."""
    battery_margin_w: float = 150.0
    """The battery aims this far below the inverters' export aim, so that it, not curtailment,
    takes the surplus: the inverters' limit then sits this far above what they make, clear of
    ``curtailed_tol_w`` and one register step, and the two never both settle on the limit."""
    curtailed_tol_w: float = 40.0
    """An inverter within this of its read-back limit is taken as held by it."""
    push_s: float = 5.0
    """While the inverters are curtailed, the battery's charge rises by its whole rate over this
    long (a few control intervals): fast enough to save the energy, slow enough to see."""
    up_time_constant_s: float = 1.0
    """Moves that raise export (more discharge, less charge) close the gap this slowly."""
    release_band_w: float = 300.0
    release_after_s: float = 60.0
    own_breach_hold_s: float = 900.0
    """Engaged because the battery's own mode itself took the site near an import or load limit
    (a schedule charging from the grid at night), it stays engaged this long: handed back after
    60 s, its schedule broke the limit again every minute."""
    hybrid_lead_s: float = 3.0
    """A hybrid's battery follows its taper this far ahead, so that it can come down gently
    (see ``decide_batteries``)."""
    hybrid_band_w: float = 150.0
    """A hybrid's battery charges at most its inverter's PV plus this (plus a push step while
    that inverter is held at its limit, to bring hidden PV up): more would only take what the
    other inverters are allowed to export, as its inverter's limit cannot go below 0. Above
    ``curtailed_tol_w``, so that a hybrid whose battery takes all its PV (AC output −150 W,
    limit 0 %) is not taken for a held one."""


@dataclass(frozen=True)
class ChargePlan:
    """The planner's answer: the most the battery may charge now from surplus that could still
    be exported (None: no hold back). Charge-before-curtail always overrides it."""

    max_charge_w: float | None
    need_wh: float = 0.0
    room_wh: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class BatteryMemory:
    """What the battery part of the law remembers between calls."""

    engaged_until: float = -math.inf
    setpoint_w: float | None = None
    inverters_w: float | None = None
    """The inverters' output at the last call (to tell a rising output from a settled one)."""


@dataclass(frozen=True)
class SiteView:
    """What the law knows this call, as the battery decision needs it (all W)."""

    load_w: float
    """Household load estimate (site + inverters + AC-coupled batteries)."""
    inverters_w: float
    """The inverters' AC output now (a hybrid's includes its battery)."""
    export_limit_w: float | None
    export_margin_w: float
    import_limit_w: float | None
    load_limit_w: float | None
    generation_limit_w: float | None
    curtailed: bool
    """The inverters are held at an export limit now (there may be more PV than they make)."""
    rising: bool = False
    """The inverters' output is still rising towards a higher command: what they make now says
    nothing yet about the PV there is, so the battery keeps its charge meanwhile."""
    unseen_w: float = 0.0
    """What unreachable inverters may add to export that the meter cannot have seen yet (a
    revert coming): the battery's discharge must leave room for it, as the inverters do."""
    hybrid_pv_w: Mapping[str, float] = field(default_factory=dict)
    """Per hybrid battery (by battery id), its inverter's PV now: AC output − battery power."""
    hybrid_held: frozenset[str] = frozenset()
    """The hybrid batteries whose inverter is held at its limit now (hidden PV may be there)."""
    hybrid_limit_w: Mapping[str, float] = field(default_factory=dict)
    """Per hybrid battery, its inverter's read-back limit in W (its rating if none): the most
    its AC output can be, whatever its battery does."""
    storage_target_w: float | None = None
    """The utility's storage target (CSIP-AUS v1.3 ``opModStorageTargetW``; + discharge,
    − charge): what the batteries aim at instead of their own mode, within every limit."""


@dataclass(frozen=True)
class BatteryDecision:
    commands: tuple[BatteryCommand, ...]
    expected_w: float
    """What the AC-coupled batteries will put out (+) or take (−), for the inverters' target:
    the highest of measured, commanded and wanted, so that the inverters never count on a
    charge the battery has not started or is about to stop."""
    mode: BatteryMode
    memory: BatteryMemory
    total_w: float | None
    """Total setpoint (None: own mode)."""
    reason: str = ""
    skipped: dict[str, str] | None = None


def _finite(x: object) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _pos(x: float) -> float:
    return float(x) if _finite(x) and x > 0 else 0.0


def _taper(b: BatteryState, rate_w: float, s: BatterySettings) -> float:
    """The taper's width in SoC %: ``taper_pct``, or what the battery's rate moves in
    ``taper_s`` if more (a small battery fills 3 % in seconds, faster than inverters come
    down)."""
    cap = _pos(b.capacity_wh)
    by_time = rate_w * s.taper_s / 3600.0 / cap * 100.0 if cap > 0 else 0.0
    return max(s.taper_pct, by_time, 1e-9)


def charge_cap_w(b: BatteryState, s: BatterySettings) -> float:
    """How much it may charge now: its rate, tapered to 0 at the maximum SoC."""
    if not _finite(b.soc_pct):
        return 0.0
    rate = _pos(b.max_charge_w)
    frac = (s.max_soc_pct - b.soc_pct) / _taper(b, rate, s)
    return rate * min(max(frac, 0.0), 1.0)


def discharge_cap_w(b: BatteryState, s: BatterySettings) -> float:
    """How much it may discharge now: its rate, tapered to 0 at the reserve SoC."""
    if not _finite(b.soc_pct):
        return 0.0
    rate = _pos(b.max_discharge_w)
    frac = (b.soc_pct - s.reserve_soc_pct) / _taper(b, rate, s)
    return rate * min(max(frac, 0.0), 1.0)


def charge_room_w(b: BatteryState, site: SiteView, dt: float, s: BatterySettings) -> float:
    """How much the law may have it charge now: :func:`charge_cap_w`, and for a hybrid's
    battery no more than its inverter's PV plus ``hybrid_band_w`` (plus a push step while that
    inverter is held at its limit). Charging past its PV would draw on the other inverters'
    output through its AC side, which frees none of the budget (its inverter's limit is already
    as low as 0 % allows): it would only take from the export the limit allows (issue #13's
    mixed site exported +80 W of its 1.5 kW)."""
    cap = charge_cap_w(b, s)
    pv = site.hybrid_pv_w.get(b.id) if not b.ac_coupled else None
    if pv is None or not _finite(pv):
        return cap
    extra = s.hybrid_band_w
    if b.id in site.hybrid_held:
        extra = max(extra, _pos(b.max_charge_w) * dt / max(s.push_s, 1e-9))
    return min(cap, max(pv, 0.0) + extra)


def _charge_cap_ahead(b: BatteryState, s: BatterySettings) -> float:
    """:func:`charge_cap_w` at the SoC its charge now reaches ``hybrid_lead_s`` later.

    Its capacity unknown (a GEN24 without model 713), as if its full rate crossed the taper
    (``taper_pct``) in ``taper_s``: without a lead the charge sat on the taper at the SoC as
    read, so every step of that reading (0.1 %, and more when a call came late) was a cut the
    law had to make at once (``must_min``). A battery larger than that (every GEN24 one) moves
    slower, and is led by more than ``hybrid_lead_s``."""
    if not _finite(b.soc_pct):
        return charge_cap_w(b, s)
    charge = max(-b.power_w, 0.0)
    cap_wh = _pos(b.capacity_wh)
    rate = _pos(b.max_charge_w)
    if cap_wh > 0:
        ahead = charge * s.hybrid_lead_s / 3600.0 / cap_wh * 100.0
    elif rate > 0:
        ahead = charge / rate * s.hybrid_lead_s / max(s.taper_s, 1e-9) * s.taper_pct
    else:
        return charge_cap_w(b, s)
    return charge_cap_w(replace(b, soc_pct=b.soc_pct + ahead), s)


def usable(b: BatteryState) -> bool:
    return b.online and b.controllable and _finite(b.power_w)


def _why_skipped(b: BatteryState) -> str:
    if not b.online:
        return "offline"
    return "not controllable" if not b.controllable else "no valid power reading"


def decide_batteries(
    batteries: Sequence[BatteryState],
    site: SiteView | None,
    memory: BatteryMemory,
    now: float,
    dt: float,
    plan: ChargePlan | None,
    s: BatterySettings,
    failsafe_excess_w: float = 0.0,
    interval_s: float = 1.0,
) -> BatteryDecision:
    """The batteries' setpoints for this call; ``site`` None: the meter is quiet (fail-safe),
    and ``failsafe_excess_w`` how far the inverters' output is still above the fail-safe cap.
    ``dt``: seconds since the last call; ``interval_s``: the law's regular interval between
    calls (a call that comes late does not make a held hybrid's charge come down in a bigger
    step: see below)."""
    ready = [b for b in batteries if usable(b)]
    skipped = {b.id: _why_skipped(b) for b in batteries if b not in ready}
    measured_ac = sum(b.power_w for b in ready if b.ac_coupled)
    if not ready:
        return BatteryDecision((), 0.0, "offline", BatteryMemory(), None, "", skipped)
    if site is None:
        # Meter quiet: an AC-coupled battery may charge in its own mode but not discharge (the
        # inverters' export fail-safe counts a discharge until it has stopped, and its own mode
        # would otherwise take over the load the inverters give up); a hybrid's own mode is
        # held by its inverter's limit. Nothing here may count on a charge.
        # One that cannot be told "charge only" (model 704) is held: no discharge, and its
        # charge let down no faster than the inverters come down to the cap (a charge stopped
        # at once would go out while they lag), then idle.
        left = max(failsafe_excess_w, 0.0) if _finite(failsafe_excess_w) else 0.0
        cmds_list: list[BatteryCommand] = []
        for b in ready:
            if not b.ac_coupled:
                cmds_list.append(BatteryCommand(b.id, None, "fail-safe: own mode"))
            elif b.charge_only_possible:
                cmds_list.append(
                    BatteryCommand(b.id, None, "fail-safe: charge only", charge_only=True)
                )
            else:
                keep = min(max(-b.power_w, 0.0), left, charge_cap_w(b, s))
                left -= keep
                cmds_list.append(BatteryCommand(b.id, -keep, "fail-safe: hold"))
        holds = [c.setpoint_w for c in cmds_list if c.setpoint_w is not None]
        # Each battery's discharge counts until it has stopped, whatever another one charges (a
        # held charge is let down as the inverters come down: it cannot cover another's output).
        discharging = sum(max(b.power_w, 0.0) for b in ready if b.ac_coupled)
        return BatteryDecision(
            tuple(cmds_list),
            discharging,
            "failsafe",
            BatteryMemory(),
            sum(holds) if holds else None,
            "meter quiet",
            skipped,
        )

    measured = sum(b.power_w for b in ready)
    hybrid = sum(b.power_w for b in ready if not b.ac_coupled)
    rooms = [charge_room_w(b, site, dt, s) for b in ready]
    p_min = -sum(rooms)
    p_max = sum(discharge_cap_w(b, s) for b in ready)
    # What the site would export with the batteries idle and the inverters as they are now.
    x0 = site.inverters_w - hybrid - site.load_w
    # …and what it could export at most if they stopped at once: a hybrid's AC output cannot
    # rise above its inverter's limit, whatever its battery does (its PV comes down instead).
    # This, not x0, says how fast a charge may be released (``room``).
    mapped = [b for b in ready if b.id in site.hybrid_pv_w and b.id in site.hybrid_limit_w]
    x0_now = x0 - sum(
        max(site.hybrid_pv_w[b.id] - max(site.hybrid_limit_w[b.id], 0.0), 0.0) for b in mapped
    )

    # Engaged, the battery takes the surplus its own mode would (within the plan's charge cap)
    # and discharges only what a limit needs: the owner's stored energy is theirs.
    base = min(-x0, 0.0)
    reasons: list[str] = []
    near = False
    if plan is not None and plan.max_charge_w is not None and x0 > 0:
        near = True
        base = max(base, -max(plan.max_charge_w, 0.0))
        reasons.append("plan")
    if _finite(site.storage_target_w):
        # The utility asks the batteries for this output: it replaces their own mode and the
        # plan. Everything below still bounds it: the export limit wins (a discharge is cut,
        # a charge raised), an import or load limit stops a charge, the rates, the reserve and
        # the maximum SoC hold, and a hybrid's battery charges only from its PV (and the band).
        near = True
        base = site.storage_target_w
        reasons.append(f"storage target {site.storage_target_w:.0f} W")
    room = math.inf
    p_e = math.inf
    if site.export_limit_w is not None:
        aim = site.export_limit_w - site.export_margin_w - s.battery_margin_w
        room = site.export_limit_w - site.export_margin_w - x0_now - site.unseen_w
        p_e = aim - x0 - site.unseen_w
        if site.curtailed:
            # Hidden PV: charge more, and the inverters are let up as the battery takes it. Never
            # more than the surplus plus the band, though: a push that brings no PV up (an
            # inverter held by its share of the budget, or slow to rise) would charge the
            # battery from the grid at the owner's cost. The surplus grows as the PV comes up.
            push = sum(_pos(b.max_charge_w) for b in ready) * dt / max(s.push_s, 1e-9)
            # A hybrid held at its limit brings its own PV up as its battery's charge rises (its
            # limit is on AC), so its push step may pass the band: without it the push stalled
            # where the hybrid's limit + band = load. Its charge stays within its PV plus that
            # step (charge_room_w).
            held_push = sum(
                _pos(b.max_charge_w) * dt / max(s.push_s, 1e-9)
                for b in ready
                if b.id in site.hybrid_held
            )
            p_e = min(p_e, max(measured - push, -max(x0, 0.0) - s.release_band_w - held_push))
        elif site.rising and memory.setpoint_w is not None:
            # The inverters are still climbing to use the charge: keep it until they settle.
            p_e = min(p_e, memory.setpoint_w)
        # Near: the export the site would make without the battery (and what unreachable
        # inverters may add unseen) is within the band of the aim; then its own mode, whose
        # discharge would lag a jump in PV, must not be left in charge.
        if site.curtailed or x0 + site.unseen_w > aim - s.release_band_w:
            near = True
            reasons.append("export limit")
    floor = -math.inf
    if site.import_limit_w is not None:
        lim = site.import_limit_w - max(abs(site.import_limit_w) * 0.01, 20.0)
        floor = max(floor, -x0 - lim)
        if -x0 > lim - s.release_band_w:
            near = True
            reasons.append("import limit")
    if site.load_limit_w is not None:
        lim = site.load_limit_w - max(abs(site.load_limit_w) * 0.01, 20.0)
        floor = max(floor, site.load_w - lim)
        if site.load_w > lim - s.release_band_w:
            near = True
            reasons.append("load limit")

    # What the batteries do now may itself take the site near a limit that the idle site keeps:
    # its own mode charging from the grid against an import (or load) limit; no inverter can
    # curtail that (found by review: left alone, a 5 kW off-peak charge broke a 2 kW import
    # limit for hours). Taken over, the battery stops charging from the grid, and keeps any
    # PV surplus. (Its own mode discharging past an export limit is not caught yet: told apart
    # from a discharge covering the house, which overshoots for seconds when a load stops.)
    actual = x0 + measured  # the site's export as it is, the batteries included
    breach: list[str] = []
    if site.import_limit_w is not None and measured < 0:
        lim = site.import_limit_w - max(abs(site.import_limit_w) * 0.01, 20.0)
        if -actual > lim - s.release_band_w and "import limit" not in reasons:
            breach.append("import limit")
    if site.load_limit_w is not None and measured < 0:
        lim = site.load_limit_w - max(abs(site.load_limit_w) * 0.01, 20.0)
        if site.load_w - measured > lim - s.release_band_w and "load limit" not in reasons:
            breach.append("load limit")
    engaged_until = now + s.release_after_s if near else memory.engaged_until
    if breach:
        near = True
        reasons.extend(f"its own mode near the {what}" for what in breach)
        engaged_until = max(engaged_until, now + s.own_breach_hold_s)
    if now >= engaged_until:
        cmds = tuple(BatteryCommand(b.id, None, "own mode") for b in ready)
        return BatteryDecision(
            cmds,
            measured_ac,
            "own",
            BatteryMemory(inverters_w=site.inverters_w),
            None,
            "nothing limits",
            skipped,
        )

    target = min(base, p_e)
    if math.isfinite(floor):
        target = max(target, floor)  # import/load: stop charging, discharge if needed
    if site.export_limit_w is not None:
        # Never export over the limit from the battery (the export limit wins a conflict).
        target = min(target, site.export_limit_w - site.export_margin_w - x0 - site.unseen_w)
    if site.generation_limit_w is not None:
        target = min(target, max(site.generation_limit_w - site.export_margin_w, 0.0))
    target = min(max(target, p_min), p_max)
    # A smaller charge only as fast as export has room for it (the inverters come down first).
    # (Within the taper the battery may still charge at its rate: the taper is where the law
    # wants it, the maximum SoC is where it must stop.)
    # A hybrid's battery (its inverter known) follows its taper, though: its AC output cannot
    # rise above its inverter's limit whatever its battery does (``room`` counts that), and
    # charging at its rate to 100 % it would be stopped by its BMS in one step, faster than its
    # PV can come down (export 2.3 kW against the 1.61 kW allowed). It follows the taper a few
    # seconds ahead (``hybrid_lead_s``) and no faster than 1.5 × the pace of its full rate's
    # taper: a cut of its charge by Δ in one step puts about 0.37 Δ out for a moment in the
    # simulator while its PV catches up (both lag), and the SoC it reads moves in 0.1 % steps.
    # That pace is per regular interval, not per second since the last call: what a cut puts
    # out depends on the step, not on how long the call was in coming: a call 2.4 s after the
    # last (a starved process) cut 333 W at once, two 0.1 % steps of the SoC read, and export
    # rose 105 W over the aim (over Modbus; 1.7 s late allows 425 W, about +157 W: past the
    # allowance). Late, the charge comes down one regular step per call; the lead keeps it
    # ahead of the taper meanwhile (``must_min``, the taper at the SoC now, forces more only
    # after calls missed for longer than that).
    held = mapped
    hard_min = -sum(
        _charge_cap_ahead(b, s) if b in held else _pos(b.max_charge_w)
        for b in ready
        if _finite(b.soc_pct) and b.soc_pct < s.max_soc_pct
    )
    must_min = -sum(
        charge_cap_w(b, s) if b in held else _pos(b.max_charge_w)
        for b in ready
        if _finite(b.soc_pct) and b.soc_pct < s.max_soc_pct
    )
    cmd = target if target <= measured else min(target, max(measured, room))
    # Like the inverters: what lowers export applies at once, what raises it (more discharge,
    # less charge) closes the gap with a time constant. The load estimate pairs meter samples
    # with battery readings taken once a call; a fast battery's step falls between them, and
    # a full-gain move on that estimate rings.
    prev = measured if memory.setpoint_w is None else memory.setpoint_w
    if cmd > prev:
        gap = cmd - prev
        eased = gap * (1.0 - math.exp(-dt / s.up_time_constant_s))
        stepped = prev + max(eased, min(gap, 50.0 * dt))
        # An import or load limit's floor applies at once (the site then imports: export is far
        # below its limit); eased in, a 5 kW grid charge took seconds to come under the limit.
        cmd = max(stepped, min(cmd, floor)) if math.isfinite(floor) else stepped
    cmd = min(max(cmd, hard_min), p_max)
    if held and cmd > prev and not (math.isfinite(floor) and floor > prev):
        # (Not when an import or load limit asks for less charge or a discharge: then export
        # is far below its limit and the moment's extra output is welcome.)
        pace = 1.5 * sum(_pos(b.max_charge_w) for b in held) / max(s.taper_s, 1e-9)
        step_s = min(dt, interval_s) if _finite(interval_s) and interval_s > 0 else dt
        cmd = max(min(cmd, prev + pace * step_s), must_min)
    cmds = tuple(
        BatteryCommand(b.id, share, ", ".join(reasons) or "holding")
        for b, share in zip(ready, _split(ready, cmd, s, rooms), strict=True)
    )
    ac_share = sum(c.setpoint_w or 0.0 for c, b in zip(cmds, ready, strict=True) if b.ac_coupled)
    # The most the AC-coupled batteries can still be counted on to absorb: what they do, what
    # they are told, and no more than their SoC allows (a battery nearing full is about to
    # take less, and the inverters must be down before it does).
    ac_floor = -sum(charge_cap_w(b, s) for b in ready if b.ac_coupled)
    expected = max(measured_ac, ac_share, ac_floor)
    return BatteryDecision(
        cmds,
        expected,
        "engaged",
        BatteryMemory(engaged_until, cmd, site.inverters_w),
        cmd,
        ", ".join(reasons),
        skipped,
    )


def _split(
    ready: Sequence[BatteryState], total: float, s: BatterySettings, rooms: Sequence[float]
) -> list[float]:
    """Share a total setpoint in proportion to each battery's headroom in that direction
    (``rooms``: what each may charge, :func:`charge_room_w`)."""
    caps = [
        room if total < 0 else discharge_cap_w(b, s) if total > 0 else 0.0
        for b, room in zip(ready, rooms, strict=True)
    ]
    whole = sum(caps)
    if whole <= 0:
        return [0.0 for _ in ready]
    return [total * c / whole for c in caps]


# --------------------------------------------------------------------------------------
# The planner: how much may the battery charge now?


@dataclass(frozen=True)
class ForecastStep:
    """One step of the expectation: from ``t`` (epoch s), PV and load in W, the export limit."""

    t: float
    pv_w: float
    load_w: float
    export_limit_w: float | None


def plan_charge(
    now: float,
    battery: BatteryState,
    forecast: Sequence[ForecastStep],
    s: BatterySettings,
    evening_soc_pct: float | None = None,
    confidence: float = 0.7,
    headroom: float = 1.15,
) -> ChargePlan:
    """Hold back charging while export is allowed, so the limited hours find room.

    ``need`` is the energy the expected surplus would put over the export limit in the steps
    ahead (what would be curtailed), at most the battery's rate. While the free room is no more
    than that need, charging from surplus that could be exported is held back (0 W); once there
    is more room than need, charge freely. Never at the cost of the evening reserve: no hold
    back unless ``confidence`` × the expected charging in the limited hours alone reaches
    ``evening_soc_pct`` (default: the reserve SoC). ``headroom``: the room kept is the need ×
    this, as the limited hours also cost the margins the law keeps below the limit.
    """
    if not forecast or not _finite(battery.soc_pct) or _pos(battery.capacity_wh) <= 0:
        return ChargePlan(None, reason="no forecast or SoC")
    cap_wh = battery.capacity_wh
    room = max(cap_wh * (s.max_soc_pct - battery.soc_pct) / 100.0, 0.0)
    rate = _pos(battery.max_charge_w)
    need = 0.0
    steps = sorted(forecast, key=lambda f: f.t)
    for k, f in enumerate(steps):
        end = steps[k + 1].t if k + 1 < len(steps) else f.t + 3600.0
        start = max(f.t, now)
        if end <= start or f.export_limit_w is None:
            continue
        over = max(f.pv_w - f.load_w - f.export_limit_w, 0.0)
        need += min(over, rate) * (end - start) / 3600.0
    need = min(need, cap_wh * max(s.max_soc_pct - s.reserve_soc_pct, 0.0) / 100.0)
    if need <= 0:
        return ChargePlan(None, need, room, "nothing to save")
    goal = s.reserve_soc_pct if evening_soc_pct is None else evening_soc_pct
    reach = battery.soc_pct + confidence * min(need, room) / cap_wh * 100.0
    if reach < goal:
        return ChargePlan(None, need, room, "evening reserve first")
    if room > need * headroom:
        return ChargePlan(None, need, room, "room to spare")
    return ChargePlan(0.0, need, room, "keep room for the limited hours")


def clear_sky_fraction(day_of_year: int, solar_hour: float, latitude_deg: float) -> float:
    """The clear-sky PV shape (0..1) at a solar time: sun elevation, with a little air mass.

    Simple on purpose: it only has to say when the surplus comes, and the observed production
    scales it (:func:`pv_expectation`).
    """
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + day_of_year) / 365.0)
    lat = math.radians(latitude_deg)
    hour_angle = math.radians(15.0 * (solar_hour - 12.0))
    sin_el = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle)
    noon = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl)
    if sin_el <= 0 or noon <= 0:
        return 0.0
    return float((sin_el / noon) ** 1.2)


RATIO_MIN, RATIO_MAX = 0.05, 1.2
"""The PV ratio (measured / clear-sky) is kept within these: a dark day still has some sun, and
a cold clear day makes a little more than the simple curve says, never much more."""
PRIOR_WEIGHT = 3.0
"""How much evidence the previous days' ratio is worth, in clear-sky fractions (samples at full
sun): today's samples outweigh it once their clear-sky fractions add up to more than this (one
hour of 5-minute samples at 25 % of the noon sun), so yesterday rules at dawn and today by
mid-morning."""
SAMPLE_MIN_FRACTION = 0.15
"""Samples taken while the clear-sky curve is below this fraction of noon do not teach the day's
ratio: at dawn and dusk local time's offset from solar time and the horizon dominate it."""
DAY_MIN_WEIGHT = 3.0
"""A day's ratio is remembered only when its samples' clear-sky fractions add up to this."""
MEMORY_DAYS = 3
"""How many previous days the PV memory learns from (yesterday weighs most)."""


def _ratio_or_none(x: object) -> float | None:
    """A usable ratio, clamped; None for anything not a finite number (never a crash)."""
    if not _finite(x):
        return None
    return min(max(float(x), RATIO_MIN), RATIO_MAX)


def pv_expectation(
    peak_w: float,
    day_of_year: int,
    hours: Sequence[float],
    latitude_deg: float,
    observed: Sequence[tuple[float, float]] = (),
    yesterday_ratio: float | None = None,
) -> list[float]:
    """Expected PV (W) at each solar hour: the clear-sky curve × a ratio.

    The ratio is today's production so far (``observed``: (solar hour, W) pairs) against the
    curve at the same moments, blended with the previous days' (``yesterday_ratio``, from
    :class:`PvMemory`) in proportion to how much each has seen: the previous days count as
    ``PRIOR_WEIGHT`` samples at full sun, today's samples as their clear-sky fractions. So
    before sunrise the expectation is yesterday's, and it moves to today's as the morning goes.
    Without a previous day, today's ratio is used as soon as it means anything (the samples'
    mean clear-sky fraction above 0.1), else a clear day (1).
    """
    prior = _ratio_or_none(yesterday_ratio)
    seen_w = 0.0
    weight = 0.0
    n = 0
    if _finite(peak_w) and peak_w > 0:
        for h, w in observed:
            if not (_finite(w) and _finite(h)):
                continue
            frac = clear_sky_fraction(day_of_year, h, latitude_deg)
            seen_w += max(w, 0.0)
            weight += frac
            n += 1
    if prior is None:
        ratio = 1.0
        if weight > 0.1 * max(n, 1):
            ratio = seen_w / (peak_w * weight)
    else:
        today = seen_w / peak_w if weight > 0 else 0.0
        ratio = (today + prior * PRIOR_WEIGHT) / (weight + PRIOR_WEIGHT)
    ratio = min(max(ratio, RATIO_MIN), RATIO_MAX)
    peak = _pos(peak_w)
    return [peak * ratio * clear_sky_fraction(day_of_year, h, latitude_deg) for h in hours]


@dataclass(frozen=True)
class PvDay:
    """One day's unlimited production against the clear-sky curve at the same moments: sums of
    measured W / rated W and of clear-sky fractions (so the ratio survives a change of the
    site's rating)."""

    day: str
    """Local date, ISO (YYYY-MM-DD)."""
    measured: float = 0.0
    clear: float = 0.0

    def ratio(self) -> float | None:
        """The day's measured / clear-sky ratio; None when it saw too little sun to say."""
        if self.clear < DAY_MIN_WEIGHT:
            return None
        return _ratio_or_none(self.measured / self.clear)


@dataclass(frozen=True)
class PvMemory:
    """What the planner remembers of the previous days' sun (the app keeps it on the data
    partition, ``pv-memory.json``): a few :class:`PvDay`, oldest first. Pure: dates come in
    as data, the file's bytes go out and come back through :meth:`to_json`/:meth:`from_json`."""

    days: tuple[PvDay, ...] = ()

    def record(
        self,
        day: date,
        solar_hour: float,
        produced_w: float,
        peak_w: float,
        latitude_deg: float,
    ) -> PvMemory:
        """Adds one sample of unlimited production (taken while no inverter was limited)."""
        if not (_finite(produced_w) and _finite(peak_w) and _finite(solar_hour)) or peak_w <= 0:
            return self
        frac = clear_sky_fraction(day.timetuple().tm_yday, solar_hour, latitude_deg)
        if frac < SAMPLE_MIN_FRACTION:
            return self
        key = day.isoformat()
        old = next((d for d in self.days if d.day == key), PvDay(key))
        new = PvDay(key, old.measured + max(produced_w, 0.0) / peak_w, old.clear + frac)
        rest = [d for d in self.days if d.day != key]
        # Kept by date order, the last few: a clock set wrong (a Pi without its time yet) adds
        # one stray day that the next real days push out, without erasing them first.
        days = sorted([*rest, new], key=lambda d: d.day)[-(MEMORY_DAYS + 1) :]
        return PvMemory(tuple(days))

    def prior_ratio(self, today: date) -> float | None:
        """The previous days' ratio for ``today``: the last ``MEMORY_DAYS`` days that saw
        enough sun, yesterday weighing twice the day before, and so on; None without one."""
        total = 0.0
        weights = 0.0
        for d in self.days:
            r = d.ratio()
            try:
                age = (today - date.fromisoformat(d.day)).days
            except ValueError:
                continue
            if r is None or not 1 <= age <= MEMORY_DAYS:
                continue
            w = 0.5 ** (age - 1)
            total += w * r
            weights += w
        return None if weights <= 0 else total / weights

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "days": [
                    {"day": d.day, "measured": d.measured, "clear": d.clear} for d in self.days
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> PvMemory:
        """Parses :meth:`to_json`'s output; anything else is a ValueError naming the problem."""
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("not a version 1 PV memory")
        days = doc.get("days")
        if not isinstance(days, list):
            raise ValueError("'days' is not a list")
        out: list[PvDay] = []
        for i, d in enumerate(days):
            if not isinstance(d, dict):
                raise ValueError(f"day {i} is not an object")
            measured, clear = d.get("measured"), d.get("clear")
            out.append(PvDay(_iso_date(d.get("day"), i), _amount(measured, i), _amount(clear, i)))
        return cls(tuple(sorted(out, key=lambda x: x.day)[-(MEMORY_DAYS + 1) :]))


def _iso_date(x: object, i: int) -> str:
    if isinstance(x, str):
        try:
            return date.fromisoformat(x).isoformat()
        except ValueError:
            pass
    raise ValueError(f"day {i}: 'day' is not a date (YYYY-MM-DD): {x!r}")


def _amount(x: object, i: int) -> float:
    if not _finite(x) or x < 0:
        raise ValueError(f"day {i}: 'measured' and 'clear' must be finite and >= 0: {x!r}")
    return float(x)


def forecast(
    now: float,
    local_hour: float,
    day_of_year: int,
    latitude_deg: float,
    peak_w: float,
    load_w: float,
    export_limits: Sequence[tuple[float, float | None]],
    observed: Sequence[tuple[float, float]] = (),
    step_s: float = 1800.0,
    horizon_s: float = 24 * 3600.0,
    yesterday_ratio: float | None = None,
) -> list[ForecastStep]:
    """The planner's expectation from ``now`` (epoch s, at ``local_hour``) to the end of today's
    sun: the clear-sky curve scaled by today's production (``observed``: (local hour, W))
    blended with the previous days' ratio (``yesterday_ratio``, see :func:`pv_expectation`), a
    flat load, and the export limit in force at each step from ``export_limits`` ((epoch s, W or
    None) at each change, as ``App.limits_outlook`` gives them). Local time stands in for
    solar time (off by the zone's longitude and daylight saving: an hour at most, which moves
    the curve, not the energy)."""
    steps: list[ForecastStep] = []
    limits = sorted(export_limits, key=lambda x: x[0])
    t = now
    k = 0
    while t < now + horizon_s:
        hour = local_hour + (t - now) / 3600.0
        if hour >= 24.0:
            break
        mid = hour + step_s / 7200.0
        pv = pv_expectation(peak_w, day_of_year, [mid], latitude_deg, observed, yesterday_ratio)[0]
        limit = None
        for start, value in limits:
            if start <= t + step_s / 2:
                limit = value
        steps.append(ForecastStep(t, pv, load_w, limit))
        k += 1
        t = now + k * step_s
    return steps


ZONE_LATITUDES: dict[str, float] = {
    "Australia/Adelaide": -34.9,
    "Australia/Brisbane": -27.5,
    "Australia/Darwin": -12.5,
    "Australia/Hobart": -42.9,
    "Australia/Melbourne": -37.8,
    "Australia/Perth": -31.9,
    "Australia/Sydney": -33.9,
    "Australia/Broken_Hill": -31.95,
    "Australia/Lindeman": -20.4,
}
"""The clear-sky curve needs a latitude; the site's time zone gives one close enough (a few
degrees shift the curve by minutes). Default: Sydney's."""


def latitude_for(zone: str | None) -> float:
    return ZONE_LATITUDES.get(zone or "", -33.9)
