"""Which DERControlResponses are due: a pure, persistable state machine.

The I/O layer calls :func:`update` after every poll and on every tick with the programs in force
and the server time, POSTs what :func:`sendable` returns to each ``replyTo``, and calls
:func:`mark_sent` once the server accepted one. The tracker is plain data (``to_json`` /
``from_json``) so it is written to disk atomically after each change: an unsent response is
retried after a restart and a decided one is never decided again (delivery is at-least-once only
if the process dies between the server's 2xx and persisting ``mark_sent``).

Statuses (IEEE 2030.5 Table 27, the subset SAPN's handbook §8.3 and CSIP-AUS require):
1 received, 2 started, 3 completed, 6 cancelled, 7 superseded. The harness (ALL-18) wants them in
the order 1 → 2 → 3 per control, and every control to have a 1 (ALL-18/21/24 criteria).

``responseRequired`` (sep.xsd, HexBinary8 bit assignments): bit 0 "End device shall indicate that
message was received" → status 1; bit 1 "End device shall indicate specific response" → the event
responses 2, 3, 6, 7; bit 2 "End user / customer response is required" → opt-in/out, which an
unattended appliance never sends. Without ``replyTo`` nothing can be sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from dynexport.sep2.controls import (
    DERControlEvent,
    EventStatus,
    ProgramControls,
    ResponseStatus,
)
from dynexport.sep2.schedule import EventPlan, effective_window, resolve

REQUIRE_RECEIVED = 0x01
REQUIRE_SPECIFIC = 0x02
REQUIRE_USER = 0x04

TERMINAL = frozenset(
    {ResponseStatus.COMPLETED, ResponseStatus.CANCELLED, ResponseStatus.SUPERSEDED}
)
RETAIN_S = 86_400
"""Finished events no longer listed are forgotten this long after their end, so a list glitch that
brings one back within a day cannot produce a second "received"."""
MAX_PENDING = 1000
"""Bound on unsent responses (oldest dropped first) so a server that never accepts cannot exhaust
memory or the disk."""

_TRACKER_VERSION = 1
_T = TypeVar("_T")
_CANCELLED = frozenset({EventStatus.CANCELLED, EventStatus.CANCELLED_WITH_RANDOMIZATION})


def required(response_required: int, status: ResponseStatus) -> bool:
    """Whether ``responseRequired`` asks for this status (bit 0 → 1; bit 1 → 2, 3, 6, 7)."""
    if status is ResponseStatus.RECEIVED:
        return bool(response_required & REQUIRE_RECEIVED)
    if status in (ResponseStatus.OPTED_OUT, ResponseStatus.OPTED_IN):
        return bool(response_required & REQUIRE_USER)
    return bool(response_required & REQUIRE_SPECIFIC)


@dataclass(frozen=True)
class PendingResponse:
    """One DERControlResponse to POST: ``subject`` = mRID, ``createdDateTime`` = ``created``."""

    mrid: str
    status: ResponseStatus
    reply_to: str
    created: int
    """Server time at which the status occurred (never before the event was received)."""


@dataclass(frozen=True)
class TrackedEvent:
    """What the tracker remembers of one event it has seen."""

    mrid: str
    reply_to: str | None
    response_required: int
    received_at: int
    end: int
    """Effective end when last seen (server time); used for vanished events and forgetting."""
    decided: tuple[ResponseStatus, ...] = ()
    """Every status reached, in order, whether or not the server asked to be told."""

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
        return json.dumps(
            {
                "version": _TRACKER_VERSION,
                "events": [
                    {
                        "mrid": e.mrid,
                        "reply_to": e.reply_to,
                        "response_required": e.response_required,
                        "received_at": e.received_at,
                        "end": e.end,
                        "decided": [int(s) for s in e.decided],
                    }
                    for e in self.events
                ],
                "pending": [
                    {
                        "mrid": p.mrid,
                        "status": int(p.status),
                        "reply_to": p.reply_to,
                        "created": p.created,
                    }
                    for p in self.pending
                ],
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ResponseTracker:
        """Parse a stored tracker; ValueError on anything malformed."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tracker is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != _TRACKER_VERSION:
            raise ValueError("not a response tracker of a supported version")
        events, pending = data.get("events"), data.get("pending")
        if not isinstance(events, list) or not isinstance(pending, list):
            raise ValueError("events and pending must be lists")
        try:
            return cls(
                events=tuple(
                    TrackedEvent(
                        mrid=_typed(e["mrid"], str),
                        reply_to=None if e["reply_to"] is None else _typed(e["reply_to"], str),
                        response_required=_typed(e["response_required"], int),
                        received_at=_typed(e["received_at"], int),
                        end=_typed(e["end"], int),
                        decided=tuple(ResponseStatus(_typed(s, int)) for s in e["decided"]),
                    )
                    for e in events
                ),
                pending=tuple(
                    PendingResponse(
                        mrid=_typed(p["mrid"], str),
                        status=ResponseStatus(_typed(p["status"], int)),
                        reply_to=_typed(p["reply_to"], str),
                        created=_typed(p["created"], int),
                    )
                    for p in pending
                ),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed tracker: {exc}") from exc


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"expected {kind.__name__}, got {value!r}")
    return value


def _steps(
    tracked: TrackedEvent,
    event: DERControlEvent | None,
    plan: EventPlan | None,
    now: int,
) -> list[tuple[ResponseStatus, int]]:
    """The statuses newly reached by ``now``, in order, each with the time it occurred."""
    done = set(tracked.decided)
    steps: list[tuple[ResponseStatus, int]] = []

    def reach(status: ResponseStatus, at: int) -> None:
        if status not in done:
            done.add(status)
            steps.append((status, at))

    reach(ResponseStatus.RECEIVED, now)
    if event is None:  # vanished from the server's list: treated as cancelled
        if ResponseStatus.STARTED in done and now >= tracked.end:
            reach(ResponseStatus.COMPLETED, tracked.end)
        else:
            reach(ResponseStatus.CANCELLED, now)
    elif event.status in _CANCELLED:
        reach(ResponseStatus.CANCELLED, now)
    elif event.status is EventStatus.SUPERSEDED:
        reach(ResponseStatus.SUPERSEDED, now)
    elif plan is not None:
        superseded_at = plan.superseded_at
        if superseded_at is not None:
            if plan.ran and now >= plan.start:
                reach(ResponseStatus.STARTED, plan.start)
            if now >= superseded_at:
                reach(ResponseStatus.SUPERSEDED, superseded_at)
        else:
            if now >= plan.start:
                reach(ResponseStatus.STARTED, plan.start)
            if now >= plan.end:
                reach(ResponseStatus.COMPLETED, plan.end)
    return steps


def update(
    tracker: ResponseTracker, programs: Sequence[ProgramControls], now: int, seed: str
) -> ResponseTracker:
    """Advance the tracker to ``now`` (server time) given the complete current programs.

    New events get "received"; then "started" when they begin to run, "completed" when they end,
    "superseded" when a better event terminates them (or the server marks them 4), "cancelled" when
    the server cancels them or they vanish from the list. Events first seen after their end are
    ignored. Each status is decided once per mRID; once 3, 6 or 7 is decided, nothing follows.
    Pass only complete listings: a missing page would look like cancelled events.
    """
    plans = {p.event.mrid: p for p in resolve(programs, seed).plans}
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
        plan = plans.get(mrid)
        if plan is not None:
            end = plan.end
        elif event is not None:
            end = effective_window(event, seed)[1]
        else:
            end = known.end if known is not None else now
        if known is None:
            if event is None or end <= now:
                return  # first seen when already over: history, not a control
            known = TrackedEvent(
                mrid=mrid,
                reply_to=event.reply_to,
                response_required=event.response_required,
                received_at=now,
                end=end,
            )
            order.append(mrid)
        elif event is not None:
            known = replace(
                known, reply_to=event.reply_to, response_required=event.response_required, end=end
            )
        steps = _steps(known, event, plan, now)
        for status, at in steps:
            created = min(now, max(known.received_at, at))
            if known.reply_to and required(known.response_required, status):
                response = PendingResponse(mrid, status, known.reply_to, created)
                new_due.append((created, len(new_due), response))
        known = replace(known, decided=known.decided + tuple(s for s, _ in steps))
        tracked[mrid] = known

    for mrid in sorted(current, key=lambda m: (current[m].start, m)):
        visit(mrid, current[mrid])
    for mrid in list(tracked):
        if mrid not in current:
            visit(mrid, None)

    kept = tuple(
        tracked[m]
        for m in order
        if m in tracked
        and not (tracked[m].finished and m not in current and now >= tracked[m].end + RETAIN_S)
    )
    pending = tracker.pending + tuple(r for _, _, r in sorted(new_due, key=lambda x: x[:2]))
    return ResponseTracker(events=kept, pending=pending[-MAX_PENDING:])


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
