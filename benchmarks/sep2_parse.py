"""Parse time of a 6-control DERControlList (prints, asserts nothing).

The list is built with the resource models and serialized with `to_xml`, so it is what a
CSIP-AUS server sends: one event per control type the scheduler knows (export, import,
generation and load limits, connect, energize). Timed over many runs:

- parsing the body into a `DERControlList` (safe parser, size cap, shape checks);
- converting its controls into the scheduler's `DERControlEvent`s;
- both together (what the client does per DERControlList poll).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

from dynexport.sep2.controls import ControlBase, EventStatus
from dynexport.sep2.resources import (
    DateTimeInterval,
    DERControl,
    DERControlList,
    DERProgram,
    EventStatusInfo,
    ListLink,
    der_control_event,
    parse_as,
    to_xml,
)

RUNS = 2000
WARMUP = 100
T0 = 1_800_000_000
PROGRAM = DERProgram(
    mrid="DB000000000000000000000000000001",
    primacy=1,
    description="Dynamic export limits",
    href="/derp/1",
    der_control_list_link=ListLink("/derp/1/derc", 6),
)
BASES = (
    ControlBase(export_limit_w=1500, ramp_tms=600),
    ControlBase(import_limit_w=5000),
    ControlBase(generation_limit_w=4000),
    ControlBase(load_limit_w=7000),
    ControlBase(connect=True),
    ControlBase(energize=True),
)


def control_list() -> bytes:
    controls = tuple(
        DERControl(
            mrid=f"DC{i + 1:030X}",
            creation_time=T0 - 3600,
            event_status=EventStatusInfo(EventStatus.SCHEDULED, T0 - 3600),
            interval=DateTimeInterval(start=T0 + 300 * i, duration=1800),
            base=base,
            description=f"event {i + 1}",
            href=f"/derp/1/derc/DC{i + 1:030X}",
            reply_to="/rsp",
            response_required=0x03,
            subscribable=0,
            randomize_start=30,
        )
        for i, base in enumerate(BASES)
    )
    return to_xml(DERControlList.of(controls, href="/derp/1/derc", subscribable=0))


def timed(label: str, work: Callable[[], object]) -> None:
    for _ in range(WARMUP):
        work()
    samples = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        work()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    median = statistics.median(samples) * 1e6
    p95 = samples[int(RUNS * 0.95)] * 1e6
    print(f"  {label:<34} median {median:8.1f} us   p95 {p95:8.1f} us")


def main() -> None:
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, python {platform.python_version()}")
    body = control_list()
    parsed = parse_as(DERControlList, body)
    print(f"DERControlList: {len(parsed.items)} controls, {len(body)} bytes; {RUNS} runs each")
    timed("parse (bytes -> DERControlList)", lambda: parse_as(DERControlList, body))
    timed(
        "convert (-> 6 DERControlEvent)",
        lambda: [der_control_event(c, PROGRAM) for c in parsed.items],
    )
    timed(
        "parse + convert",
        lambda: [der_control_event(c, PROGRAM) for c in parse_as(DERControlList, body).items],
    )


if __name__ == "__main__":
    main()
