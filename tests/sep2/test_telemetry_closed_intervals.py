"""A closed interval never reopens, so no MirrorReadingSet mRID (made from the interval's start)
is posted twice with different values: not after a flush (the link closes an interval when its
end passes without a sample), not after the server clock offset moved back, not across a change
of interval length, and not after a restart (the outbox keeps where the closed intervals end).
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sep2.telemetry import IntervalAverager, IntervalReading, Outbox, Sample

T0 = 1_800_000_000  # a UTC boundary of every interval used here


def w(t: float, value: float = 1000.0) -> Sample:
    return Sample(t, {("site", "W"): value})


def test_a_sample_after_a_flush_does_not_reopen_the_flushed_interval() -> None:
    avg = IntervalAverager(60)
    for i in range(12):
        avg.add(w(T0 + 5 * i))
    (closed,) = avg.flush(T0 + 60)
    assert closed.start == T0
    # a sample 0.4 s earlier by the server's clock (a rounding, a small offset correction)
    assert avg.add(w(T0 + 59.6, 9999.0)) == []
    assert avg.late == 1
    avg.add(w(T0 + 61))
    assert [r.start for r in avg.flush(T0 + 120)] == [T0 + 60]


def test_a_clock_stepped_back_drops_samples_until_it_is_past_what_was_closed() -> None:
    avg = IntervalAverager(60)
    closed: list[IntervalReading] = []
    for i in range(0, 600, 5):  # ten minutes: nine intervals closed (and sent)
        closed += avg.add(w(T0 + i))
    for i in range(300, 700, 5):  # the offset corrected by -5 min
        closed += avg.add(w(T0 + i, 2000.0))
    starts = [r.start for r in closed]
    assert len(starts) == len(set(starts))
    assert avg.late == (540 - 300) // 5  # dated into [T0+300, T0+540): closed already


def test_a_new_interval_length_starts_no_interval_before_the_last_one_closed() -> None:
    short = IntervalAverager(60)
    for i in range(0, 250, 5):
        short.add(w(T0 + i))  # closes [T0, T0+180); [T0+180, T0+240) closed by T0+240
    assert short.floor == T0 + 240
    long = IntervalAverager(300, floor=short.floor)  # the link after postRate 60 -> 300
    assert long.add(w(T0 + 250)) == []  # its interval [T0, T0+300) would overlap: dropped
    assert long.late == 1
    long.add(w(T0 + 300))
    assert [r.start for r in long.flush(T0 + 600)] == [T0 + 300]


def test_the_outbox_keeps_where_the_closed_intervals_end_across_a_restart() -> None:
    box = Outbox()
    box.extend([IntervalReading("site", "W", T0, 60, 1.0, 1.0, 1.0, 12)])
    box.acknowledge(box.batch(10))  # posted and accepted: no reading left to say where it was
    restored = Outbox.from_json(box.to_json())
    assert restored.closed_until == T0 + 60
    avg = IntervalAverager(60, floor=restored.closed_until)
    assert avg.add(w(T0 + 30)) == [] and avg.late == 1
    # a file written before closedUntil existed: bounded by its pending readings
    old = {"dropped": 0, "pending": [["site", "W", T0, 60, 1.0, 1.0, 1.0, 12]]}
    assert Outbox.from_json(old).closed_until == T0 + 60


# A step: move the server-time clock by dt (negative: the offset corrected backwards) and
# take a sample; flush at the current time; or change the interval length as the link does.
Step = tuple[str, float]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("sample"), st.floats(-400, 400, allow_nan=False)),
        st.tuples(st.just("flush"), st.floats(0, 400, allow_nan=False)),
        st.tuples(st.just("length"), st.sampled_from([60, 120, 300, 600])),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps)
def test_property_no_interval_is_closed_twice_and_none_overlap(steps: list[Step]) -> None:
    avg = IntervalAverager(60)
    t = float(T0)
    closed: list[IntervalReading] = []
    for kind, x in steps:
        if kind == "sample":
            t += x
            closed += avg.add(w(t))
        elif kind == "flush":
            closed += avg.flush(t + x)
        elif int(x) != avg.interval_s:  # `Sep2Client._set_post_rate`
            avg = IntervalAverager(int(x), floor=avg.floor)
    starts = Counter(r.start for r in closed)
    assert all(n == 1 for n in starts.values()), starts
    spans = sorted((r.start, r.end) for r in closed)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(spans))
