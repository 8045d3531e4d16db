"""What the utility link keeps on the data partition, written atomically (system/storage).

Three files, each replaced whole so a power cut leaves the old or the new version:

* ``schedule.json``: the last complete `ScheduleSnapshot`, so a reboot without network still
  obeys the stored schedule and then the stored defaults (harness ALL-23, ALL-30);
* ``responses.json``: the `ResponseTracker`, saved after every change; a response is POSTed
  only once the state listing it is written (`LinkStore.settled`), so an unsent
  DERControlResponse is retried after a restart and an accepted one is not sent twice;
* ``telemetry.json``: the bounded `Outbox` of readings not yet accepted by the server.

Saving never blocks the event loop: while the link runs (`LinkStore.run`), each file has one
`LatestWriter` that serializes and writes the newest state in a worker thread, one write at a
time, and skips a write whose bytes are what the file already holds. A failed save is logged once
per episode and reported (`write_error`), the state lives on in memory and is tried again;
`flush` writes what is left at shutdown.

A corrupt file is moved aside (``.corrupt``) and logged, and the link starts from empty, rather
than refusing to start: the appliance must keep running. Without a data dir (the installer's
``sep2 walk``) everything stays in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from dynexport.sep2.responses import ResponseTracker
from dynexport.sep2.schedule import ScheduleSnapshot
from dynexport.sep2.stored import parsed_twice
from dynexport.sep2.telemetry import Outbox
from dynexport.system.latest_writer import LatestWriter
from dynexport.system.storage import atomic_write, read_json, set_aside, write_json

log = logging.getLogger("dynexport.sep2.state")

SCHEDULE_FILE = "schedule.json"
RESPONSES_FILE = "responses.json"
TELEMETRY_FILE = "telemetry.json"

KEEP_CORRUPT = 3
"""Damaged copies of each file kept (``name.<UTC time>-<n>.corrupt``); older ones are removed."""

STORE_FLUSH_S = 2.0
"""At shutdown, how long each writer waits for its unsaved state to reach the data partition
(all at once: the link's shutdown waits this long at most)."""


class LinkStore:
    """Loads and saves the utility link's persistent state under ``data_dir`` (None: memory)."""

    def __init__(self, data_dir: str | os.PathLike[str] | None) -> None:
        self.data_dir = None if data_dir is None else Path(data_dir)
        self._memory: dict[str, bytes] = {}
        self._errors: dict[str, str] = {}
        self._digests: dict[str, bytes] = {}
        """Digest of what each file holds (written by this process): equal bytes are skipped.
        Only touched in the writer's thread, under that writer's lock."""
        self.on_progress: Callable[[], None] | None = None
        """Called on the event loop after each attempt to write responses.json (the link wakes
        to send what waited for it)."""
        self._writers: dict[str, LatestWriter[Any]] = {
            SCHEDULE_FILE: self._writer(SCHEDULE_FILE, self._put_schedule),
            RESPONSES_FILE: self._writer(RESPONSES_FILE, self._put_responses),
            TELEMETRY_FILE: self._writer(TELEMETRY_FILE, self._put_outbox),
        }

    @property
    def write_error(self) -> str | None:
        """Why a save is failing (a full or failing data partition); None once all work again.
        A failed save never stops the link: the state lives on in memory and is tried again."""
        return next(iter(self._errors.values()), None)

    def _writer(self, name: str, put: Callable[[Any], None]) -> LatestWriter[Any]:
        return LatestWriter(
            name,
            put,
            on_error=lambda exc: self._write_failed(name, exc),
            on_ok=lambda: self._write_ok(name),
            exit_flush_s=STORE_FLUSH_S,
        )

    def _progressed(self, name: str) -> None:
        if name == RESPONSES_FILE and self.on_progress is not None:
            self.on_progress()

    # -- the writers' task (run by the link) -----------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Runs one writer per file until cancelled, then each writes what it had not yet, within
        `STORE_FLUSH_S`; without this task, saves are written by the caller."""
        async with trio.open_nursery() as nursery:
            for writer in self._writers.values():
                await nursery.start(writer.run)
            task_status.started()

    async def flush(self) -> bool:
        """Writes every state not on disk yet; True when all are. Bound it with a timeout."""
        ok = True
        for writer in self._writers.values():
            ok = await writer.flush() and ok
        return ok

    def settled(self, name: str = RESPONSES_FILE) -> bool:
        """Whether the latest state of ``name`` has been written, or has failed to be (then it
        is in memory only, as before this store wrote off the loop). The link POSTs a response
        only when the tracker that lists it is settled: after a restart it is known."""
        writer = self._writers[name]
        return writer.attempted(writer.version)

    def unwritten(self) -> bool:
        """Some file's latest state is not on disk yet (waiting, in flight, or failed)."""
        return any(w.unwritten for w in self._writers.values())

    async def wait_settled(self, name: str = RESPONSES_FILE) -> None:
        """Waits until `settled` (bound it: a hung card never settles)."""
        writer = self._writers[name]
        await writer.wait_attempted(writer.version)

    async def written(self, name: str) -> None:
        """Waits until the latest state of ``name`` is on disk (bound it: it may never be)."""
        writer = self._writers[name]
        await writer.wait_written(writer.version)

    # -- files -----------------------------------------------------------------------------------

    def _path(self, name: str) -> Path | None:
        return None if self.data_dir is None else self.data_dir / name

    def _read(self, name: str) -> bytes | None:
        path = self._path(name)
        if path is None:
            return self._memory.get(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # an unreadable partition: start without it, say so
            log.error("cannot read stored %s (%s); starting without it", name, exc)
            return None

    def _put(self, name: str, data: bytes) -> None:
        """In a writer's thread: replaces the file unless it already holds these bytes."""
        path = self._path(name)
        if path is None:
            self._memory[name] = data
            return
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if self._digests.get(name) == digest:
            return
        atomic_write(path, data, mode=0o600)
        self._digests[name] = digest

    def _put_schedule(self, snapshot: ScheduleSnapshot) -> None:
        self._put(SCHEDULE_FILE, snapshot.to_json().encode())

    def _put_responses(self, tracker: ResponseTracker) -> None:
        self._put(RESPONSES_FILE, tracker.to_json().encode())

    def _put_outbox(self, data: dict[str, object]) -> None:
        path = self._path(TELEMETRY_FILE)
        if path is None:
            self._memory[TELEMETRY_FILE] = json.dumps(data).encode()
        else:
            write_json(path, data, mode=0o600)

    def _write_failed(self, name: str, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            error = f"cannot save {name}: {exc.strerror or exc}"
        else:
            error = f"cannot save {name}: {type(exc).__name__}: {exc}"
        if name not in self._errors:  # one line per episode, not one per save
            if isinstance(exc, OSError):
                log.error("%s; carrying on from memory", error)
            else:
                log.error("%s; carrying on from memory", error, exc_info=exc)
        self._errors[name] = error
        self._progressed(name)

    def _write_ok(self, name: str) -> None:
        if self._errors.pop(name, None) is not None:
            log.info("saving %s works again", name)
        self._progressed(name)

    def _quarantine(self, name: str, exc: Exception) -> None:
        """Sets a damaged file aside (never deleted: the evidence, and the data if a bug in
        this code called it damaged) as ``name.<n>-<UTC time>.corrupt``, keeping the newest
        `KEEP_CORRUPT` of each (`set_aside`); the link starts without it."""
        path = self._path(name)
        log.error(
            "stored %s is unusable (%s); set aside, starting without it",
            name,
            exc,
            exc_info=None if isinstance(exc, ValueError) else exc,
        )
        if path is None:
            self._memory.pop(name, None)
            return
        with contextlib.suppress(OSError):
            set_aside(path, keep=KEEP_CORRUPT)
        self._digests.pop(name, None)

    # -- schedule

    def load_schedule(self) -> ScheduleSnapshot | None:
        raw = self._read(SCHEDULE_FILE)
        if raw is None:
            return None
        try:
            return parsed_twice(ScheduleSnapshot.from_json, raw)
        except Exception as exc:  # ValueError, or a bug: either way the file cannot be used
            self._quarantine(SCHEDULE_FILE, exc)
            return None

    def save_schedule(self, snapshot: ScheduleSnapshot) -> None:
        """Queues the snapshot for writing (serialized in the writer's thread: it is frozen)."""
        self._writers[SCHEDULE_FILE].submit(snapshot)

    # -- responses

    def load_responses(self) -> ResponseTracker:
        raw = self._read(RESPONSES_FILE)
        if raw is None:
            return ResponseTracker()
        try:
            return parsed_twice(ResponseTracker.from_json, raw)
        except Exception as exc:  # ValueError, or a bug: either way the file cannot be used
            self._quarantine(RESPONSES_FILE, exc)
            return ResponseTracker()

    def save_responses(self, tracker: ResponseTracker) -> None:
        """Queues the tracker for writing; `saved` waits for it (before a POST)."""
        self._writers[RESPONSES_FILE].submit(tracker)

    # -- telemetry

    def load_outbox(self, capacity: int = 2016) -> Outbox:
        path = self._path(TELEMETRY_FILE)

        def parse() -> Outbox:
            if path is None:
                raw = self._memory.get(TELEMETRY_FILE)
                if raw is None:
                    return Outbox(capacity=capacity)
                data = json.loads(raw)
            else:
                data = read_json(path)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return Outbox.from_json(data, capacity=capacity)

        try:
            return parsed_twice(parse)
        except FileNotFoundError:
            return Outbox(capacity=capacity)
        except OSError as exc:  # an unreadable partition: start without it, say so
            log.error("cannot read stored %s (%s); starting without it", TELEMETRY_FILE, exc)
            return Outbox(capacity=capacity)
        except Exception as exc:  # ValueError (nesting too deep, too), or a bug
            self._quarantine(TELEMETRY_FILE, exc)
            return Outbox(capacity=capacity)

    def save_outbox(self, outbox: Outbox) -> None:
        """Queues a copy of the outbox for writing (the outbox itself changes in place)."""
        self._writers[TELEMETRY_FILE].submit(outbox.to_json())
