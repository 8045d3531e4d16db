"""The scheduler's memory: an event reported superseded, cancelled or completed never runs again.

Each test walks a sequence of complete listings through `ScheduleSnapshot.successor`, as the link
does after every walk, and asks the snapshot (which carries the memory) what is in force.
"""

from __future__ import annotations

import json
from dataclasses import replace

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
    MEMORY_MAX,
    MEMORY_RETAIN_S,
    EventFate,
    Finish,
    ScheduleMemory,
    ScheduleSnapshot,
    Source,
    remember,
)
from tests.sep2.test_schedule import EXP, IMP, SEED, T0, ev, prog

R = ResponseStatus
DEFAULT = ControlBase(export_limit_w=1500.0)


def snap_of(*programs: ProgramControls, at: int) -> ScheduleSnapshot:
    return ScheduleSnapshot.first(programs, at, 0, SEED)


def test_superseded_event_does_not_come_back_when_the_newer_one_leaves_the_list() -> None:
    old = ev("OLD", T0, 3600, export=5000.0, created=T0 - 100)
    new = ev("NEW", T0 + 600, 600, export=0.0, created=T0)
    s = snap_of(prog("/derp/1", 0, old, new, default=DEFAULT), at=T0)
    assert s.active_at(T0 + 10, SEED).value(EXP) == 5000.0
    assert s.active_at(T0 + 700, SEED).value(EXP) == 0.0
    # The newer event leaves the list at T0 + 900: the old one was superseded (7) at T0 + 600.
    s = s.successor([prog("/derp/1", 0, old, default=DEFAULT)], T0 + 900, 0, SEED)
    for t in (T0 + 900, T0 + 1500, T0 + 3599):
        controls = s.active_at(t, SEED)
        assert controls.value(EXP) == 1500.0
        assert controls.get(EXP).source is Source.DEFAULT  # type: ignore[union-attr]
    assert "OLD" not in {
        v.mrid
        for seg in s.schedule(T0 + 900, T0 + 7200, SEED)
        for v in seg.controls.values
        if v.source is Source.EVENT
    }
    fate = s.memory.get("OLD")
    assert fate is not None and fate.finished is Finish.SUPERSEDED and fate.at == T0 + 600


def test_the_memory_survives_a_restart_through_the_stored_snapshot() -> None:
    old = ev("OLD", T0, 3600, export=5000.0, created=T0 - 100)
    new = ev("NEW", T0 + 600, 600, export=0.0, created=T0)
    s = snap_of(prog("/derp/1", 0, old, new, default=DEFAULT), at=T0)
    s = s.successor([prog("/derp/1", 0, old, default=DEFAULT)], T0 + 900, 0, SEED)
    stored = ScheduleSnapshot.from_json(s.to_json())
    assert stored == s
    assert stored.active_at(T0 + 1000, SEED).value(EXP) == 1500.0
    # ...and it carries over into the next listing after the restart.
    again = stored.successor([prog("/derp/1", 0, old, default=DEFAULT)], T0 + 1200, 0, SEED)
    assert again.active_at(T0 + 1300, SEED).value(EXP) == 1500.0


def test_version_1_snapshot_loads_with_an_empty_memory() -> None:
    s = snap_of(prog("/derp/1", 0, ev("A", T0, 60, export=1.0)), at=T0)
    data = json.loads(s.to_json())
    data["version"] = 1
    del data["memory"]
    loaded = ScheduleSnapshot.from_json(json.dumps(data))
    assert loaded.memory == ScheduleMemory() and loaded.programs == s.programs


def test_a_type_cut_by_a_better_event_stays_cut_when_that_event_leaves() -> None:
    both = ev("BOTH", T0, 3600, export=5000.0, import_=800.0, created=T0 - 100)
    exp = ev("EXP", T0 + 600, 600, export=0.0, created=T0)
    s = snap_of(prog("/derp/1", 0, both, exp, default=DEFAULT), at=T0)
    s = s.successor([prog("/derp/1", 0, both, default=DEFAULT)], T0 + 900, 0, SEED)
    controls = s.active_at(T0 + 1000, SEED)
    assert controls.value(EXP) == 1500.0  # its export limit was terminated at T0 + 600
    assert controls.value(IMP) == 800.0  # its import limit was never cut: it runs on
    assert controls.origin(IMP) == "event BOTH"


def test_cancelled_event_listed_again_as_scheduled_never_runs() -> None:
    e = ev("C", T0 + 600, 600, export=0.0)
    s = snap_of(
        prog("/derp/1", 0, replace(e, status=EventStatus.CANCELLED), default=DEFAULT), at=T0
    )
    s = s.successor([prog("/derp/1", 0, e, default=DEFAULT)], T0 + 60, 0, SEED)
    assert s.active_at(T0 + 700, SEED).value(EXP) == 1500.0
    assert s.memory.get("C") == EventFate("C", T0 + 1200, T0 + 1200, Finish.CANCELLED, T0)


def test_event_that_vanished_early_and_reappears_never_runs() -> None:
    e = ev("V", T0, 3600, export=0.0)
    s = snap_of(prog("/derp/1", 0, e, default=DEFAULT), at=T0)
    s = s.successor([prog("/derp/1", 0, default=DEFAULT)], T0 + 100, 0, SEED)
    s = s.successor([prog("/derp/1", 0, e, default=DEFAULT)], T0 + 200, 0, SEED)
    assert s.active_at(T0 + 300, SEED).value(EXP) == 1500.0
    t = update(ResponseTracker(), s.programs, T0 + 300, SEED, memory=s.memory)
    assert t.events == ()  # finished before the tracker saw it: history, not a new control


def test_completed_event_stretched_by_the_server_does_not_run_again() -> None:
    e = ev("D", T0, 600, export=0.0)
    s = snap_of(prog("/derp/1", 0, e, default=DEFAULT), at=T0)
    s = s.successor(
        [prog("/derp/1", 0, replace(e, duration=3600), default=DEFAULT)], T0 + 900, 0, SEED
    )
    assert s.active_at(T0 + 1000, SEED).value(EXP) == 1500.0


def test_memory_forgets_events_long_over_and_no_longer_listed() -> None:
    e = ev("F", T0, 60, export=0.0)
    s = snap_of(prog("/derp/1", 0, e), at=T0)
    s = s.successor([prog("/derp/1", 0)], T0 + 100, 0, SEED)
    assert s.memory.get("F") is not None
    s = s.successor([prog("/derp/1", 0)], T0 + 60 + MEMORY_RETAIN_S - 1, 0, SEED)
    assert s.memory.get("F") is not None
    s = s.successor([prog("/derp/1", 0)], T0 + 60 + MEMORY_RETAIN_S, 0, SEED)
    assert s.memory.get("F") is None


def test_memory_is_bounded_in_size_keeping_the_latest_events() -> None:
    fates = tuple(
        EventFate(f"{i:06X}", T0 + i, T0 + i, Finish.COMPLETED, T0 + i)
        for i in range(MEMORY_MAX + 10)
    )
    listed = [prog("/derp/1", 0, *(ev(f.mrid, T0, 1, export=0.0) for f in fates[:3]))]
    memory = remember(ScheduleMemory(fates), (), T0, listed, T0 + 10, SEED)
    assert len(memory) == MEMORY_MAX
    assert memory.get(f"{MEMORY_MAX + 9:06X}") is not None and memory.get("000000") is None


# --- property: what the server was told stays true ------------------------------------------

KINDS = (ControlType.EXPORT_LIMIT_W, ControlType.IMPORT_LIMIT_W, ControlType.CONNECT)
FINAL = {R.COMPLETED, R.CANCELLED, R.SUPERSEDED, R.REJECTED_NOT_APPLICABLE}


@st.composite
def pool(draw: st.DrawFn) -> list[DERControlEvent]:
    out = []
    for i in range(draw(st.integers(1, 8))):
        kinds = draw(st.sets(st.sampled_from(KINDS), min_size=0, max_size=3))
        values: dict[str, float | bool] = {}
        for kind in kinds:
            values[kind.value] = (
                draw(st.booleans())
                if kind is ControlType.CONNECT
                else float(draw(st.integers(0, 10)) * 500)
            )
        out.append(
            DERControlEvent(
                mrid=f"{i:04X}",
                creation_time=draw(st.integers(0, 4)),
                start=T0 + 60 * draw(st.integers(0, 30)),
                duration=60 * draw(st.integers(0, 20)),
                base=ControlBase(**values),  # type: ignore[arg-type]
                primacy=draw(st.integers(0, 2)),
                randomize_start=draw(st.sampled_from([0, 0, 45, -45])),
                randomize_duration=draw(st.sampled_from([0, 0, 30, -30])),
                response_required=3,
                reply_to="/rsp",
            )
        )
    return out


@st.composite
def listing(draw: st.DrawFn, events: list[DERControlEvent]) -> list[ProgramControls]:
    """A complete listing: a subset of the pool, some cancelled or marked superseded."""
    chosen = []
    for e in events:
        if draw(st.booleans()):
            status = draw(st.sampled_from([EventStatus.SCHEDULED] * 4 + list(EventStatus)))
            chosen.append(replace(e, status=status))
    programs = []
    for primacy in range(3):
        mine = [
            replace(e, primacy=primacy, program_href=f"/derp/{primacy}")
            for e in chosen
            if e.primacy == primacy
        ]
        programs.append(ProgramControls(f"/derp/{primacy}", primacy, tuple(mine)))
    return programs


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_an_event_reported_cancelled_or_superseded_is_never_in_force_afterwards(
    data: st.DataObject,
) -> None:
    """Random histories: lists change, time passes, the appliance restarts, the server accepts
    some responses. Whatever the order, once 6 or 7 was decided for an mRID it never runs again,
    and per mRID the statuses sent are a prefix of 1, [2], one final status."""
    events = data.draw(pool())
    snap = ScheduleSnapshot.first(data.draw(listing(events)), T0 - 300, 0, SEED)
    tracker = ResponseTracker()
    now = T0 - 300
    dead: set[str] = set()
    sent: dict[str, list[ResponseStatus]] = {}
    times: dict[str, list[int]] = {}
    for _ in range(data.draw(st.integers(1, 12))):
        for _ in range(data.draw(st.integers(0, 3))):  # steps between two walks
            now += data.draw(st.integers(0, 400))
            tracker = update(tracker, snap.programs, now, SEED, memory=snap.memory)
            dead |= {e.mrid for e in tracker.events if {R.CANCELLED, R.SUPERSEDED} & set(e.decided)}
            in_force = snap.active_at(now, SEED).event_mrids()
            assert not (in_force & dead), f"{in_force & dead} revived at {now - T0}"
            if data.draw(st.booleans()):
                for p in sendable(tracker):
                    sent.setdefault(p.mrid, []).append(p.status)
                    times.setdefault(p.mrid, []).append(p.created)
                    tracker = mark_sent(tracker, p.mrid, p.status)
        if data.draw(st.booleans()):  # restart: everything from disk
            snap = ScheduleSnapshot.from_json(snap.to_json())
            tracker = ResponseTracker.from_json(tracker.to_json())
        now += data.draw(st.integers(0, 400))
        snap = snap.successor(data.draw(listing(events)), now, 0, SEED)
        in_force = snap.active_at(now, SEED).event_mrids()
        assert not (in_force & dead), f"{in_force & dead} revived by a new list at {now - T0}"
        for seg in snap.schedule(now, now + 7200, SEED):
            assert not (seg.controls.event_mrids() & dead)
    for mrid, statuses in sent.items():
        assert statuses[0] is R.RECEIVED, (mrid, statuses)
        assert len(statuses) == len(set(statuses)), (mrid, statuses)
        finals = [i for i, s in enumerate(statuses) if s in FINAL]
        assert len(finals) <= 1 and (not finals or finals[0] == len(statuses) - 1), (mrid, statuses)
        if R.STARTED in statuses:
            assert statuses.index(R.STARTED) == 1, (mrid, statuses)
        assert set(statuses) <= FINAL | {R.RECEIVED, R.STARTED}
        assert times[mrid] == sorted(times[mrid]), (mrid, statuses, times[mrid])  # never backwards
    for p in tracker.pending:
        assert p.created <= now
