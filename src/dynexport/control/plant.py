"""A simple simulated site for closed-loop tests and benchmarks: no I/O, no clock, seeded noise.

The model is deliberately plain but has the three things that break naive controllers: inverters
that follow a new limit with a first-order lag (not instantly), a household load that wanders,
and noisy measurements. The meter reports load - PV (positive import), like a real feed-in meter.
An inverter the controller cannot reach keeps its last limit until its revert timer runs out,
then runs free, as a SunSpec inverter with WMaxLimPct_RvrtTms does. Written limits are rounded
down to the register's step (``limit_step_pct``: 10^sf of WMaxLimPct, sf -2..0), as the SunSpec
layer does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dynexport.control.average import RollingMean
from dynexport.control.battery import BatterySettings, BatteryState, ChargePlan
from dynexport.control.law import (
    ControllerState,
    ControlOutput,
    ControlSettings,
    InverterState,
    Mode,
    control_step,
)
from dynexport.control.limits import EffectiveLimits


@dataclass
class SimInverter:
    """One simulated inverter. ``reachable`` is whether the controller can talk to it."""

    id: str
    rated_w: float
    pv_w: float
    """PV power available now (the most it could make unlimited)."""
    controllable: bool = True
    reachable: bool = True
    output_w: float = 0.0
    limit_pct: float | None = None
    connected: bool = True
    last_command_t: float = 0.0
    last_seen_w: float = 0.0
    last_seen_t: float = 0.0
    written_pct: float | None = None
    """The limit the controller last wrote (what the device link would report), which the
    inverter itself forgets at its revert time."""
    readable: bool = True
    """Whether its output can be read while it is reachable (False: its power register says
    "not implemented", so the link reports it online with no reading)."""
    limit_gain: float = 1.0
    """What it makes under a limit, as a multiple of what the limit allows: 1 follows it, 1.25
    makes a quarter more (a percentage of another rating), ``math.inf`` ignores it (while it
    reads the limit back as written)."""


@dataclass
class SimBattery:
    """An AC-coupled battery: follows its setpoint with a lag, stops at 0 and 100 % SoC, and in
    its own mode (no setpoint, or its revert timer ran out) does self-consumption: charges from
    what the site would export, discharges to cover what it would import. Power + discharging."""

    id: str
    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_pct: float
    reachable: bool = True
    tau_s: float = 0.5
    power_w: float = 0.0
    setpoint_w: float | None = None
    """What the controller last wrote (None: its own mode)."""
    charge_only: bool = False
    """With no setpoint: its own mode, but no discharge (until its revert timer runs out)."""
    can_charge_only: bool = True
    """False: like a model 704 battery, "charge only" leaves it in its own mode."""
    command_t: float = 0.0
    revert_s: float = 60.0
    last_seen_w: float = 0.0
    last_seen_t: float = 0.0
    last_seen_soc: float = 0.0
    own_deadband_w: float = 20.0
    own_mode: str = "self-consumption"
    """What it does by itself: "self-consumption", or "idle" (holding its charge, as a battery
    kept for a tariff or backup does)."""

    def commanded(self, t: float) -> bool:
        """Under the controller's setpoint now (not in its own mode)."""
        return self.setpoint_w is not None and t - self.command_t <= self.revert_s

    def charge_only_now(self, t: float) -> bool:
        """In its own mode with its discharge bound at 0 by the controller now."""
        return self.charge_only and self.setpoint_w is None and t - self.command_t <= self.revert_s


@dataclass
class Plant:
    """The site. Mutable on purpose: it is the world the controller acts on, stepped by ``step``."""

    inverters: list[SimInverter]
    load_w: float = 500.0
    load_noise_w: float = 30.0
    """Standard deviation of the household load's wander around ``load_w``."""
    meter_noise_w: float = 10.0
    power_noise_w: float = 10.0
    tau_s: float = 1.5
    """Inverter response time constant to a new limit."""
    revert_s: float = 60.0
    limit_step_pct: float = 0.0
    """Register step of WMaxLimPct (1, 0.1 or 0.01 for sf 0, -1, -2); 0: written exactly."""
    seed: int = 0
    meter_alive: bool = True
    batteries: list[SimBattery] = field(default_factory=list)
    t: float = 0.0
    _load_dev: float = 0.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        for inv in self.inverters:
            inv.output_w = self._ceiling(inv)

    def _ceiling(self, inv: SimInverter) -> float:
        if not inv.connected:
            return 0.0
        cap = min(inv.pv_w, inv.rated_w)
        if inv.limit_pct is not None and inv.controllable and math.isfinite(inv.limit_gain):
            cap = min(cap, inv.rated_w * inv.limit_pct / 100.0 * inv.limit_gain)
        return max(cap, 0.0)

    def step(self, dt: float) -> None:
        """Advance by ``dt`` seconds: load wanders (Ornstein-Uhlenbeck, 5 s), inverters lag."""
        self.t = round(self.t + dt, 9)  # no float drift: a scripted event at 80 s happens at 80 s
        theta = 1.0 / 5.0
        self._load_dev += -theta * self._load_dev * dt + self.load_noise_w * math.sqrt(
            2 * theta * dt
        ) * self._rng.gauss(0.0, 1.0)
        alpha = 1.0 - math.exp(-dt / self.tau_s)
        for inv in self.inverters:
            if inv.limit_pct is not None and self.t - inv.last_command_t > self.revert_s:
                inv.limit_pct = None  # the inverter's own revert timer
            inv.output_w += (self._ceiling(inv) - inv.output_w) * alpha
        for b in self.batteries:
            self._step_battery(b, dt)

    def _step_battery(self, b: SimBattery, dt: float) -> None:
        if b.commanded(self.t):
            assert b.setpoint_w is not None
            goal = b.setpoint_w
        elif b.own_mode == "idle":
            goal = 0.0
        else:
            # Self-consumption: hold the site at 0 W from what it would be without the battery.
            others = sum(x.power_w for x in self.batteries if x is not b)
            without = self.load_now_w - sum(i.output_w for i in self.inverters) - others
            goal = without if abs(without) > b.own_deadband_w else 0.0
            if b.charge_only_now(self.t):
                goal = min(goal, 0.0)
        goal = min(max(goal, -b.max_charge_w), b.max_discharge_w)
        if b.soc_pct >= 100.0:
            goal = max(goal, 0.0)
        if b.soc_pct <= 0.0:
            goal = min(goal, 0.0)
        b.power_w += (goal - b.power_w) * (1.0 - math.exp(-dt / b.tau_s))
        b.soc_pct -= b.power_w * dt / 3600.0 / b.capacity_wh * 100.0
        if b.soc_pct >= 100.0 and b.power_w < 0:
            b.soc_pct, b.power_w = 100.0, 0.0  # the BMS stops a full battery at once
        if b.soc_pct <= 0.0 and b.power_w > 0:
            b.soc_pct, b.power_w = 0.0, 0.0
        b.soc_pct = min(max(b.soc_pct, 0.0), 100.0)

    @property
    def load_now_w(self) -> float:
        return max(self.load_w + self._load_dev, 0.0)

    @property
    def der_w(self) -> float:
        """Everything the site makes: inverters and (AC-coupled) batteries, + discharging."""
        return sum(inv.output_w for inv in self.inverters) + self.battery_w

    @property
    def battery_w(self) -> float:
        return sum(b.power_w for b in self.batteries)

    @property
    def site_w(self) -> float:
        """True site power, positive import (what an independent test meter would see)."""
        return self.load_now_w - self.der_w

    def read_meter(self) -> float | None:
        """The site meter's reading, or None when it does not answer."""
        if not self.meter_alive:
            return None
        return self.site_w + self._rng.gauss(0.0, self.meter_noise_w)

    def read_inverters(self) -> list[InverterState]:
        """What the device link reports; unreachable inverters keep their last seen power."""
        states = []
        for inv in self.inverters:
            if inv.reachable:
                inv.last_seen_w = max(inv.output_w + self._rng.gauss(0.0, self.power_noise_w), 0.0)
                inv.last_seen_t = self.t
            states.append(
                InverterState(
                    id=inv.id,
                    online=inv.reachable,
                    controllable=inv.controllable,
                    rated_w=inv.rated_w,
                    power_w=inv.last_seen_w if inv.readable or not inv.reachable else math.nan,
                    limit_pct=inv.limit_pct if inv.reachable else inv.written_pct,
                    last_limit_pct=inv.written_pct,
                    limit_expires_t=inv.last_command_t + self.revert_s,
                    sampled_t=None if inv.reachable else inv.last_seen_t,
                )
            )
        return states

    def read_batteries(self) -> list[BatteryState]:
        """What a battery link reports; an unreachable battery keeps its last reading."""
        states = []
        for b in self.batteries:
            if b.reachable:
                b.last_seen_w = b.power_w + self._rng.gauss(0.0, self.power_noise_w)
                b.last_seen_t = self.t
                b.last_seen_soc = b.soc_pct
            states.append(
                BatteryState(
                    id=b.id,
                    online=b.reachable,
                    controllable=True,
                    capacity_wh=b.capacity_wh,
                    max_charge_w=b.max_charge_w,
                    max_discharge_w=b.max_discharge_w,
                    soc_pct=b.last_seen_soc,
                    power_w=b.last_seen_w,
                    sampled_t=None if b.reachable else b.last_seen_t,
                    setpoint_w=b.setpoint_w,
                    setpoint_expires_t=b.command_t + b.revert_s,
                    charge_only=b.charge_only and b.setpoint_w is None,
                    charge_only_possible=b.can_charge_only,
                )
            )
        return states

    def apply(self, output: ControlOutput) -> None:
        """Deliver commands to the inverters and batteries that are reachable and obey."""
        bats = {b.id: b for b in self.batteries}
        for bc in output.battery_commands:
            b = bats[bc.id]
            if b.reachable:
                b.setpoint_w = bc.setpoint_w
                b.charge_only = bc.charge_only and b.can_charge_only
                b.command_t = self.t
        by_id = {inv.id: inv for inv in self.inverters}
        for cmd in output.commands:
            inv = by_id[cmd.id]
            if inv.reachable and inv.controllable:
                inv.limit_pct = self.written(cmd.limit_pct)
                inv.written_pct = inv.limit_pct
                inv.connected = cmd.connect
                inv.last_command_t = self.t

    def written(self, pct: float | None) -> float | None:
        """The limit as the register holds it: rounded down to its step, never up."""
        if pct is None or self.limit_step_pct <= 0:
            return pct
        steps = math.floor(pct / self.limit_step_pct)
        return max(steps * self.limit_step_pct, 0.0)


def two_inverter_site(seed: int = 0, pv_w: float = 6000.0, rated_w: float = 6000.0) -> Plant:
    """The reference site of the tests and benchmarks: two 6 kW inverters, 500 W base load."""
    return Plant(
        inverters=[
            SimInverter("inv1", rated_w=rated_w, pv_w=pv_w),
            SimInverter("inv2", rated_w=rated_w, pv_w=pv_w),
        ],
        seed=seed,
    )


# --------------------------------------------------------------------------------------
# Closed loop


@dataclass(frozen=True)
class TracePoint:
    """One control tick: true export (W, positive = export), the limit, what the law did."""

    t: float
    export_w: float
    limit_w: float | None
    der_w: float
    mode: Mode
    target_w: float | None
    connect: bool


Hook = Callable[[float, Plant], None]
Planner = Callable[[float, Plant], ChargePlan | None]
Observer = Callable[[float, Plant, EffectiveLimits, ControlOutput], None]


def run_closed_loop(
    plant: Plant,
    limits_at: Callable[[float], EffectiveLimits],
    duration_s: float,
    settings: ControlSettings | None = None,
    hook: Hook | None = None,
    dt: float = 0.1,
    meter_period_s: float = 0.5,
    observe: Observer | None = None,
    battery_settings: BatterySettings | None = None,
    planner: Planner | None = None,
) -> list[TracePoint]:
    """Run the plant and the law together; the law runs every ``settings.interval_s``.

    The meter is sampled every ``meter_period_s`` into the averaging buffer; the inverters are
    read at each control tick (as the device pollers would). ``hook(t, plant)`` runs before each
    tick to script the world (PV ramps, load jumps, lost devices); ``observe(t, plant, limits,
    output)`` after each decision is delivered, to check it against the plant's true state.
    """
    s = settings or ControlSettings()
    meter = RollingMean(s.average_s)
    state = ControllerState()
    trace: list[TracePoint] = []
    steps_per_tick = max(round(s.interval_s / dt), 1)
    steps_per_sample = max(round(meter_period_s / dt), 1)
    n_steps = round(duration_s / dt)
    for k in range(n_steps + 1):
        t = plant.t
        if k % steps_per_sample == 0:
            reading = plant.read_meter()
            if reading is not None:
                meter = meter.add(t, reading)
        if k % steps_per_tick == 0:
            if hook is not None:
                hook(t, plant)
            limits = limits_at(t)
            result = control_step(
                meter,
                plant.read_inverters(),
                limits,
                state,
                t,
                s,
                plant.read_batteries(),
                battery_settings,
                None if planner is None else planner(t, plant),
            )
            state = result.state
            plant.apply(result)
            if observe is not None:
                observe(t, plant, limits, result)
            trace.append(
                TracePoint(
                    t=t,
                    export_w=-plant.site_w,
                    limit_w=limits.export_w,
                    der_w=plant.der_w,
                    mode=result.mode,
                    target_w=result.target_w,
                    connect=result.connect,
                )
            )
        plant.step(dt)
    return trace


@dataclass(frozen=True)
class StepMetrics:
    """How export answered one limit step.

    ``settling_s``: from the step until export stays within ±tolerance for the rest of the hold
    (None: it never did). ``overshoot_w``: how far export went past its final value in the
    direction of the step (ringing). ``steady_state_error_w``: mean export over the last third
    of the hold minus the limit. ``max_excess_w``: the most export went over the limit after
    settling.
    """

    limit_w: float
    t_step: float
    tolerance_w: float
    settling_s: float | None
    overshoot_w: float
    steady_state_error_w: float
    max_excess_w: float


@dataclass(frozen=True)
class SimResult:
    steps: tuple[StepMetrics, ...]
    trace: tuple[TracePoint, ...]


SAPN_STEPS_W: tuple[float, ...] = (10000.0, 7500.0, 5000.0, 1500.0, 500.0, 0.0)
"""SAPN Dynamic Exports Test Procedure 5.2.1 step sequence."""


def tolerance_w(limit_w: float, pct: float = 4.0, floor_w: float = 100.0) -> float:
    """±4 % of the limit, but never finer than the 100 W measurement accuracy (CSIP-AUS 2.3.1)."""
    return max(abs(limit_w) * pct / 100.0, floor_w)


def simulate_steps(
    steps_w: Sequence[float] = SAPN_STEPS_W,
    hold_s: float = 30.0,
    plant: Plant | None = None,
    settings: ControlSettings | None = None,
    base: EffectiveLimits | None = None,
    hook: Hook | None = None,
    lead_in_s: float = 30.0,
) -> SimResult:
    """Step the export limit through ``steps_w``, each held ``hold_s``; measure each step.

    The first limit also applies during a ``lead_in_s`` settling period before it is measured,
    so every measured step starts from steady state. ``base`` supplies the other limits.
    """
    p = plant or two_inverter_site()
    b = base or EffectiveLimits()
    start = p.t

    def limits_at(t: float) -> EffectiveLimits:
        i = min(max(int((t - start - lead_in_s) // hold_s), 0), len(steps_w) - 1)
        sources = {**b.sources, "export_w": "utility"}
        return EffectiveLimits(
            export_w=steps_w[i],
            generation_w=b.generation_w,
            import_w=b.import_w,
            load_w=b.load_w,
            connect=b.connect,
            energize=b.energize,
            ramp_tms=b.ramp_tms,
            generation_ramp_tms=b.generation_ramp_tms,
            set_grad_w=b.set_grad_w,
            sources=sources,
        )

    trace = run_closed_loop(p, limits_at, lead_in_s + hold_s * len(steps_w) - 1e-6, settings, hook)
    metrics = []
    prev_limit: float | None = None
    for i, limit in enumerate(steps_w):
        t0 = start + lead_in_s + i * hold_s
        hold = [pt for pt in trace if t0 <= pt.t < t0 + hold_s]
        metrics.append(_measure(hold, limit, t0, prev_limit))
        prev_limit = limit
    return SimResult(tuple(metrics), tuple(trace))


def _measure(
    hold: list[TracePoint], limit: float, t0: float, prev_limit: float | None
) -> StepMetrics:
    tol = tolerance_w(limit)
    last_out = None
    for idx, pt in enumerate(hold):
        if abs(pt.export_w - limit) > tol:
            last_out = idx
    if last_out is None:
        settling: float | None = 0.0
        settled = hold
    elif last_out + 1 < len(hold):
        settling = hold[last_out + 1].t - t0
        settled = hold[last_out + 1 :]
    else:
        settling, settled = None, []
    tail = hold[len(hold) * 2 // 3 :]
    final = sum(pt.export_w for pt in tail) / len(tail)
    exports = [pt.export_w for pt in hold]
    if prev_limit is not None and limit < prev_limit:
        overshoot = max(0.0, final - min(exports))
    elif prev_limit is not None and limit > prev_limit:
        overshoot = max(0.0, max(exports) - final)
    else:
        overshoot = 0.0
    excess = max((pt.export_w - limit for pt in settled), default=math.inf)
    return StepMetrics(
        limit_w=limit,
        t_step=t0,
        tolerance_w=tol,
        settling_s=settling,
        overshoot_w=overshoot,
        steady_state_error_w=final - limit,
        max_excess_w=excess,
    )
