"""Property tests: invariants of the scheduler and the response tracker over random schedules."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sep2.controls import (
    ControlBase,
    ControlType,
    DERControlEvent,
    EventStatus,
    ProgramControls,
    ResponseStatus,
)
from dynexport.sep2.responses import ResponseTracker, mark_sent, sendable, update
from dynexport.sep2.schedule import (
    LOWEST_WINS,
    OFF_WINS,
    UNVERIFIED_AHEAD_S,
    ActiveControls,
    ScheduleSnapshot,
    Source,
    active_controls,
    better,
    resolve,
    runnable,
    schedule_between,
    strictest_between,
)
from tests.sep2.test_schedule import SEED, T0, prog

KINDS = tuple(ControlType)
SWITCHES = (ControlType.CONNECT, ControlType.ENERGIZE)
HORIZON = 3600


@st.composite
def events(draw: st.DrawFn, index: int) -> DERControlEvent:
    kinds = draw(st.sets(st.sampled_from(KINDS), min_size=1))
    values: dict[str, float | bool] = {}
    for kind in kinds:
        if kind in SWITCHES:
            values[kind.value] = draw(st.booleans())
        elif kind is ControlType.STORAGE_TARGET_W:
            values[kind.value] = float(draw(st.integers(-4, 4)) * 500)
        elif kind is ControlType.MAX_LIMIT_PCT:
            values[kind.value] = float(draw(st.integers(0, 10)) * 10)
        else:
            values[kind.value] = float(draw(st.integers(0, 10)) * 500)
    return DERControlEvent(
        mrid=f"{index:04X}",
        creation_time=draw(st.integers(0, 4)),
        start=T0 + 60 * draw(st.integers(0, HORIZON // 60)),
        duration=60 * draw(st.integers(0, 20)),
        base=ControlBase(**values),  # type: ignore[arg-type]
        primacy=0,
        status=draw(
            st.sampled_from([EventStatus.SCHEDULED] * 6 + list(EventStatus)),
        ),
        randomize_start=draw(st.sampled_from([0, 0, 0, 30, -30, 120])),
        randomize_duration=draw(st.sampled_from([0, 0, 0, 30, -30])),
        response_required=3,
        reply_to="/rsp",
    )


@st.composite
def schedules(draw: st.DrawFn) -> list[ProgramControls]:
    count = draw(st.integers(0, 12))
    evs = [draw(events(i)) for i in range(count)]
    programs: list[ProgramControls] = []
    for primacy in range(3):
        mine = [e for e in evs if int(e.mrid, 16) % 3 == primacy]
        default = None
        if draw(st.booleans()):
            default = ControlBase(export_limit_w=float(primacy), connect=True)
        programs.append(prog(f"/derp/{primacy}", draw(st.integers(0, 2)), *mine, default=default))
    return programs


def _all_events(programs: list[ProgramControls]) -> list[DERControlEvent]:
    return [e for p in programs for e in p.events]


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_segments_cover_the_window_without_gaps_or_overlaps(
    programs: list[ProgramControls],
) -> None:
    start, end = T0 - 600, T0 + HORIZON + 2400
    segs = schedule_between(programs, start, end, SEED)
    assert segs[0].start == start and segs[-1].end == end
    for a, b in pairwise(segs):
        assert a.end == b.start and a.start < a.end
        assert a.controls != b.controls  # neighbours always differ


@settings(max_examples=100, deadline=None)
@given(schedules(), st.integers(-600, HORIZON + 2399))
def test_segments_agree_with_active_controls(programs: list[ProgramControls], offset: int) -> None:
    segs = schedule_between(programs, T0 - 600, T0 + HORIZON + 2400, SEED)
    t = T0 + offset
    seg = next(s for s in segs if s.start <= t < s.end)
    assert seg.controls == active_controls(programs, t, SEED)


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_runs_of_a_type_never_overlap(programs: list[ProgramControls]) -> None:
    for runs in resolve(programs, SEED).runs.values():
        for a, b in pairwise(runs):
            assert a.end <= b.start


@settings(max_examples=100, deadline=None)
@given(schedules(), st.integers(-60, HORIZON + 1500))
def test_event_in_force_is_runnable_sets_the_type_and_is_within_its_window(
    programs: list[ProgramControls], offset: int
) -> None:
    t = T0 + offset
    plans = {p.event.mrid: p for p in resolve(programs, SEED).plans}
    for value in active_controls(programs, t, SEED).values:
        if value.source is Source.EVENT:
            plan = plans[value.mrid]
            assert runnable(plan.event)
            assert plan.event.base.get(value.kind) == value.value
            assert plan.start <= t < plan.end


@settings(max_examples=100, deadline=None)
@given(schedules(), st.integers(-60, HORIZON + 1500))
def test_winner_is_never_worse_than_another_event_that_runs_at_the_same_time(
    programs: list[ProgramControls], offset: int
) -> None:
    """No candidate whose window holds t and that nothing better terminated outranks the winner."""
    t = T0 + offset
    resolution = resolve(programs, SEED)
    controls = active_controls(programs, t, SEED)
    for kind in KINDS:
        winner = resolution.event_at(kind, t)
        for plan in resolution.plans:
            in_window = plan.start <= t < plan.end and plan.event.base.get(kind) is not None
            cut = dict(plan.cut_at).get(kind)
            if in_window and (cut is None or cut > t):
                assert winner is not None
                assert winner == plan.event or better(winner, plan.event)
        if winner is None:
            v = controls.get(kind)
            assert v is None or v.source is Source.DEFAULT


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_best_ranked_event_of_a_type_runs_its_whole_window(programs: list[ProgramControls]) -> None:
    resolution = resolve(programs, SEED)
    for kind in KINDS:
        plans = [
            p for p in resolution.plans if p.event.base.get(kind) is not None and p.end > p.start
        ]
        if not plans:
            continue
        best = min(plans, key=lambda p: (p.event.primacy, -p.event.creation_time, p.event.mrid))
        assert (kind, best.start, best.end) in best.runs


@settings(max_examples=100, deadline=None)
@given(schedules(), schedules(), st.integers(-60, HORIZON + 1500))
def test_adding_worse_primacy_events_never_changes_what_better_events_do(
    programs: list[ProgramControls], extra: list[ProgramControls], offset: int
) -> None:
    t = T0 + offset
    worst = max([e.primacy for e in _all_events(programs)], default=0)
    more = [
        replace(e, mrid="X" + e.mrid, primacy=worst + 1, program_href="/derp/worse")
        for e in _all_events(extra)
    ]
    widened = [
        *programs,
        ProgramControls(href="/derp/worse", primacy=worst + 1, events=tuple(more)),
    ]
    before = active_controls(programs, t, SEED)
    after = active_controls(widened, t, SEED)
    for v in before.values:
        if v.source is Source.EVENT:
            assert after.get(v.kind) == v


@settings(max_examples=100, deadline=None)
@given(schedules(), st.lists(st.integers(0, 240), min_size=1, max_size=25), st.data())
def test_responses_are_never_duplicated_and_follow_1_2_then_one_terminal(
    programs: list[ProgramControls], steps: list[int], data: st.DataObject
) -> None:
    tracker = ResponseTracker()
    now = T0 - 120
    sent: list[tuple[str, ResponseStatus]] = []
    for step in steps:
        now += step
        tracker = update(tracker, programs, now, SEED)
        if data.draw(st.booleans()):  # the server accepts some batches only
            for p in sendable(tracker):
                sent.append((p.mrid, p.status))
                tracker = mark_sent(tracker, p.mrid, p.status)
        if data.draw(st.booleans()):  # and the appliance restarts now and then
            tracker = ResponseTracker.from_json(tracker.to_json())
    assert len(sent) == len(set(sent))
    order = {ResponseStatus.RECEIVED: 0, ResponseStatus.STARTED: 1}
    for mrid in {m for m, _ in sent}:
        statuses = [s for m, s in sent if m == mrid]
        assert statuses[0] is ResponseStatus.RECEIVED
        ranks = [order.get(s, 2) for s in statuses]
        assert ranks == sorted(ranks)
        assert sum(1 for r in ranks if r == 2) <= 1


@settings(max_examples=60, deadline=None)
@given(schedules(), st.integers(0, HORIZON))
def test_snapshot_round_trip_preserves_the_schedule(
    programs: list[ProgramControls], offset: int
) -> None:
    snap = ScheduleSnapshot(tuple(programs), fetched_at=T0, clock_offset=3)
    again = ScheduleSnapshot.from_json(snap.to_json())
    assert again == snap
    local = T0 + offset
    assert again.active_controls(local, SEED) == snap.active_controls(local, SEED)


def _obeys(strict: ActiveControls, actual: ActiveControls) -> None:
    """``strict`` obeys ``actual``: no limit higher or missing, no "disconnect" or "de-energize"
    missed."""
    for kind in LOWEST_WINS:
        value = actual.value(kind)
        if value is not None:
            held = strict.value(kind)
            assert held is not None and float(held) <= float(value), kind
    for kind in OFF_WINS:
        if actual.value(kind) is False:
            assert strict.value(kind) is False, kind


@settings(max_examples=100, deadline=None)
@given(schedules(), st.integers(-600, HORIZON), st.integers(1, HORIZON + 2400))
def test_the_strictest_controls_obey_the_schedule_at_every_time_of_the_span(
    programs: list[ProgramControls], offset: int, span: int
) -> None:
    """While the clock is not known to be right, the link obeys `strictest_between` of the
    span the true time may be in: whichever time of it is the true one, no limit in force then
    is higher, no limit is missing, and a "disconnect" or "de-energize" in force then is obeyed;
    every value is one the schedule really sets in the span (nothing made up)."""
    start = T0 + offset
    end = start + span
    strict = strictest_between(programs, start, end, SEED)
    for t in sorted(
        {start, end - 1, *(s.start for s in schedule_between(programs, start, end, SEED))}
    ):
        _obeys(strict, active_controls(programs, t, SEED))
    seen = [a for s in schedule_between(programs, start, end, SEED) for a in s.controls.values]
    assert all(v in seen for v in strict.values)


@settings(max_examples=100, deadline=None)
@given(
    schedules(),
    st.one_of(st.integers(-HORIZON, HORIZON), st.integers(-30 * 86400, -UNVERIFIED_AHEAD_S)),
    st.integers(-900, 900),
    st.integers(0, UNVERIFIED_AHEAD_S - 1),
)
def test_an_unverified_clock_obeys_the_schedule_at_every_time_the_true_one_may_be(
    programs: list[ProgramControls], clock: int, offset: int, later: int
) -> None:
    """`ScheduleSnapshot.strictest_ahead` at a clock that restarted behind (the truth is later,
    by up to a week) and may be behind the fetch itself (its saved time lost: the truth is then
    at least the fetch): the schedule at any such true time is obeyed."""
    snap = ScheduleSnapshot(tuple(programs), fetched_at=T0, clock_offset=offset)
    local = T0 + clock
    strict = snap.strictest_ahead(local, SEED)
    for true_server in {max(local + offset, T0) + later, max(local + offset, T0)}:
        _obeys(strict, active_controls(programs, true_server, SEED))
    for s in schedule_between(programs, max(local + offset, T0), T0 + HORIZON + 3600, SEED):
        if s.start - max(local + offset, T0) < UNVERIFIED_AHEAD_S:
            _obeys(strict, s.controls)
