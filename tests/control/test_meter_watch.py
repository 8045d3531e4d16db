"""A meter whose reading stops moving (a gateway serving its last values) while the site's output
moves under it is taken as frozen, and only then (``control/meter_watch.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from dynexport.control.meter_watch import (
    FROZEN_AFTER_S,
    FROZEN_DER_SPAN_W,
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
