"""A meter whose reading stops moving (a gateway serving its last values) while the site's output
moves under it is taken as frozen, and only then (``control/meter_watch.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynexport.control.meter_watch import (
    FROZEN_AFTER_S,
    FROZEN_DER_SPAN_W,
    FROZEN_ENERGY_AFTER_S,
    FROZEN_ENERGY_WH,
    REFRESH_CAP_S,
    Counters,
    MeterWatch,
    watch_meter,
)


def run(readings: Sequence[tuple[float, float, float | None]]) -> list[MeterWatch]:
    """The watch after each (t, site W, site output W) reading."""
    w, seen = MeterWatch(), []
    for t, site_w, der_w in readings:
        w = watch_meter(w, t, site_w, der_w)
        seen.append(w)
    return seen


def test_a_reading_stuck_while_the_output_climbs_is_frozen_until_it_moves_again() -> None:
    # The output climbs 100 W a second under a reading stuck at 500 W of import.
    stuck = [(float(t), 500.0, 1000.0 + 100.0 * t) for t in range(31)]
    seen = run([*stuck, (31.0, 480.0, 4100.0)])
    frozen = [t for (t, _, _), w in zip(stuck, seen, strict=False) if w.frozen]
    assert frozen and frozen[0] == FROZEN_AFTER_S  # not sooner: slow meters repeat values
    assert all(w.frozen for w in seen[int(FROZEN_AFTER_S) : 31])
    assert not seen[-1].frozen  # moving again: trusted at once


def test_a_reading_that_repeats_while_nothing_moves_is_not_frozen() -> None:
    """A steady site (or a steady simulator): the same value is what a live meter reads too."""
    seen = run([(float(t), -1000.0, 4000.0 + (t % 2) * 20.0) for t in range(600)])
    assert not any(w.frozen for w in seen)


def test_a_short_repeat_during_a_fast_change_is_not_frozen() -> None:
    """A meter that updates its registers every 10 s repeats while a ramp moves 2 kW."""
    readings = [(float(t), 100.0 * (t // 10), 300.0 * t) for t in range(60)]
    assert not any(w.frozen for w in run(readings))


def test_an_unknown_output_is_no_movement() -> None:
    readings = [(float(t), 500.0, None if t % 2 else 1000.0) for t in range(60)]
    assert not any(w.frozen for w in run(readings))


readings = st.lists(
    st.tuples(
        st.floats(0.1, 30.0),  # seconds since the reading before
        st.sampled_from([-1500.0, 0.0, 250.0]),  # few values: long repeats are drawn
        st.none() | st.floats(-5000.0, 15000.0),
    ),
    max_size=80,
)


@given(readings)
def test_frozen_only_after_the_time_and_the_movement_and_never_for_a_changed_value(
    steps: list[tuple[float, float, float | None]],
) -> None:
    t, w = 0.0, MeterWatch()
    history: list[tuple[float, float, float | None]] = []
    for dt, value, der in steps:
        t += dt
        before = w
        w = watch_meter(w, t, value, der)
        history.append((t, value, der))
        if before.value != value:
            assert not w.frozen, "a reading that changed is trusted"
            continue
        # Since when the value has been this one, and how far the output moved meanwhile.
        start = next(
            ti for k, (ti, _, _) in enumerate(history)
            if all(v == value for (_, v, _) in history[k:])
        )  # fmt: skip
        span = [d for (ti, _, d) in history if ti >= start and d is not None]
        moved = max(span) - min(span) if span else 0.0
        assert w.since == start
        assert w.frozen == (t - start >= FROZEN_AFTER_S and moved >= FROZEN_DER_SPAN_W) or (
            w.frozen and before.frozen
        )


# --- the energy counters: a reading frozen while nothing else moves -------------------------

Reading = tuple[float, float, float | None, float | None]
"""(t, site W, site output W, the counter of the reading's direction in Wh)."""


def run_with_energy(readings: Sequence[Reading], step_wh: float | None = 1.0) -> list[MeterWatch]:
    """The watch after each reading; the counter given is the export counter for an export
    reading, the import counter for an import (the other is not implemented)."""
    w, seen = MeterWatch(), []
    for t, site_w, der_w, counter in readings:
        c = Counters(counter if site_w > 0 else None, counter if site_w < 0 else None, step_wh)
        w = watch_meter(w, t, site_w, der_w, c)
        seen.append(w)
    return seen


def test_a_reading_and_its_counter_stuck_while_power_flows_are_frozen_until_they_move() -> None:
    """Nothing moves under a reading stuck at 1.5 kW of export: its counter should have moved
    30 Wh in 72 s; standing still for 120 s (FROZEN_ENERGY_AFTER_S) they say it is frozen."""
    live = [
        (float(t), -1500.0 + (t % 3), 4000.0, 1_234_000.0 + t * 1500.0 / 3600.0) for t in range(30)
    ]
    stuck = [(float(t), -1498.0, 4000.0, live[-1][3]) for t in range(30, 200)]
    seen = run_with_energy([*live, *stuck, (200.0, -1498.0, 4000.0, live[-1][3] + 1.0)])
    frozen = [t for (t, *_), w in zip(stuck, seen[30:], strict=False) if w.frozen]
    # still since t=29 (the reading's last change; the counter stopped then too)
    assert frozen and frozen[0] == 29.0 + FROZEN_ENERGY_AFTER_S
    assert all(w.why == "energy" for w in seen[30:200] if w.frozen)
    assert not seen[-1].frozen  # its counter moves again: trusted


def test_a_live_meter_whose_power_repeats_still_moves_its_counter() -> None:
    """A coarse power register at a steady site: the same value for minutes, the counter moving."""
    readings = [(float(t), -1500.0, 4000.0, 1000.0 + (t // 3)) for t in range(600)]
    assert not any(w.frozen for w in run_with_energy(readings))


def test_a_live_meter_with_a_counter_that_never_moves_still_moves_its_power() -> None:
    """Broken counters, the reading repeating for two polls at a time: its stillness is timed
    from the reading's last change, never from the counter's alone."""
    readings = [(float(t), -1500.0 + (t // 2) % 5, 4000.0, 777.0) for t in range(600)]
    assert not any(w.frozen for w in run_with_energy(readings))


def test_only_the_counter_of_the_readings_direction_is_judged() -> None:
    """An import-only meter exporting steadily: its export counter is not implemented and its
    import counter stands still, rightly. Not frozen (it was, judged on the two summed)."""
    w = MeterWatch()
    for t in range(600):
        w = watch_meter(w, float(t), -1500.0, 4000.0, Counters(52_000.0, None, 1.0))
        assert not w.frozen


def test_counters_that_are_not_implemented_or_a_reading_near_zero_are_not_judged() -> None:
    """SunSpec's "not implemented" accumulator is 0 (the link makes it None); a reading frozen at
    20 W moves 1 Wh in three minutes: too slow to tell (the documented limit)."""
    none = [(float(t), -1500.0, 4000.0, None) for t in range(600)]
    assert not any(w.frozen for w in run_with_energy(none))
    near_zero = [(float(t), 20.0, 4000.0, 5000.0) for t in range(600)]
    assert not any(w.frozen for w in run_with_energy(near_zero))


def test_a_coarse_counter_needs_three_of_its_steps() -> None:
    """A counter of 100 Wh steps (TotWh_SF 2): 300 Wh must have gone through (12 min at 1.5 kW),
    from the first reading on (it moves only every 4 minutes at that power)."""
    stuck = [(float(t), -1500.0, 4000.0, 200.0) for t in range(900)]
    seen = run_with_energy(stuck, step_wh=100.0)
    frozen = [t for (t, *_), w in zip(stuck, seen, strict=True) if w.frozen]
    assert frozen and frozen[0] == pytest.approx(300.0 / 1500.0 * 3600.0)


def test_a_counter_refreshed_every_five_minutes_is_given_twice_that() -> None:
    """Its register moves every 300 s (by 17 Wh at a 200 W night import, so it is no coarse
    step): learned, a reading then steady at 1.5 kW export is not judged before 600 s."""
    night = [
        (float(t), 200.0 + (t % 2), 0.0, 1000.0 + 200.0 * (t // 300) * 300 / 3600)
        for t in range(901)
    ]
    day = [(900.0 + k, -1500.0, 4000.0, 50_000.0) for k in range(1, 1000)]
    seen = run_with_energy([*night, *day])
    assert seen[900].refresh_s == pytest.approx(300.0)
    frozen = [t for (t, *_), w in zip(day, seen[901:], strict=True) if w.frozen]
    assert frozen and frozen[0] == pytest.approx(901.0 + 600.0)


def test_a_counter_that_moves_restarts_the_watch_even_on_the_same_reading() -> None:
    """Frozen by the output rule; the meter recovers with its coarse reading on the very value it
    froze at: its counter moving says it is live."""
    stuck = [(float(t), -1500.0, 1000.0 + 100.0 * t, 9000.0) for t in range(30)]
    seen = run_with_energy([*stuck, (30.0, -1500.0, 4000.0, 9001.0)])
    assert seen[-2].frozen and seen[-2].why == "output"
    assert not seen[-1].frozen


energy_readings = st.lists(
    st.tuples(
        st.floats(0.1, 40.0),  # seconds since the reading before
        st.sampled_from([-1500.0, 0.0, 250.0]),
        st.none() | st.floats(-5000.0, 15000.0),
        st.sampled_from([0.0, 0.0, 0.0, 1.0, 10.0]) | st.none(),  # counter increment
    ),
    max_size=80,
)


@given(energy_readings)
def test_frozen_exactly_when_the_output_rule_or_the_energy_rule_holds(
    steps: list[tuple[float, float, float | None, float | None]],
) -> None:
    """The rules recomputed from the history (the counter's learned step and refresh taken from
    the watch): the watch is frozen exactly when one holds, and a counter or reading that moved
    restarts it."""
    t, counter, w = 0.0, 5000.0, MeterWatch()
    history: list[tuple[float, float, float | None, float | None]] = []
    for dt, value, der, inc in steps:
        t += dt
        energy = None if inc is None else counter + inc
        counter = counter if energy is None else energy
        before = w
        w = watch_meter(w, t, value, der, Counters(energy, energy, 1.0))
        history.append((t, value, der, energy if value != 0 else None))
        assert 0.0 <= w.refresh_s <= REFRESH_CAP_S and w.refresh_s >= before.refresh_s
        # Since when neither the reading nor the counter (of its direction) has moved.
        k = len(history) - 1
        while (
            k > 0
            and history[k - 1][1] == value
            and not (
                history[k][3] is not None
                and history[k - 1][3] is not None
                and history[k][3] > history[k - 1][3]  # type: ignore[operator]
            )
        ):
            k -= 1
        since = history[k][0]
        assert w.since == since
        span = [d for (ti, _, d, _) in history if ti >= since and d is not None]
        output = t - since >= FROZEN_AFTER_S and span and max(span) - min(span) >= FROZEN_DER_SPAN_W
        energy_rule = False
        if value != 0 and energy is not None and w.energy_since is not None:
            still = t - max(since, w.energy_since)
            need = max(FROZEN_ENERGY_WH, 3.0 * (w.step_wh or 0.0))
            need_s = max(FROZEN_ENERGY_AFTER_S, 2.0 * w.refresh_s)
            energy_rule = still >= need_s and abs(value) * still / 3600.0 >= need
        assert w.frozen == bool(output or energy_rule), (w, output, energy_rule)
