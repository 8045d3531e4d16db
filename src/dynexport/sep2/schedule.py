"""Which utility control is in force, now and over the coming hours: a pure scheduler.

Everything here is a function of the programs the server listed, a per-device randomization seed
and a time in the *server's* clock (seconds since the epoch). Nothing reads the clock, so the same
inputs give the same answer after a restart, in a test, or on the installer's laptop.

The rules, with their sources, are written out in ``docs/sep2-scheduling.md``. In short:

* Randomization (IEEE 2030.5 RandomizableEvent, sep.xsd): the event's start moves by a random
  offset between 0 and ``randomizeStart`` seconds (the sign gives the direction; |value| ≤ 3600),
  its duration by one between 0 and ``randomizeDuration``. Offsets come from a hash of the device
  seed and the mRID, so one event keeps one offset across restarts.
* Adjacent events (one specified to end when the next starts, sharing a control type) hand over at
  the next event's effective start: no gap, no overlap (IEEE 2030.5-2018 §10.2.3, adjacent events).
  Only a successor of equal or better primacy, whose window is not empty, takes over early; one of
  worse primacy waits for the better event's end (it is delayed, not superseded).
* Per control type: events rank by primacy (lower wins), then newer creationTime (IEEE 2030.5
  §10.2.3 / §12.1.3 event rules; the CSIP-AUS harness GEN-10 relies on it), then mRID so the order
  is total. The better event's run terminates a worse overlapping one at the better run's start
  and the worse one does not resume (sep.xsd EventStatus "Superseded": "terminate execution of the
  event immediately"; harness ALL-18 step s and GEN-10 steps g and u expect response 7 for it).
* Cancelled (2, 3) and server-superseded (4) events never run; an event that vanishes from the
  list is simply absent, which is the same as cancelled.
* Where no event sets a type, the DefaultDERControl applies (sep.xsd DefaultDERControl: "to be used
  if no active DERControl is found"), per type from the best-primacy program whose default sets it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, NamedTuple

from dynexport.sep2.controls import (
    ControlBase,
    ControlType,
    DefaultControl,
    DERControlEvent,
    EventStatus,
    ProgramControls,
)
from dynexport.sep2.stored import parsed_or_value_error

RANDOMIZE_LIMIT_S = 3600
"""OneHourRangeType: randomizeStart / randomizeDuration are within ±3600 s (sep.xsd)."""

_CONTROL_ORDER: tuple[ControlType, ...] = tuple(ControlType)
_NOT_RUNNING = frozenset(
    {EventStatus.CANCELLED, EventStatus.CANCELLED_WITH_RANDOMIZATION, EventStatus.SUPERSEDED}
)


# --------------------------------------------------------------------------------------------
# Randomization


_OFFSETS: dict[tuple[str, str, str, int], int] = {}
_OFFSETS_MAX = 50_000


def _random_offset(seed: str, mrid: str, what: str, bound: int) -> int:
    """A value in [0, |bound|] with the sign of ``bound``, stable for one (seed, mRID).

    Memoized (a pure function of its arguments; bounded): each resolution of a full pager would
    otherwise hash thousands of mRIDs again."""
    limit = min(abs(bound), RANDOMIZE_LIMIT_S)
    if limit == 0:
        return 0
    key = (seed, mrid, what, bound)
    found = _OFFSETS.get(key)
    if found is None:
        if len(_OFFSETS) >= _OFFSETS_MAX:
            _OFFSETS.clear()
        found = _OFFSETS[key] = _draw(seed, mrid, what, bound, limit)
    return found


def _draw(seed: str, mrid: str, what: str, bound: int, limit: int) -> int:
    digest = hashlib.sha256(f"{seed}\x00{mrid}\x00{what}".encode()).digest()
    magnitude = int.from_bytes(digest[:8], "big") % (limit + 1)
    return magnitude if bound > 0 else -magnitude


def effective_window(event: DERControlEvent, seed: str) -> tuple[int, int]:
    """The event's effective [start, end) after randomization, from the device seed and mRID.

    IEEE 2030.5 RandomizableEvent: "Number of seconds boundary inside which a random value must be
    selected to be applied to the associated interval start time / duration"; valid -3600..3600.
    A negative value moves the start earlier (or shortens the duration). The effective end is the
    effective start plus the randomized duration, never before the effective start. Deterministic
    so a restart does not re-roll the dice (ALL-22 inspects the spread of start times).
    """
    if not (event.randomize_start or event.randomize_duration):
        return event.start, event.start + max(0, event.duration)
    start = event.start + _random_offset(seed, event.mrid, "start", event.randomize_start)
    duration = event.duration + _random_offset(
        seed, event.mrid, "duration", event.randomize_duration
    )
    return start, start + max(0, duration)


# --------------------------------------------------------------------------------------------
# Resolution: which part of which event runs, per control type (independent of "now")


def _rank(event: DERControlEvent) -> tuple[int, int, str]:
    """Sort key, best first: lower primacy, then newer creationTime, then mRID (total order)."""
    return (event.primacy, -event.creation_time, event.mrid)


def better(a: DERControlEvent, b: DERControlEvent) -> bool:
    """True when ``a`` outranks ``b`` (primacy, then newer creationTime, then mRID)."""
    return _rank(a) < _rank(b)


def runnable(event: DERControlEvent) -> bool:
    """Cancelled (2, 3) and superseded (4) events never run, nor do events that set nothing."""
    return event.status not in _NOT_RUNNING and not event.base.is_empty()


class EventPlan(NamedTuple):
    """What the scheduler will do with one runnable event, whatever the time.

    Immutable (a NamedTuple rather than a frozen dataclass: one is made per event per
    resolution, 10,000 of them for a full pager, and a tuple is ten times cheaper to build)."""

    event: DERControlEvent
    start: int
    """Effective start (randomized; an adjacent successor of worse primacy waits for the better
    event's end)."""
    end: int
    """Effective end (randomized, then cut or extended to the start of the adjacent successor of
    equal or better primacy that takes over); never before ``start``."""
    runs: tuple[tuple[ControlType, int, int], ...]
    """Per type the [start, end) it is actually in force; empty runs are omitted."""
    cut_at: tuple[tuple[ControlType, int], ...]
    """Per type, when a better event terminated it (types that ran to the end are absent)."""

    @property
    def superseded(self) -> bool:
        """Every type it sets was terminated by a better event: it is superseded as a whole."""
        return bool(self.event.base.types()) and len(self.cut_at) == len(self.event.base.types())

    @property
    def superseded_at(self) -> int | None:
        """When the supersession takes effect: the last cut, and never before its own start."""
        if not self.superseded:
            return None
        return max(self.start, max(t for _, t in self.cut_at))

    @property
    def ran(self) -> bool:
        return bool(self.runs)


class _Run(NamedTuple):
    """One stretch [start, end) in which one event sets one type (a tuple: 10,000s are made)."""

    start: int
    end: int
    event: DERControlEvent


_ORDERED: dict[frozenset[ControlType], tuple[ControlType, ...]] = {}


def _ordered(kinds: frozenset[ControlType]) -> tuple[ControlType, ...]:
    """The types of a base in `ControlType` order (memoized: there are only 127 sets)."""
    found = _ORDERED.get(kinds)
    if found is None:
        found = _ORDERED[kinds] = tuple(k for k in _CONTROL_ORDER if k in kinds)
    return found


def _live_events(programs: Iterable[ProgramControls]) -> list[DERControlEvent]:
    """Runnable events, one per mRID (the best-ranked copy if a server lists one twice)."""
    by_mrid: dict[str, DERControlEvent] = {}
    for program in programs:
        for event in program.events:
            if event.status in _NOT_RUNNING or not event.base.types():  # runnable(), inlined
                continue
            seen = by_mrid.get(event.mrid)
            if seen is None or better(event, seen):
                by_mrid[event.mrid] = event
    return sorted(by_mrid.values(), key=_rank)


def _windows(events: Sequence[DERControlEvent], seed: str) -> dict[str, tuple[int, int]]:
    """Effective windows, with adjacent events handing over where the successor takes over.

    IEEE 2030.5-2018 §10.2.3 (adjacent events): when an event is specified to end exactly when the
    next one starts, the first runs until the second effectively starts, so randomization of the
    second neither opens a gap (back to the default) nor makes them overlap (a false supersede).

    Primacy bounds the hand-over: an event hands over (is cut or extended) only to a successor of
    equal or better primacy (lower number; creationTime plays no part here) whose own window is
    not empty. A successor of worse primacy never takes over during a better event's window: it
    starts at its effective start or at the better event's (final) end, whichever is later, and
    ends at its own effective end (its window may so become empty: it never runs). Without that
    bound a worse program's event randomized early cut a better program's event short and its
    control ran during the better event's own window.

    Each boundary instant is settled by primacy, best first (a start depends only on better
    predecessors' ends, an end only on starts of successors at least as good), and boundaries
    latest first, so a successor's end is known when its emptiness is asked; no recursion.
    """
    begin: dict[str, int] = {}
    finish: dict[str, int] = {}
    starting: dict[int, list[DERControlEvent]] = {}
    ending: dict[int, list[DERControlEvent]] = {}
    for e in events:
        begin[e.mrid], finish[e.mrid] = effective_window(e, seed)
        if e.duration > 0:
            starting.setdefault(e.start, []).append(e)
            ending.setdefault(e.start + e.duration, []).append(e)
    for instant in sorted(starting.keys() & ending.keys(), reverse=True):
        before, after = ending[instant], starting[instant]
        if len(before) == 1 == len(after):  # the usual case: one event after another
            e, n = before[0], after[0]
            if not e.base.types().isdisjoint(n.base.types()):
                if n.primacy > e.primacy:
                    begin[n.mrid] = max(begin[n.mrid], finish[e.mrid])
                elif finish[n.mrid] > begin[n.mrid]:
                    finish[e.mrid] = begin[n.mrid]
            continue
        for level in sorted({e.primacy for e in before} | {n.primacy for n in after}):
            for n in after:
                if n.primacy == level:
                    kinds = n.base.types()
                    for e in before:
                        if e.primacy < level and not kinds.isdisjoint(e.base.types()):
                            begin[n.mrid] = max(begin[n.mrid], finish[e.mrid])
            for e in before:
                if e.primacy != level:
                    continue
                kinds = e.base.types()
                handover = None
                for n in after:
                    if (
                        n.primacy <= level
                        and n.mrid != e.mrid
                        and finish[n.mrid] > begin[n.mrid]
                        and not kinds.isdisjoint(n.base.types())
                    ):
                        t = begin[n.mrid]
                        handover = t if handover is None or t < handover else handover
                if handover is not None:
                    finish[e.mrid] = handover
    return {m: (s, max(s, finish[m])) for m, s in begin.items()}


@dataclass(frozen=True)
class Resolution:
    """The runs of every control type and the plan of every runnable event."""

    runs: Mapping[ControlType, tuple[_Run, ...]]
    plans: tuple[EventPlan, ...]

    def __post_init__(self) -> None:
        # Indexes built once, so each question is a binary search, not a scan (10,000 events).
        starts = {k: tuple(r.start for r in v) for k, v in self.runs.items()}
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_bounds", tuple(sorted(self._boundary_set())))

    def _boundary_set(self) -> set[int]:
        return {t for runs in self.runs.values() for r in runs for t in (r.start, r.end)}

    def event_at(self, kind: ControlType, now: int) -> DERControlEvent | None:
        runs = self.runs.get(kind)
        if not runs:
            return None
        starts: dict[ControlType, tuple[int, ...]] = self.__dict__["_starts"]
        i = bisect_right(starts[kind], now) - 1
        if i >= 0 and runs[i].start <= now < runs[i].end:
            return runs[i].event
        return None

    def boundaries(self) -> set[int]:
        return set(self.__dict__["_bounds"])

    def boundaries_between(self, start: int, end: int) -> tuple[int, ...]:
        """Run boundaries t with start < t < end, in order."""
        bounds: tuple[int, ...] = self.__dict__["_bounds"]
        return bounds[bisect_right(bounds, start) : bisect_left(bounds, end)]

    def next_boundary(self, now: int) -> int | None:
        bounds: tuple[int, ...] = self.__dict__["_bounds"]
        i = bisect_right(bounds, now)
        return bounds[i] if i < len(bounds) else None

    def plan(self, mrid: str) -> EventPlan | None:
        by_mrid: dict[str, EventPlan] | None = self.__dict__.get("_by_mrid")
        if by_mrid is None:
            by_mrid = {p.event.mrid: p for p in self.plans}
            object.__setattr__(self, "_by_mrid", by_mrid)
        return by_mrid.get(mrid)


def resolve(
    programs: Iterable[ProgramControls], seed: str, memory: ScheduleMemory | None = None
) -> Resolution:
    """Decide, once for all times, which event runs when for each control type.

    Best-ranked events are placed first; a worse event runs from its effective start until the
    start of the first better run that overlaps its window, and never after it (superseded events
    are terminated, not paused). The runs of one type are therefore disjoint, and a worse event
    that never ran does not stand in anyone's way. Contiguous events do not overlap (half-open
    windows), so they hand over without a gap.

    ``memory`` holds what this device already decided for good (`ScheduleMemory`): a type of an
    event terminated at T, or a whole event finished (superseded, cancelled, completed) at T, is
    not in force from T on, even if what terminated it has since left the list. Results for a
    tuple of programs are cached by identity, since the link asks many questions of one list.
    """
    if isinstance(programs, tuple):
        key = (id(programs), seed, id(memory))
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is programs and hit[1] is memory:
            return hit[2]
        resolution = _resolve(programs, seed, memory)
        _CACHE[key] = (programs, memory, resolution)
        while len(_CACHE) > _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        return resolution
    return _resolve(programs, seed, memory)


_CACHE_SIZE = 4
_CACHE: dict[
    tuple[int, str, int],
    tuple[tuple[ProgramControls, ...], ScheduleMemory | None, Resolution],
] = {}
"""Last resolutions, keyed by the identity of the (immutable) programs tuple and memory; the
entry keeps both alive, so an id cannot be reused while its entry exists."""


def _resolve(
    programs: Iterable[ProgramControls], seed: str, memory: ScheduleMemory | None
) -> Resolution:
    events = _live_events(programs)
    windows = _windows(events, seed)
    fates = {} if memory is None else memory.by_mrid()
    accepted: dict[ControlType, list[_Run]] = {k: [] for k in _CONTROL_ORDER}
    ends: dict[ControlType, list[int]] = {k: [] for k in _CONTROL_ORDER}
    plans: list[EventPlan] = []
    for event in events:  # best first
        start, end = windows[event.mrid]
        if end <= start:
            plans.append(EventPlan(event, start, end, (), ()))
            continue
        runs_of: list[tuple[ControlType, int, int]] = []
        cuts_of: list[tuple[ControlType, int]] = []
        fate = fates.get(event.mrid) if fates else None
        for kind in _ordered(event.base.types()):
            limit, cut = end, None
            if fate is not None:
                stop = fate.stop(kind)
                if stop is not None and stop < end:
                    limit, cut = max(start, stop), stop
            runs, run_ends = accepted[kind], ends[kind]
            # Runs are disjoint and sorted, so the first one ending after our start is the
            # earliest that can overlap us (binary search; the inserts are C memmoves).
            i = bisect_right(run_ends, start)
            if i < len(runs) and runs[i].start < limit:
                limit = cut = runs[i].start
            if cut is not None:
                cuts_of.append((kind, cut))
            if limit > start:
                runs.insert(i, _Run(start, limit, event))
                run_ends.insert(i, limit)
                runs_of.append((kind, start, limit))
        plans.append(EventPlan(event, start, end, tuple(runs_of), tuple(cuts_of)))
    return Resolution(runs={k: tuple(v) for k, v in accepted.items() if v}, plans=tuple(plans))


# --------------------------------------------------------------------------------------------
# Memory: what this device decided for good, so that no later list can undo it


class Finish(StrEnum):
    """Why an event is over for good (the response it got: 3, 6 or 7)."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


MEMORY_RETAIN_S = 86_400
"""A remembered event no longer listed is forgotten this long after its end (as the responses
tracker does): by then no list can bring its window back."""
MEMORY_MAX = 100_000
"""Hard bound on remembered events (the earliest ending dropped first): 10 full pagers' worth."""


@dataclass(frozen=True, slots=True)
class EventFate:
    """What this device decided for good about one event (by mRID).

    Slotted and made of an mRID, ints and a tuple only (never a parsed event): a day of the
    simulator's event a minute keeps 1,440 of them, so each one's size is the memory's growth."""

    mrid: str
    end: int
    """Its effective end when last known (server time); used to forget it."""
    nominal_end: int
    """Its scheduled end (start + duration, before randomization)."""
    finished: Finish | None = None
    at: int | None = None
    """When it finished: from then on it is never in force, whatever a later list says."""
    stops: tuple[tuple[ControlType, int], ...] = ()
    """Types a better event terminated, and when (the event ran on with its other types)."""

    def stop(self, kind: ControlType) -> int | None:
        """From when ``kind`` of this event may never be in force again (None: no such limit)."""
        found = [t for k, t in self.stops if k is kind]
        if self.at is not None:
            found.append(self.at)
        return min(found) if found else None

    def merged(self, other: EventFate) -> EventFate:
        """Both decisions together: the earliest finish and the earliest stop of each type."""
        finished, at = self.finished, self.at
        if other.at is not None and (at is None or other.at < at):
            finished, at = other.finished, other.at
        stops = dict(self.stops)
        for kind, t in other.stops:
            stops[kind] = min(t, stops.get(kind, t))
        ordered = tuple((k, stops[k]) for k in _CONTROL_ORDER if k in stops)
        return EventFate(
            mrid=self.mrid,
            end=max(self.end, other.end),
            nominal_end=max(self.nominal_end, other.nominal_end),
            finished=finished,
            at=at,
            stops=ordered,
        )


@dataclass(frozen=True)
class ScheduleMemory:
    """The events (and types of events) this device has finished with for good.

    Without it a superseded event came back: 5000 W superseded by a newer 0 W event ran again
    when the newer one left the list, although the server had been told "superseded" (7).
    Persisted in the `ScheduleSnapshot`, so it survives a restart; bounded (`MEMORY_RETAIN_S`,
    `MEMORY_MAX`).
    """

    fates: tuple[EventFate, ...] = ()

    def by_mrid(self) -> dict[str, EventFate]:
        cached: dict[str, EventFate] | None = self.__dict__.get("_by_mrid")
        if cached is None:
            cached = {f.mrid: f for f in self.fates}
            object.__setattr__(self, "_by_mrid", cached)
        return cached

    def get(self, mrid: str) -> EventFate | None:
        return self.by_mrid().get(mrid)

    def finished(self, mrid: str) -> bool:
        fate = self.get(mrid)
        return fate is not None and fate.finished is not None

    def __len__(self) -> int:
        return len(self.fates)


def _with(fates: dict[str, EventFate], fate: EventFate) -> None:
    old = fates.get(fate.mrid)
    if old is None:
        fates[fate.mrid] = fate
        return
    merged = old.merged(fate)
    if merged != old:  # the same decision again keeps the object it has (no churn per walk)
        fates[fate.mrid] = merged


def _record_listed(
    fates: dict[str, EventFate],
    programs: Sequence[ProgramControls],
    listed_at: int,
    now: int,
    seed: str,
    memory: ScheduleMemory,
) -> None:
    """What had happened by ``now`` under programs listed (fetched) at ``listed_at``: cuts,
    supersessions and completions, and the cancellations (2, 3) and supersessions (4) the server
    listed, which took effect when the list was read."""
    resolution = resolve(programs, seed, memory)
    for plan in resolution.plans:
        cuts = tuple((k, t) for k, t in plan.cut_at if t <= now)
        finished: Finish | None = None
        at: int | None = None
        superseded_at = plan.superseded_at
        if superseded_at is not None and superseded_at <= now:
            finished, at = Finish.SUPERSEDED, superseded_at
        elif plan.end <= now:
            finished, at = Finish.COMPLETED, plan.end
        if cuts or finished is not None:
            e = plan.event
            _with(fates, EventFate(e.mrid, plan.end, e.end, finished, at, cuts))
    for program in programs:
        for e in program.events:
            if e.status in _NOT_RUNNING:
                why = Finish.SUPERSEDED if e.status is EventStatus.SUPERSEDED else Finish.CANCELLED
                end = effective_window(e, seed)[1]
                _with(fates, EventFate(e.mrid, end, e.end, why, min(listed_at, now)))


def _listed(programs: Iterable[ProgramControls]) -> dict[str, DERControlEvent]:
    out: dict[str, DERControlEvent] = {}
    for program in programs:
        for e in program.events:
            out.setdefault(e.mrid, e)
    return out


def vanished_finish(nominal_end: int, effective_end: int, now: int) -> Finish:
    """How an event that left the server's list at ``now`` ended (CSIP-AUS ALL-22).

    The server removes an event at its scheduled end, while a randomized one may still run its
    tail: that is completion (3). Only an event removed before both its scheduled and its
    effective end was cancelled (6)."""
    return Finish.COMPLETED if now >= min(nominal_end, effective_end) else Finish.CANCELLED


def running_tails(
    previous: Sequence[ProgramControls],
    current: Sequence[ProgramControls],
    now: int,
    seed: str,
    memory: ScheduleMemory,
) -> tuple[ProgramControls, ...]:
    """``current`` with each event of ``previous`` that left the list at or after its scheduled
    end, but before its effective end, put back in its program until that end: a randomized
    tail, or the hand-over to an adjacent successor that starts later (IEEE 2030.5-2018
    §10.2.3). Servers drop an event at its scheduled end (envoy, the CSIP-AUS test server, lists
    only controls whose end is still to come): dropped at once, the site fell back to its
    default until the next event's randomized start (CSIP-AUS ALL-22's back-to-back events).
    An event of a program that left the list is not put back."""
    listed = _listed(current)
    resolution: Resolution | None = None
    tails: dict[str, list[DERControlEvent]] = {}
    for program in previous:
        for e in program.events:
            if e.mrid in listed or now < e.end or not runnable(e) or memory.finished(e.mrid):
                continue
            if resolution is None:
                resolution = resolve(tuple(previous), seed, memory)
            plan = resolution.plan(e.mrid)
            if plan is not None and plan.start < plan.end and now < plan.end:
                tails.setdefault(program.href, []).append(e)
    if not tails:
        return tuple(current)
    return tuple(
        replace(p, events=p.events + tuple(tails[p.href])) if p.href in tails else p
        for p in current
    )


def missing_before_their_end(
    previous: Sequence[ProgramControls],
    current: Sequence[ProgramControls],
    now: int,
    seed: str,
    memory: ScheduleMemory,
) -> frozenset[str]:
    """The mRIDs of runnable events of ``previous``, not finished, that ``current`` (read at
    ``now``) no longer lists before both their scheduled and their effective end: taken as read,
    they are cancelled for good (`vanished_finish`)."""
    listed = _listed(current)
    return frozenset(
        e.mrid
        for program in previous
        for e in program.events
        if e.mrid not in listed
        and runnable(e)
        and not memory.finished(e.mrid)
        and vanished_finish(e.end, effective_window(e, seed)[1], now) is Finish.CANCELLED
    )


def remember(
    memory: ScheduleMemory,
    previous: Sequence[ProgramControls],
    previous_at: int,
    current: Sequence[ProgramControls],
    now: int,
    seed: str,
) -> ScheduleMemory:
    """The memory after the ``previous`` complete listing (fetched at ``previous_at``) is replaced
    by ``current`` at ``now``.

    Records what happened under the previous list up to now (it was in force until now) and the
    events that left the list (cancelled, or completed at/after their end: `vanished_finish`);
    then forgets events long over and no longer listed. What the current list settles is
    recorded when it is itself replaced: until then it is in force and says so itself.
    """
    fates = dict(memory.by_mrid())
    _record_listed(fates, previous, previous_at, now, seed, memory)
    after = _listed(current)
    for mrid, e in _listed(previous).items():
        if mrid not in after:
            end = effective_window(e, seed)[1]
            _with(fates, EventFate(mrid, end, e.end, vanished_finish(e.end, end, now), now))
    kept = [
        f
        for f in fates.values()
        if f.mrid in after or now < max(f.end, f.nominal_end) + MEMORY_RETAIN_S
    ]
    if len(kept) > MEMORY_MAX:
        kept.sort(key=lambda f: (max(f.end, f.nominal_end), f.mrid))
        kept = kept[-MEMORY_MAX:]
    kept.sort(key=lambda f: f.mrid)
    if len(kept) == len(memory.fates) and all(
        a is b for a, b in zip(kept, memory.fates, strict=True)
    ):
        # Nothing learnt or forgotten (most walks): the same memory, so its index, the
        # resolution cache keyed by it and the saved-schedule comparison all stay as they are.
        return memory
    return ScheduleMemory(tuple(kept))


# --------------------------------------------------------------------------------------------
# Active controls


class Source(StrEnum):
    EVENT = "event"
    DEFAULT = "default"


@dataclass(frozen=True)
class ActiveValue:
    """The value in force for one control type and where it comes from."""

    kind: ControlType
    value: float | bool
    source: Source
    mrid: str
    """The event's mRID, or the DefaultDERControl's (may be empty)."""
    program_href: str
    primacy: int
    ramp_tms: int | None = None
    """The event's rampTms in hundredths of a second (None for defaults: use setGradW)."""

    @property
    def origin(self) -> str:
        if self.source is Source.EVENT:
            return f"event {self.mrid}"
        return f"default of program {self.program_href}"


@dataclass(frozen=True)
class ActiveControls:
    """Every control type's value in force at one instant (types nobody sets are absent)."""

    values: tuple[ActiveValue, ...] = ()
    set_grad_w: int | None = None
    """setGradW of the best-primacy DefaultDERControl that has one (1/100 % of setMaxW per s)."""

    def get(self, kind: ControlType) -> ActiveValue | None:
        for v in self.values:
            if v.kind is kind:
                return v
        return None

    def value(self, kind: ControlType) -> float | bool | None:
        v = self.get(kind)
        return None if v is None else v.value

    def origin(self, kind: ControlType) -> str | None:
        """ "event <mRID>", "default of program <href>", or None when nothing sets it."""
        v = self.get(kind)
        return None if v is None else v.origin

    def ramp_tms(self, kind: ControlType) -> int | None:
        v = self.get(kind)
        return None if v is None else v.ramp_tms

    def event_mrids(self) -> frozenset[str]:
        return frozenset(v.mrid for v in self.values if v.source is Source.EVENT)

    def as_base(self) -> ControlBase:
        """The values as one ControlBase (rampTms left out: it differs per type; see ramp_tms)."""
        values: dict[str, Any] = {v.kind.value: v.value for v in self.values}
        return ControlBase(**values)


def _defaults(programs: Iterable[ProgramControls]) -> list[DefaultControl]:
    """Defaults best first: lower primacy, then program href for a stable order."""
    found = [p.default for p in programs if p.default is not None]
    return sorted(found, key=lambda d: (d.primacy, d.program_href, d.mrid))


def _active(resolution: Resolution, defaults: Sequence[DefaultControl], now: int) -> ActiveControls:
    values: list[ActiveValue] = []
    for kind in _CONTROL_ORDER:
        event = resolution.event_at(kind, now)
        if event is not None:
            value = event.base.get(kind)
            if value is None:  # not an assert: the service runs with -OO, which strips them
                raise ValueError(f"event {event.mrid} in force for {kind} has no {kind} value")
            values.append(
                ActiveValue(
                    kind=kind,
                    value=value,
                    source=Source.EVENT,
                    mrid=event.mrid,
                    program_href=event.program_href,
                    primacy=event.primacy,
                    ramp_tms=event.base.ramp_tms,
                )
            )
            continue
        for default in defaults:
            value = default.base.get(kind)
            if value is not None:
                values.append(
                    ActiveValue(
                        kind=kind,
                        value=value,
                        source=Source.DEFAULT,
                        mrid=default.mrid,
                        program_href=default.program_href,
                        primacy=default.primacy,
                    )
                )
                break
    grad = next((d.set_grad_w for d in defaults if d.set_grad_w is not None), None)
    return ActiveControls(values=tuple(values), set_grad_w=grad)


def active_controls(
    programs: Sequence[ProgramControls],
    now: int,
    seed: str,
    memory: ScheduleMemory | None = None,
) -> ActiveControls:
    """The controls in force at ``now`` (server time): events first, then defaults, per type."""
    return _active(resolve(programs, seed, memory), _defaults(programs), now)


@dataclass(frozen=True)
class Segment:
    """A stretch [start, end) over which the effective controls do not change."""

    start: int
    end: int
    controls: ActiveControls


def schedule_between(
    programs: Sequence[ProgramControls],
    start: int,
    end: int,
    seed: str,
    memory: ScheduleMemory | None = None,
) -> list[Segment]:
    """Piecewise-constant effective controls covering [start, end), neighbours always different.

    Used for the 24 h outlook (``dynexport sep2 walk``, the web UI) and by the controller to know
    when the next change is due.
    """
    if end <= start:
        return []
    resolution = resolve(programs, seed, memory)
    defaults = _defaults(programs)
    cuts = (start, *resolution.boundaries_between(start, end))
    segments: list[Segment] = []
    for i, t in enumerate(cuts):
        seg_end = cuts[i + 1] if i + 1 < len(cuts) else end
        controls = _active(resolution, defaults, t)
        if segments and segments[-1].controls == controls:
            segments[-1] = Segment(segments[-1].start, seg_end, controls)
        else:
            segments.append(Segment(t, seg_end, controls))
    return segments


LOWEST_WINS = frozenset(
    {
        ControlType.EXPORT_LIMIT_W,
        ControlType.IMPORT_LIMIT_W,
        ControlType.GENERATION_LIMIT_W,
        ControlType.LOAD_LIMIT_W,
        ControlType.MAX_LIMIT_PCT,
    }
)
"""Limits: of several values that may be in force, the lowest is the safe one."""

OFF_WINS = frozenset({ControlType.CONNECT, ControlType.ENERGIZE})
"""Connect and energize: of several, "no" is the safe one (the utility may need the site off)."""


def time_verified(anchored: bool, synchronised: bool | None, stored_offset: int) -> bool:
    """Is server time known? Yes once the server's Time was read in this process (``anchored``);
    before that, only while the kernel's clock is set by a time server (``synchronised``) and
    the stored offset is one such a clock could have measured (within `CLOCK_WARN_S`: a larger
    one was measured against a wrong local clock, or the server's is wrong, and which cannot be
    told). ``synchronised`` None (cannot tell) counts as not."""
    return anchored or (synchronised is True and abs(stored_offset) <= CLOCK_WARN_S)


CLOCK_WARN_S = 60
"""An offset from the server's clock larger than this is warned about (``flow.clock_warning``),
and a stored one is not trusted on a clock that was set since (`time_verified`)."""

UNVERIFIED_AHEAD_S = 7 * 86400
"""While the clock is not known to be right, how far ahead of it the stored schedule is searched
for its strictest controls (utilities publish events hours to a day or two ahead)."""


def strictest(candidates: Sequence[ActiveControls]) -> ActiveControls:
    """What obeys every one of ``candidates`` at once, when which one is in force is unknown.

    Per limit, the lowest value any of them sets (a limit only one of them sets is kept: it may
    be the one in force); connect and energize "no" if any says so. The other types (the
    storage target, which has no safe direction) and setGradW are the first candidate's: the
    best guess of the time. Each value keeps its origin, so the status still says which event
    or default it comes from."""
    if not candidates:
        return ActiveControls()
    first = candidates[0]
    chosen: dict[ControlType, ActiveValue] = {v.kind: v for v in first.values}
    for controls in candidates[1:]:
        for v in controls.values:
            held = chosen.get(v.kind)
            if held is None:
                safer = v.kind in LOWEST_WINS or v.kind in OFF_WINS
            elif v.kind in LOWEST_WINS:
                safer = float(v.value) < float(held.value)
            else:
                safer = v.kind in OFF_WINS and v.value is False and held.value is not False
            if safer:
                chosen[v.kind] = v
    ordered = tuple(chosen[k] for k in _CONTROL_ORDER if k in chosen)
    return ActiveControls(values=ordered, set_grad_w=first.set_grad_w)


def strictest_between(
    programs: Sequence[ProgramControls],
    start: int,
    end: int,
    seed: str,
    memory: ScheduleMemory | None = None,
) -> ActiveControls:
    """`strictest` of every stretch of the schedule over [start, end): what obeys the schedule
    at any time in that span (server time), when the clock cannot say which."""
    segments = schedule_between(programs, start, max(end, start + 1), seed, memory)
    return strictest([seg.controls for seg in segments])


def next_change(
    programs: Sequence[ProgramControls],
    now: int,
    seed: str,
    memory: ScheduleMemory | None = None,
) -> int | None:
    """The first time after ``now`` at which any run starts or ends (None if nothing is due)."""
    return resolve(programs, seed, memory).next_boundary(now)


# --------------------------------------------------------------------------------------------
# Diff between two polls


@dataclass(frozen=True)
class EventDiff:
    """What changed between two complete listings of the programs' events."""

    new: tuple[DERControlEvent, ...] = ()
    changed: tuple[DERControlEvent, ...] = ()
    """Same mRID, different content (the current version); cancellations are listed apart."""
    vanished: tuple[DERControlEvent, ...] = ()
    """Gone from the server's list (the previous version): treated as cancelled."""
    cancelled: tuple[DERControlEvent, ...] = ()
    """Now cancelled (status 2 or 3) and not cancelled before (includes new cancelled ones)."""

    def is_empty(self) -> bool:
        return not (self.new or self.changed or self.vanished or self.cancelled)


def _events_by_mrid(programs: Iterable[ProgramControls]) -> dict[str, DERControlEvent]:
    return {e.mrid: e for p in programs for e in p.events}


def diff(previous: Sequence[ProgramControls], current: Sequence[ProgramControls]) -> EventDiff:
    """Compare two polls. Only pass complete lists (all pages), or paging looks like vanishing."""
    cancelled_states = {EventStatus.CANCELLED, EventStatus.CANCELLED_WITH_RANDOMIZATION}
    before = _events_by_mrid(previous)
    after = _events_by_mrid(current)
    new: list[DERControlEvent] = []
    changed: list[DERControlEvent] = []
    cancelled: list[DERControlEvent] = []
    for mrid, event in after.items():
        old = before.get(mrid)
        now_cancelled = event.status in cancelled_states
        was_cancelled = old is not None and old.status in cancelled_states
        if now_cancelled and not was_cancelled:
            cancelled.append(event)
            if old is None:
                new.append(event)
        elif old is None:
            new.append(event)
        elif old != event:
            changed.append(event)
    vanished = [e for mrid, e in before.items() if mrid not in after]
    return EventDiff(tuple(new), tuple(changed), tuple(vanished), tuple(cancelled))


# --------------------------------------------------------------------------------------------
# Persistence


SNAPSHOT_VERSION = 3
"""2 added the memory of finished events (version 1 files load with an empty memory); 3 writes
each remembered event as a positional array (2 and 1 are still read)."""
_READABLE_VERSIONS = (1, 2, 3)


def _base_to_json(base: ControlBase) -> dict[str, Any]:
    out: dict[str, Any] = {
        f.name: getattr(base, f.name)
        for f in fields(base)
        if f.name != "unsupported" and getattr(base, f.name) is not None
    }
    if base.unsupported:
        out["unsupported"] = list(base.unsupported)
    return out


def _base_from_json(data: Mapping[str, Any]) -> ControlBase:
    known = {f.name for f in fields(ControlBase)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown control fields {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name == "unsupported":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("unsupported must be a list of element names")
            values[name] = tuple(value) or None
            continue
        elif name in ("connect", "energize"):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
        elif name == "ramp_tms":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("ramp_tms must be an integer")
        elif not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{name} must be a number")
        values[name] = value
    return ControlBase(**values)


def _int(data: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an integer")
    return value


def _str(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key)


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    return None if data.get(key) is None else _str(data, key)


def _event_to_json(e: DERControlEvent) -> dict[str, Any]:
    return {
        "mrid": e.mrid,
        "creation_time": e.creation_time,
        "start": e.start,
        "duration": e.duration,
        "base": _base_to_json(e.base),
        "primacy": e.primacy,
        "program_href": e.program_href,
        "href": e.href,
        "status": int(e.status),
        "randomize_start": e.randomize_start,
        "randomize_duration": e.randomize_duration,
        "response_required": e.response_required,
        "reply_to": e.reply_to,
        "description": e.description,
    }


def _event_from_json(d: Mapping[str, Any]) -> DERControlEvent:
    return DERControlEvent(
        mrid=_str(d, "mrid"),
        creation_time=_int(d, "creation_time"),
        start=_int(d, "start"),
        duration=_int(d, "duration"),
        base=_base_from_json(d.get("base", {})),
        primacy=_int(d, "primacy"),
        program_href=_str(d, "program_href", ""),
        href=_opt_str(d, "href"),
        status=EventStatus(_int(d, "status", 0)),
        randomize_start=_int(d, "randomize_start", 0),
        randomize_duration=_int(d, "randomize_duration", 0),
        response_required=_int(d, "response_required", 0),
        reply_to=_opt_str(d, "reply_to"),
        description=_str(d, "description", ""),
    )


def _default_to_json(d: DefaultControl) -> dict[str, Any]:
    return {
        "base": _base_to_json(d.base),
        "primacy": d.primacy,
        "program_href": d.program_href,
        "mrid": d.mrid,
        "set_grad_w": d.set_grad_w,
        "es_delay": d.es_delay,
        "es_randomize": d.es_randomize,
    }


def _default_from_json(d: Mapping[str, Any]) -> DefaultControl:
    return DefaultControl(
        base=_base_from_json(d.get("base", {})),
        primacy=_int(d, "primacy"),
        program_href=_str(d, "program_href", ""),
        mrid=_str(d, "mrid", ""),
        set_grad_w=_opt_int(d, "set_grad_w"),
        es_delay=_opt_int(d, "es_delay"),
        es_randomize=_opt_int(d, "es_randomize"),
    )


def program_to_json(p: ProgramControls) -> dict[str, Any]:
    return {
        "href": p.href,
        "primacy": p.primacy,
        "events": [_event_to_json(e) for e in p.events],
        "default": None if p.default is None else _default_to_json(p.default),
        "mrid": p.mrid,
        "description": p.description,
        "extra": dict(p.extra),
    }


def program_from_json(d: Mapping[str, Any]) -> ProgramControls:
    events = d.get("events", [])
    extra = d.get("extra", {})
    if not isinstance(events, list) or not isinstance(extra, dict):
        raise ValueError("events must be a list and extra an object")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise ValueError("extra must map strings to strings")
    default = d.get("default")
    if default is not None and not isinstance(default, dict):
        raise ValueError("default must be an object or null")
    return ProgramControls(
        href=_str(d, "href"),
        primacy=_int(d, "primacy"),
        events=tuple(_event_from_json(_obj(e)) for e in events),
        default=None if default is None else _default_from_json(default),
        mrid=_str(d, "mrid", ""),
        description=_str(d, "description", ""),
        extra=dict(extra),
    )


def _obj(value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected an object")
    return value


_FATE_FIELDS = ("mrid", "end", "nominal_end", "finished", "at", "stops")


def _fate_to_json(f: EventFate) -> list[Any]:
    """One remembered event as a positional array (version 3): a day of them is about half the
    bytes of keyed objects, and this is the part of ``schedule.json`` that grows."""
    out: list[Any] = [f.mrid, f.end, f.nominal_end]
    if f.finished is not None or f.stops:
        out += [None if f.finished is None else f.finished.value, f.at]
    if f.stops:
        out.append([[k.value, t] for k, t in f.stops])
    return out


def _fate_from_json(raw: object) -> EventFate:
    if isinstance(raw, list):  # version 3: [mrid, end, nominal_end, finished?, at?, stops?]
        if not 3 <= len(raw) <= len(_FATE_FIELDS):
            raise ValueError("a remembered event must have 3 to 6 fields")
        d: Mapping[str, Any] = dict(zip(_FATE_FIELDS, raw, strict=False))
    else:
        d = _obj(raw)
    finished = d.get("finished")
    if finished is not None and finished not in {f.value for f in Finish}:
        raise ValueError(f"unknown finish {finished!r}")
    stops = d.get("stops", [])
    if not isinstance(stops, list):
        raise ValueError("stops must be a list")
    parsed: list[tuple[ControlType, int]] = []
    for item in stops:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError("a stop must be [control type, time]")
        if not isinstance(item[1], int) or isinstance(item[1], bool):
            raise ValueError("a stop time must be an integer")
        parsed.append((ControlType(item[0]), item[1]))
    at = _opt_int(d, "at")
    if (finished is None) != (at is None):
        raise ValueError("finished and at go together")
    return EventFate(
        mrid=sys.intern(_str(d, "mrid")),
        end=_int(d, "end"),
        nominal_end=_int(d, "nominal_end"),
        finished=None if finished is None else Finish(finished),
        at=at,
        stops=tuple(parsed),
    )


@dataclass(frozen=True)
class _StrictestKept:
    """`ScheduleSnapshot.strictest_ahead`'s stretches for one minute's span, and its answers
    by the first stretch counted."""

    span: tuple[str, int, int]
    segments: tuple[Segment, ...]
    ends: tuple[int, ...]
    answers: dict[int, ActiveControls]


@dataclass(frozen=True)
class ScheduleSnapshot:
    """The last complete schedule fetched, kept on disk so a reboot without network still obeys it.

    On communications loss the stored events keep running and then the stored defaults apply
    (CSIP-AUS harness ALL-23: "continue to follow the DERControl schedule and then reduce to the
    DefaultDERControl"; ALL-30 after a restart). It carries the `ScheduleMemory` of events
    finished for good, and every question asked through it honours that memory. Build the next
    one with `successor` (never from scratch) so the memory carries over.
    """

    programs: tuple[ProgramControls, ...]
    fetched_at: int
    """Server time of the fetch."""
    clock_offset: int = 0
    """Seconds to add to the local clock to get server time (from the Time resource)."""
    extra: dict[str, str] = field(default_factory=dict)
    memory: ScheduleMemory = field(default_factory=ScheduleMemory)

    def server_time(self, local_now: float) -> int:
        """The server-clock time the scheduler must be asked about."""
        return int(local_now) + self.clock_offset

    def successor(
        self,
        programs: Sequence[ProgramControls],
        fetched_at: int,
        clock_offset: int,
        seed: str,
        extra: Mapping[str, str] | None = None,
    ) -> ScheduleSnapshot:
        """The snapshot of a new complete listing fetched at ``fetched_at`` (server time).

        The memory learns what happened under this snapshot's programs until then (supersessions,
        completions), which events left the list (`vanished_finish`) and what the new list settles,
        so nothing finished can come back (see `remember`). An event the server dropped at its
        scheduled end runs on until its effective end (`running_tails`)."""
        current = running_tails(self.programs, tuple(programs), fetched_at, seed, self.memory)
        return ScheduleSnapshot(
            programs=current,
            fetched_at=fetched_at,
            clock_offset=clock_offset,
            extra=dict(self.extra if extra is None else extra),
            memory=remember(self.memory, self.programs, self.fetched_at, current, fetched_at, seed),
        )

    @classmethod
    def first(
        cls,
        programs: Sequence[ProgramControls],
        fetched_at: int,
        clock_offset: int,
        seed: str,
        previous: ScheduleSnapshot | None = None,
    ) -> ScheduleSnapshot:
        """``previous.successor(...)``, or the first snapshot ever when there is none."""
        base = previous if previous is not None else cls((), fetched_at, clock_offset)
        return base.successor(programs, fetched_at, clock_offset, seed)

    def active_controls(self, local_now: float, seed: str) -> ActiveControls:
        """The controls in force at local time ``local_now``."""
        return self.active_at(self.server_time(local_now), seed)

    def active_at(self, server_now: int, seed: str) -> ActiveControls:
        """The controls in force at ``server_now`` (server clock)."""
        return active_controls(self.programs, server_now, seed, self.memory)

    def schedule(self, server_start: int, server_end: int, seed: str) -> list[Segment]:
        """`schedule_between` over these programs with this memory (server clock)."""
        return schedule_between(self.programs, server_start, server_end, seed, self.memory)

    def strictest_ahead(self, local_now: float, seed: str) -> ActiveControls:
        """What obeys this schedule at any time from the local clock ``local_now`` (less a
        negative stored offset) to `UNVERIFIED_AHEAD_S` after it (plus a positive one), or after
        the fetch if that was later: the controls while the clock is not known to be right.

        A clock that started from its last saved time (a Pi has no real-time clock) is behind,
        never ahead, so the true time is in that span unless the power was off for longer, and
        then every stored event has ended and the defaults, among the candidates, are in force.
        A clock behind the fetch itself (its saved time lost: systemd starts from its build date)
        is behind by at least that much, so the span reaches a week past the fetch.

        The stretches of the span, widened to whole minutes, are worked out once a minute (over a
        stored schedule of thousands of events that cost about 15 ms, and it is asked at every
        control decision); each answer is taken from those that end after the exact start, so
        the storage target and setGradW are those of the clock's own time, and a stretch that
        has ended no longer counts."""
        wall = int(local_now)
        start = wall + min(self.clock_offset, 0)
        end = max(wall + max(self.clock_offset, 0), self.fetched_at) + UNVERIFIED_AHEAD_S
        span = (seed, start - start % 60, end + -end % 60)
        kept: _StrictestKept | None = self.__dict__.get("_strictest")
        if kept is None or kept.span != span:
            segments = schedule_between(self.programs, span[1], span[2], seed, self.memory)
            kept = _StrictestKept(span, tuple(segments), tuple(s.end for s in segments), {})
            self.__dict__["_strictest"] = kept
        first = bisect.bisect_right(kept.ends, start)  # the stretch holding ``start``
        answer = kept.answers.get(first)
        if answer is None:
            answer = strictest([seg.controls for seg in kept.segments[first:]])
            kept.answers[first] = answer
        return answer

    def next_change(self, server_now: int, seed: str) -> int | None:
        """`next_change` over these programs with this memory (server clock)."""
        return next_change(self.programs, server_now, seed, self.memory)

    def resolution(self, seed: str) -> Resolution:
        return resolve(self.programs, seed, self.memory)

    def to_json(self) -> str:
        """Compact JSON; the memory (what grows over a day) is encoded one entry at a time, so
        writing it never holds the encoder's token list of all of them."""
        dump = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
        head = dump(
            {
                "version": SNAPSHOT_VERSION,
                "fetched_at": self.fetched_at,
                "clock_offset": self.clock_offset,
                "programs": [program_to_json(p) for p in self.programs],
                "extra": dict(self.extra),
            }
        )
        memory = ",".join(dump(_fate_to_json(f)) for f in self.memory.fates)
        return f'{head[:-1]},"memory":[{memory}]}}'

    @classmethod
    def from_json(cls, text: str | bytes) -> ScheduleSnapshot:
        """Parse a stored snapshot; ValueError on anything malformed (never a half schedule).

        Whatever a damaged file makes the parser raise (a value of the wrong type deep inside,
        nesting too deep for the decoder) is that ValueError: the caller sets the file aside
        and starts without it. An AttributeError escaping here stopped the service at every
        start, so systemd rebooted the appliance over and over with no limit written."""
        return parsed_or_value_error(lambda: cls._from_json(text), "snapshot")

    @classmethod
    def _from_json(cls, text: str | bytes) -> ScheduleSnapshot:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"snapshot is not JSON: {exc}") from exc
        data = _obj(data)
        if data.get("version") not in _READABLE_VERSIONS:
            raise ValueError(f"unsupported snapshot version {data.get('version')!r}")
        programs = data.get("programs")
        extra = data.get("extra", {})
        memory = data.get("memory", [])
        if not isinstance(programs, list) or not isinstance(extra, dict):
            raise ValueError("programs must be a list and extra an object")
        if not isinstance(memory, list):
            raise ValueError("memory must be a list")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise ValueError("extra must map strings to strings")
        try:
            parsed = tuple(program_from_json(_obj(p)) for p in programs)
            fates = tuple(_fate_from_json(f) for f in memory)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed snapshot: {exc}") from exc
        return cls(
            programs=parsed,
            fetched_at=_int(data, "fetched_at"),
            clock_offset=_int(data, "clock_offset", 0),
            extra=dict(extra),
            memory=ScheduleMemory(fates),
        )
