"""A full garbage collection every minute, so what waits for one never piles up for hours.

CPython collects its oldest generation only once the objects that survived the younger ones
reach a quarter of those already there. In this service, whose long-lived objects are mostly
its modules, that did not happen once in its first 15 minutes. Until it does, the cyclic
garbage of every poll and request and the interpreter's free lists (tuples, lists, dicts and
floats kept for reuse, emptied only by a full collection) stay allocated, and the allocators'
high-water mark, so the resident set, kept rising for hours: +2.7 MiB over a 2-hour soak.
Side by side with an unchanged service, a full collection every minute grew +0.52 MiB from
minute 5 to 65 against +1.98 MiB, and ended 1.85 MiB lower (benchmarks/README.md, "Full
collections"). It costs about 20 ms on the build machine, a few times that on a Pi, once a
minute, in the event loop: nothing the control loop notices.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import trio

log = logging.getLogger("dynexport.system")

COLLECT_EVERY_S = 60.0
"""Seconds between two full collections."""

SLOW_COLLECTION_S = 0.5
"""A full collection that holds the event loop longer than this is logged (a warning): it would
mean the live heap grew far beyond what the service needs."""


async def collect_garbage(
    every_s: float = COLLECT_EVERY_S,
    *,
    collect: Callable[[], int] = gc.collect,
    slow_s: float = SLOW_COLLECTION_S,
) -> None:
    """Runs ``collect()`` (a full collection) every ``every_s`` seconds until cancelled; one that
    takes longer than ``slow_s`` is logged with its duration."""
    while True:
        await trio.sleep(every_s)
        started = time.perf_counter()
        unreachable = collect()
        took = time.perf_counter() - started
        if took > slow_s:
            log.warning(
                "a full garbage collection held the event loop %.2f s (%d unreachable objects)",
                took,
                unreachable,
            )
