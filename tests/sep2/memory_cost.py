"""Per-event memory cost of the utility link's 24-hour memory.

Run: ``.venv/bin/python tests/sep2/memory_cost.py``.

Not a test: a measuring helper for docs/decisions.md and benchmarks/README.md. It drives the real
pure code (`ScheduleSnapshot.successor`, `responses.update`) at the simulator's rate, one new
event a minute, each event parsed afresh (new strings, as the XML parser makes them), and reports
with tracemalloc what each retained event costs once its programs are gone, and the traced peak
of serializing the files after a day's worth of events.
"""

from __future__ import annotations

import gc
import secrets
import tracemalloc

from dynexport.sep2 import responses
from dynexport.sep2.controls import ControlBase, DERControlEvent, ProgramControls
from dynexport.sep2.responses import ResponseTracker
from dynexport.sep2.schedule import ScheduleSnapshot

T0 = 1_800_000_000
SEED = "0" * 40


def _event(i: int) -> DERControlEvent:
    return DERControlEvent(
        mrid=secrets.token_hex(16).upper(),
        creation_time=T0 + i * 60 - 30,
        start=T0 + i * 60,
        duration=60,
        base=ControlBase(export_limit_w=float(1000 + i % 7)),
        primacy=1,
        program_href="".join(["/derp/", "1"]),
        href=f"/derp/1/derc/{i}",
        response_required=3,
        reply_to="".join(["/rsp", "/1"]),
    )


def drive(minutes: int) -> tuple[ScheduleSnapshot, ResponseTracker]:
    """``minutes`` walks, one a minute, each listing the events of the last two minutes."""
    snapshot = ScheduleSnapshot.first((), T0 - 60, 0, SEED)
    tracker = ResponseTracker()
    events: list[DERControlEvent] = []
    for i in range(minutes):
        events = [*events[-1:], _event(i)]
        now = T0 + i * 60 + 1
        programs = (ProgramControls(href="/derp/1", primacy=1, events=tuple(events)),)
        snapshot = snapshot.successor(programs, now, 0, SEED)
        tracker = responses.update(tracker, programs, now, SEED, memory=snapshot.memory)
        for p in responses.sendable(tracker):
            tracker = responses.mark_sent(tracker, p.mrid, p.status)
        tracker = responses.update(tracker, programs, now + 59, SEED, memory=snapshot.memory)
        for p in responses.sendable(tracker):
            tracker = responses.mark_sent(tracker, p.mrid, p.status)
    # what is retained once the list is empty again (the programs and their parses are gone)
    snapshot = snapshot.successor((), T0 + minutes * 60 + 120, 0, SEED)
    tracker = responses.update(tracker, (), T0 + minutes * 60 + 120, SEED, memory=snapshot.memory)
    return snapshot, tracker


def retained(minutes: int) -> tuple[int, int, int, int]:
    """(traced bytes, live blocks, events remembered, events tracked) held by the link's memory."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    snapshot, tracker = drive(minutes)
    memory = snapshot.memory
    del snapshot
    for cache in _caches():
        cache.clear()
    gc.collect()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "filename")
    size = sum(s.size_diff for s in stats)
    blocks = sum(s.count_diff for s in stats)
    tracemalloc.stop()
    return size, blocks, len(memory), len(tracker.events)


def _caches() -> list[dict[object, object]]:
    from dynexport.sep2 import schedule

    return [schedule._CACHE, schedule._OFFSETS]  # type: ignore[list-item]


def serialize_peak(minutes: int) -> tuple[int, int, int, int]:
    """(schedule.json bytes, its traced peak, responses.json bytes, its traced peak)."""
    snapshot, tracker = drive(minutes)
    gc.collect()
    tracemalloc.start()
    schedule_bytes = snapshot.to_json().encode()
    schedule_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    tracker_bytes = tracker.to_json().encode()
    tracker_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return len(schedule_bytes), schedule_peak, len(tracker_bytes), tracker_peak


def main() -> None:
    small, large = 200, 700
    a = retained(small)
    b = retained(large)
    n = large - small
    print(f"remembered events at {large} minutes: memory {b[2]}, tracker {b[3]}")
    print(
        f"per retained event: {(b[0] - a[0]) / n:.0f} B traced, {(b[1] - a[1]) / n:.1f} live blocks"
    )
    s = serialize_peak(1440)
    print(
        f"a day (1440 events): schedule.json {s[0]} B (serializing peak {s[1]} B), "
        f"responses.json {s[2]} B (peak {s[3]} B)"
    )


if __name__ == "__main__":
    main()
