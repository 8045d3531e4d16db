"""The control law's safety rules over many random closed-loop scenarios (a long run of the
property test in tests/control/test_law_properties.py).

Each scenario runs the law against the simulated site (``dynexport.control.plant``) for
``--duration`` seconds of plant time: random load steps and wander, utility limit schedules with
and without rampTms and setGradW, inverters dropping out and returning, the meter going quiet,
written limits rounded down to a register step; with ``--battery``, an AC battery too (any size,
rates and SoC bounds, spans out of reach, "charge only" or model 704). The rules and the
exceptions that physics forces are in ``dynexport.control.scenario``. Prints how many scenarios
and ticks ran, how many ticks were checked or excused, the worst excess of export over its
allowance (negative: the smallest room to spare), and the first violations found with the
scenario that produced them. Asserts nothing about time; exits 1 if a rule was broken.
"""

from __future__ import annotations

import argparse
import platform
import random
import time

from dynexport.control.scenario import random_scenario, run_scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=2000, help="scenarios to run")
    parser.add_argument("--seed", type=int, default=20261201, help="random seed")
    parser.add_argument("--duration", type=int, default=150, help="plant seconds per scenario")
    parser.add_argument("--battery", action="store_true", help="an AC battery in every scenario")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}; "
          f"{args.cases} scenarios of {args.duration} s, seed {args.seed}"
          f"{', with a battery' if args.battery else ''}")  # fmt: skip
    rng = random.Random(args.seed)
    ticks = checked = load_fall = forced = 0
    worst = -float("inf")
    worst_case = None
    failures = []
    t0 = time.process_time()
    for _ in range(args.cases):
        sc = random_scenario(rng, args.duration, battery=args.battery)
        result = run_scenario(sc)
        ticks += result.ticks
        checked += result.checked
        load_fall += result.excused_load_drop
        forced += result.excused_forced
        if result.worst_excess_w > worst:
            worst, worst_case = result.worst_excess_w, sc
        if result.violations:
            failures.append((sc, result.violations))
    cpu = time.process_time() - t0
    print(f"scenarios: {args.cases}, control ticks: {ticks}, export checked at {checked} ticks")
    print(f"excused: {load_fall} (load fell unseen, by that amount only), {forced} (forced)")
    print(f"worst export over its allowance: {worst:+.1f} W (negative: room to spare)")
    print(f"scenarios breaking a rule: {len(failures)}")
    for sc, violations in failures[:3]:
        print(f"  {sc}")
        for v in violations[:3]:
            print(f"    t={v.t:.0f} s {v.rule}: {v.detail}")
    if worst_case is not None and not failures:
        print(f"closest scenario: {worst_case}")
    print(f"CPU: {cpu:.1f} s ({1000 * cpu / max(args.cases, 1):.0f} ms per scenario)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
