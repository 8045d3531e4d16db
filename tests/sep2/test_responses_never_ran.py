"""Responses of an event that never runs: received (1), then completed (3), never started (2).

Such an event is neither cancelled (6) nor superseded (7) nor rejected (252): its randomized
window simply holds no time, and it is over at its effective end. See docs/sep2-scheduling.md.
"""

from __future__ import annotations

from collections.abc import Callable

from dynexport.sep2.controls import DERControlEvent, ProgramControls, ResponseStatus
from dynexport.sep2.responses import ResponseTracker, update
from dynexport.sep2.schedule import effective_window, resolve
from tests.sep2.test_schedule import SEED, T0, ev, prog

R = ResponseStatus
RSP = "/edev/1/rsps/site_control/rsp"


def _mrid(make: Callable[[str], DERControlEvent], ok: Callable[[int, int], bool]) -> str:
    for i in range(2000):
        if ok(*effective_window(make(f"Z{i:04d}"), SEED)):
            return f"Z{i:04d}"
    raise AssertionError("no such mRID")


def _history(programs: list[ProgramControls], mrid: str, times: range) -> list[tuple[R, int]]:
    tracker = ResponseTracker()
    for now in times:
        tracker = update(tracker, programs, now, SEED)
    return [(p.status, p.created) for p in tracker.pending if p.mrid == mrid]


def test_an_event_randomized_to_no_duration_is_received_then_completed_never_started() -> None:
    def shrunk(mrid: str) -> DERControlEvent:
        return ev(mrid, T0 + 600, 60, export=0.0, randomize_duration=-3600,
                  response_required=3, reply_to=RSP)  # fmt: skip

    e = shrunk(_mrid(shrunk, lambda s, end: end == s))
    p = [prog("/derp/1", 1, e)]
    plan = resolve(p, SEED).plan(e.mrid)
    assert plan is not None and not plan.ran and not plan.superseded
    assert _history(p, e.mrid, range(T0, T0 + 900, 100)) == [
        (R.RECEIVED, T0),
        (R.COMPLETED, T0 + 600),
    ]


def test_a_worse_successor_left_no_time_by_its_better_predecessor_is_never_started() -> None:
    # The primacy-1 event is randomized to last 10+ min longer, past the whole primacy-5 event
    # that follows it: that one waits for the better event's end and never runs.
    def longer(mrid: str) -> DERControlEvent:
        return ev(mrid, T0, 600, export=0.0, randomize_duration=3600)

    better = longer(_mrid(longer, lambda s, end: end >= T0 + 1200))
    worse = ev("LATE", T0 + 600, 600, export=10_000.0, response_required=3, reply_to=RSP)
    p = [prog("/derp/dnsp", 1, better), prog("/derp/agg", 5, worse)]
    plan = resolve(p, SEED).plan("LATE")
    assert plan is not None and not plan.ran and not plan.superseded
    end = effective_window(better, SEED)[1]
    assert plan.end == end
    assert _history(p, "LATE", range(T0, end + 200, 100)) == [
        (R.RECEIVED, T0),
        (R.COMPLETED, end),
    ]
