"""Random closed-loop scenarios, and the safety rules the law must keep in every one of them.

Shared by the property test (``tests/control/test_law_properties.py``, a bounded number of
cases drawn by hypothesis) and ``benchmarks/control_property.py`` (a long seeded run). Pure and
deterministic: a scenario and its seed fix every number.

**Export** here is the plant's true site export: DER output minus household load, without meter
noise, at each control tick (every ``interval_s`` of plant time), just after the tick's commands
were delivered. The rules, checked at every tick:

0. *Battery* (when the scenario has one): no command to a battery the law cannot reach; never a
   discharge setpoint at or below the reserve SoC, never a charge setpoint at or above the
   maximum SoC; the setpoint within its rates; in the fail-safe, "charge only" or a setpoint
   that is no discharge (a battery that cannot be told "charge only" is held), never its own
   mode (its discharge would take over the load the fail-safe cap gives up).

1. *Command*: with a fresh meter, the total generation the law allows never exceeds
   load estimate + export limit in use − margin (less any reserve for unreachable inverters),
   and the limit in use is never above the reference limit below (so, during a ramp, never
   above max(old, new)); with a quiet meter, never above the fail-safe cap less what the
   unreachable inverters may produce, and that count is never below what they really make.
   Written limits are in 0..100 % and add up to no more than the budget; those of inverters
   that answer but cannot be read (``blind`` spans) add up to no more than the zero-load cap
   (the reference limit less its margin), and are never "no limit" while there is a limit.
2. *Export*: at most ``L × 1.04 + 50 W``, where L is the highest *reference* limit of the last
   15 s. The reference limit steps to each new value, or moves linearly as the utility asked
   (rampTms both ways; setGradW for a reduction), from the value in force at the change.

Excused from rule 2, because no controller could prevent them (each case is counted):

- *load fall*: export may exceed the allowance by as much as the household load (its wander
  included) is below the load any decision of the last ``3 s + 5 τ`` rested on (what the meter
  last showed it; with the meter quiet but not yet stale, an old reading): a fall is seen only
  after it happens, and the inverters then need their own lag to come down. Decisions in the
  fail-safe rest on no load and excuse nothing. Only that amount is excused;
- *battery not under command*: a battery the law cannot reach, or has left in its own mode,
  is household load to the law (the meter sees it); its charge stopping, or its own-mode
  discharge rising (it lags a load that fell), is a fall of that load like any other and is
  excused the same way, and its discharge falling is a rise, which offsets a fall of the
  household's own. A battery the law commands is never excused: its charge reductions
  (nearing its maximum SoC, a limit lifted) must find the inverters already down. Told "charge
  only", its charge is its own mode's (excused as above), its discharge is not; in the
  fail-safe a reachable battery's discharge is never excused (none may be left in its own mode
  there);
- *forced*: what the law cannot curtail (unreachable and uncontrollable inverters) already
  exports more than the allowance by itself, and for ``3 s + 5 τ`` after that ends (an
  inverter that is reachable again starts from its free-running output and needs its lag).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from dynexport.control.battery import BatterySettings
from dynexport.control.law import ControlOutput, ControlSettings, margin_w
from dynexport.control.limits import EffectiveLimits
from dynexport.control.plant import Plant, SimBattery, SimInverter, run_closed_loop

SETTLE_S = 15
"""After a limit change, export must be within the new limit's tolerance by this time."""
TOLERANCE_PCT = 4.0
TOLERANCE_W = 50.0
NOISE_SLACK_W = 30.0
"""Unreachable inverters' real output may exceed their last reading by this much: the plant's
power readings have 10 W of noise (three standard deviations)."""


@dataclass(frozen=True)
class Span:
    """[start, end) in whole seconds; ``index`` names the inverter for a dropout."""

    start: int
    end: int
    index: int = 0


@dataclass(frozen=True)
class InverterSpec:
    rated_w: float
    pv_w: float
    controllable: bool = True


@dataclass(frozen=True)
class LimitChange:
    """From ``t`` (whole seconds of plant time) the utility's export limit (None: none)."""

    t: int
    export_w: float | None
    ramp_tms: int | None = None
    set_grad_w: int | None = None
    import_w: float | None = None
    storage_target_w: float | None = None
    """The utility's storage target from ``t`` (+ discharge, − charge; None: none)."""


@dataclass(frozen=True)
class BatterySpec:
    """An AC-coupled battery in the scenario; ``outages`` are spans it cannot be reached."""

    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    soc_pct: float
    max_soc_pct: float = 100.0
    reserve_soc_pct: float = 20.0
    tau_s: float = 0.5
    outages: tuple[Span, ...] = ()
    can_charge_only: bool = True
    """False: like a model 704 battery, it cannot be told "charge only" (the law holds it)."""


@dataclass(frozen=True)
class Scenario:
    inverters: tuple[InverterSpec, ...]
    limits: tuple[LimitChange, ...]
    load_w: float = 500.0
    load_steps: tuple[tuple[int, float], ...] = ()
    """(t, new base load) in time order."""
    load_noise_w: float = 30.0
    tau_s: float = 1.5
    revert_s: float = 60.0
    limit_step_pct: float = 0.0
    dropouts: tuple[Span, ...] = ()
    """Inverter ``index`` cannot be reached during the span (it keeps producing)."""
    meter_outages: tuple[Span, ...] = ()
    blind: tuple[Span, ...] = ()
    """Inverter ``index`` answers during the span, but its output cannot be read."""
    duration_s: int = 120
    seed: int = 0
    battery: BatterySpec | None = None


@dataclass(frozen=True)
class Violation:
    t: float
    rule: str
    detail: str
    excess_w: float


@dataclass(frozen=True)
class ScenarioResult:
    ticks: int
    checked: int
    """Ticks where the export rule was checked (a finite allowance, not forced)."""
    excused_load_drop: int
    """Checked ticks where export was over the allowance by no more than an unseen load fall."""
    excused_forced: int
    worst_excess_w: float
    """The largest export − allowance over the checked ticks that needed no excuse (negative:
    room to spare)."""
    violations: tuple[Violation, ...]


def reference_limits(sc: Scenario, rated_site_w: float, extra_w: float = 0.0) -> list[float]:
    """The export limit in force at each whole second, +inf for none.

    Built from the schedule alone, independently of the law: the first limit applies at once; a
    change steps to its value, or, with rampTms, moves linearly over it from the value in force;
    with setGradW and no rampTms a reduction moves down at setGradW (hundredths of % of the
    site's rated W per second). A ramp from "no limit" starts from the most the site can export
    (its rated W, plus ``NOISE_SLACK_W`` for what a noisy meter may show); a ramp to "no limit"
    heads for the site's rated W and is +inf once complete. ``extra_w``: what else the site may
    export at most (a battery's discharge rate), added to where a ramp from "no limit" starts.
    """
    by_t = {c.t: c for c in sc.limits}
    top = rated_site_w + extra_w + NOISE_SLACK_W
    values: list[float] = []
    current = math.inf
    ramp: tuple[float, float, float, float | None] | None = None  # t0, duration, start, end
    last: float | str | None = "unset"
    for t in range(sc.duration_s + 1):
        if ramp is not None:
            t0, dur, start, end = ramp
            if t - t0 >= dur:
                current, ramp = (math.inf if end is None else end), None
            else:
                goal = max(rated_site_w, start) if end is None else end
                current = start + (goal - start) * (t - t0) / dur
        change = by_t.get(t)
        if change is not None and change.export_w != last:
            first, last = last == "unset", change.export_w
            new = math.inf if change.export_w is None else change.export_w
            start = max(top, new) if math.isinf(current) else current
            if first:
                current, ramp = new, None
            elif change.ramp_tms and new != current:
                ramp = (t, change.ramp_tms / 100.0, start, change.export_w)
                current = start
            elif change.ramp_tms is None and change.set_grad_w and new < start and rated_site_w > 0:
                rate = change.set_grad_w / 10000.0 * rated_site_w
                ramp = (t, (start - new) / rate, start, new)
                current = start
            else:
                current, ramp = new, None
        values.append(current)
    return values


def run_scenario(sc: Scenario, settings: ControlSettings | None = None) -> ScenarioResult:
    """Run the law against the plant for ``sc`` and check the rules at every tick."""
    s = settings or ControlSettings()
    plant = Plant(
        inverters=[
            SimInverter(f"inv{k}", rated_w=i.rated_w, pv_w=i.pv_w, controllable=i.controllable)
            for k, i in enumerate(sc.inverters)
        ],
        load_w=sc.load_w,
        load_noise_w=sc.load_noise_w,
        tau_s=sc.tau_s,
        revert_s=sc.revert_s,
        limit_step_pct=sc.limit_step_pct,
        seed=sc.seed,
    )
    bs: BatterySettings | None = None
    if sc.battery is not None:
        b = sc.battery
        plant.batteries.append(
            SimBattery(
                "bat",
                b.capacity_wh,
                b.max_charge_w,
                b.max_discharge_w,
                b.soc_pct,
                tau_s=b.tau_s,
                revert_s=sc.revert_s,
                can_charge_only=b.can_charge_only,
            )
        )
        bs = BatterySettings(max_soc_pct=b.max_soc_pct, reserve_soc_pct=b.reserve_soc_pct)
    rated_site = sum(i.rated_w for i in sc.inverters)
    ref = reference_limits(
        sc, rated_site, 0.0 if sc.battery is None else sc.battery.max_discharge_w
    )
    changes = sorted(sc.limits, key=lambda c: c.t)
    react_s = 3.0 + 5.0 * sc.tau_s

    def limits_at(t: float) -> EffectiveLimits:
        c = next((c for c in reversed(changes) if c.t <= t + 1e-9), None)
        if c is None:
            return EffectiveLimits()
        sources = {} if c.export_w is None else {"export_w": "utility"}
        if c.import_w is not None:
            sources["import_w"] = "utility"
        return EffectiveLimits(
            export_w=c.export_w,
            import_w=c.import_w,
            ramp_tms=c.ramp_tms,
            set_grad_w=c.set_grad_w,
            sources=sources,
            storage_target_w=c.storage_target_w,
        )

    def hook(t: float, p: Plant) -> None:
        p.load_w = sc.load_w
        for t_step, load in sc.load_steps:
            if t_step <= t + 1e-9:
                p.load_w = load
        for k, inv in enumerate(p.inverters):
            inv.reachable = not any(d.index == k and d.start <= t < d.end for d in sc.dropouts)
            inv.readable = not any(b.index == k and b.start <= t < b.end for b in sc.blind)
        p.meter_alive = not any(o.start <= t < o.end for o in sc.meter_outages)
        if sc.battery is not None:
            p.batteries[0].reachable = not any(o.start <= t < o.end for o in sc.battery.outages)

    violations: list[Violation] = []
    counts = {"ticks": 0, "checked": 0, "load_drop": 0, "forced": 0}
    worst = -math.inf
    last_forced = -math.inf
    seen_load: list[Seen] = [(sc.load_w, {})]
    prev_load: list[Seen] = [(sc.load_w, {})]
    alive = [True]
    unreachable_t: dict[str, float] = {}
    beliefs: list[tuple[float, Seen | None]] = []

    def observe(t: float, p: Plant, limits: EffectiveLimits, out: ControlOutput) -> None:
        nonlocal worst, last_forced
        counts["ticks"] += 1
        k = round(t)
        for v in _check_command(t, p, out, ref[k], s):
            violations.append(v)
        if sc.battery is not None:
            violations.extend(_check_battery(t, p, out, sc.battery))
        # What the law could not curtail: uncontrollable inverters, and inverters it could not
        # reach within the last reaction time (one back in reach starts from where it ran free).
        for i in p.inverters:
            if not i.reachable:
                unreachable_t[i.id] = t
        forced = sum(
            i.output_w
            for i in p.inverters
            if not i.controllable or t < unreachable_t.get(i.id, -math.inf) + react_s
        )
        # A battery the law does not command (unreachable, or in its own mode) discharges by
        # itself: its own mode covers the household's load, and lags it when the load falls.
        # (and, like an inverter, it needs its lag once back in reach).
        for b in p.batteries:
            if not b.reachable:
                unreachable_t[b.id] = t
        forced += sum(
            max(b.power_w, 0.0)
            for b in p.batteries
            if not (
                _commanded(b, t)
                or (b.reachable and b.charge_only_now(t))
                or (b.reachable and out.mode == "failsafe")
            )
            or t < unreachable_t.get(b.id, -math.inf) + react_s
        )
        allowance = max(ref[max(k - SETTLE_S, 0) : k + 1]) if k >= SETTLE_S else math.inf
        allowed = allowance * (1 + TOLERANCE_PCT / 100.0) + TOLERANCE_W
        if forced - p.load_now_w > allowed:
            last_forced = t
        # The load the law's decision at this tick rests on: what the meter last showed it
        # (samples are taken before a tick's events, so a reading shows the load of the tick
        # before), none in the fail-safe (it does not use the load). Export may exceed the
        # allowance by as much as the load has fallen below any such belief of the last
        # reaction time: a fall is seen only after it happens, and then the inverters lag.
        if alive[0]:
            seen_load[0] = prev_load[0]
        alive[0], prev_load[0] = p.meter_alive, _household_w(p, t)
        beliefs.append((t, seen_load[0] if out.mode == "normal" else None))
        while beliefs[0][0] < t - react_s:
            beliefs.pop(0)
        unseen_w = max(_fall_since(v, p, t) for _, v in beliefs)
        if not math.isfinite(allowance):
            return
        export = -p.site_w
        if t < last_forced + react_s:
            counts["forced"] += 1
            return
        counts["checked"] += 1
        if unseen_w > 0 and export > allowed:
            counts["load_drop"] += 1
            allowed += unseen_w
        else:
            worst = max(worst, export - allowed)
        if export > allowed:
            violations.append(
                Violation(
                    t,
                    "export",
                    f"export {export:.0f} W > allowed {allowed:.0f} W",
                    export - allowed,
                )
            )

    run_closed_loop(
        plant, limits_at, float(sc.duration_s), s, hook=hook, observe=observe, battery_settings=bs
    )
    return ScenarioResult(
        counts["ticks"],
        counts["checked"],
        counts["load_drop"],
        counts["forced"],
        worst,
        tuple(violations),
    )


Seen = tuple[float, dict[str, float]]
"""The household load, and the net charge (charge positive, discharge negative) of each battery
the law did not command (by id)."""


def _household_w(p: Plant, t: float) -> Seen:
    """The load the law cannot command: the household, and the net charge of a battery it cannot
    reach or has left in its own mode (to the law, that battery is household)."""
    return p.load_now_w, {b.id: -b.power_w for b in p.batteries if not _commanded(b, t)}


def _fall_since(seen: Seen | None, p: Plant, t: float) -> float:
    """How far that load has fallen since it was seen: the household, and the net charge of the
    batteries that were household then (a battery the law commanded then is not excused). A
    charge that stops and an own-mode discharge that rises are both a fall (a battery in its own
    mode lagging a load that fell sends its discharge out, as the inverters would); a discharge
    that falls is a rise. A battery the law now commands, or has told "charge only", counts at
    no more discharge than it had then: a discharge the law has it make is never excused."""
    if seen is None:
        return -math.inf
    load, charges = seen
    fall = load - p.load_now_w
    now = {b.id: b for b in p.batteries}
    for k, then in charges.items():
        b = now.get(k)
        net = -b.power_w if b is not None else 0.0
        if b is not None and (_commanded(b, t) or (b.reachable and b.charge_only_now(t))):
            net = max(net, min(then, 0.0))
        fall += then - net
    return fall


def _commanded(b: SimBattery, t: float) -> bool:
    return b.reachable and b.commanded(t)


def _check_battery(t: float, p: Plant, out: ControlOutput, spec: BatterySpec) -> list[Violation]:
    found: list[Violation] = []
    by_id = {b.id: b for b in p.batteries}
    for c in out.battery_commands:
        b = by_id[c.id]
        if not b.reachable:
            found.append(Violation(t, "battery", f"{c.id}: commanded while unreachable", 0.0))
        if out.mode == "failsafe" and not (
            (c.setpoint_w is None and c.charge_only)
            or (c.setpoint_w is not None and c.setpoint_w <= 0.0)
        ):
            found.append(Violation(t, "battery", f"{c.id}: fail-safe, own mode or discharge", 0))
        if c.setpoint_w is None:
            continue
        if not math.isfinite(c.setpoint_w):
            found.append(Violation(t, "battery", f"{c.id}: setpoint {c.setpoint_w}", math.inf))
            continue
        if c.setpoint_w > 1e-6 and b.last_seen_soc <= spec.reserve_soc_pct:
            found.append(
                Violation(
                    t,
                    "battery",
                    f"discharge {c.setpoint_w:.0f} W at SoC {b.last_seen_soc:.2f} % "
                    f"<= reserve {spec.reserve_soc_pct} %",
                    c.setpoint_w,
                )
            )
        if c.setpoint_w < -1e-6 and b.last_seen_soc >= spec.max_soc_pct:
            found.append(
                Violation(
                    t,
                    "battery",
                    f"charge {-c.setpoint_w:.0f} W at SoC {b.last_seen_soc:.2f} % "
                    f">= max {spec.max_soc_pct} %",
                    -c.setpoint_w,
                )
            )
        if not -b.max_charge_w - 1e-6 <= c.setpoint_w <= b.max_discharge_w + 1e-6:
            found.append(Violation(t, "battery", f"setpoint {c.setpoint_w:.0f} W out of rate", 0))
    return found


def _check_command(
    t: float, p: Plant, out: ControlOutput, ref_w: float, s: ControlSettings
) -> list[Violation]:
    found: list[Violation] = []
    cmd = out.state.gen_cmd_w
    if cmd is None or not math.isfinite(cmd):
        return [Violation(t, "command", f"no finite command: {cmd!r}", math.inf)]
    by_id = {i.id: i for i in p.inverters}
    given = blind_given = 0.0
    for c in out.commands:
        if c.limit_pct is None:
            if c.id in out.blind and math.isfinite(ref_w):
                found.append(Violation(t, "command", f"{c.id}: unread, yet no limit", math.inf))
            continue
        if not (math.isfinite(c.limit_pct) and 0.0 <= c.limit_pct <= 100.0):
            found.append(Violation(t, "command", f"{c.id}: limit {c.limit_pct}", math.inf))
            continue
        w = by_id[c.id].rated_w * c.limit_pct / 100.0
        if c.id in out.blind:
            blind_given += w
        else:
            given += w
    shared = [c for c in out.commands if c.id not in out.blind]
    if any(c.limit_pct is not None for c in shared) and given > out.budget_w + 1e-6:
        found.append(Violation(t, "command", f"{given:.1f} W given > budget", given - out.budget_w))
    # Inverters whose output cannot be read: within the zero-load cap whatever they make.
    if math.isfinite(ref_w) and blind_given > max(ref_w - margin_w(ref_w, s), 0.0) + 1e-6:
        found.append(
            Violation(t, "command", f"unread inverters given {blind_given:.1f} W", blind_given)
        )
    lim = out.export_limit_w
    if lim is not None and lim > ref_w + 1e-6:
        found.append(
            Violation(t, "command", f"limit in use {lim:.1f} > reference {ref_w:.1f}", lim - ref_w)
        )
    if out.mode == "normal" and lim is not None and out.load_estimate_w is not None:
        aim = out.load_estimate_w + lim - margin_w(lim, s) - out.offline_w
        aim -= out.battery_expected_w
        if cmd > max(aim, 0.0) + 1e-6:
            found.append(
                Violation(t, "command", f"command {cmd:.1f} > target {aim:.1f}", cmd - aim)
            )
    if out.mode == "failsafe" and math.isfinite(ref_w):
        cap = ref_w - margin_w(ref_w, s) - out.offline_w - max(out.battery_expected_w, 0.0)
        if cmd > max(cap, 0.0) + 1e-6:
            found.append(Violation(t, "command", f"fail-safe {cmd:.1f} > cap {cap:.1f}", cmd - cap))
        real = sum(i.output_w for i in p.inverters if not i.reachable)
        # (a battery in its own mode discharges only to cover the household: not counted)
        real += sum(
            max(b.power_w, 0.0)
            for b in p.batteries
            if not b.reachable and (b.commanded(t) or b.charge_only_now(t))
        )
        if out.offline_w + NOISE_SLACK_W < real:
            found.append(
                Violation(
                    t,
                    "command",
                    f"unreachable counted {out.offline_w:.0f} < real {real:.0f}",
                    real - out.offline_w,
                )
            )
    return found


def random_scenario(rng: random.Random, duration_s: int = 150, battery: bool = False) -> Scenario:
    """One scenario from the same ranges as the property test's strategy; ``battery`` adds an
    AC battery and import limits (the ranges of ``test_battery_properties``), drawn after
    everything else so the scenarios without it stay the same for a seed."""
    n = rng.randint(1, 3)
    invs = []
    for k in range(n):
        rated = rng.choice([2000.0, 3000.0, 5000.0, 6000.0, 8200.0])
        invs.append(
            InverterSpec(rated, rated * rng.uniform(0.3, 1.0), k == 0 or rng.random() < 0.85)
        )
    changes: list[LimitChange] = []
    t = 0
    while t < duration_s - 20 and len(changes) < 5:
        value = (
            None if rng.random() < 0.1 else rng.choice([0.0, 500.0, 1500.0, rng.uniform(0, 1e4)])
        )
        ramp = rng.choice([None, None, rng.randint(100, 6000)])
        grad = rng.choice([None, None, rng.randint(10, 500)])
        changes.append(LimitChange(t, value, ramp, grad))
        t += rng.randint(10, 60)
    steps = []
    for _ in range(rng.randint(0, 5)):
        steps.append((rng.randint(1, duration_s - 1), rng.uniform(0.0, 5000.0)))
    steps.sort()
    drops = []
    for _ in range(rng.randint(0, 2)):
        a = rng.randint(1, duration_s - 1)
        drops.append(Span(a, a + rng.randint(1, 90), rng.randrange(n)))
    outages = []
    for _ in range(rng.randint(0, 2)):
        a = rng.randint(1, duration_s - 1)
        outages.append(Span(a, a + rng.randint(1, 40)))
    bat: BatterySpec | None = None
    if battery:
        reserve = rng.choice([10.0, 20.0, 50.0])
        max_soc = rng.choice([80.0, 95.0, 100.0])
        bat = BatterySpec(
            capacity_wh=rng.choice([300.0, 1000.0, 10000.0]),
            max_charge_w=rng.choice([1000.0, 3000.0, 5000.0]),
            max_discharge_w=rng.choice([1000.0, 3000.0, 5000.0]),
            soc_pct=rng.uniform(reserve - 5.0, max_soc + 0.5),
            max_soc_pct=max_soc,
            reserve_soc_pct=reserve,
            tau_s=rng.choice([0.2, 0.5, 1.0]),
            outages=tuple(
                Span(a, a + rng.randint(1, 80))
                for a in (rng.randint(1, duration_s - 1) for _ in range(rng.randint(0, 2)))
            ),
        )
        changes = [
            LimitChange(c.t, c.export_w, c.ramp_tms, c.set_grad_w, rng.choice([None, 0.0, 2000.0]))
            for c in changes
        ]
        bat = replace(bat, can_charge_only=rng.random() < 0.7)
    return Scenario(
        battery=bat,
        inverters=tuple(invs),
        limits=tuple(changes),
        load_w=rng.uniform(0.0, 5000.0),
        load_steps=tuple(steps),
        load_noise_w=rng.uniform(0.0, 40.0),
        tau_s=rng.choice([0.3, 1.0, 1.5]),
        revert_s=rng.choice([20.0, 60.0]),
        limit_step_pct=rng.choice([0.0, 1.0, 0.1, 0.01]),
        dropouts=tuple(drops),
        meter_outages=tuple(outages),
        duration_s=duration_s,
        seed=rng.randrange(2**32),
    )
