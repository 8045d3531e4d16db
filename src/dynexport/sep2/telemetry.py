"""Telemetry for the utility: interval averages of frequent samples, aligned to UTC boundaries.

CSIP-AUS asks for site and DER readings (W, var, V; optionally Hz, per phase, min and max; with
storage, the DER's stored energy in Wh) as
averages over intervals aligned to UTC (5 minutes by default, 1 minute must work; always whole
minutes starting on a minute boundary, which the CSIP-AUS test harness checks), computed from
samples taken at least every 5 s, and posted at the server's postRate. This module is the pure
part: it turns timestamped samples into closed intervals and keeps a bounded outbox that survives
an outage. Times are Unix seconds in the server's clock (the caller applies the clock offset).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dynexport.sep2.stored import parsed_or_value_error

# Reading kinds posted for each MirrorUsagePoint. The role names are ours; the XML layer maps them
# to roleFlags (site "03", DER "49"), quantity names to uom codes (W 38, var 63, V 29, Hz 33,
# Wh 72) and phase names to PhaseCode (A, B, C; "" for a total). ("der", "Wh") is the batteries'
# stored energy (state of charge × capacity), a total only: the storage procedures check it.
SITE = "site"
DER = "der"
QUANTITIES = ("W", "var", "V", "Hz", "Wh")
PHASES = ("A", "B", "C")

Key = tuple[str, ...]
"""``(role, quantity)`` for a total, ``(role, quantity, phase)`` for one phase."""
Values = (
    Mapping[tuple[str, str], float | None]
    | Mapping[tuple[str, str, str], float | None]
    | Mapping[Key, float | None]
)


@dataclass(frozen=True)
class Sample:
    """Instantaneous values at time ``t``; None where a quantity could not be read."""

    t: float
    values: Values
    """(role, quantity) → value, e.g. ("site", "W") → -1520.0 (negative = export); per phase
    (role, quantity, phase), e.g. ("site", "V", "B") → 241.3."""


@dataclass(frozen=True)
class IntervalReading:
    """One closed interval of one (role, quantity[, phase]): mean, min and max of its samples."""

    role: str
    quantity: str
    start: int
    duration: int
    mean: float
    minimum: float
    maximum: float
    samples: int
    phase: str = ""
    """"A", "B" or "C" for one phase; "" for the total (or the only value)."""

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass
class _Stats:
    total: float = 0.0
    count: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)


def interval_start(t: float, interval_s: int) -> int:
    """The UTC-aligned start of the interval holding ``t`` (e.g. 12:03:17 → 12:00:00 at 300 s)."""
    return int(t // interval_s) * interval_s


@dataclass
class IntervalAverager:
    """Accumulates samples into UTC-aligned intervals; closed intervals come out of ``add``.

    An interval with fewer than ``min_samples`` samples of a quantity (for example the first,
    partial interval after start-up) still reports what it has, because a short interval is
    better than a hole; the sample count travels with it for diagnostics.

    **A closed interval never reopens.** Each interval's readings are posted under a
    MirrorReadingSet mRID made from its start: reopened (a sample dated into it after a flush,
    or after the server clock offset moved back), it would be closed and posted again with
    other values under the same mRID. So a sample whose interval starts before ``floor`` (the
    end of the last interval closed) is dropped and counted in ``late``: a clock corrected
    backwards loses samples until it catches up, and never repeats an interval.
    """

    interval_s: int = 300
    floor: int | None = None
    """No interval starting before this is opened (again): the end of the last one closed. The
    caller carries it over when the interval length changes, and from the outbox's
    ``closed_until`` after a restart."""
    _start: int | None = None
    _stats: dict[Key, _Stats] = field(default_factory=dict)
    late: int = 0
    """Samples dropped because their interval was already closed (or passed)."""

    def __post_init__(self) -> None:
        # Whole minutes that divide a day: every interval then starts on a UTC minute boundary,
        # which the CSIP-AUS harness requires of every reading (seconds field zero).
        if self.interval_s <= 0 or self.interval_s % 60 or 86400 % self.interval_s:
            raise ValueError(
                f"interval must be whole minutes that divide a day evenly, not {self.interval_s} s"
            )

    def add(self, sample: Sample) -> list[IntervalReading]:
        """Adds a sample; returns the readings of any interval this sample closed. A sample
        dated into an interval already closed is dropped (`late`)."""
        start = interval_start(sample.t, self.interval_s)
        if self.floor is not None and start < self.floor:
            self.late += 1
            return []
        closed: list[IntervalReading] = []
        if self._start is not None and start != self._start:
            if start < self._start:
                # The clock stepped backwards (offset corrected) into intervals not closed yet:
                # the partial interval, dated by the wrong clock, is dropped, never sent.
                self._stats.clear()
            else:
                closed = self._close()
        self._start = start
        for key, value in sample.values.items():
            if value is None or not math.isfinite(value) or len(key) not in (2, 3):
                continue
            self._stats.setdefault(key, _Stats()).add(value)
        return closed

    def flush(self, now: float) -> list[IntervalReading]:
        """Closes the current interval if ``now`` is past its end (no sample arrived to do it);
        its end becomes the `floor`, so a later sample dated into it cannot reopen it."""
        if self._start is None or now < self._start + self.interval_s:
            return []
        return self._close()

    def _close(self) -> list[IntervalReading]:
        assert self._start is not None
        readings = [
            IntervalReading(
                role=key[0],
                quantity=key[1],
                start=self._start,
                duration=self.interval_s,
                mean=s.total / s.count,
                minimum=s.minimum,
                maximum=s.maximum,
                samples=s.count,
                phase=key[2] if len(key) > 2 else "",
            )
            for key, s in sorted(self._stats.items())
            if s.count
        ]
        self._stats = {}
        self.floor = self._start + self.interval_s
        self._start = None
        return readings


@dataclass
class Outbox:
    """Readings waiting to be posted, bounded so a long outage cannot exhaust memory or disk.

    When full, the oldest readings are dropped first (the utility cares most about the recent
    past) and the number dropped is kept so it can be logged and shown.
    """

    capacity: int = 2016
    """Interval readings (one per role, quantity and phase per interval), not intervals."""
    pending: deque[IntervalReading] = field(default_factory=deque)
    dropped: int = 0
    closed_until: int | None = None
    """The end of the latest interval ever put here (kept in ``telemetry.json``): after a
    restart no interval starting before it is averaged again (`IntervalAverager.floor`), so
    one already posted is never posted again with other values."""

    settled: set[str] = field(default_factory=set)
    """MirrorReadingSet mRIDs the server accepted (or that were dropped after refusals) whose
    readings are still pending (another series of the same interval is retried): never posted
    again, also after a restart (kept in ``telemetry.json``)."""

    def extend(self, readings: Iterable[IntervalReading]) -> None:
        for reading in readings:
            if self.closed_until is None or reading.end > self.closed_until:
                self.closed_until = reading.end
            self.pending.append(reading)
            while len(self.pending) > self.capacity:
                self.pending.popleft()
                self.dropped += 1

    def batch(self, limit: int) -> list[IntervalReading]:
        """The oldest ``limit`` readings, left in place until ``acknowledge`` removes them."""
        return list(self.pending)[:limit]

    def acknowledge(self, readings: Iterable[IntervalReading]) -> None:
        """Removes readings the server accepted."""
        done = set(readings)
        self.pending = deque(r for r in self.pending if r not in done)

    def to_json(self) -> dict[str, object]:
        return {
            "dropped": self.dropped,
            "closedUntil": self.closed_until,
            "settled": sorted(self.settled),
            "pending": [
                [
                    r.role,
                    r.quantity,
                    r.start,
                    r.duration,
                    r.mean,
                    r.minimum,
                    r.maximum,
                    r.samples,
                    r.phase,
                ]
                for r in self.pending
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], capacity: int = 2016) -> Outbox:
        """A stored outbox; ValueError on anything malformed, whatever a damaged file makes
        the parser raise (an infinite number raised OverflowError, which kept the utility link
        from starting for good)."""
        return parsed_or_value_error(lambda: cls._from_json(data, capacity), "outbox")

    @classmethod
    def _from_json(cls, data: Mapping[str, object], capacity: int) -> Outbox:
        box = cls(capacity=capacity)
        raw = data.get("pending", [])
        if not isinstance(raw, list):
            raise ValueError("telemetry outbox: 'pending' must be a list")
        readings = []
        for row in raw:
            # rows written before per-phase readings have no phase (9th field)
            role, quantity, start, duration, mean, lo, hi, n, *rest = row
            phase = str(rest[0]) if rest else ""
            readings.append(
                IntervalReading(
                    str(role),
                    str(quantity),
                    int(start),
                    int(duration),
                    float(mean),
                    float(lo),
                    float(hi),
                    int(n),
                    phase,
                )
            )
        box.extend(readings)
        dropped = data.get("dropped", 0)
        box.dropped += int(dropped) if isinstance(dropped, int) else 0
        settled = data.get("settled", [])
        if isinstance(settled, list):
            box.settled = {m for m in settled if isinstance(m, str)}
        closed = data.get("closedUntil")
        # absent in files written before it; the pending readings' ends bound it from below
        if isinstance(closed, int) and not isinstance(closed, bool):
            box.closed_until = max(closed, box.closed_until or closed)
        return box
