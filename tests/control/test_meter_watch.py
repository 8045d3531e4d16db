"""A meter whose reading stops moving (a gateway serving its last values) while the site's output
moves under it is taken as frozen, and only then (``control/meter_watch.py``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynexport.control.meter_watch import (
    FROZEN_AFTER_S,
    FROZEN_DER_SPAN_W,
    FROZEN_ENERGY_AFTER_S,
    FROZEN_ENERGY_WH,
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


def run_with_energy(
    readings: Sequence[tuple[float, float, float | None, float | None]],
) -> list[MeterWatch]:
    """The watch after each (t, site W, site output W, energy counters Wh) reading."""
    w, seen = MeterWatch(), []
    for t, site_w, der_w, energy in readings:
        w = watch_meter(w, t, site_w, der_w, energy)
        seen.append(w)
    return seen


def test_a_reading_and_its_counters_stuck_while_power_flows_are_frozen_until_they_move() -> None:
    """Nothing moves under a reading stuck at 1.5 kW of export: its counters should have moved
    30 Wh in 72 s; standing still for 120 s (FROZEN_ENERGY_AFTER_S) they say it is frozen."""
    live = [
        (float(t), -1500.0 + (t % 3), 4000.0, 1_234_000.0 + t * 1500.0 / 3600.0) for t in range(30)
    ]
    stuck = [(float(t), -1498.0, 4000.0, live[-1][3]) for t in range(30, 200)]
    seen = run_with_energy([*live, *stuck, (200.0, -1498.0, 4000.0, live[-1][3] + 1.0)])
    frozen = [t for (t, *_), w in zip(stuck, seen[30:], strict=False) if w.frozen]
    # still since t=29 (the reading's last change; the counters stopped then too)
    assert frozen and frozen[0] == 29.0 + FROZEN_ENERGY_AFTER_S
    assert all(w.why == "energy" for w in seen[30:200] if w.frozen)
    assert not seen[-1].frozen  # its counters move again: trusted


def test_a_live_meter_whose_power_repeats_still_moves_its_counters() -> None:
    """A coarse power register at a steady site: the same value for minutes, counters moving."""
    readings = [(float(t), -1500.0, 4000.0, 1000.0 + (t // 3)) for t in range(600)]
    assert not any(w.frozen for w in run_with_energy(readings))


def test_a_live_meter_with_counters_that_never_move_still_moves_its_power() -> None:
    readings = [(float(t), -1500.0 + (t % 5), 4000.0, 777.0) for t in range(600)]
    assert not any(w.frozen for w in run_with_energy(readings))


def test_counters_that_are_not_implemented_or_a_reading_near_zero_are_not_judged() -> None:
    """SunSpec's "not implemented" accumulator is 0 (the link makes it None); a reading frozen at
    20 W moves 1 Wh in three minutes: too slow to tell (the documented limit)."""
    none = [(float(t), -1500.0, 4000.0, None) for t in range(600)]
    assert not any(w.frozen for w in run_with_energy(none))
    near_zero = [(float(t), 20.0, 4000.0, 5000.0) for t in range(600)]
    assert not any(w.frozen for w in run_with_energy(near_zero))


def test_coarse_counters_need_three_of_their_steps() -> None:
    """Counters seen stepping by 100 Wh: 300 Wh must have gone through (12 min at 1.5 kW)."""
    stepping = [(0.0, -1500.0, 4000.0, 100.0), (1.0, -1501.0, 4000.0, 200.0)]
    stuck = [(float(t), -1500.0, 4000.0, 200.0) for t in range(2, 900)]
    seen = run_with_energy([*stepping, *stuck])
    frozen = [t for (t, *_), w in zip([*stepping, *stuck], seen, strict=True) if w.frozen]
    assert frozen and frozen[0] == pytest.approx(2.0 + 300.0 / 1500.0 * 3600.0)


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
    t, counter, w = 0.0, 5000.0, MeterWatch()
    history: list[tuple[float, float, float | None, float | None]] = []
    for dt, value, der, inc in steps:
        t += dt
        energy = None if inc is None else counter + inc
        counter = counter if energy is None else energy
        w = watch_meter(w, t, value, der, energy)
        history.append((t, value, der, energy))
        # The runs of the current reading and of the current counters, read off the history.
        k = len(history) - 1
        while k > 0 and history[k - 1][1] == value:
            k -= 1
        since = history[k][0]
        span = [d for (ti, _, d, _) in history if ti >= since and d is not None]
        output = t - since >= FROZEN_AFTER_S and span and max(span) - min(span) >= FROZEN_DER_SPAN_W
        energy_rule = False
        if energy is not None:
            j = len(history) - 1
            while j > 0 and history[j - 1][3] == energy:
                j -= 1
            steps_seen = [
                b[3] - a[3]
                for a, b in itertools.pairwise(history)
                if a[3] is not None and b[3] is not None and b[3] > a[3]
            ]
            still = t - max(since, history[j][0])
            need = max(FROZEN_ENERGY_WH, 3.0 * min(steps_seen, default=0.0))
            energy_rule = still >= FROZEN_ENERGY_AFTER_S and abs(value) * still / 3600.0 >= need
        assert w.frozen == bool(output or energy_rule), (w, output, energy_rule)
