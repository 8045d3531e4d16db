"""The control law: from the meter, the inverters and the limits to each inverter's limit.

Called every control interval (default 1 s), and may be called at once when the limits change;
irregular intervals are fine because time is a parameter. The law is feed-forward on the
inverters' own output with feedback through the meter:

    load estimate  = site power (import +) + DER output, both averaged over the same short window
    allowed output = load estimate + export limit - margin

which is the generation that would put export exactly at (limit - margin) whatever the household
draws. Because the estimate does not depend on what the inverters do, there is no loop gain to
tune and nothing to oscillate. Reductions apply at once (safety first); increases are filtered
(first-order, 1 s) so measurement noise rides below the limit instead of over it. Utility ramps
(rampTms, setGradW) shape transitions as the utility asks. See docs/control.md for the numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Literal

from dynexport.control.average import RollingMean
from dynexport.control.failsafe import DEFAULT_STALE_S, failsafe_generation_w, meter_is_stale
from dynexport.control.limits import EffectiveLimits


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

ENFORCED_LIMITS: frozenset[str] = frozenset({"export_w", "generation_w", "connect", "energize"})
UNENFORCED_LIMITS: tuple[str, ...] = ("import_w", "load_w")

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


@dataclass(frozen=True)
class Ramp:
    """A utility-requested transition (rampTms): from ``start_w`` to the live target."""

    t0: float
    duration_s: float
    start_w: float


LimitsKey = tuple[tuple[object, str], ...]


@dataclass(frozen=True)
class ControllerState:
    """Everything the law remembers between calls."""

    last_t: float | None = None
    gen_cmd_w: float | None = None
    """Total output allowed for the online inverters last time (None: never computed)."""
    der: RollingMean = field(default_factory=RollingMean)
    """Total online DER output, sampled at each call, averaged like the meter."""
    limits_key: LimitsKey | None = None
    ramp: Ramp | None = None
    mode: Mode = "normal"
    hold_until: float = -math.inf
    """No increase before this time: the load estimate is still settling after a big cut."""


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
    """Inverters given no command, and why ("offline", "not controllable")."""
    state: ControllerState


def margin_w(limit_w: float, settings: ControlSettings) -> float:
    """How far below a limit to aim."""
    return max(abs(limit_w) * settings.margin_pct / 100.0, settings.margin_min_w)


def control_step(
    meter: RollingMean,
    inverters: Sequence[InverterState],
    limits: EffectiveLimits,
    state: ControllerState,
    now: float,
    settings: ControlSettings | None = None,
) -> ControlOutput:
    """One decision. ``meter`` holds site power samples (positive import, negative export)."""
    s = settings or ControlSettings()
    dt = s.interval_s if state.last_t is None else min(max(now - state.last_t, 0.0), 60.0)
    online = [i for i in inverters if i.online]
    ctrl = [i for i in online if i.controllable and i.rated_w > 0]
    skipped = {i.id: "offline" for i in inverters if not i.online}
    skipped.update({i.id: "not controllable" for i in online if i not in ctrl})
    uncontrolled_w = sum(max(i.power_w, 0.0) for i in online if i not in ctrl)
    offline_w = sum(max(i.power_w, 0.0) for i in inverters if not i.online)
    rated_online = sum(max(i.rated_w, 0.0) for i in online)
    rated_site = sum(max(i.rated_w, 0.0) for i in inverters)
    rated_ctrl = sum(i.rated_w for i in ctrl)
    # Keep DER history a little longer than the window, so every meter sample in the window
    # has a DER value on each side of it to interpolate between.
    der_window = s.average_s + 2.0 * max(s.interval_s, dt)
    stamps = [i.sampled_t for i in online if i.sampled_t is not None]
    der_t = min(now, sum(stamps) / len(stamps)) if stamps else now
    # add() ignores a sample no newer than the last one: an unchanged reading adds nothing.
    der = RollingMean(der_window, state.der.samples).add(der_t, sum(i.power_w for i in online))
    not_enforced = tuple(k for k in UNENFORCED_LIMITS if limits.power(k) is not None)
    key = _limits_key(limits)

    def out(
        pct: float | None, connect: bool, mode: Mode, target: float | None, budget: float,
        source: str, load: float | None, new_state: ControllerState,
    ) -> ControlOutput:  # fmt: skip
        commands = tuple(InverterCommand(i.id, pct, connect) for i in ctrl)
        return ControlOutput(
            commands, connect, mode, target, budget, source, load, not_enforced, skipped, new_state
        )

    if not limits.connect or not limits.energize:
        # Disconnect / de-energize: 0 % as well, so that output is nil even if the inverter
        # ignores the connect command, and so the next increase ramps up from zero.
        mode: Mode = "disconnected" if not limits.connect else "deenergized"
        src = limits.sources.get("connect" if not limits.connect else "energize", "")
        new = ControllerState(now, 0.0, der, key, None, mode)
        return out(0.0, limits.connect, mode, 0.0, 0.0, src, None, new)

    stale = meter_is_stale(meter, now, s.stale_s)
    candidates: list[tuple[float, str]] = []
    load_est: float | None = None
    if stale:
        fs_w, fs_src = failsafe_generation_w(limits, s.failsafe_generation_w)
        if fs_w is not None:
            # Offline inverters may still produce their last output: count it against the cap.
            candidates.append((fs_w - margin_w(fs_w, s) - offline_w, fs_src))
    else:
        load_est = estimate_load(meter, der, now, s.average_s)
        if limits.export_w is not None:
            # Offline inverters' real output is in the meter reading (it lowers the load
            # estimate), so the export budget needs no guess about it.
            aim = load_est + limits.export_w - margin_w(limits.export_w, s)
            candidates.append((aim, limits.sources.get("export_w", "")))
        if limits.generation_w is not None:
            aim = limits.generation_w - margin_w(limits.generation_w, s) - offline_w
            candidates.append((aim, limits.sources.get("generation_w", "")))

    raw, source = min(candidates, default=(math.inf, ""), key=lambda c: c[0])
    raw = max(raw, 0.0)
    if raw >= rated_online:
        raw, source = rated_online, ""  # more than the online inverters can make: no limit

    prev = state.gen_cmd_w
    hold_until = state.hold_until
    ramp = state.ramp
    if stale:
        ramp = None  # the fail-safe is never slowed
    elif state.limits_key is not None and key != state.limits_key:
        ramp = None
        if limits.ramp_tms and _utility_changed(state.limits_key, key):
            der_now = der.latest or 0.0
            start = prev if prev is not None else raw
            if raw < start:
                start = min(start, der_now)  # "from current": what the inverters make now
            ramp = Ramp(now, limits.ramp_tms / 100.0, start)

    if ramp is not None and now - ramp.t0 < ramp.duration_s:
        frac = (now - ramp.t0) / ramp.duration_s
        cmd = ramp.start_w + (raw - ramp.start_w) * frac
    elif ramp is not None:
        ramp = None
        cmd = raw  # the utility's ramp is complete: it already was the gentle approach
    else:
        ramp = None
        if prev is None or raw <= prev:
            cmd = raw
            if prev is not None and prev - cmd > s.hold_cut_w:
                hold_until = now + s.average_s + s.interval_s
        elif now < hold_until:
            cmd = prev
        else:
            step = max(
                (raw - prev) * (1.0 - math.exp(-dt / s.up_time_constant_s)),
                s.up_min_rate_w_s * dt,
            )
            if limits.set_grad_w:
                step = min(step, limits.set_grad_w / 10000.0 * rated_site * dt)
            cmd = min(raw, prev + step)

    budget = max(cmd - uncontrolled_w, 0.0)
    pct: float | None = None
    if rated_ctrl > 0 and budget < rated_ctrl * (1.0 - 1e-9):
        pct = min(max(100.0 * budget / rated_ctrl, 0.0), 100.0)
    target = None if not source and cmd >= rated_online else cmd
    mode = "failsafe" if stale else "normal"
    new = ControllerState(now, cmd, der, key, ramp, mode, hold_until)
    return out(pct, True, mode, target, budget, source, load_est, new)


def _limits_key(limits: EffectiveLimits) -> LimitsKey:
    names = ("export_w", "generation_w", "connect", "energize")
    return tuple((getattr(limits, n), limits.sources.get(n, "")) for n in names)


def _utility_changed(old: LimitsKey, new: LimitsKey) -> bool:
    """Did the utility cause this change: it now sets the value, or its own limit just ended?

    rampTms belongs to the utility's control; a config window starting is not slowed by it.
    """
    return any(
        o != n and (n[1].startswith("utility") or (not n[1] and o[1].startswith("utility")))
        for o, n in zip(old, new, strict=True)
    )


def estimate_load(meter: RollingMean, der: RollingMean, now: float, window_s: float) -> float:
    """Mean over the meter samples in the window of (site power + DER output *at that moment*).

    Pairing each meter sample with the DER output interpolated to its timestamp keeps the two
    consistent while the inverters move: averaging them independently (the meter at 2 Hz, the
    inverters at each 1 s call) mis-estimates the load by a few hundred watts just after a step,
    which a feed-forward law turns straight into export error.
    """
    inside = [(t, v) for t, v in meter.samples if now - window_s < t <= now]
    if not inside:
        inside = list(meter.samples[-1:])  # late but not stale: the fail-safe decides that
    total = sum(v + _interpolate(der.samples, t) for t, v in inside)
    return total / len(inside)


def _interpolate(samples: tuple[tuple[float, float], ...], t: float) -> float:
    """Linear between the samples around ``t``; the nearest end outside them."""
    if not samples:
        return 0.0
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return samples[-1][1]
