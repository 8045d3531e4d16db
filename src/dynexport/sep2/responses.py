"""Which DERControlResponses are due: a pure, persistable state machine.

The I/O layer calls :func:`update` after every poll and on every tick with the programs in force
and the server time, POSTs what :func:`sendable` returns to each ``replyTo``, and calls
:func:`mark_sent` once the server accepted one. The tracker is plain data (``to_json`` /
``from_json``) so it is written to disk atomically after each change: an unsent response is
retried after a restart and a decided one is never decided again (delivery is at-least-once only
if the process dies between the server's 2xx and persisting ``mark_sent``).

Statuses (IEEE 2030.5 Table 27, the subset SAPN's handbook §8.3 and CSIP-AUS require):
1 received, 2 started, 3 completed, 6 cancelled, 7 superseded, and 252 "rejected: control
parameter not applicable" for an event that sets none of the controls this site enforces
(`controls.ENFORCED_CONTROLS`). The harness (ALL-18) wants them in the order 1 → 2 → 3 per
control, and every control to have a 1 (ALL-18/21/24 criteria). Per mRID the statuses sent are
always a prefix of 1, [2], one final status (3, 6, 7 or 252): never anything after a final
status, never one twice, never out of order (a property test holds it over random histories).

``responseRequired`` (sep.xsd, HexBinary8 bit assignments): bit 0 "End device shall indicate that
message was received" → status 1; bit 1 "End device shall indicate specific response" → the event
responses 2, 3, 6, 7; bit 2 "End user / customer response is required" → opt-in/out, which an
unattended appliance never sends. Without ``replyTo`` nothing can be sent.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from dynexport.sep2.controls import (
    ENFORCED_CONTROLS,
    ControlType,
    DERControlEvent,
    EventStatus,
    ProgramControls,
    ResponseStatus,
    can_perform,
)
from dynexport.sep2.schedule import (
    EventPlan,
    Finish,
    ScheduleMemory,
    effective_window,
    resolve,
    vanished_finish,
)
from dynexport.sep2.stored import parsed_or_value_error

REQUIRE_RECEIVED = 0x01
REQUIRE_SPECIFIC = 0x02
REQUIRE_USER = 0x04

TERMINAL = frozenset(
    {
        ResponseStatus.COMPLETED,
        ResponseStatus.CANCELLED,
        ResponseStatus.SUPERSEDED,
        ResponseStatus.REJECTED_NOT_APPLICABLE,
    }
)
RETAIN_S = 86_400
"""Finished events no longer listed are forgotten this long after their end, so a list glitch that
brings one back within a day cannot produce a second "received"."""
MAX_PENDING = 1000
"""Bound on unsent responses (oldest dropped first) so a server that never accepts cannot exhaust
memory or the disk."""

_TRACKER_VERSION = 2
"""2 writes each event and response as a positional array (less than half the bytes of keyed
objects, and no dict per entry while writing); version 1 files are still read."""
_READABLE_VERSIONS = (1, 2)
_EVENT_FIELDS = (
    "mrid",
    "reply_to",
    "response_required",
    "received_at",
    "end",
    "decided",
    "nominal_end",
    "last_at",
    "muted",
)
_PENDING_FIELDS = ("mrid", "status", "reply_to", "created")
_T = TypeVar("_T")
_CANCELLED = frozenset({EventStatus.CANCELLED, EventStatus.CANCELLED_WITH_RANDOMIZATION})
_SETTLED = _CANCELLED | {EventStatus.SUPERSEDED}
_JUST_RECEIVED = (ResponseStatus.RECEIVED,)


def required(response_required: int, status: ResponseStatus) -> bool:
    """Whether ``responseRequired`` asks for this status (bit 0 → 1; bit 1 → 2, 3, 6, 7)."""
    if status is ResponseStatus.RECEIVED:
        return bool(response_required & REQUIRE_RECEIVED)
    if status in (ResponseStatus.OPTED_OUT, ResponseStatus.OPTED_IN):
        return bool(response_required & REQUIRE_USER)
    return bool(response_required & REQUIRE_SPECIFIC)


@dataclass(frozen=True, slots=True)
class PendingResponse:
    """One DERControlResponse to POST: ``subject`` = mRID, ``createdDateTime`` = ``created``."""

    mrid: str
    status: ResponseStatus
    reply_to: str
    created: int
    """Server time at which the status occurred (never before the event was received)."""


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """What the tracker remembers of one event it has seen.

    Slotted, and only strings, ints and a shared tuple (never the parsed event): finished ones
    are kept for a day (`RETAIN_S`), so this is what each event costs. ``reply_to`` is interned
    (a server gives every event the same one) and ``decided`` is one of a few shared tuples."""

    mrid: str
    reply_to: str | None
    response_required: int
    received_at: int
    end: int
    """Effective end when last seen (server time); used for vanished events and forgetting."""
    decided: tuple[ResponseStatus, ...] = ()
    """Every status reached, in order, whether or not the server asked to be told."""
    nominal_end: int | None = None
    """Scheduled end (start + duration) when last seen: an event leaving the list at or after it
    completed (ALL-22), only one leaving before it was cancelled. None in trackers from before."""
    last_at: int = 0
    """createdDateTime of the latest status: a later status never carries an earlier time."""
    muted: bool = False
    """A response of this event was dropped by the queue bound: nothing more is sent for it, so
    what the server saw stays a prefix of 1, 2, final (never a 2 without its 1)."""

    @property
    def finished(self) -> bool:
        return any(s in TERMINAL for s in self.decided)


@dataclass(frozen=True)
class ResponseTracker:
    """Persisted state: the events seen and the responses not yet accepted by the server."""

    events: tuple[TrackedEvent, ...] = ()
    pending: tuple[PendingResponse, ...] = ()

    def event(self, mrid: str) -> TrackedEvent | None:
        return next((e for e in self.events if e.mrid == mrid), None)

    def to_json(self) -> str:
        """Compact JSON, one entry encoded at a time: encoding the whole structure at once made
        a token list ten times the file's size (1.7 MiB for a day of events)."""
        dump = json.JSONEncoder(separators=(",", ":")).encode
        events = ",".join(
            dump(
                [
                    e.mrid,
                    e.reply_to,
                    e.response_required,
                    e.received_at,
                    e.end,
                    [int(s) for s in e.decided],
                    e.nominal_end,
                    e.last_at,
                    e.muted,
                ]
            )
            for e in self.events
        )
        pending = ",".join(
            dump([p.mrid, int(p.status), p.reply_to, p.created]) for p in self.pending
        )
        return f'{{"version":{_TRACKER_VERSION},"events":[{events}],"pending":[{pending}]}}'

    @classmethod
    def from_json(cls, text: str | bytes) -> ResponseTracker:
        """Parse a stored tracker (version 2, or 1 as written before); ValueError on anything
        malformed, whatever a damaged file makes the parser raise (the caller sets it aside)."""
        return parsed_or_value_error(lambda: cls._from_json(text), "tracker")

    @classmethod
    def _from_json(cls, text: str | bytes) -> ResponseTracker:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tracker is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") not in _READABLE_VERSIONS:
            raise ValueError("not a response tracker of a supported version")
        events, pending = data.get("events"), data.get("pending")
        if not isinstance(events, list) or not isinstance(pending, list):
            raise ValueError("events and pending must be lists")
        try:
            return cls(
                events=tuple(_event_from_json(_fields(e, _EVENT_FIELDS)) for e in events),
                pending=tuple(
                    PendingResponse(
                        mrid=sys.intern(_typed(p["mrid"], str)),
                        status=ResponseStatus(_typed(p["status"], int)),
                        reply_to=sys.intern(_typed(p["reply_to"], str)),
                        created=_typed(p["created"], int),
                    )
                    for p in (_fields(q, _PENDING_FIELDS) for q in pending)
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed tracker: {exc}") from exc


def _fields(raw: object, names: tuple[str, ...]) -> Mapping[str, object]:
    """An entry as keys: a version 2 positional array, or a version 1 object."""
    if isinstance(raw, list):
        if len(raw) != len(names):
            raise ValueError(f"an entry must have {len(names)} fields, not {len(raw)}")
        return dict(zip(names, raw, strict=True))
    if not isinstance(raw, dict):
        raise ValueError("an entry must be an array or an object")
    return raw


def _event_from_json(e: Mapping[str, object]) -> TrackedEvent:
    decided = e["decided"]
    if not isinstance(decided, list):
        raise ValueError("decided must be a list")
    return TrackedEvent(
        mrid=sys.intern(_typed(e["mrid"], str)),
        reply_to=_shared(None if e["reply_to"] is None else _typed(e["reply_to"], str)),
        response_required=_typed(e["response_required"], int),
        received_at=_typed(e["received_at"], int),
        end=_typed(e["end"], int),
        decided=_decided(tuple(ResponseStatus(_typed(s, int)) for s in decided)),
        nominal_end=None if e.get("nominal_end") is None else _typed(e["nominal_end"], int),
        last_at=_typed(e.get("last_at", e["received_at"]), int),
        muted=_typed(e.get("muted", False), bool),
    )


def _shared(reply_to: str | None) -> str | None:
    """One string object for every event's (usually identical) replyTo."""
    return None if reply_to is None else sys.intern(reply_to)


_DECIDED: dict[tuple[ResponseStatus, ...], tuple[ResponseStatus, ...]] = {}


def _decided(statuses: tuple[ResponseStatus, ...]) -> tuple[ResponseStatus, ...]:
    """One shared tuple per sequence of statuses (there are a handful: 1; 1, 2; 1, 2, 3 ...)."""
    found = _DECIDED.get(statuses)
    if found is None:
        if len(_DECIDED) >= 256:  # only odd histories get here; never grow without bound
            return statuses
        found = _DECIDED[statuses] = statuses
    return found


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"expected {kind.__name__}, got {value!r}")
    return value


_FINISH_STATUS = {
    Finish.COMPLETED: ResponseStatus.COMPLETED,
    Finish.CANCELLED: ResponseStatus.CANCELLED,
    Finish.SUPERSEDED: ResponseStatus.SUPERSEDED,
}


def _steps(
    tracked: TrackedEvent,
    event: DERControlEvent | None,
    plan: EventPlan | None,
    now: int,
    memory: ScheduleMemory | None,
    enforced: frozenset[ControlType],
) -> list[tuple[ResponseStatus, int]]:
    """The statuses newly reached by ``now``, in order, each with the time it occurred."""
    done = set(tracked.decided)
    steps: list[tuple[ResponseStatus, int]] = []

    def reach(status: ResponseStatus, at: int) -> None:
        if status not in done and not (status in TERMINAL and not done.isdisjoint(TERMINAL)):
            done.add(status)
            steps.append((status, at))

    reach(ResponseStatus.RECEIVED, now)
    fate = None if memory is None else memory.get(tracked.mrid)
    if fate is not None and fate.finished is not None and fate.at is not None and fate.at <= now:
        # The schedule already settled it for good; say the same (started first if it ran).
        if plan is not None and plan.ran and plan.start < fate.at:
            reach(ResponseStatus.STARTED, plan.start)
        reach(_FINISH_STATUS[fate.finished], fate.at)
    elif event is None:  # left the server's list: completed at/after its end, else cancelled
        nominal = tracked.end if tracked.nominal_end is None else tracked.nominal_end
        if vanished_finish(nominal, tracked.end, now) is Finish.COMPLETED:
            reach(ResponseStatus.COMPLETED, min(now, tracked.end))
        else:
            reach(ResponseStatus.CANCELLED, now)
    elif event.status in _CANCELLED:
        reach(ResponseStatus.CANCELLED, now)
    elif event.status is EventStatus.SUPERSEDED:
        reach(ResponseStatus.SUPERSEDED, now)
    elif not can_perform(event.base, enforced):
        # Sets only controls this site does not enforce (or none at all): say so at once, and
        # never claim to have started or completed it.
        reach(ResponseStatus.REJECTED_NOT_APPLICABLE, now)
    elif plan is not None:
        superseded_at = plan.superseded_at
        if superseded_at is not None:
            if plan.ran and now >= plan.start:
                reach(ResponseStatus.STARTED, plan.start)
            if now >= superseded_at:
                reach(ResponseStatus.SUPERSEDED, superseded_at)
        else:
            # An event whose window is empty (randomizeDuration shortened it to nothing, or an
            # adjacent better event left it no time) never runs: no 2. Its time is over at its
            # effective end all the same, and nothing cancelled, superseded or rejected it, so
            # its final status is 3 (completed), after 1 alone.
            if plan.ran and now >= plan.start:
                reach(ResponseStatus.STARTED, plan.start)
            if now >= plan.end:
                reach(ResponseStatus.COMPLETED, plan.end)
    return steps


def update(
    tracker: ResponseTracker,
    programs: Sequence[ProgramControls],
    now: int,
    seed: str,
    *,
    memory: ScheduleMemory | None = None,
    enforced: frozenset[ControlType] = ENFORCED_CONTROLS,
) -> ResponseTracker:
    """Advance the tracker to ``now`` (server time) given the complete current programs.

    New events get "received"; then "started" when they begin to run, "completed" when they end
    (or leave the list at or after their scheduled end, ALL-22), "superseded" when a better event
    terminates them (or the server marks them 4), "cancelled" when the server cancels them or they
    leave the list before their end, and "not applicable" (252) at once when they set none of the
    ``enforced`` controls. Pass the snapshot's ``memory`` so the answers agree with the schedule:
    an event it has finished for good gets that finish, and one it finished before the tracker
    ever saw it is history. Events first seen after their end are ignored. Each status is decided
    once per mRID; after a final one nothing follows. Pass only complete listings: a missing page
    would look like cancelled events.
    """
    resolution = resolve(programs, seed, memory)
    current: dict[str, DERControlEvent] = {}
    for program in programs:
        for event in program.events:
            current.setdefault(event.mrid, event)
    tracked = {e.mrid: e for e in tracker.events}
    order = list(tracked)  # keep the stored order, then new events by start
    new_due: list[tuple[int, int, PendingResponse]] = []

    def visit(mrid: str, event: DERControlEvent | None) -> None:
        known = tracked.get(mrid)
        if known is not None and known.finished:
            return
        plan = resolution.plan(mrid)
        if plan is not None:
            end = plan.end
        elif event is not None:
            end = effective_window(event, seed)[1]
        else:
            end = known.end if known is not None else now
        if known is None:
            if event is None or end <= now:
                return  # first seen when already over: history, not a control
            if memory is not None and memory.finished(mrid):
                return  # the schedule finished it before we tracked it: never in force again
            known = TrackedEvent(
                mrid=mrid,
                reply_to=_shared(event.reply_to),
                response_required=event.response_required,
                received_at=now,
                end=end,
                nominal_end=event.end,
                last_at=now,
            )
            order.append(mrid)
        elif event is not None and (
            known.reply_to != event.reply_to
            or known.response_required != event.response_required
            or known.end != end
            or known.nominal_end != event.end
        ):
            known = replace(
                known,
                reply_to=_shared(event.reply_to),
                response_required=event.response_required,
                end=end,
                nominal_end=event.end,
            )
        if (
            event is not None
            and plan is not None
            and now < plan.start
            and known.decided == _JUST_RECEIVED
            and event.status not in _SETTLED
            and (memory is None or memory.get(mrid) is None)
            and can_perform(event.base, enforced)
        ):
            tracked[mrid] = known  # received, not started yet: nothing can be due (the usual case)
            return
        steps = _steps(known, event, plan, now, memory, enforced)
        if not steps:
            tracked[mrid] = known
            return
        last = known.last_at
        for status, at in steps:
            # Never before it was received, never in the future, never before the previous one.
            last = min(now, max(known.received_at, last, at))
            if not known.muted and known.reply_to and required(known.response_required, status):
                response = PendingResponse(mrid, status, known.reply_to, last)
                new_due.append((last, len(new_due), response))
        tracked[mrid] = replace(
            known, decided=_decided(known.decided + tuple(s for s, _ in steps)), last_at=last
        )

    for mrid, event in current.items():  # known ones first, then new ones by start
        if mrid in tracked:
            visit(mrid, event)
    for mrid in sorted(
        (m for m in current if m not in tracked), key=lambda m: (current[m].start, m)
    ):
        visit(mrid, current[mrid])
    for mrid in list(tracked):
        if mrid not in current:
            visit(mrid, None)

    pending = tracker.pending
    if new_due:
        pending += tuple(r for _, _, r in sorted(new_due, key=lambda x: x[:2]))
    if len(pending) > MAX_PENDING:
        # Drop the oldest; an event that loses a response loses all its later ones too, so the
        # server never sees a 2 without its 1 or a 3 without its 2.
        excess = len(pending) - MAX_PENDING
        counts = Counter(p.mrid for p in pending)
        dropped: set[str] = set()
        for p in pending:
            if excess <= 0:
                break
            if p.mrid not in dropped:
                dropped.add(p.mrid)
                excess -= counts[p.mrid]
        pending = tuple(p for p in pending if p.mrid not in dropped)
        for mrid in dropped:
            if mrid in tracked:
                tracked[mrid] = replace(tracked[mrid], muted=True)
    kept = tuple(
        tracked[m]
        for m in order
        if m in tracked
        and not (tracked[m].finished and m not in current and now >= tracked[m].end + RETAIN_S)
    )
    if (
        pending is tracker.pending
        and len(kept) == len(tracker.events)
        and all(a is b for a, b in zip(kept, tracker.events, strict=True))
    ):
        return tracker  # nothing new (most ticks): the same object, nothing to save
    return ResponseTracker(events=kept, pending=pending)


def sendable(tracker: ResponseTracker) -> list[PendingResponse]:
    """The responses to POST now: per mRID only the oldest unsent, so 1 → 2 → 3 stays in order."""
    seen: set[str] = set()
    out: list[PendingResponse] = []
    for response in tracker.pending:
        if response.mrid not in seen:
            seen.add(response.mrid)
            out.append(response)
    return out


def mark_sent(tracker: ResponseTracker, mrid: str, status: ResponseStatus) -> ResponseTracker:
    """Record that the server accepted this response; it is never sent again."""
    return replace(
        tracker,
        pending=tuple(p for p in tracker.pending if (p.mrid, p.status) != (mrid, status)),
    )


def decided(tracker: ResponseTracker) -> Mapping[str, tuple[ResponseStatus, ...]]:
    """Per mRID the statuses reached so far (for the web UI and logs)."""
    return {e.mrid: e.decided for e in tracker.events}
