"""The control law: from the meter, the inverters and the limits to each inverter's limit.

Called every control interval (default 1 s), and may be called at once when the limits change;
irregular intervals are fine because time is a parameter. The law is feed-forward on the
inverters' own output with feedback through the meter:

    load estimate  = site power (import +) + DER output, both averaged over the same short window
    allowed output = load estimate + export limit - margin

which is the generation that would put export exactly at (limit - margin) whatever the household
draws. Because the estimate does not depend on what the inverters do, there is no loop gain to
tune and nothing to oscillate. Reductions apply at once (safety first); increases are filtered
(first-order, 1 s) so measurement noise rides below the limit instead of over it.

Utility ramps (rampTms, and setGradW for reductions) move the *limit value*, never the command:
the target is recomputed from the live load estimate on every call and the command never exceeds
it, so a load drop in the middle of a ramp is followed at once. See docs/control.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntFlag
from typing import Literal, TypeGuard

from dynexport.control.average import RollingMean
from dynexport.control.battery import (
    BatteryCommand,
    BatteryDecision,
    BatteryMemory,
    BatteryMode,
    BatterySettings,
    BatteryState,
    ChargePlan,
    SiteView,
    charge_cap_w,
    decide_batteries,
    usable,
)
from dynexport.control.failsafe import DEFAULT_STALE_S, failsafe_generation_w, meter_is_stale
from dynexport.control.limits import EffectiveLimits, is_utility_source
from dynexport.control.share import ShareInput, headroom_w, share_budget


class DOEMode(IntFlag):
    """CSIP-AUS doeModesSupported / doeModesEnabled bits."""

    EXPORT = 1
    IMPORT = 2
    GENERATION = 4
    LOAD = 8


ENFORCED_DOE_MODES = DOEMode.EXPORT | DOEMode.GENERATION
"""What this law can enforce with PV inverters alone. Import and load limits need something
controllable on the consumption side (a battery, a switched load); until one exists they are
reported as not enforced and must not be advertised."""

ENFORCED_DOE_MODES_WITH_BATTERY = ENFORCED_DOE_MODES | DOEMode.IMPORT | DOEMode.LOAD
"""With a controllable battery configured, import and load limits are enforced too (by
discharging it, down to its reserve)."""


def enforced_doe_modes(battery_configured: bool) -> DOEMode:
    """What DERCapability may advertise for this site."""
    return ENFORCED_DOE_MODES_WITH_BATTERY if battery_configured else ENFORCED_DOE_MODES


ENFORCED_LIMITS: frozenset[str] = frozenset({"export_w", "generation_w", "connect", "energize"})
UNENFORCED_LIMITS: tuple[str, ...] = ("import_w", "load_w")
RAMPED_LIMITS: tuple[str, ...] = ("export_w", "generation_w")

Mode = Literal["normal", "failsafe", "deenergized", "disconnected"]


@dataclass(frozen=True)
class InverterState:
    """One inverter as the device link last saw it.

    ``rated_w`` is the 100 % reference of its limit register (WMax, in W, never VA).
    ``power_w`` is its current output; for an offline inverter, the last value seen.
    """

    id: str
    online: bool
    controllable: bool
    rated_w: float
    power_w: float
    limit_pct: float | None = None
    sampled_t: float | None = None
    """When ``power_w`` was read (same clock as ``now``); None: read just now. The load estimate
    pairs each meter sample with the DER output at that sample's time, so a reading a second
    old must say so, or a falling output makes the load look larger than it is."""
    last_limit_pct: float | None = None
    """The limit last written to it (percent of ``rated_w``); None: none written, or unknown."""
    written_t: float | None = None
    """When a command was last sent to it (same clock as ``now``; None: never, or not known),
    whether or not it read back. A meter sample after its newest reading and after this is
    paired with an output it may since have left (``estimate_load``)."""
    limit_expires_t: float | None = None
    """When that limit's revert timer lifts it (same clock as ``now``: the write time plus the
    revert timeout); None: unknown. An inverter that cannot be reached is counted at the most it
    may produce: ``last_limit_pct`` of its rating until shortly before this time, then its
    rating."""


@dataclass(frozen=True)
class InverterCommand:
    """What to write to one inverter. ``limit_pct`` None: no limit needed (100 % or disabled)."""

    id: str
    limit_pct: float | None
    connect: bool = True


@dataclass(frozen=True)
class ControlSettings:
    """Tuning, with the reasons in docs/control.md."""

    interval_s: float = 1.0
    average_s: float = 1.0
    """Window for the meter and the DER output averages (the same window for both)."""
    margin_pct: float = 1.0
    """Aim this far below a limit so that meter noise does not push export over +4 %."""
    margin_min_w: float = 20.0
    """…but at least this many watts, which matters at 0 W and 500 W limits."""
    up_time_constant_s: float = 1.0
    """Increases close the gap with this time constant (reductions are immediate)."""
    up_min_rate_w_s: float = 50.0
    """Increases move at least this fast, so the last few watts of a gap are not a long tail."""
    hold_cut_w: float = 200.0
    """After a cut bigger than this, hold off increases for one averaging window plus one
    interval: until then the window mixes samples from before and after the inverters moved,
    and the load estimate can read high by a few percent of the cut."""
    stale_s: float = DEFAULT_STALE_S
    failsafe_generation_w: float | None = None
    """Installer's fail-safe total generation; None: the export limit (safe at zero load)."""
    revert_lead_s: float = 5.0
    """An unreachable inverter counts at its full rating from this long before its limit's
    revert time: the next decision is an interval away and the others need a few time constants
    of their own lag to come down before it rises."""
    revert_guard_s: float = 5.0
    """…and, with a fresh meter, the rise its revert allows is reserved until this long after
    that time, by when the meter (and so the load estimate) has seen it."""
    follow_s: float = 30.0
    """A controllable inverter that makes more than the limit it reads back for this long does
    not follow it (firmware that ignores it in some mode, a percentage of another rating than
    the WMax read): its excess is taken out of the others' budget. Longer than any inverter
    takes to come down to a new limit, so a normal cut is never taken for it."""

    @property
    def revert_lead_for_interval_s(self) -> float:
        """``revert_lead_s`` and what a control interval longer than 1 s adds: the decision
        before an unreachable inverter's revert time may come a whole interval before it (up to
        10 s with ``control.intervalS``), and a fixed 5 s let the revert fall between two
        decisions, uncounted by both."""
        return self.revert_lead_s + max(self.interval_s - 1.0, 0.0)


@dataclass(frozen=True)
class LimitRamp:
    """A utility limit moving linearly from ``start_w`` to ``end_w`` (None: no limit at the end).

    ``kind`` says why: "rampTms" (the utility's ramp time, either direction) or "setGradW" (a
    reduction at the utility's default gradient).
    """

    name: str
    t0: float
    duration_s: float
    start_w: float
    end_w: float | None
    kind: Literal["rampTms", "setGradW"]

    def active(self, now: float) -> bool:
        return now - self.t0 < self.duration_s

    def value(self, now: float, ceiling_w: float) -> float:
        """The limit at ``now``; a ramp towards "no limit" heads for ``ceiling_w``."""
        end = max(ceiling_w, self.start_w) if self.end_w is None else self.end_w
        frac = min(max((now - self.t0) / self.duration_s, 0.0), 1.0)
        return self.start_w + (end - self.start_w) * frac

    def slope_w_s(self, ceiling_w: float) -> float:
        end = max(ceiling_w, self.start_w) if self.end_w is None else self.end_w
        return (end - self.start_w) / self.duration_s


LimitsKey = tuple[tuple[object, str], ...]


@dataclass(frozen=True)
class ControllerState:
    """Everything the law remembers between calls."""

    last_t: float | None = None
    gen_cmd_w: float | None = None
    """Total output allowed for the online inverters last time (None: never computed)."""
    der: tuple[tuple[str, RollingMean], ...] = ()
    """Each online inverter's output, sampled at each call, kept a little longer than the meter
    window. Per inverter so that one going offline leaves the history of the others consistent:
    a summed history would pair meter samples with output that includes it, and read the load
    high by its output for one window."""
    limits_key: LimitsKey | None = None
    ramps: tuple[LimitRamp, ...] = ()
    mode: Mode = "normal"
    hold_until: float = -math.inf
    """No increase before this time: the load estimate is still settling after a big cut."""
    bat_der: tuple[tuple[str, RollingMean], ...] = ()
    """Each online AC-coupled battery's power (+ discharging), kept like ``der``: the load
    estimate pairs each meter sample with it too."""
    battery: BatteryMemory = field(default_factory=BatteryMemory)
    absorbing: frozenset[str] = frozenset()
    """The hybrid inverters whose battery took what more sun they had at the last split (they
    were given their output, not a headroom): entered at a headroom of spare charge, left
    below half of one."""
    over_since: tuple[tuple[str, float], ...] = ()
    """Each controllable inverter making more than its read-back limit, since when (it does
    not follow its limit once that is ``ControlSettings.follow_s`` ago)."""
    given_to_none: bool = False
    """The last command went to no inverter (none controllable was online: a start or a
    restart of the links before they answer, a shared gateway reconnecting): the next decision
    goes on from ``given_w``, the command last given, not from ``gen_cmd_w``. Taken as the
    command in force, the 0 W no online inverter can make cut every inverter to 0 % and held
    them there while their output fell."""
    given_w: float | None = None
    """The command last given to online inverters, kept through decisions that gave none
    (None: none given yet: the next one starts afresh, as after a start). Going on from it
    keeps the hold after a big cut, the late meter's no-rise rule and setGradW across a blip;
    starting afresh jumped the command to the load estimate's target."""


@dataclass(frozen=True)
class ControlOutput:
    """One control decision, and the state to pass to the next call."""

    commands: tuple[InverterCommand, ...]
    connect: bool
    mode: Mode
    target_w: float | None
    """Total output allowed for the online inverters (controllable + uncontrolled)."""
    budget_w: float
    """What is left of ``target_w`` for the controllable inverters, after uncontrolled output."""
    source: str
    """What bound ``target_w`` ("utility", "config", "window 10:00-16:00", "fail-safe"...);
    empty when nothing did."""
    load_estimate_w: float | None
    not_enforced: tuple[str, ...]
    """Limits in force that this site cannot enforce (import_w, load_w)."""
    skipped: dict[str, str]
    """Inverters the law does not share its budget with, and why ("offline", "no valid power
    reading", "not controllable", ...). Those in ``blind`` are among them, yet commanded."""
    state: ControllerState
    export_limit_w: float | None = None
    """The export limit worked to this call: the effective one, or its value part-way through a
    utility ramp (None: no export limit)."""
    generation_limit_w: float | None = None
    """Likewise for the generation limit."""
    offline_w: float = 0.0
    """What unreachable inverters were counted at (W), against the fail-safe and generation
    caps (their most possible output), or against the export target (their possible rise around
    a revert time)."""
    battery_commands: tuple[BatteryCommand, ...] = ()
    battery_mode: BatteryMode | None = None
    """None: no battery configured."""
    battery_w: float | None = None
    """Total battery setpoint this call (+ discharge, − charge); None: own mode or none."""
    battery_expected_w: float = 0.0
    """What the inverters' target counted the AC-coupled batteries at (+ output, − charge)."""
    battery_reason: str = ""
    not_following: tuple[str, ...] = ()
    """Controllable inverters that have made more than their read-back limit for longer than
    ``follow_s``: their excess was taken out of the others' budget (an installer should look)."""
    blind: tuple[str, ...] = ()
    """Reachable, controllable inverters whose output cannot be read: each is commanded a limit
    that keeps the site within the zero-load fail-safe cap whatever it makes (``blind_pct``),
    since the law cannot see what its share would be (their commands are in ``commands``, not in
    ``budget_w``)."""


STILL_OVER_W = 5.0
"""Once timed, a reading within this of its limit ends the timing: an output still settling
onto its limit from above (exponentially, never quite reaching it) is not an excess."""


def over_tolerance_w(rated_w: float) -> float:
    """How far above its read-back limit a reading must be to start timing an inverter as not
    following it: 0.5 % of its rating, at least 25 W (the limit itself is read back, after its
    register rounding). Small, because the timing then goes on only while every reading stays
    above the limit: reading noise around a limit it follows ends it within seconds."""
    return max(0.005 * rated_w, 25.0)


def margin_w(limit_w: float, settings: ControlSettings) -> float:
    """How far below a limit to aim."""
    return max(abs(limit_w) * settings.margin_pct / 100.0, settings.margin_min_w)


def _finite(x: object) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _finite_or_none(value: float | None) -> float | None:
    """A target (not a limit): one that is not a finite number is no target."""
    return value if value is not None and math.isfinite(value) else None


def _clean_limit(value: float | None) -> float | None:
    """A limit the law can use: NaN fails closed (0 W); +inf is no limit; -inf is 0 W."""
    if value is None:
        return None
    if math.isnan(value):
        return 0.0
    if math.isinf(value):
        return None if value > 0 else 0.0
    return float(value)


def _rated(inv: InverterState) -> float:
    """The rating, or 0 when unknown or nonsense (NaN, inf, negative)."""
    return float(inv.rated_w) if _finite(inv.rated_w) and inv.rated_w > 0 else 0.0


def possible_output_w(inv: InverterState, now: float, lead_s: float = 0.0) -> float:
    """The most an inverter that cannot be reached may produce now (and for ``lead_s`` more).

    Its last written limit holds until its revert timer lifts it; after that (or if either is
    unknown) only its rating bounds it. Never less than its last reading: it may not have come
    down yet. An inverter whose rating is unknown is counted at its last reading, the only
    figure there is.
    """
    last = max(float(inv.power_w), 0.0) if _finite(inv.power_w) else 0.0
    rated = _rated(inv)
    if rated <= 0:
        return last
    cap = rated
    pct, expires = inv.last_limit_pct, inv.limit_expires_t
    if _finite(pct) and _finite(expires) and now + lead_s < expires:
        cap = rated * min(max(pct, 0.0), 100.0) / 100.0
    return max(cap, last)


def possible_battery_output_w(b: BatteryState, now: float, lead_s: float = 0.0) -> float:
    """The most an unreachable AC-coupled battery may discharge now: its last setpoint until
    shortly before its revert time, never less than its last reading; in its own mode (no
    setpoint, or reverting) its whole discharge rate, since it covers whatever load it sees and
    lags when that load falls (0 for a hybrid's battery: its output is inside its inverter's,
    already counted). "Charge only" in force: no more than its last reading."""
    if not b.ac_coupled:
        return 0.0
    last = max(float(b.power_w), 0.0) if _finite(b.power_w) else 0.0
    sp, expires = b.setpoint_w, b.setpoint_expires_t
    if _finite(expires) and now + lead_s < expires:
        if _finite(sp):
            return max(last, sp)
        if b.charge_only:
            return last
    rate = float(b.max_discharge_w) if _finite(b.max_discharge_w) else 0.0
    return max(last, rate)


def unseen_rise_w(inv: InverterState, now: float, settings: ControlSettings) -> float:
    """How much an unreachable inverter may rise that a fresh meter cannot have seen yet.

    With a fresh meter its real output is in the reading, so only foreseeable jumps need a
    reserve. Its revert timer: from ``revert_lead_s`` before its limit's revert time until
    ``revert_guard_s`` after; held at its limit it makes min(PV, limit), freed min(PV, rating),
    so the rise is at most rating − limit whatever the sun does. And just after it was lost
    (``revert_guard_s`` from its last reading): it may still be rising to the limit last written.
    """
    rise = 0.0
    expires, pct = inv.limit_expires_t, inv.last_limit_pct
    if (
        _finite(expires)
        and _finite(pct)
        and expires - settings.revert_lead_for_interval_s <= now < expires + settings.revert_guard_s
    ):
        rise = _rated(inv) * (1.0 - min(max(pct, 0.0), 100.0) / 100.0)
    seen_t = inv.sampled_t
    if _finite(seen_t) and now < seen_t + settings.revert_guard_s:
        last = max(float(inv.power_w), 0.0) if _finite(inv.power_w) else 0.0
        rise = max(rise, possible_output_w(inv, now, settings.revert_lead_for_interval_s) - last)
    return rise


def unseen_battery_rise_w(b: BatteryState, now: float, settings: ControlSettings) -> float:
    """How much an unreachable AC-coupled battery may add to export that a fresh meter cannot
    have seen yet: around its setpoint's revert time (from ``revert_lead_s`` before until
    ``revert_guard_s`` after), a charge it was told to take stops (its own mode may stand
    idle), so the charge comes back as export at once. A discharge setpoint only falls then.
    0 for a hybrid's battery: its inverter's limit holds its output."""
    expires, sp = b.setpoint_expires_t, b.setpoint_w
    if not b.ac_coupled or not _finite(expires) or not _finite(sp) or sp >= 0:
        return 0.0
    lead = settings.revert_lead_for_interval_s
    return -float(sp) if expires - lead <= now < expires + settings.revert_guard_s else 0.0


def control_step(
    meter: RollingMean,
    inverters: Sequence[InverterState],
    limits: EffectiveLimits,
    state: ControllerState,
    now: float,
    settings: ControlSettings | None = None,
    batteries: Sequence[BatteryState] = (),
    battery_settings: BatterySettings | None = None,
    plan: ChargePlan | None = None,
) -> ControlOutput:
    """One decision. ``meter`` holds site power samples (positive import, negative export).

    ``batteries`` (optional) are charged before the inverters are curtailed and discharged to
    hold import and load limits (``control/battery.py``); ``plan`` is the planner's charge
    allowance while export is still allowed. Without batteries the decision is exactly the
    inverters-only law.

    Raises ValueError only for a time that is not a finite number (there is no decision to make
    without one); every other bad input (NaN or infinite readings, ratings, limits) is handled
    on the safe side: a NaN limit is 0 W, an unusable reading makes its inverter count as
    unreachable, a non-finite meter sample is ignored.
    """
    s = settings or ControlSettings()
    if not _finite(now):
        raise ValueError(f"control_step: now must be a finite time, not {now!r}")
    last_t = state.last_t if _finite(state.last_t) else None
    dt = s.interval_s if last_t is None else min(max(now - last_t, 0.0), 60.0)
    meter = RollingMean(
        meter.window_s, tuple((t, v) for t, v in meter.samples if _finite(t) and _finite(v))
    )
    limits = replace(
        limits,
        export_w=_clean_limit(limits.export_w),
        generation_w=_clean_limit(limits.generation_w),
    )

    # Inverters: only an online one with a usable reading counts as online; the rest are
    # counted at the most they may produce.
    online = [i for i in inverters if i.online and _finite(i.power_w)]
    ctrl = [i for i in online if i.controllable and _rated(i) > 0]
    offline = [i for i in inverters if i not in online]
    skipped = {i.id: "offline" if not i.online else "no valid power reading" for i in offline}
    skipped.update(
        {i.id: "not controllable" if not i.controllable else "no rating" for i in online}
    )
    for i in ctrl:
        del skipped[i.id]
    # Reachable and controllable, but its output cannot be read (the power register says "not
    # implemented"): its share is unknown, yet left alone it kept its last limit for good (the
    # device link rewrites it before its revert timer), and once that was above what the others
    # could make room for, the site exported it. It is commanded what the fail-safe would give
    # it: safe at zero load whatever it makes (below).
    blind = [i for i in offline if i.online and i.controllable and _rated(i) > 0]
    # Commands beyond the shared budget: the blind ones' (and, to disconnect, those without a
    # rating), by inverter id.
    extra: dict[str, float | None] = {}
    uncontrolled_w = sum(max(i.power_w, 0.0) for i in online if i not in ctrl)
    offline_max_w = sum(possible_output_w(i, now, s.revert_lead_for_interval_s) for i in offline)
    # The most the online inverters can make: above this, no limit is needed.
    rated_online = sum(max(_rated(i), i.power_w) for i in online)
    rated_site = sum(_rated(i) for i in inverters)
    rated_ctrl = sum(_rated(i) for i in ctrl)

    # Controllable inverters that do not follow their limit: what they make above it does not
    # fall with their share, so it comes out of the budget like uncontrolled output (else the
    # others were given shares as if it obeyed, and the site exported its excess for good).
    over_since: dict[str, float] = {}
    excess_w = 0.0
    not_following: list[str] = []
    previously_over = dict(state.over_since)
    # A hybrid's AC output includes its battery's discharge, which its limit may not cover (a
    # limit on its PV): its output less that discharge is compared; unknown, it is not judged.
    behind: dict[str, list[BatteryState]] = {}
    for b in batteries:
        if not b.ac_coupled and b.inverter_id is not None:
            behind.setdefault(b.inverter_id, []).append(b)
    for i in ctrl:
        allowed = _read_back_w(i)
        if allowed is None:
            continue
        made = i.power_w
        if i.id in behind:
            if not all(b.online and _finite(b.power_w) for b in behind[i.id]):
                continue
            made -= sum(max(b.power_w, 0.0) for b in behind[i.id])
        since = previously_over.get(i.id)
        # Timed from a reading above the tolerance, for as long as every reading is above the
        # limit itself: one that follows its limit reads below it every few seconds (its noise
        # around it), while a small excess the tolerance would hide, had each reading to clear
        # it, kept restarting the clock (or, once counted, flipped it out and in again), the
        # site over its limit all along.
        above = STILL_OVER_W if since is not None else over_tolerance_w(_rated(i))
        if made <= allowed + above:
            continue
        since = now if since is None else since
        over_since[i.id] = since
        if now - since >= s.follow_s:
            excess_w += made - allowed
            not_following.append(i.id)

    der = _update_der(state.der, online, now, s, dt)
    der_now = sum(m.latest or 0.0 for _, m in der)
    bs = battery_settings or BatterySettings()
    bat_der = _update_battery_der(state.bat_der, batteries, now, s, dt)
    bat_now = sum(m.latest or 0.0 for _, m in bat_der)
    written = _last_writes(online, batteries)
    can_absorb = any(usable(b) for b in batteries)
    not_enforced = tuple(
        k for k in UNENFORCED_LIMITS if limits.power(k) is not None and not can_absorb
    )
    key = _limits_key(limits)
    has_battery = bool(batteries)

    def out(
        pct: float | tuple[float, ...] | None, connect: bool, mode: Mode, target: float | None,
        budget: float, source: str, load: float | None, new_state: ControllerState,
        lims: tuple[float | None, float | None] = (None, None), off_w: float = 0.0,
    ) -> ControlOutput:  # fmt: skip
        each = pct if isinstance(pct, tuple) else tuple(pct for _ in ctrl)
        commands = tuple(InverterCommand(i.id, p, connect) for i, p in zip(ctrl, each, strict=True))
        commands += tuple(InverterCommand(k, p, connect) for k, p in extra.items())
        new_state = replace(new_state, over_since=tuple(sorted(over_since.items())))
        return ControlOutput(
            commands, connect, mode, target, budget, source, load, not_enforced, skipped,
            new_state, lims[0], lims[1], off_w, bat.commands,
            bat.mode if has_battery else None, bat.total_w, bat.expected_w, bat.reason,
            tuple(not_following), tuple(i.id for i in blind),
        )  # fmt: skip

    if not limits.connect or not limits.energize:
        # Disconnect / de-energize: 0 % as well, so that output is nil even if the inverter
        # ignores the connect command, and so the next increase ramps up from zero.
        mode: Mode = "disconnected" if not limits.connect else "deenergized"
        src = limits.sources.get("connect" if not limits.connect else "energize", "")
        # Batteries neither charge nor discharge while the site must not energize.
        ready = [b for b in batteries if usable(b)]
        bat = BatteryDecision(
            tuple(BatteryCommand(b.id, 0.0, mode) for b in ready),
            max(bat_now, 0.0), "engaged" if ready else "offline", BatteryMemory(),
            0.0 if ready else None, mode,
        )  # fmt: skip
        new = ControllerState(now, 0.0, der, key, (), mode, bat_der=bat_der)
        # Whoever can be written to: a 0 % limit needs no reading and no rating.
        norating = [i for i in online if i.controllable and _rated(i) <= 0]
        extra = {i.id: 0.0 for i in (*blind, *norating)}
        return out(0.0, limits.connect, mode, 0.0, 0.0, src, None, new)

    stale = meter_is_stale(meter, now, s.stale_s)
    # A late meter (no sample in the window, not yet stale) still justifies a cut, never a rise:
    # its last reading says nothing about what the household or the unreachable inverters did
    # since.
    late = not stale and meter.latest_t is not None and meter.latest_t <= now - s.average_s
    load_est = (
        None
        if stale
        else estimate_load(
            meter,
            [m for _, m in (*der, *bat_der)],
            now,
            s.average_s,
            [written.get(k, ()) for k, _ in (*der, *bat_der)],
        )
    )
    measured = {
        "export_w": None if load_est is None else der_now + bat_now - load_est,
        "generation_w": der_now,
    }
    ramps = _update_ramps(state, key, limits, now, rated_site, measured)
    ramped: dict[str, float | None] = {}
    for name in RAMPED_LIMITS:
        ramp = next((r for r in ramps if r.name == name), None)
        ramped[name] = limits.power(name) if ramp is None else ramp.value(now, rated_site)

    # Batteries first, so the inverters' target makes room for what they are told to do.
    site: SiteView | None = None
    # What unreachable inverters may add that the meter cannot have seen yet (see below).
    # The blind ones' output is in the meter, but not how far it may rise (a cloud passing):
    # the whole limit in force is kept for it, so that the others' shares and theirs never add
    # up to more than the limit allows (a yield loss only while an inverter cannot be read).
    unseen_w = (
        offline_max_w
        if late
        else sum(
            possible_output_w(i, now, s.revert_lead_for_interval_s)
            if i in blind
            else unseen_rise_w(i, now, s)
            for i in offline
        )
    )
    # And an unreachable battery's charge that stops at its revert time.
    unseen_w += sum(unseen_battery_rise_w(b, now, s) for b in batteries if not usable(b))
    if load_est is not None:
        exp_l = ramped["export_w"]
        # Curtailed: an inverter makes what its (read back) limit allows, so there may be
        # more PV than it makes. Judged on the limit as written, after its register rounding.
        curtailed = exp_l is not None and any(_held(i, bs.curtailed_tol_w) for i in ctrl)
        # A hybrid's battery: its inverter's PV (AC output less the battery's power), and
        # whether that inverter is held at its limit (charge-before-curtail, hybrid side).
        hybrid_pv: dict[str, float] = {}
        hybrid_lim: dict[str, float] = {}
        held: set[str] = set()
        for b, inv in _hybrids(batteries, ctrl):
            hybrid_pv[b.id] = inv.power_w - b.power_w
            lim_pct = inv.limit_pct if _finite(inv.limit_pct) else 100.0
            hybrid_lim[b.id] = _rated(inv) * min(max(lim_pct, 0.0), 100.0) / 100.0
            if _held(inv, bs.curtailed_tol_w):
                held.add(b.id)
        site = SiteView(
            load_w=load_est,
            inverters_w=der_now,
            export_limit_w=exp_l,
            export_margin_w=0.0 if exp_l is None else margin_w(exp_l, s),
            import_limit_w=_clean_limit(limits.import_w),
            load_limit_w=_clean_limit(limits.load_w),
            generation_limit_w=ramped["generation_w"],
            curtailed=curtailed,
            unseen_w=unseen_w,
            rising=(
                state.battery.inverters_w is not None
                and der_now - state.battery.inverters_w > max(0.01 * der_now, 20.0)
            ),
            hybrid_pv_w=hybrid_pv,
            hybrid_held=frozenset(held),
            hybrid_limit_w=hybrid_lim,
            storage_target_w=_finite_or_none(limits.storage_target_w),
        )
    # The fail-safe is never slowed by a ramp down, and never lifts a ramp up early.
    lower = {n: _min_limit(limits.power(n), ramped[n]) for n in RAMPED_LIMITS}
    fs_limits = replace(limits, export_w=lower["export_w"], generation_w=lower["generation_w"])
    fs_w, fs_src = failsafe_generation_w(fs_limits, s.failsafe_generation_w)
    # How far the inverters are still above the fail-safe cap: a held battery's charge comes
    # down no faster than they do.
    excess_fs_w = 0.0
    if stale and fs_w is not None:
        excess_fs_w = max(der_now - max(fs_w - margin_w(fs_w, s) - offline_max_w, 0.0), 0.0)
    bat = decide_batteries(
        batteries, site, state.battery, now, dt, plan, bs, excess_fs_w, s.interval_s
    )
    bat_out = bat.expected_w  # + the AC-coupled batteries add to the output, − they absorb
    # The blind ones' cap is the limits' own (the configured fail-safe figure is the
    # installer's guess at a base load: for a quiet meter only, not for every second).
    zero_load_w, _ = failsafe_generation_w(fs_limits)
    lead = s.revert_lead_for_interval_s
    # Discharge the blind ones cannot take into account: unreachable AC batteries at their last
    # setpoint, and hybrid batteries behind a blind inverter (its limit may cover its PV only).
    discharge_w = sum(possible_battery_output_w(b, now, lead) for b in batteries if not usable(b))
    for i in blind:
        for b in behind.get(i.id, ()):
            known = b.online and _finite(b.power_w)
            discharge_w += max(b.power_w, 0.0) if known else max(b.max_discharge_w, 0.0)
    extra = _blind_limits(
        blind,
        zero_load_w,
        s,
        uncontrolled_w + excess_w + max(bat_out, 0.0) + discharge_w,
        sum(possible_output_w(i, now, lead) for i in offline if i not in blind),
        rated_ctrl,
        limits.set_grad_w * dt if limits.set_grad_w else None,
    )
    candidates: list[tuple[float, str]] = []
    offline_w = 0.0
    if stale:
        if fs_w is not None:
            # Unreachable inverters may produce up to their limit, or their rating once their
            # revert timer lifts it: count the most, or the site may export it all.
            # So may an unreachable AC-coupled battery: its last setpoint holds until its
            # revert timer returns it to its own mode.
            offline_w = offline_max_w + sum(
                possible_battery_output_w(b, now, s.revert_lead_for_interval_s)
                for b in batteries
                if not usable(b)
            )
            aim = fs_w - margin_w(fs_w, s) - offline_w - max(bat_out, 0.0)
            candidates.append((aim, fs_src))
    else:
        assert load_est is not None
        exp_w, gen_w = ramped["export_w"], ramped["generation_w"]
        if exp_w is not None:
            # Unreachable inverters' real output is in the meter reading (it lowers the load
            # estimate), so the export target needs no guess about it, except a rise the meter
            # cannot have seen yet (just lost, or around a revert time). A late meter saw them
            # as they were a while ago (they may have risen to their limit since): count the
            # most they may make, as the fail-safe will.
            rise_w = unseen_w
            offline_w = rise_w
            aim = load_est + exp_w - margin_w(exp_w, s) - rise_w - bat_out
            candidates.append((aim, limits.sources.get("export_w", "")))
        if gen_w is not None:
            offline_w = max(offline_w, offline_max_w)
            aim = gen_w - margin_w(gen_w, s) - offline_max_w - max(bat_out, 0.0)
            candidates.append((aim, limits.sources.get("generation_w", "")))

    raw, source = min(candidates, default=(math.inf, ""), key=lambda c: c[0])
    raw = max(raw, 0.0)
    if raw >= rated_online:
        raw, source = rated_online, ""  # more than the online inverters can make: no limit

    last = state.given_w if state.given_to_none else state.gen_cmd_w
    prev = max(last, 0.0) if _finite(last) else None
    hold_until = state.hold_until if not math.isnan(state.hold_until) else -math.inf
    settle_until = now + s.average_s + s.interval_s
    if prev is not None and prev - raw > s.hold_cut_w:
        hold_until = max(hold_until, settle_until)  # a big cut
    # What cannot fall however far the command does: uncontrolled output, and the excess of
    # inverters that do not follow their limit.
    floor_w = uncontrolled_w + excess_w
    if der_now - max(raw if prev is None else min(raw, prev), floor_w) > s.hold_cut_w:
        # The output is about to fall a long way (after a cut, or an inverter back in reach that
        # ran free): until the window holds only samples from after that, the estimate reads high.
        # Counted above the floor: output that will not fall held every increase back for as
        # long as it stayed high (an old uncontrollable inverter making more than the command).
        hold_until = max(hold_until, settle_until)
    if prev is None or raw <= prev:
        cmd = raw  # reductions at once, whatever caused them
    elif now < hold_until or late:
        cmd = prev
    else:
        step = max(
            (raw - prev) * (1.0 - math.exp(-dt / s.up_time_constant_s)),
            s.up_min_rate_w_s * dt,
        )
        # A ramp running now, or until now if the limits did not change (its last step ends at
        # this call).
        ended = state.ramps if key == state.limits_key else ()
        tms = [r for r in (*ended, *ramps) if r.kind == "rampTms"]
        if tms:
            # The utility's ramp is the gentle approach: keep pace with its slope.
            step = max(step, max(r.slope_w_s(rated_site) for r in tms) * dt)
        elif limits.set_grad_w:
            # setGradW is of the site's rating; the blind ones rise by their own share of it
            # (``_blind_limits``), so these by the rest: together no faster than the site may.
            rated_readable = max(rated_site - sum(_rated(i) for i in blind), 0.0)
            step = min(step, limits.set_grad_w / 10000.0 * rated_readable * dt)
        cmd = prev + step
    cmd = min(cmd, raw)  # never more than the live target, in any state

    budget = max(cmd - uncontrolled_w - excess_w, 0.0)
    pct: tuple[float, ...] | None = None
    absorb: dict[str, float] = {}
    if rated_ctrl > 0 and budget < rated_ctrl * (1.0 - 1e-9):
        # Per inverter: one short of sun leaves its unused share to the others (share.py); a
        # hybrid whose battery the law charges, and that can take more, asks for its output.
        history = dict(der)
        if bat.mode == "engaged" and site is not None:
            for b, inv in _hybrids(batteries, ctrl):
                spare = charge_cap_w(b, bs) - max(-b.power_w, 0.0)
                absorb[inv.id] = absorb.get(inv.id, 0.0) + max(spare, 0.0)
        # Hysteresis: a hybrid starts asking for its output alone once its battery can take a
        # whole headroom more, and goes back to the plain rules only below half of one; a single
        # threshold flipped it between its output and a full share while its battery's charge
        # hovered there, and the flips rang through the load estimate (export +86 W over a 0 W
        # limit in the property test).
        for inv_id, spare in list(absorb.items()):
            need = headroom_w(_rated(next(i for i in ctrl if i.id == inv_id)))
            if spare < (need / 2.0 if inv_id in state.absorbing else need):
                del absorb[inv_id]
        pct = share_budget(
            budget,
            [
                ShareInput(
                    i.id,
                    _rated(i),
                    i.power_w,
                    i.limit_pct,
                    _previous(history.get(i.id)),
                    absorb.get(i.id, 0.0),
                    _recent_max(history.get(i.id), now, HYBRID_RECENT_S),
                )
                for i in ctrl
            ],
        )
    target = None if not source and cmd >= rated_online else cmd
    mode = "failsafe" if stale else "normal"
    new = ControllerState(
        now, cmd, der, key, ramps, mode, hold_until, bat_der, bat.memory, frozenset(absorb),
        given_to_none=not ctrl, given_w=cmd if ctrl else prev,
    )  # fmt: skip
    lims = (ramped["export_w"], ramped["generation_w"])
    return out(pct, True, mode, target, budget, source, load_est, new, lims, offline_w)


def _blind_limits(
    blind: Sequence[InverterState],
    cap_w: float | None,
    s: ControlSettings,
    forced_w: float,
    unreachable_w: float,
    rated_ctrl: float,
    rise_grad: float | None,
) -> dict[str, float | None]:
    """The limits for inverters that answer but whose output cannot be read (None: no limit).

    What the fail-safe gives every inverter, kept whatever the meter says: their share, by
    rating with the controllable ones, of the zero-load cap (``cap_w``: the export limit, capped
    by the generation limit) less its margin, what cannot be curtailed (``forced_w``: uncontrolled
    output, excess, battery discharge) and what the unreachable inverters may make. So the site
    keeps within the limit at zero load whatever they make, and the controllable ones, whose
    shares come from the meter, take up what the household uses. ``rise_grad``: setGradW times
    the step's seconds, in hundredths of a percent: how far a limit may rise from the last one.
    """
    if not blind:
        return {}
    if cap_w is None:
        return {i.id: None for i in blind}  # nothing limits the site
    room = cap_w - margin_w(cap_w, s) - forced_w - unreachable_w
    share = min(max(room / (sum(_rated(i) for i in blind) + rated_ctrl) * 100.0, 0.0), 100.0)
    limits: dict[str, float | None] = {}
    for i in blind:
        pct = share
        last = i.last_limit_pct
        if rise_grad is not None and _finite(last) and pct > last:
            pct = min(pct, max(last, 0.0) + rise_grad / 100.0)
        limits[i.id] = pct
    return limits


def _read_back_w(inv: InverterState) -> float | None:
    """The output its read-back limit allows (None: no limit in force, or unknown)."""
    if not _finite(inv.limit_pct) or inv.limit_pct >= 100.0:
        return None
    return _rated(inv) * max(inv.limit_pct, 0.0) / 100.0


def _held(inv: InverterState, tol_w: float) -> bool:
    """Is it making what its read-back limit allows (so there may be more PV than it makes)?
    Judged on the limit as written, after its register rounding."""
    allowed = _read_back_w(inv)
    return (
        allowed is not None
        and allowed < _rated(inv) * (1.0 - 1e-8)
        and inv.power_w >= allowed - tol_w
    )


def _hybrids(
    batteries: Sequence[BatteryState], ctrl: Sequence[InverterState]
) -> list[tuple[BatteryState, InverterState]]:
    """Each usable hybrid battery with its online, controllable inverter (by ``inverter_id``)."""
    by_id = {i.id: i for i in ctrl}
    return [
        (b, by_id[b.inverter_id])
        for b in batteries
        if not b.ac_coupled and usable(b) and b.inverter_id is not None and b.inverter_id in by_id
    ]


HYBRID_RECENT_S = 3.0
"""A hybrid whose battery takes what more sun it has is given what its AC output was at most
over this long (plus a margin), not its latest reading: its battery's charge moves it by
hundreds of watts a second, and a limit that followed each dip at once passed the dip on to
the other inverters the next second and rang through the load estimate (period-2, export
+60 W over a 0 W limit in the property test)."""


def _recent_max(history: RollingMean | None, now: float, span_s: float) -> float | None:
    """The most an inverter made over the last ``span_s`` (None: no reading in that time)."""
    if history is None:
        return None
    seen = [v for t, v in history.samples if t > now - span_s]
    return max(seen) if seen else None


def _previous(history: RollingMean | None) -> float | None:
    """An inverter's output at its reading before the latest (None: no earlier one in the
    window, e.g. just back online): tells a lagging inverter from one short of sun."""
    if history is None or not history.samples:
        return None
    latest_t = history.samples[-1][0]
    earlier = [v for t, v in history.samples if t < latest_t]
    return earlier[-1] if earlier else None


def _min_limit(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _update_der(
    history: tuple[tuple[str, RollingMean], ...],
    online: Sequence[InverterState],
    now: float,
    s: ControlSettings,
    dt: float,
) -> tuple[tuple[str, RollingMean], ...]:
    """Add each online inverter's reading to its own history; forget the others.

    The history reaches back over the stale timeout plus a little, so that every meter sample
    the law may still use (a late one included) has DER values around it to interpolate
    between: pairing an old meter reading with today's output reads the load high by however
    much the output rose since, and the law would raise the output on that. A reading above the
    rating is taken at the rating: it can only make the load (and so the target) look larger.
    """
    window = max(s.average_s, s.stale_s) + 2.0 * max(s.interval_s, dt)
    old = dict(history)
    result = []
    for inv in online:
        t = inv.sampled_t if _finite(inv.sampled_t) else now
        assert t is not None
        rated = _rated(inv)
        power = min(inv.power_w, rated) if rated > 0 else inv.power_w
        # add() ignores a sample no newer than the last one: an unchanged reading adds nothing.
        mean = RollingMean(window, old[inv.id].samples if inv.id in old else ())
        result.append((inv.id, mean.add(min(t, now), power)))
    return tuple(result)


def _last_writes(
    online: Sequence[InverterState], batteries: Sequence[BatteryState]
) -> dict[str, tuple[float, ...]]:
    """When commands were last sent to each device whose output the load estimate adds back
    (by id): an AC-coupled battery's own; an inverter's and each of its hybrid batteries'
    (their power is inside the inverter's reading), every one kept: a sample between two of
    them is as unsure as one after both."""
    written: dict[str, tuple[float, ...]] = {
        i.id: () if i.written_t is None else (i.written_t,) for i in online
    }
    for b in batteries:
        key = b.inverter_id if not b.ac_coupled and b.inverter_id is not None else b.id
        mine = () if b.written_t is None else (b.written_t,)
        written[key] = (*written.get(key, ()), *mine)
    return written


def _update_battery_der(
    history: tuple[tuple[str, RollingMean], ...],
    batteries: Sequence[BatteryState],
    now: float,
    s: ControlSettings,
    dt: float,
) -> tuple[tuple[str, RollingMean], ...]:
    """Like ``_update_der`` for the online AC-coupled batteries (power + discharging): their
    output is part of the site's, so the load estimate adds it back. A hybrid's battery is
    already inside its inverter's reading; an unreachable one is, for the law, household."""
    window = max(s.average_s, s.stale_s) + 2.0 * max(s.interval_s, dt)
    old = dict(history)
    result = []
    for b in batteries:
        if not (b.ac_coupled and b.online and _finite(b.power_w)):
            continue
        t = b.sampled_t if _finite(b.sampled_t) else now
        assert t is not None
        mean = RollingMean(window, old[b.id].samples if b.id in old else ())
        result.append((b.id, mean.add(min(t, now), float(b.power_w))))
    return tuple(result)


def _update_ramps(
    state: ControllerState,
    key: LimitsKey,
    limits: EffectiveLimits,
    now: float,
    rated_site: float,
    measured: dict[str, float | None],
) -> tuple[LimitRamp, ...]:
    """The utility ramps in force after this call's limits: new ones start from the value in
    force until now (a ramp part-way, the old limit, or, from no limit, what the site makes)."""
    ramps = {r.name: r for r in state.ramps}
    if state.limits_key is not None and key != state.limits_key:
        old_by = dict(zip(_KEY_NAMES, state.limits_key, strict=True))
        new_by = dict(zip(_KEY_NAMES, key, strict=True))
        for name in RAMPED_LIMITS:
            (old_v, old_src), (new_v, new_src) = old_by[name], new_by[name]
            if (old_v, old_src) == (new_v, new_src):
                continue
            running = ramps.pop(name, None)
            if not _utility_changed(old_src, new_src):
                continue  # a config or window change, or the fallback: no utility ramp
            assert old_v is None or isinstance(old_v, float | int)
            assert new_v is None or isinstance(new_v, float | int)
            current: float | None
            if running is not None and running.active(now) and running.end_w == old_v:
                current = running.value(now, rated_site)
            elif old_v is not None:
                current = float(old_v)
            else:  # from no limit: from what the site makes now, if known
                seen = measured[name]
                current = None if seen is None or new_v is None else max(seen, float(new_v))
            if current is None:
                continue
            end = None if new_v is None else float(new_v)
            tms = limits.ramp_tms if name == "export_w" else limits.generation_ramp_tms
            if tms is not None:  # each limit's own rampTms; 0: a step, setGradW not used
                if tms > 0 and (end is None or end != current):
                    ramps[name] = LimitRamp(name, now, tms / 100.0, current, end, "rampTms")
            elif limits.set_grad_w and end is not None and end < current and rated_site > 0:
                rate = limits.set_grad_w / 10000.0 * rated_site
                ramps[name] = LimitRamp(name, now, (current - end) / rate, current, end, "setGradW")
    # A ramp always ends at the limit in force; one that does not belongs to other limits.
    return tuple(r for r in ramps.values() if r.active(now) and r.end_w == limits.power(r.name))


_KEY_NAMES: tuple[str, ...] = ("export_w", "generation_w", "connect", "energize")


def _limits_key(limits: EffectiveLimits) -> LimitsKey:
    return tuple((getattr(limits, n), limits.sources.get(n, "")) for n in _KEY_NAMES)


def _utility_changed(old_src: str, new_src: str) -> bool:
    """Did the utility cause this change: it now sets the value, or its own limit just ended?

    rampTms and setGradW belong to the utility's control; a config window starting, or the
    fallback limit taking over when the utility has no usable schedule, is not slowed by them.
    """
    return is_utility_source(new_src) or (not new_src and is_utility_source(old_src))


PAIRING_SLACK_W = 50.0
"""How much less sure a meter sample's pairing may be than the surest one in the window and
still count (about the spread of the power readings' own noise)."""


def estimate_load(
    meter: RollingMean,
    der: RollingMean | Sequence[RollingMean],
    now: float,
    window_s: float,
    written: Sequence[tuple[float, ...]] = (),
) -> float:
    """Mean over the meter samples in the window of (site power + DER output *at that moment*).

    Pairing each meter sample with the DER output interpolated to its timestamp keeps the two
    consistent while the inverters move: averaging them independently (the meter at 2 Hz, the
    inverters at each 1 s call) mis-estimates the load by a few hundred watts just after a step,
    which a feed-forward law turns straight into export error. ``der`` is one total history or
    one history per inverter (summed at each meter sample's time).

    Between two readings that differ, the output at a moment is a guess: a battery told a new
    setpoint gets there in a fraction of a second, not along the straight line, and a meter
    sample paired with the line's midpoint then overstates the load by a quarter of the step
    (hundreds of watts, exported by the next decision). After a device's newest reading its
    output is a guess too, once a command was sent to it since (``written``: for each history,
    the times commands were last sent to what it reads, e.g. an inverter and its hybrid
    battery): a device that missed this call's poll may have followed it. A link polls and
    writes one after the other, so a reading that arrived after the write shows its effect.
    So only the samples paired most surely count: those whose readings around them moved least
    (within ``PAIRING_SLACK_W``); a sample at a reading's own time, or after the newest with no
    command sent between, is sure. When every sample is as unsure, all count, as before.
    """
    parts = [der] if isinstance(der, RollingMean) else list(der)
    writes = list(written) + [()] * (len(parts) - len(written))
    inside = [(t, v) for t, v in meter.samples if now - window_s < t <= now]
    if not inside:
        inside = list(meter.samples[-1:])  # late but not stale: the fail-safe decides that
    paired = []
    for t, v in inside:
        guesses = [_interpolate(p.samples, t, w) for p, w in zip(parts, writes, strict=False)]
        paired.append((v + sum(g for g, _ in guesses), sum(u for _, u in guesses)))
    surest = min(u for _, u in paired)
    kept = [load for load, u in paired if u <= surest + PAIRING_SLACK_W]
    return sum(kept) / len(kept)


def _interpolate(
    samples: tuple[tuple[float, float], ...], t: float, written: tuple[float, ...] = ()
) -> tuple[float, float]:
    """Linear between the samples around ``t``, the nearest end outside them; and how unsure
    that is: how far the two samples around ``t`` differ; nil at a sample's own time, before
    the first or after the last (unless a command sent at one of the ``written`` times came
    between the last and ``t``: then not known at all, infinite)."""
    if not samples:
        return 0.0, 0.0
    if t <= samples[0][0]:
        return samples[0][1], 0.0
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if t == t0:
            return v0, 0.0
        if t0 < t < t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0), abs(v1 - v0)
    last_t, last = samples[-1]
    if any(last_t < w < t for w in written):
        return last, math.inf
    return last, 0.0
