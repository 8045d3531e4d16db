"""Power history on the device: SQLite on the data folder, written in batches.

One sample a second (site power, PV power, the export and generation limits in force, the
battery's state of charge and power, each inverter's power) is kept in memory and written at most
once a minute, together with its one-minute and fifteen-minute means, to spare the SD card.
Retention: 1 s rows for a day, 1 min rows for 31 days, 15 min rows for years, and the file is kept
under ``max_bytes`` (100 MB) by dropping the oldest 15 min rows if it ever grows that far.
sqlite3 calls run in a worker thread. SQLite's page cache is held to ``CACHE_KIB``: at its 2 MiB
default it grew with the file (about 0.2 MiB an hour of 1 s rows) until the service was 2 MiB
larger after ten hours; writes append and reads are rare, so the OS page cache serves them.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dynexport.system.storage import set_aside

log = logging.getLogger("dynexport.web.history")

RESOLUTIONS = (1, 60, 900)
RETENTION_S = {1: 86400, 60: 31 * 86400, 900: None}
MAX_BYTES = 100 * 1024 * 1024
FLUSH_EVERY_S = 60.0
MAX_POINTS = 10000

MAX_PENDING_ROWS = 3600
"""Rows of one resolution kept for the next flush when a write fails (an hour of 1 s rows)."""

CACHE_KIB = 256
"""SQLite page cache per connection (``PRAGMA cache_size``); see the module's docstring."""
FIELDS = ("site", "der", "export_limit", "gen_limit", "battery_soc", "battery")
API_NAMES = {
    "site": "siteW",
    "der": "derW",
    "export_limit": "exportLimitW",
    "gen_limit": "generationLimitW",
    "battery_soc": "batterySocPct",
    "battery": "batteryW",
}
BASE_FIELDS = FIELDS[:4]
"""The columns of ``samples``, unchanged since the first release."""
BATTERY_FIELDS = FIELDS[4:]
"""Kept in their own table, ``battery``: a database from an earlier version opens unchanged
(its rows simply have no battery values), and an earlier version (after a rollback) still
writes ``samples`` as it always did."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    res INTEGER NOT NULL,
    t INTEGER NOT NULL,
    site REAL, der REAL, export_limit REAL, gen_limit REAL,
    inverters TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (res, t)
) WITHOUT ROWID
"""
_SCHEMA_BATTERY = """
CREATE TABLE IF NOT EXISTS battery (
    res INTEGER NOT NULL,
    t INTEGER NOT NULL,
    battery_soc REAL, battery REAL,
    PRIMARY KEY (res, t)
) WITHOUT ROWID
"""
_LAYOUT_PROBES = (
    "SELECT res, t, site, der, export_limit, gen_limit, inverters FROM samples LIMIT 1",
    "SELECT res, t, battery_soc, battery FROM battery LIMIT 1",
)


@dataclass
class Row:
    """One sample or one mean over ``res`` seconds starting at ``t`` (unix seconds)."""

    t: int
    values: dict[str, float | None]
    inverters: dict[str, float | None]


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def row_from_status(status: dict[str, Any], t: float) -> Row:
    """The history sample in a status document (app.status())."""
    limits = status.get("limits") or {}
    battery = status.get("battery") or {}
    if not battery.get("configured"):
        battery = {}
    return Row(
        t=int(t),
        values={
            "site": _num((status.get("site") or {}).get("powerW")),
            "der": _num((status.get("der") or {}).get("powerW")),
            "export_limit": _num(limits.get("exportW")),
            "gen_limit": _num(limits.get("generationW")),
            "battery_soc": _num(battery.get("socPct")),
            "battery": _num(battery.get("powerW")),
        },
        inverters={
            str(inv.get("id")): _num(inv.get("powerW")) for inv in status.get("inverters") or []
        },
    )


@dataclass
class _Mean:
    """Running sums for the mean of rows falling in one bucket."""

    t: int
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    inv_sums: dict[str, float] = field(default_factory=dict)
    inv_counts: dict[str, int] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        for k, v in row.values.items():
            if v is not None:
                self.sums[k] = self.sums.get(k, 0.0) + v
                self.counts[k] = self.counts.get(k, 0) + 1
        for k, v in row.inverters.items():
            self.inv_counts.setdefault(k, 0)
            if v is not None:
                self.inv_sums[k] = self.inv_sums.get(k, 0.0) + v
                self.inv_counts[k] += 1

    def row(self) -> Row:
        return Row(
            self.t,
            {k: (self.sums[k] / self.counts[k] if self.counts.get(k) else None) for k in FIELDS},
            {k: (self.inv_sums[k] / n if n else None) for k, n in sorted(self.inv_counts.items())},
        )


@dataclass
class _StepSums:
    """Sums and counts of the values in each step of an answer, keyed by the step's index from
    ``start``: one short list a step, however many stored rows fell in it."""

    start: int
    step: int
    values: dict[int, list[float]] = field(default_factory=dict)
    """[total, count] of each of ``FIELDS`` in turn, flattened."""
    inverters: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    """Each inverter's [total, count] per step (present, with count 0, when only null)."""

    def add(self, row: Row) -> None:
        """Adds one row (pending in memory, not in the database)."""
        k = (row.t - self.start) // self.step
        totals = self.values.setdefault(k, [0.0] * (2 * len(FIELDS)))
        for i, name in enumerate(FIELDS):
            v = row.values.get(name)
            if v is not None:
                totals[2 * i] += v
                totals[2 * i + 1] += 1
        for name, v in row.inverters.items():
            total = self.inverters.setdefault(name, {}).setdefault(k, [0.0, 0.0])
            if v is not None:
                total[0] += v
                total[1] += 1

    def columns(self) -> dict[str, Any]:
        """The answer's columns: times, each field's means, each inverter's means."""
        steps = sorted(self.values)
        out: dict[str, Any] = {"t": [self.start + k * self.step for k in steps]}
        for i, name in enumerate(FIELDS):
            out[API_NAMES[name]] = [_mean(self.values[k][2 * i : 2 * i + 2]) for k in steps]
        out["inverters"] = {
            name: [_mean(per_step.get(k)) for k in steps]
            for name, per_step in sorted(self.inverters.items())
        }
        return out


def _mean(total_count: list[float] | None) -> float | None:
    if not total_count or not total_count[1]:
        return None
    return round(total_count[0] / total_count[1], 1)


KEEP_DAMAGED = 3
"""Damaged history databases kept aside, the newest."""


class ForeignLayout(sqlite3.DatabaseError):
    """A database whose tables are not the history's (another program's, or another release's
    layout): it could never be written, so it is set aside like a damaged one."""


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """SQLite says the file is not a database or is corrupt, or its tables are not the
    history's (not: busy, locked, I/O, full, read-only)."""
    if isinstance(exc, ForeignLayout):
        return True
    name = getattr(exc, "sqlite_errorname", "")
    return name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT")


class History:
    """The history database. ``add`` is cheap (memory); ``flush`` writes; ``query`` reads."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._lock = trio.Lock()
        self._pending: dict[int, list[Row]] = {res: [] for res in RESOLUTIONS}
        self._open_means: dict[int, _Mean] = {}
        self.last_flush: float | None = None
        self.writes = 0  # transactions committed (tests check batching with this)
        self.rows_loaded = 0  # result rows the last query took from SQLite (tests bound it)

    # -- worker-thread helpers ----------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open_db()
            except sqlite3.DatabaseError as exc:
                if not _damaged(exc):  # locked, I/O error, card full or read-only: not its data
                    raise
                # Not a database, or a damaged one: it failed at every start of the web server,
                # which then never answered (no dashboard, no settings to fix anything with).
                # The history is set aside with its journal, kept for whoever wants it (the
                # newest three), and a new one begun.
                aside = set_aside(self.path, keep=KEEP_DAMAGED, companions=("-journal",))
                log.error("history: %s is unusable (%s); kept as %s, starting a new one",
                          self.path, exc, aside.name)  # fmt: skip
                self._db = self._open_db()
        return self._db

    def _open_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # negative: KiB, not pages
            fresh = db.execute("PRAGMA page_count").fetchone()[0] == 0
            if fresh:
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            db.execute(_SCHEMA)
            db.execute(_SCHEMA_BATTERY)
            db.execute("SELECT COUNT(*) FROM samples WHERE res = 1 AND t > 0").fetchone()
            for probe in _LAYOUT_PROBES:  # every column written: a foreign layout fails here
                db.execute(probe).fetchall()
        except sqlite3.OperationalError as exc:
            db.close()
            if str(exc).startswith(("no such column", "no such table")):
                raise ForeignLayout(f"not this release's history: {exc}") from exc
            raise
        except BaseException:
            db.close()
            raise
        return db

    async def open(self) -> None:
        await self._run(self._connect)

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close)

    # -- writing ------------------------------------------------------------------------------

    def add(self, row: Row) -> None:
        """One 1 s sample: kept in memory until the next flush; closes finished means."""
        self._pending[1].append(row)
        for res in RESOLUTIONS[1:]:
            b = row.t - row.t % res
            mean = self._open_means.get(res)
            if mean is not None and mean.t != b:
                self._pending[res].append(mean.row())
                mean = None
            if mean is None:
                mean = self._open_means[res] = _Mean(b)
            mean.add(row)

    def pending_rows(self) -> int:
        return sum(len(rows) for rows in self._pending.values())

    async def flush(self, now: float, *, partial: bool = False) -> None:
        """Writes the pending rows in one transaction and applies retention.

        ``partial`` also writes the means still open (at shutdown; they are replaced when the
        same bucket is written again). The rows stay pending (and so seen by ``query``) until
        their transaction is committed: cleared before the write, a query reading the database
        while the write waited for it found the minute in neither place."""
        taken = {res: list(rows) for res, rows in self._pending.items()}
        batch = {res: list(rows) for res, rows in taken.items()}
        if partial:
            for res, mean in self._open_means.items():
                batch[res].append(mean.row())
        try:
            await self._run(self._write, batch, int(now))
        except BaseException:
            # Not written (a full card, a broken file): the rows wait for the next flush, up to
            # a bound, instead of being lost with the failed transaction.
            for rows in self._pending.values():
                del rows[:-MAX_PENDING_ROWS]
            raise
        for res, rows in self._pending.items():
            written = {id(r) for r in taken[res]}
            rows[:] = [r for r in rows if id(r) not in written]
        self.last_flush = now

    def _write(self, batch: dict[int, list[Row]], now: int) -> None:
        db = self._connect()
        db.execute("BEGIN")
        try:
            for res, rows in batch.items():
                db.executemany(
                    "INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (res, r.t, *(r.values.get(k) for k in BASE_FIELDS), json.dumps(r.inverters))
                        for r in rows
                    ],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO battery VALUES (?, ?, ?, ?)",
                    [
                        (res, r.t, *(r.values.get(k) for k in BATTERY_FIELDS))
                        for r in rows
                        if any(r.values.get(k) is not None for k in BATTERY_FIELDS)
                    ],
                )
            for res, keep in RETENTION_S.items():
                if keep is not None:
                    for table in ("samples", "battery"):
                        db.execute(
                            f"DELETE FROM {table} WHERE res = ? AND t < ?", (res, now - keep)
                        )
            self._bound_size(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back itself (a full disk): the
                db.execute("ROLLBACK")  # ROLLBACK then failed and hid the real error
            raise
        db.execute("PRAGMA incremental_vacuum")
        self.writes += 1

    def _size(self, db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _bound_size(self, db: sqlite3.Connection) -> None:
        """Drops the oldest rows, coarsest kept longest, until the data fits ``max_bytes``."""
        for _ in range(64):
            if self._size(db) <= self.max_bytes * 0.9:
                return
            total = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
            if total == 0:
                return
            drop = max(1, total // 10)
            db.execute(
                "DELETE FROM samples WHERE (res, t) IN "
                "(SELECT res, t FROM samples ORDER BY t LIMIT ?)",
                (drop,),
            )
            db.execute(
                "DELETE FROM battery WHERE NOT EXISTS "
                "(SELECT 1 FROM samples s WHERE s.res = battery.res AND s.t = battery.t)"
            )

    # -- reading ------------------------------------------------------------------------------

    async def query(self, start: int, end: int, step: int, now: float) -> dict[str, Any]:
        """Means over ``step`` seconds between ``start`` and ``end`` (unix seconds), as columns.

        SQLite sums the stored rows of each step (``_read``): Python only ever holds one entry
        a step (at most ``MAX_POINTS``), never the stored rows themselves (a day of 1 s rows at
        step 9 was 86 400 row objects, ~90 MiB in the controller's process)."""
        if end <= start:
            raise ValueError("to must be after from")
        if step < 1:
            raise ValueError("step must be at least 1 second")
        if (end - start) / step > MAX_POINTS:
            raise ValueError(f"more than {MAX_POINTS} points: use a larger step")
        res = choose_resolution(start, step, now)
        # Taken before the read: a row still pending then is either still pending or already
        # in the database when the read runs, and the stored copy is left out for it.
        unflushed = list(self._pending[res])
        if res > 1 and res in self._open_means:
            unflushed.append(self._open_means[res].row())
        unflushed = list({r.t: r for r in unflushed if start <= r.t < end}.values())  # newest
        overlaid = sorted(r.t for r in unflushed)
        sums: _StepSums = await self._run(self._read, res, start, end, step, overlaid)
        for row in unflushed:
            sums.add(row)
        return {"from": start, "to": end, "step": step, "resolution": res, **sums.columns()}

    def _read(self, res: int, start: int, end: int, step: int, overlaid: list[int]) -> _StepSums:
        """Sums and counts per step of the stored ``res`` rows in ``start..end``, computed by
        SQLite; rows at the times in ``overlaid`` (pending in memory, newer) are left out."""
        db = self._connect()
        where = (
            "s.res = :res AND s.t >= :start AND s.t < :end "
            "AND s.t NOT IN (SELECT value FROM json_each(:overlaid))"
        )
        args: dict[str, int | str] = {
            "res": res,
            "start": start,
            "end": end,
            "step": step,
            "overlaid": json.dumps(overlaid),
        }
        sums = _StepSums(start, step)
        columns = ", ".join(
            f"TOTAL({c}), COUNT({c})"
            for c in (*(f"s.{k}" for k in BASE_FIELDS), *(f"b.{k}" for k in BATTERY_FIELDS))
        )
        cur = db.execute(
            f"SELECT (s.t - :start) / :step, {columns} FROM samples s "
            "LEFT JOIN battery b ON b.res = s.res AND b.t = s.t "
            f"WHERE {where} GROUP BY 1",
            args,
        )
        loaded = 0
        for k, *totals in cur:
            sums.values[int(k)] = [float(x) for x in totals]
            loaded += 1
        # Each inverter's power: the JSON object of each row, opened by SQLite (a damaged
        # one counts as no inverters, as it always did).
        cur = db.execute(
            "SELECT (s.t - :start) / :step, j.key, "
            "TOTAL(CASE WHEN j.type IN ('integer', 'real') THEN j.value END), "
            "COUNT(CASE WHEN j.type IN ('integer', 'real') THEN j.value END) "
            "FROM samples s, json_each(CASE WHEN json_valid(s.inverters) "
            "AND json_type(s.inverters) = 'object' THEN s.inverters ELSE '{}' END) j "
            f"WHERE {where} GROUP BY 1, 2",
            args,
        )
        for k, name, total, count in cur:
            sums.inverters.setdefault(str(name), {})[int(k)] = [float(total), float(count)]
            loaded += 1
        self.rows_loaded = loaded
        return sums

    async def stats(self) -> dict[str, int]:
        def count() -> dict[str, int]:
            db = self._connect()
            got = {f"rows{res}": 0 for res in RESOLUTIONS}
            for res, n in db.execute("SELECT res, COUNT(*) FROM samples GROUP BY res"):
                got[f"rows{res}"] = int(n)
            got["bytes"] = self._size(db)
            return got

        result: dict[str, int] = await self._run(count)
        return result


def choose_resolution(start: int, step: int, now: float) -> int:
    """The coarsest stored resolution not coarser than ``step`` that still reaches ``start``."""
    for res in sorted(RESOLUTIONS, reverse=True):
        keep = RETENTION_S[res]
        if res <= step and (keep is None or start >= now - keep):
            return res
    # the fine rows for that time are gone: answer from the finest that is still kept
    for res in RESOLUTIONS:
        keep = RETENTION_S[res]
        if keep is None or start >= now - keep:
            return res
    return RESOLUTIONS[-1]
