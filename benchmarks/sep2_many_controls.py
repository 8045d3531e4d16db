"""CPU cost of one walk's scheduling work with 10,000 DER controls (prints, asserts nothing).

10,000 is the most the client's pager accepts (100 pages of 100). The controls are what a busy
server could list: back-to-back 5-minute export/import limits over five weeks, a quarter of them
randomized, every tenth overlapped by a newer, longer one (so supersession is exercised). Timed
with the process CPU clock, the best of a few runs per step:

- parsing the 100 pages (bytes -> DERControlList, the safe parser) and converting them to events;
- the scheduling a walk does after that: store the snapshot (with its memory of finished events),
  advance the responses, the controls in force, the 24 h outlook and the next change;
- the same questions asked again on a later step with the same programs (what the link does
  every few seconds), which should hit the resolution cache;
- while the clock is not verified, the strictest of the week ahead (asked at every control
  decision): the first time in a minute, and again in that minute (the answer kept).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import replace

from dynexport.sep2 import responses
from dynexport.sep2.controls import ControlBase, EventStatus, ProgramControls
from dynexport.sep2.resources import (
    DateTimeInterval,
    DERControl,
    DERControlList,
    DERProgram,
    EventStatusInfo,
    ListLink,
    parse_as,
    program_controls,
    to_xml,
)
from dynexport.sep2.schedule import ScheduleSnapshot, diff, resolve

COUNT = 10_000
PAGE = 100
RUNS = 3
T0 = 1_800_000_000
SEED = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
PROGRAM = DERProgram(
    mrid="DB000000000000000000000000000001",
    primacy=1,
    description="Dynamic export limits",
    href="/derp/1",
    der_control_list_link=ListLink("/derp/1/derc", COUNT),
)


def controls() -> list[DERControl]:
    out = []
    for i in range(COUNT):
        overlap = i % 10 == 9
        out.append(
            DERControl(
                mrid=f"DC{i + 1:030X}",
                creation_time=T0 - 3600 + (600 if overlap else 0),
                event_status=EventStatusInfo(EventStatus.SCHEDULED, T0 - 3600),
                interval=DateTimeInterval(
                    start=T0 + 300 * i - (150 if overlap else 0), duration=900 if overlap else 300
                ),
                base=ControlBase(
                    export_limit_w=float(500 * (i % 10)), import_limit_w=float(1000 + i % 7)
                ),
                description=f"event {i + 1}",
                href=f"/derp/1/derc/DC{i + 1:030X}",
                reply_to="/rsp",
                response_required=0x03,
                subscribable=0,
                randomize_start=30 if i % 4 == 0 else 0,
            )
        )
    return out


def pages(items: list[DERControl]) -> list[bytes]:
    return [
        to_xml(
            DERControlList(
                all=COUNT,
                results=len(items[s : s + PAGE]),
                items=tuple(items[s : s + PAGE]),
                href="/derp/1/derc",
                subscribable=0,
            )
        )
        for s in range(0, COUNT, PAGE)
    ]


def cpu(label: str, work: Callable[[], object]) -> object:
    best = float("inf")
    result: object = None
    for _ in range(RUNS):
        t0 = time.process_time()
        result = work()
        best = min(best, time.process_time() - t0)
    print(f"  {label:<58} {best * 1000:8.1f} ms CPU")
    return result


def parse_all(bodies: list[bytes]) -> ProgramControls:
    items = [c for body in bodies for c in parse_as(DERControlList, body).items]
    return program_controls(PROGRAM, items)


def main() -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    bodies = pages(controls())
    print(f"{COUNT} controls in {len(bodies)} pages, {sum(map(len, bodies)) // 1024} KiB")
    program = cpu("parse 100 pages + convert to events", lambda: parse_all(bodies))
    assert isinstance(program, ProgramControls)
    programs = (program,)
    now = T0 + 3600 * 24 * 7
    earlier = (replace(program, events=program.events[:-50]),)
    previous = ScheduleSnapshot(earlier, fetched_at=now - 60)

    first = previous.successor(programs, now - 30, 0, SEED)
    known = responses.update(
        responses.ResponseTracker(), first.programs, now - 30, SEED, memory=first.memory
    )
    first.active_at(now - 30, SEED)  # the link asked about the last list on its last step

    def walk() -> tuple[ScheduleSnapshot, responses.ResponseTracker]:
        snap = first.successor(programs, now, 0, SEED)
        tracker = responses.update(known, snap.programs, now, SEED, memory=snap.memory)
        snap.active_at(now, SEED)
        snap.schedule(now, now + 86_400, SEED)
        snap.next_change(now, SEED)
        return snap, tracker

    def first_walk() -> object:
        snap = ScheduleSnapshot.first(programs, now, 0, SEED)
        tracker = responses.update(
            responses.ResponseTracker(), snap.programs, now, SEED, memory=snap.memory
        )
        return snap.active_at(now, SEED), snap.schedule(now, now + 86_400, SEED), tracker

    cpu("first walk ever (10,000 new events to track)", first_walk)
    result = cpu("walk: snapshot + responses + in force + 24 h + next", walk)
    assert isinstance(result, tuple)
    snap, tracker = result
    cpu("  of which successor (memory update)", lambda: first.successor(programs, now, 0, SEED))
    cpu("  of which resolve (uncached)", lambda: resolve(list(snap.programs), SEED, snap.memory))
    cpu(
        "  of which responses.update (10,000 tracked)",
        lambda: responses.update(tracker, snap.programs, now + 1, SEED, memory=snap.memory),
    )
    cpu("diff(previous, current), for logs", lambda: diff(earlier, programs))
    cpu(
        "later step: in force + 24 h + next (cached)",
        lambda: (
            snap.active_at(now + 5, SEED),
            snap.schedule(now + 5, now + 5 + 86_400, SEED),
            snap.next_change(now + 5, SEED),
        ),
    )
    minutes = iter(range(1, 100))
    cpu(
        "strictest of the week ahead, a new minute (clock unverified)",
        lambda: snap.strictest_ahead(now + 60 * next(minutes), SEED),
    )
    cpu(
        "strictest of the week ahead, again in that minute (kept)",
        lambda: snap.strictest_ahead(now + 60 * 99 + 1, SEED),
    )
    cpu("snapshot to_json + from_json", lambda: ScheduleSnapshot.from_json(snap.to_json()))


if __name__ == "__main__":
    main()
