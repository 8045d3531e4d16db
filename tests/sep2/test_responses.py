"""DERControlResponse state machine: which statuses, when, in what order, exactly once."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dynexport.sep2.controls import (
    ControlBase,
    ControlType,
    DERControlEvent,
    EventStatus,
    ProgramControls,
    ResponseStatus,
)
from dynexport.sep2.responses import (
    MAX_PENDING,
    RETAIN_S,
    PendingResponse,
    ResponseTracker,
    decided,
    mark_sent,
    required,
    sendable,
    update,
)
from dynexport.sep2.schedule import ScheduleSnapshot, effective_window
from tests.sep2.test_schedule import SEED, T0, ev, prog

R = ResponseStatus
RSP = "/edev/1/rsps/site_control/rsp"


def pending_of(tracker: ResponseTracker) -> list[tuple[str, ResponseStatus]]:
    return [(p.mrid, p.status) for p in tracker.pending]


def send_all(tracker: ResponseTracker) -> tuple[ResponseTracker, list[tuple[str, ResponseStatus]]]:
    """What a well-behaved sender would POST, in order, until nothing is left."""
    sent: list[tuple[str, ResponseStatus]] = []
    while batch := sendable(tracker):
        for p in batch:
            sent.append((p.mrid, p.status))
            tracker = mark_sent(tracker, p.mrid, p.status)
    return tracker, sent


def rq(mrid: str, start: int, duration: int, **kw: Any) -> DERControlEvent:
    """An event that asks for every response (responseRequired 03) at the harness' replyTo."""
    kw.setdefault("export", 1000.0)
    return ev(mrid, start, duration, response_required=3, reply_to=RSP, **kw)


def test_response_required_bits_follow_sep_xsd() -> None:
    assert required(0x01, R.RECEIVED) and not required(0x02, R.RECEIVED)
    for status in (R.STARTED, R.COMPLETED, R.CANCELLED, R.SUPERSEDED):
        assert required(0x02, status) and not required(0x01, status)
    assert required(0x04, R.OPTED_OUT) and not required(0x03, R.OPTED_IN)
    assert not any(required(0, s) for s in R)


def test_event_received_started_completed_in_order_as_time_passes() -> None:
    p = [prog("/derp/1", 0, rq("A", T0 + 300, 120))]
    t = update(ResponseTracker(), p, T0, SEED)
    assert pending_of(t) == [("A", R.RECEIVED)]
    assert t.pending[0] == PendingResponse("A", R.RECEIVED, RSP, T0)
    t, _ = send_all(t)
    t = update(t, p, T0 + 299, SEED)
    assert t.pending == ()
    t = update(t, p, T0 + 300, SEED)
    assert t.pending == (PendingResponse("A", R.STARTED, RSP, T0 + 300),)
    t, _ = send_all(t)
    t = update(t, p, T0 + 419, SEED)
    assert t.pending == ()
    t = update(t, p, T0 + 425, SEED)
    assert t.pending == (PendingResponse("A", R.COMPLETED, RSP, T0 + 420),)
    t, _ = send_all(t)
    t = update(t, p, T0 + 10_000, SEED)
    assert t.pending == ()
    assert decided(t)["A"] == (R.RECEIVED, R.STARTED, R.COMPLETED)


def test_several_due_at_once_are_queued_and_released_in_order() -> None:
    # ALL-18 (a-g): a control that starts now; the client must post 1 then 2 then 3.
    p = [prog("/derp/1", 0, rq("DERC1", T0 - 5, 120))]
    t = update(ResponseTracker(), p, T0 + 200, SEED)  # first seen late: all three due at once
    assert pending_of(t) == []  # ...but it was over before we saw it: ignored
    t = update(ResponseTracker(), p, T0, SEED)
    assert pending_of(t) == [("DERC1", R.RECEIVED), ("DERC1", R.STARTED)]
    assert [p.status for p in sendable(t)] == [R.RECEIVED]  # 2 waits until 1 is accepted
    assert t.pending[1].created >= t.pending[0].created
    t = update(t, p, T0 + 200, SEED)
    assert pending_of(t)[-1] == ("DERC1", R.COMPLETED)
    t, sent = send_all(t)
    assert sent == [("DERC1", R.RECEIVED), ("DERC1", R.STARTED), ("DERC1", R.COMPLETED)]


def test_unsent_response_is_retried_until_marked_sent_and_never_duplicated() -> None:
    p = [prog("/derp/1", 0, rq("A", T0 + 60, 60))]
    t = update(ResponseTracker(), p, T0, SEED)
    for later in (T0 + 1, T0 + 2, T0 + 30):
        t = update(t, p, later, SEED)
        assert pending_of(t) == [("A", R.RECEIVED)]  # still pending, not queued twice
    t = mark_sent(t, "A", R.RECEIVED)
    t = update(t, p, T0 + 31, SEED)
    assert t.pending == ()


def test_mark_sent_of_an_unknown_response_changes_nothing() -> None:
    t = update(ResponseTracker(), [prog("/derp/1", 0, rq("A", T0, 60))], T0, SEED)
    assert mark_sent(t, "B", R.RECEIVED) == t
    assert mark_sent(t, "A", R.COMPLETED) == t


def test_restart_keeps_pending_and_decided_responses() -> None:
    p = [prog("/derp/1", 0, rq("A", T0, 120))]
    t = update(ResponseTracker(), p, T0, SEED)
    t = mark_sent(t, "A", R.RECEIVED)
    stored = t.to_json()
    restored = ResponseTracker.from_json(stored)
    assert restored == t
    assert pending_of(restored) == [("A", R.STARTED)]
    restored = update(restored, p, T0 + 5, SEED)
    assert pending_of(restored) == [("A", R.STARTED)]  # the received is not sent again


def test_cancelled_event_gets_cancelled_and_nothing_after() -> None:
    # ALL-18 (h-l): DERC2 received, started, then cancelled by the server.
    e = rq("DERC2", T0 + 300, 600)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0, e)], T0 + 300, SEED)
    cancelled = [prog("/derp/1", 0, replace(e, status=EventStatus.CANCELLED))]
    t = update(t, cancelled, T0 + 360, SEED)
    t = update(t, cancelled, T0 + 2000, SEED)
    assert pending_of(t) == [("DERC2", R.RECEIVED), ("DERC2", R.STARTED), ("DERC2", R.CANCELLED)]


def test_event_cancelled_before_start_is_never_started() -> None:
    # ALL-18 (m-p): DERC3 received, then cancelled before it starts.
    e = rq("DERC3", T0 + 600, 120)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    c = [prog("/derp/1", 0, replace(e, status=EventStatus.CANCELLED_WITH_RANDOMIZATION))]
    for now in (T0 + 10, T0 + 600, T0 + 800):
        t = update(t, c, now, SEED)
    assert pending_of(t) == [("DERC3", R.RECEIVED), ("DERC3", R.CANCELLED)]


def test_event_first_seen_cancelled_is_acknowledged_then_cancelled() -> None:
    e = rq("C", T0 + 600, 120, status=EventStatus.CANCELLED)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    assert pending_of(t) == [("C", R.RECEIVED), ("C", R.CANCELLED)]


def test_vanished_event_is_reported_cancelled() -> None:
    e = rq("V", T0 + 60, 600)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0, e)], T0 + 100, SEED)
    t = update(t, [prog("/derp/1", 0)], T0 + 200, SEED)
    assert pending_of(t) == [("V", R.RECEIVED), ("V", R.STARTED), ("V", R.CANCELLED)]
    t = update(t, [prog("/derp/1", 0, e)], T0 + 300, SEED)  # back again: already finished
    assert len(t.pending) == 3


def test_event_that_started_and_vanished_after_its_end_is_completed() -> None:
    e = rq("G", T0, 60)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0)], T0 + 500, SEED)  # pruned by the server after it ended
    assert pending_of(t) == [("G", R.RECEIVED), ("G", R.STARTED), ("G", R.COMPLETED)]
    assert t.pending[-1].created == T0 + 60


def test_superseded_event_is_reported_when_the_better_one_starts() -> None:
    # ALL-18 (q-s): DERC4 (600 s) then a newer event starting a little later in the same program.
    d4 = rq("DERC4", T0 + 600, 600, created=T0)
    x = rq("X", T0 + 660, 60, created=T0 + 60, export=0.0)
    t = update(ResponseTracker(), [prog("/derp/1", 0, d4)], T0, SEED)
    both = [prog("/derp/1", 0, d4, x)]
    t = update(t, both, T0 + 60, SEED)
    t = update(t, both, T0 + 600, SEED)
    t = update(t, both, T0 + 659, SEED)
    assert ("DERC4", R.SUPERSEDED) not in pending_of(t)
    t = update(t, both, T0 + 660, SEED)
    t = update(t, both, T0 + 2000, SEED)
    assert [s for m, s in pending_of(t) if m == "DERC4"] == [R.RECEIVED, R.STARTED, R.SUPERSEDED]
    assert [s for m, s in pending_of(t) if m == "X"] == [R.RECEIVED, R.STARTED, R.COMPLETED]
    assert next(p for p in t.pending if p.status is R.SUPERSEDED).created == T0 + 660


def test_higher_primacy_event_supersedes_running_lower_primacy_event() -> None:
    # GEN-10 (c-g): DERC1 at primacy 2 running; DERC2 at primacy 1 starts now → 7 for DERC1.
    d1 = rq("DERC1", T0, 600)
    d2 = rq("DERC2", T0 + 120, 840, export=0.0)
    t = update(ResponseTracker(), [prog("/derp/6", 2, d1)], T0, SEED)
    p = [prog("/derp/6", 2, d1), prog("/derp/1", 1, d2)]
    t = update(t, p, T0 + 120, SEED)
    assert pending_of(t) == [
        ("DERC1", R.RECEIVED),
        ("DERC1", R.STARTED),
        ("DERC1", R.SUPERSEDED),
        ("DERC2", R.RECEIVED),
        ("DERC2", R.STARTED),
    ]
    assert {s for m, s in pending_of(t) if m == "DERC1"} == {R.RECEIVED, R.STARTED, R.SUPERSEDED}


def test_event_nested_in_a_better_one_is_superseded_without_starting() -> None:
    big = rq("BIG", T0, 600, created=T0 + 10)
    small = rq("SMALL", T0 + 100, 60, created=T0)
    p = [prog("/derp/1", 0, big, small)]
    t = update(ResponseTracker(), p, T0, SEED)
    t = update(t, p, T0 + 100, SEED)
    assert [s for m, s in pending_of(t) if m == "SMALL"] == [R.RECEIVED, R.SUPERSEDED]


def test_server_marked_superseded_event_gets_superseded() -> None:
    e = rq("S", T0 + 100, 100)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0, replace(e, status=EventStatus.SUPERSEDED))], T0 + 10, SEED)
    assert pending_of(t) == [("S", R.RECEIVED), ("S", R.SUPERSEDED)]


def test_partially_superseded_event_still_completes() -> None:
    both = rq("BOTH", T0, 600, import_=500.0)
    exp = rq("EXP", T0 + 100, 60, export=0.0)
    p = [prog("/derp/2", 2, both), prog("/derp/1", 1, exp)]
    t = update(ResponseTracker(), p, T0, SEED)
    t = update(t, p, T0 + 700, SEED)
    assert [s for m, s in pending_of(t) if m == "BOTH"] == [R.RECEIVED, R.STARTED, R.COMPLETED]


@pytest.mark.parametrize(
    ("response_required", "reply_to", "expected"),
    [
        (0, RSP, []),
        (1, RSP, [R.RECEIVED]),
        (2, RSP, [R.STARTED, R.COMPLETED]),
        (3, RSP, [R.RECEIVED, R.STARTED, R.COMPLETED]),
        (4, RSP, []),
        (3, None, []),
    ],
)
def test_only_responses_asked_for_are_queued(
    response_required: int, reply_to: str | None, expected: list[ResponseStatus]
) -> None:
    e = ev("A", T0, 60, export=1.0, response_required=response_required, reply_to=reply_to)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0, e)], T0 + 60, SEED)
    assert [s for _, s in pending_of(t)] == expected
    assert decided(t)["A"] == (R.RECEIVED, R.STARTED, R.COMPLETED)  # tracked all the same


def test_response_goes_to_the_events_reply_to() -> None:
    e = ev("A", T0, 60, export=1.0, response_required=1, reply_to="/rsp/elsewhere")
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    assert t.pending[0].reply_to == "/rsp/elsewhere"


def test_randomized_start_is_reported_at_the_effective_start() -> None:
    e = rq("RND", T0 + 100, 100, randomize_start=60)
    p = [prog("/derp/1", 0, e)]
    t = update(ResponseTracker(), p, T0, SEED)
    for now in range(T0 + 100, T0 + 161):
        t = update(t, p, now, SEED)
    started = next(x for x in t.pending if x.status is R.STARTED)
    assert T0 + 100 <= started.created <= T0 + 160
    assert all(x.created <= T0 + 160 for x in t.pending)


def test_finished_unlisted_events_are_forgotten_after_the_retention_time() -> None:
    e = rq("A", T0, 60)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0 + 61, SEED)
    assert t.events == ()  # seen only after its end: never tracked
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0, e)], T0 + 60, SEED)
    assert t.event("A") is not None and t.event("A").finished  # type: ignore[union-attr]
    t = update(t, [prog("/derp/1", 0, e)], T0 + 60 + RETAIN_S + 1, SEED)
    assert t.event("A") is not None  # still listed by the server: kept
    t = update(t, [prog("/derp/1", 0)], T0 + 60 + RETAIN_S - 1, SEED)
    assert t.event("A") is not None
    t = update(t, [prog("/derp/1", 0)], T0 + 60 + RETAIN_S, SEED)
    assert t.event("A") is None


def test_pending_queue_is_bounded_and_drops_whole_events_so_no_sequence_has_a_gap() -> None:
    events = [rq(f"E{i:04d}", T0 + 10, 60) for i in range(MAX_PENDING)]
    p: list[ProgramControls] = [prog("/derp/1", 0, *events)]
    t = update(ResponseTracker(), p, T0, SEED)
    assert len(t.pending) == MAX_PENDING
    t = update(t, p, T0 + 10, SEED)  # every event starts: 1000 more responses
    assert len(t.pending) <= MAX_PENDING
    by_mrid: dict[str, list[ResponseStatus]] = {}
    for mrid, status in pending_of(t):
        by_mrid.setdefault(mrid, []).append(status)
    # The oldest events lost all their responses; no event kept a 2 without its 1.
    assert "E0000" not in by_mrid and f"E{MAX_PENDING - 1:04d}" in by_mrid
    assert all(statuses[0] is R.RECEIVED and len(statuses) == 2 for statuses in by_mrid.values())
    t = update(t, p, T0 + 70, SEED)  # and a muted event stays silent when it completes
    assert ("E0000", R.COMPLETED) not in pending_of(t)
    assert decided(t)["E0000"] == (R.RECEIVED, R.STARTED, R.COMPLETED)


def test_events_with_no_controls_are_acknowledged_then_rejected_not_applicable() -> None:
    e = ev("N", T0, 60, response_required=3, reply_to=RSP)
    p = [prog("/derp/1", 0, e, default=ControlBase())]
    t = update(ResponseTracker(), p, T0 + 30, SEED)
    assert pending_of(t) == [("N", R.RECEIVED), ("N", R.REJECTED_NOT_APPLICABLE)]
    t = update(t, [prog("/derp/1", 0)], T0 + 40, SEED)  # the server drops it: no 6 after 252
    assert pending_of(t) == [("N", R.RECEIVED), ("N", R.REJECTED_NOT_APPLICABLE)]


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "{}",
        '{"version": 1, "events": {}, "pending": []}',
        '{"version": 1, "events": [{"mrid": "A"}], "pending": []}',
        '{"version": 1, "events": [], "pending": [{"mrid": "A", "status": 99, '
        '"reply_to": "/r", "created": 0}]}',
        '{"version": 1, "events": [], "pending": [{"mrid": "A", "status": 1, '
        '"reply_to": "/r", "created": "0"}]}',
    ],
)
def test_malformed_tracker_is_rejected_with_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        ResponseTracker.from_json(text)


# --- ALL-22: a randomized control removed at its scheduled end completed ----------------------


def _tail_event(mrid: str) -> DERControlEvent:
    """An event whose randomization (for SEED) moves its effective end past its nominal end."""
    for i in range(200):
        e = rq(f"{mrid}{i}", T0, 300, randomize_start=120, randomize_duration=60)
        start, end = effective_window(e, SEED)
        if end > T0 + 300 + 30 and start > T0:
            return e
    raise AssertionError("no randomized tail found")


def _removed_at(
    e: DERControlEvent, removed: int, *, seen_started: bool = True
) -> list[ResponseStatus]:
    """The responses for ``e``, received at T0 − 10, (with ``seen_started``) looked at again at
    its effective start, then found removed from its program at ``removed``."""
    p = [prog("/derp/1", 0, e)]
    t = update(ResponseTracker(), p, T0 - 10, SEED)
    if seen_started:
        start, _ = effective_window(e, SEED)
        t = update(t, p, start, SEED)
    t = update(t, [prog("/derp/1", 0)], removed, SEED)
    assert t.pending[-1].created == removed  # the last response is dated at the removal
    return [s for m, s in pending_of(t) if m == e.mrid]


def test_randomized_control_removed_at_its_nominal_end_while_its_tail_runs_is_completed() -> None:
    # The server prunes it at its scheduled end; its randomized tail is still running.
    statuses = _removed_at(_tail_event("RND"), T0 + 300)
    assert statuses == [R.RECEIVED, R.STARTED, R.COMPLETED]


def test_randomized_control_removed_after_its_nominal_end_is_completed_even_unobserved() -> None:
    # Received; the next look is after the removal.
    statuses = _removed_at(_tail_event("LATE"), T0 + 310, seen_started=False)
    assert statuses == [R.RECEIVED, R.COMPLETED]


def test_randomized_control_removed_before_its_nominal_end_is_cancelled() -> None:
    statuses = _removed_at(_tail_event("EARLY"), T0 + 299)
    assert statuses == [R.RECEIVED, R.STARTED, R.CANCELLED]


def test_an_event_dropped_at_its_end_runs_its_tail_in_the_snapshot_and_completes_at_its_end() -> (
    None
):
    """The snapshot keeps an event the server dropped at its scheduled end until its effective
    end (`running_tails`): the responses and the memory agree that it completed then."""
    e = _tail_event("MEM")
    start, end = effective_window(e, SEED)
    snap = ScheduleSnapshot.first([prog("/derp/1", 0, e)], T0 - 10, 0, SEED)
    t = update(ResponseTracker(), snap.programs, T0 - 10, SEED, memory=snap.memory)
    t = update(t, snap.programs, start, SEED, memory=snap.memory)
    snap = snap.successor([prog("/derp/1", 0)], T0 + 300, 0, SEED)
    t = update(t, snap.programs, T0 + 300, SEED, memory=snap.memory)
    assert [s for m, s in pending_of(t) if m == e.mrid] == [R.RECEIVED, R.STARTED], "its tail runs"
    assert snap.active_at(end - 1, SEED).event_mrids() == {e.mrid}
    snap = snap.successor([prog("/derp/1", 0)], end, 0, SEED)
    t = update(t, snap.programs, end, SEED, memory=snap.memory)
    assert [s for m, s in pending_of(t) if m == e.mrid] == [R.RECEIVED, R.STARTED, R.COMPLETED]
    assert snap.programs == (prog("/derp/1", 0),) and snap.memory.finished(e.mrid)


# --- events this site cannot perform ---------------------------------------------------------


@pytest.mark.parametrize(
    "controls",
    [
        {"import_": 500.0},
        {"load": 500.0},
        {"import_": 500.0, "load": 100.0},
    ],
)
def test_event_setting_only_unenforced_controls_is_rejected_not_applicable_never_started(
    controls: dict[str, float],
) -> None:
    e = ev("U", T0 + 60, 120, response_required=3, reply_to=RSP, **controls)  # type: ignore[arg-type]
    p = [prog("/derp/1", 0, e)]
    t = update(ResponseTracker(), p, T0, SEED)
    for now in (T0 + 60, T0 + 200, T0 + 400):
        t = update(t, p, now, SEED)
    t = update(t, [prog("/derp/1", 0)], T0 + 500, SEED)
    assert pending_of(t) == [("U", R.RECEIVED), ("U", R.REJECTED_NOT_APPLICABLE)]
    assert t.pending[1].created == T0


def test_event_with_only_unmodelled_controls_is_rejected_not_applicable() -> None:
    e = replace(rq("FIX", T0 + 60, 120), base=ControlBase(unsupported=("opModFixedW",)))
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0)], T0 + 100, SEED)  # the server drops it: no 6
    assert pending_of(t) == [("FIX", R.RECEIVED), ("FIX", R.REJECTED_NOT_APPLICABLE)]


def test_event_mixing_enforced_and_unmodelled_controls_is_performed() -> None:
    base = ControlBase(export_limit_w=0.0, unsupported=("opModFixedW",))
    e = replace(rq("MIX", T0, 60), base=base)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0, e)], T0 + 60, SEED)
    assert pending_of(t) == [("MIX", R.RECEIVED), ("MIX", R.STARTED), ("MIX", R.COMPLETED)]


def test_max_limit_pct_event_is_performed_like_the_other_enforced_controls() -> None:
    e = rq("PCT", T0, 60, export=None, max_pct=50.0)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED)
    t = update(t, [prog("/derp/1", 0, e)], T0 + 60, SEED)
    assert pending_of(t) == [("PCT", R.RECEIVED), ("PCT", R.STARTED), ("PCT", R.COMPLETED)]


def test_a_site_that_enforces_less_rejects_more() -> None:
    e = rq("EXP", T0 + 60, 60)
    only_gen = frozenset({ControlType.GENERATION_LIMIT_W})
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0, SEED, enforced=only_gen)
    assert pending_of(t) == [("EXP", R.RECEIVED), ("EXP", R.REJECTED_NOT_APPLICABLE)]


def test_created_times_of_one_event_never_go_backwards() -> None:
    e = rq("B", T0, 600)
    t = update(ResponseTracker(), [prog("/derp/1", 0, e)], T0 - 100, SEED)
    t = update(t, [prog("/derp/1", 0, e)], T0 + 300, SEED)  # started at T0
    # The server moves its window earlier: it now "ended" (T0 - 50) before it started (T0).
    moved = replace(e, start=T0 - 600, duration=550)
    t = update(t, [prog("/derp/1", 0, moved)], T0 + 400, SEED)
    created = [p.created for p in t.pending if p.mrid == "B"]
    assert [p.status for p in t.pending] == [R.RECEIVED, R.STARTED, R.COMPLETED]
    assert created == sorted(created)


def test_tracker_from_before_these_fields_still_loads() -> None:
    old = (
        '{"version":1,"events":[{"mrid":"A","reply_to":"/r","response_required":3,'
        '"received_at":5,"end":60,"decided":[1]}],"pending":[]}'
    )
    t = ResponseTracker.from_json(old)
    assert t.events[0].nominal_end is None and t.events[0].last_at == 5 and not t.events[0].muted
    assert ResponseTracker.from_json(t.to_json()) == t
