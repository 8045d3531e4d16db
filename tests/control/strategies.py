"""Hypothesis strategies for closed-loop scenarios (``dynexport.control.scenario``), shared by
``test_law_properties`` (PV only) and ``test_battery_properties`` (with a battery).

Both tests are derandomized: their examples follow from the order and kind of every draw. The
helpers below draw exactly what each test drew before they were shared, in the same order, so
the same 150 scenarios run; change a draw here and both tests' examples change.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from dynexport.control.scenario import BatterySpec, InverterSpec, LimitChange, Scenario, Span

DURATION_S = 120
"""Plant seconds per scenario."""

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
"""Bounded, repeatable and free of timing: a plant run takes what it takes on a slow machine."""

LIMIT_W = st.none() | st.sampled_from([0.0, 500.0, 1500.0]) | st.floats(0, 10000)
"""An export limit: none, the usual ones, or any up to 10 kW."""


def inverters(
    draw: st.DrawFn, max_count: int, ratings: Sequence[float]
) -> tuple[InverterSpec, ...]:
    """1..``max_count`` inverters rated from ``ratings``, with PV at 30..100 % of the rating;
    the first is controllable, the others may not be."""
    n = draw(st.integers(1, max_count))
    invs = []
    for k in range(n):
        rated = draw(st.sampled_from(ratings))
        pv = rated * draw(st.floats(0.3, 1.0))
        invs.append(InverterSpec(rated, pv, k == 0 or draw(st.booleans())))
    return tuple(invs)


def limit_changes(
    draw: st.DrawFn,
    import_w: st.SearchStrategy[float | None] | None = None,
    storage_w: st.SearchStrategy[float | None] | None = None,
) -> tuple[LimitChange, ...]:
    """A limit schedule: changes 8..50 s apart, the last at least 15 s before the end, each with
    or without rampTms (1..60 s) and setGradW (0.1..5 %/s); with ``import_w``, an import limit
    drawn from it too; with ``storage_w``, a storage target."""
    gaps = draw(st.lists(st.integers(8, 50), min_size=0, max_size=4))
    times = [0]
    for g in gaps:
        if times[-1] + g < DURATION_S - 15:
            times.append(times[-1] + g)
    return tuple(
        LimitChange(
            t,
            draw(LIMIT_W),
            draw(st.none() | st.integers(100, 6000)),  # rampTms 1..60 s
            draw(st.none() | st.integers(10, 500)),  # setGradW 0.1..5 %/s
            None if import_w is None else draw(import_w),
            None if storage_w is None else draw(storage_w),
        )
        for t in times
    )


def load_steps(draw: st.DrawFn, max_w: float) -> tuple[tuple[int, float], ...]:
    """Up to five load steps, each to 0..``max_w``, in time order."""
    steps = draw(
        st.lists(st.tuples(st.integers(1, DURATION_S - 1), st.floats(0, max_w)), max_size=5)
    )
    return tuple(sorted(steps))


def spans(count: int) -> st.SearchStrategy[Span]:
    """An outage of one of ``count`` devices, 1..80 s long, starting within the run."""
    return st.integers(1, DURATION_S - 1).flatmap(
        lambda a: st.builds(Span, st.just(a), st.integers(a + 1, a + 80), st.integers(0, count - 1))
    )


def scenario(
    draw: st.DrawFn,
    invs: tuple[InverterSpec, ...],
    changes: tuple[LimitChange, ...],
    steps: tuple[tuple[int, float], ...],
    *,
    max_load_w: float,
    battery: BatterySpec | None = None,
) -> Scenario:
    """The scenario around the drawn devices and schedule: a base load up to ``max_load_w``
    with noise, the inverters' lag, revert timer and register step, inverter dropouts and meter
    outages, and the plant's random seed."""
    span = spans(len(invs))
    return Scenario(
        inverters=invs,
        limits=changes,
        load_w=draw(st.floats(0, max_load_w)),
        load_steps=steps,
        load_noise_w=draw(st.floats(0, 40)),
        tau_s=draw(st.sampled_from([0.3, 1.0, 1.5])),
        revert_s=draw(st.sampled_from([20.0, 60.0])),
        limit_step_pct=draw(st.sampled_from([0.0, 1.0, 0.1, 0.01])),
        dropouts=tuple(draw(st.lists(span, max_size=2))),
        meter_outages=tuple(draw(st.lists(span, max_size=2))),
        duration_s=DURATION_S,
        seed=draw(st.integers(0, 2**32 - 1)),
        battery=battery,
    )
