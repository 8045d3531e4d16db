"""A mixed site for closed-loop tests of the pure law: plain PV inverters beside hybrid
inverters (a GEN24-style DC battery behind the hybrid's AC output), no I/O, no clock.

``control/plant.py`` models AC-coupled batteries only; this is the hybrid's physics, as the
SunSpec simulator (``sim/sunspec_device.Hybrid``) has it: the hybrid's limit caps its AC output
(PV + battery), so its PV may rise to the limit plus what its battery takes; its battery follows
its setpoint with a lag, stops at 0 and 100 % SoC, and without a setpoint (its own mode, or
offline and reverted) it holds its charge ("idle") or does self-consumption.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from dynexport.control.average import RollingMean
from dynexport.control.battery import BatterySettings, BatteryState, ChargePlan
from dynexport.control.law import (
    ControllerState,
    ControlOutput,
    ControlSettings,
    InverterState,
    control_step,
)
from dynexport.control.limits import EffectiveLimits


def _lag(value: float, target: float, dt: float, tau: float) -> float:
    return target + (value - target) * math.exp(-dt / tau)


@dataclass
class Plain:
    """A PV inverter: output follows min(PV, rating, limit) with a first-order lag."""

    id: str
    rated_w: float
    pv_w: float
    output_w: float = 0.0
    limit_pct: float | None = None
    tau_s: float = 0.3

    def ceiling_w(self) -> float:
        cap = self.rated_w if self.limit_pct is None else self.rated_w * self.limit_pct / 100.0
        return min(self.pv_w, cap)

    def step(self, dt: float) -> None:
        self.output_w = _lag(self.output_w, self.ceiling_w(), dt, self.tau_s)


@dataclass
class Hybrid:
    """A hybrid inverter and its battery. ``battery_w`` + discharging; ``ac_w`` = PV + battery.
    Its limit caps the AC output, not the PV that charges its battery."""

    id: str
    rated_w: float
    pv_avail_w: float
    capacity_wh: float = 10000.0
    rate_w: float = 5000.0
    soc_pct: float = 50.0
    own_mode: str = "idle"
    battery_online: bool = True
    pv_w: float = 0.0
    battery_w: float = 0.0
    limit_pct: float | None = None
    setpoint_w: float | None = None
    tau_s: float = 0.3
    own_w: float = 0.0
    """What self-consumption would charge (−) or discharge (+), set by the site each step."""

    @property
    def ac_w(self) -> float:
        return self.pv_w + self.battery_w

    def step(self, dt: float) -> None:
        goal = self.setpoint_w
        if goal is None or not self.battery_online:
            goal = self.own_w if self.own_mode == "self-consumption" else 0.0
        goal = min(max(goal, -self.rate_w), self.rate_w)
        if self.soc_pct >= 100.0:
            goal = max(goal, 0.0)
        if self.soc_pct <= 0.0:
            goal = min(goal, 0.0)
        self.battery_w = _lag(self.battery_w, goal, dt, self.tau_s)
        self.soc_pct -= self.battery_w * dt / 3600.0 / self.capacity_wh * 100.0
        self.soc_pct = min(max(self.soc_pct, 0.0), 100.0)
        if (self.soc_pct >= 100.0 and self.battery_w < 0) or (
            self.soc_pct <= 0.0 and self.battery_w > 0
        ):
            self.battery_w = 0.0  # the BMS stops it at once
        cap = self.rated_w if self.limit_pct is None else self.rated_w * self.limit_pct / 100.0
        pv_goal = max(0.0, min(self.pv_avail_w, cap - self.battery_w))
        self.pv_w = _lag(self.pv_w, pv_goal, dt, self.tau_s)


@dataclass
class MixedSite:
    plains: list[Plain]
    hybrids: list[Hybrid]
    load_w: float
    t: float = 0.0
    step_pct: float = 0.01
    """Register step of the written limits (rounded down, as the SunSpec layer does)."""
    capacity_read: bool = True
    """False: the hybrids' battery capacity cannot be read (a GEN24 without model 713): 0."""
    soc_step_pct: float = 0.0
    """Step of the SoC as read (0.1: model 124's ChaState with its scale factor −1, as the
    simulated GEN24 has it); 0: read exactly."""
    history: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ac_w(self) -> float:
        return sum(p.output_w for p in self.plains) + sum(h.ac_w for h in self.hybrids)

    @property
    def export_w(self) -> float:
        return self.ac_w - self.load_w

    @property
    def pv_w(self) -> float:
        return sum(p.output_w for p in self.plains) + sum(h.pv_w for h in self.hybrids)

    def curtailed_w(self) -> float:
        """PV there is but not made (settled values)."""
        plain = sum(max(p.pv_w - p.output_w, 0.0) for p in self.plains)
        return plain + sum(max(h.pv_avail_w - h.pv_w, 0.0) for h in self.hybrids)

    def step(self, dt: float) -> None:
        for h in self.hybrids:
            without = self.load_w - self.ac_w + h.battery_w
            h.own_w = without
        for p in self.plains:
            p.step(dt)
        for h in self.hybrids:
            h.step(dt)
        self.t += dt

    def inverter_states(self) -> list[InverterState]:
        return [
            InverterState(p.id, True, True, p.rated_w, p.output_w, p.limit_pct, self.t)
            for p in self.plains
        ] + [
            InverterState(h.id, True, True, h.rated_w, h.ac_w, h.limit_pct, self.t)
            for h in self.hybrids
        ]

    def battery_states(self) -> list[BatteryState]:
        return [
            BatteryState(
                f"{h.id} battery",
                h.battery_online,
                True,
                h.capacity_wh if self.capacity_read else 0.0,
                h.rate_w,
                h.rate_w,
                round(h.soc_pct / self.soc_step_pct) * self.soc_step_pct
                if self.soc_step_pct > 0
                else h.soc_pct,
                h.battery_w,
                ac_coupled=False,
                sampled_t=self.t,
                setpoint_w=h.setpoint_w,
                setpoint_expires_t=None if h.setpoint_w is None else self.t + 30.0,
                inverter_id=h.id,
            )
            for h in self.hybrids
        ]

    def apply(self, out: ControlOutput) -> None:
        by_id: dict[str, Plain | Hybrid] = {p.id: p for p in self.plains}
        by_id.update({h.id: h for h in self.hybrids})
        for cmd in out.commands:
            dev = by_id[cmd.id]
            pct = cmd.limit_pct
            dev.limit_pct = None if pct is None else math.floor(pct / self.step_pct) * self.step_pct
        for bc in out.battery_commands:
            for h in self.hybrids:
                if f"{h.id} battery" == bc.id and h.battery_online:
                    h.setpoint_w = bc.setpoint_w


Check = Callable[[MixedSite, ControlOutput], None]


def run(
    site: MixedSite,
    limits: EffectiveLimits | Callable[[float], EffectiveLimits],
    duration_s: float,
    *,
    hook: Callable[[MixedSite], None] | None = None,
    check: Check | None = None,
    plan: ChargePlan | None = None,
    battery_settings: BatterySettings | None = None,
    dt: float = 0.1,
    late: Callable[[int], bool] | None = None,
    every_step: bool = False,
) -> list[tuple[float, float]]:
    """Runs the law every 1 s with the meter sampled every 0.5 s (``limits``: fixed, or a
    function of the site's time); returns (t, export W) at every control tick. ``hook``
    scripts the world before each tick, ``check`` runs after each decision.

    ``late(n)`` True: the call due at the n-th second does not come (a busy machine), so the
    next one sees a longer time since the last. ``every_step``: (t, export W) after every plant
    step of ``dt`` instead, so that what happens between two ticks (the moment after a step,
    while the inverters lag) is judged too."""
    s = ControlSettings()
    meter = RollingMean(s.average_s)
    state = ControllerState()
    trace: list[tuple[float, float]] = []
    for k in range(round(duration_s / dt) + 1):
        if k % 5 == 0:
            meter = meter.add(site.t, site.load_w - site.ac_w)
        if k % 10 == 0 and not (late is not None and late(k // 10)):
            if hook is not None:
                hook(site)
            out = control_step(
                meter,
                site.inverter_states(),
                limits(site.t) if callable(limits) else limits,
                state,
                site.t,
                s,
                site.battery_states(),
                battery_settings,
                plan,
            )
            state = out.state
            site.apply(out)
            if check is not None:
                check(site, out)
            if not every_step:
                trace.append((site.t, site.export_w))
        site.step(dt)
        if every_step:
            trace.append((site.t, site.export_w))
    return trace
