"""What the utility link remembers per finished event is small, shared and bounded.

The schedule memory (`EventFate`) and the response tracker (`TrackedEvent`) keep every event for
24 h after its end, so their per-event size is the service's memory growth over a day (issue #15).
These tests hold the structure that keeps it small (no per-instance dict, no reference to a
parsed event or anything mutable, one shared replyTo string and status tuple, the same objects
again when a walk changes nothing) and the bound; the bytes are measured by
``tests/sep2/memory_cost.py`` (tracemalloc), not asserted.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sep2 import responses
from dynexport.sep2.controls import ControlType, ResponseStatus
from dynexport.sep2.responses import RETAIN_S, ResponseTracker, TrackedEvent
from dynexport.sep2.schedule import (
    MEMORY_RETAIN_S,
    EventFate,
    Finish,
    ScheduleMemory,
    ScheduleSnapshot,
    remember,
)
from tests.sep2.memory_cost import SEED, T0, _event, drive

ATOMS = (str, int, bool, type(None), ResponseStatus, Finish, ControlType)


def _atoms_only(value: object) -> bool:
    """Only strings, numbers, enums and tuples of them: nothing parsed, nothing mutable."""
    if isinstance(value, tuple):
        return all(_atoms_only(v) for v in value)
    return isinstance(value, ATOMS)


def test_remembered_events_have_no_instance_dict_and_hold_only_plain_values() -> None:
    snapshot, tracker = drive(30)
    assert len(snapshot.memory) == 30 and len(tracker.events) == 30
    for entry in (*snapshot.memory.fates, *tracker.events, *tracker.pending):
        assert not hasattr(entry, "__dict__"), type(entry)
        slots: tuple[str, ...] = type(entry).__slots__  # type: ignore[attr-defined]
        assert all(_atoms_only(getattr(entry, name)) for name in slots), entry


def test_events_share_one_reply_to_string_and_one_tuple_per_status_history() -> None:
    _, tracker = drive(30)
    finished = [e for e in tracker.events if e.finished]
    assert len(finished) >= 20
    assert len({id(e.reply_to) for e in finished}) == 1  # parsed separately, stored once
    assert len({id(e.decided) for e in finished}) == len({e.decided for e in finished})


def test_a_stored_tracker_loads_with_shared_strings_too() -> None:
    _, tracker = drive(10)
    loaded = ResponseTracker.from_json(tracker.to_json())
    assert loaded == tracker
    assert len({id(e.reply_to) for e in loaded.events}) == 1


def test_a_walk_that_changes_nothing_keeps_the_same_memory_and_tracker() -> None:
    snapshot, tracker = drive(20)
    now = T0 + 20 * 60 + 200
    again = snapshot.successor(snapshot.programs, now, 0, SEED)
    assert again.memory is snapshot.memory  # no new dict, tuple or entries per walk
    same = responses.update(tracker, again.programs, now, SEED, memory=again.memory)
    assert same is tracker  # nothing to save either


def test_the_memory_forgets_an_event_a_day_after_its_end() -> None:
    snapshot, tracker = drive(5)
    last_end = max(max(f.end, f.nominal_end) for f in snapshot.memory.fates)
    later = last_end + max(MEMORY_RETAIN_S, RETAIN_S) + 1
    gone = snapshot.successor((), later, 0, SEED)
    assert len(gone.memory) == 0
    assert responses.update(tracker, (), later, SEED, memory=gone.memory).events == ()


def test_a_tracker_file_from_before_still_loads() -> None:
    """Version 1 (keyed objects) is read; what is written now is version 2 (arrays)."""
    old = {
        "version": 1,
        "events": [
            {
                "mrid": "AB",
                "reply_to": "/rsp",
                "response_required": 3,
                "received_at": 10,
                "end": 20,
                "decided": [1, 2],
                "nominal_end": 20,
                "last_at": 12,
                "muted": False,
            }
        ],
        "pending": [{"mrid": "AB", "status": 2, "reply_to": "/rsp", "created": 12}],
    }
    tracker = ResponseTracker.from_json(json.dumps(old))
    assert tracker.events == (
        TrackedEvent(
            "AB", "/rsp", 3, 10, 20, (ResponseStatus.RECEIVED, ResponseStatus.STARTED), 20, 12
        ),
    )
    assert json.loads(tracker.to_json())["version"] == 2
    assert ResponseTracker.from_json(tracker.to_json()) == tracker


@settings(max_examples=50, deadline=None)
@given(
    fates=st.lists(
        st.builds(
            EventFate,
            mrid=st.text("0123456789ABCDEF", min_size=1, max_size=32),
            end=st.integers(0, 2**40),
            nominal_end=st.integers(0, 2**40),
            finished=st.sampled_from([*Finish, None]),
            at=st.integers(0, 2**40),
            stops=st.lists(
                st.tuples(st.sampled_from(list(ControlType)), st.integers(0, 2**40)), max_size=3
            ).map(tuple),
        ).map(
            lambda f: (
                f
                if f.finished is not None
                else EventFate(f.mrid, f.end, f.nominal_end, stops=f.stops)
            )
        ),
        max_size=20,
        unique_by=lambda f: f.mrid,
    )
)
def test_the_compact_schedule_file_keeps_every_remembered_event_exactly(
    fates: list[EventFate],
) -> None:
    memory = ScheduleMemory(tuple(sorted(fates, key=lambda f: f.mrid)))
    snapshot = ScheduleSnapshot((), int(T0), 0, memory=memory)
    assert ScheduleSnapshot.from_json(snapshot.to_json()).memory == memory


def test_remember_merges_without_replacing_an_unchanged_entry() -> None:
    event = _event(0)
    fate = EventFate(event.mrid, event.end, event.end, Finish.COMPLETED, event.end)
    memory = ScheduleMemory((fate,))
    again = remember(memory, (), int(T0), (), event.end + 10, SEED)
    assert again is memory and again.fates[0] is fate
