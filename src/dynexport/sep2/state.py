"""What the utility link keeps on the data partition, written atomically (system/storage).

Three files, each replaced whole so a power cut leaves the old or the new version:

* ``schedule.json``: the last complete `ScheduleSnapshot`, so a reboot without network still
  obeys the stored schedule and then the stored defaults (harness ALL-23, ALL-30);
* ``responses.json``: the `ResponseTracker`, written before and after every POST, so an unsent
  DERControlResponse is retried after a restart and an accepted one is not sent twice;
* ``telemetry.json``: the bounded `Outbox` of readings not yet accepted by the server.

A corrupt file is moved aside (``.corrupt``) and logged, and the link starts from empty, rather
than refusing to start: the appliance must keep running. Without a data dir (the installer's
``sep2 walk``) everything stays in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from dynexport.sep2.responses import ResponseTracker
from dynexport.sep2.schedule import ScheduleSnapshot
from dynexport.sep2.telemetry import Outbox
from dynexport.system.storage import atomic_write, read_json, write_json

log = logging.getLogger("dynexport.sep2.state")

SCHEDULE_FILE = "schedule.json"
RESPONSES_FILE = "responses.json"
TELEMETRY_FILE = "telemetry.json"


class LinkStore:
    """Loads and saves the utility link's persistent state under ``data_dir`` (None: memory)."""

    def __init__(self, data_dir: str | os.PathLike[str] | None) -> None:
        self.data_dir = None if data_dir is None else Path(data_dir)
        self._memory: dict[str, bytes] = {}
        self.write_error: str | None = None
        """Why the last save failed (a full or failing data partition); None once one works.
        A failed save never stops the link: the state lives on in memory, and is saved again
        at the next change."""

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

    def _write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        if path is None:
            self._memory[name] = data
            return
        try:
            atomic_write(path, data, mode=0o600)
        except OSError as exc:
            self._write_failed(name, exc)
        else:
            self._write_ok()

    def _write_failed(self, name: str, exc: OSError) -> None:
        error = f"cannot save {name}: {exc.strerror or exc}"
        if self.write_error is None:  # one line per episode, not one per save
            log.error("%s; carrying on from memory", error)
        self.write_error = error

    def _write_ok(self) -> None:
        if self.write_error is not None:
            log.info("saving state works again")
        self.write_error = None

    def _quarantine(self, name: str, exc: Exception) -> None:
        path = self._path(name)
        log.error("stored %s is unusable (%s); starting without it", name, exc)
        if path is None:
            self._memory.pop(name, None)
            return
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".corrupt"))

    # -- schedule

    def load_schedule(self) -> ScheduleSnapshot | None:
        raw = self._read(SCHEDULE_FILE)
        if raw is None:
            return None
        try:
            return ScheduleSnapshot.from_json(raw)
        except ValueError as exc:
            self._quarantine(SCHEDULE_FILE, exc)
            return None

    def save_schedule(self, snapshot: ScheduleSnapshot) -> None:
        self._write(SCHEDULE_FILE, snapshot.to_json().encode())

    # -- responses

    def load_responses(self) -> ResponseTracker:
        raw = self._read(RESPONSES_FILE)
        if raw is None:
            return ResponseTracker()
        try:
            return ResponseTracker.from_json(raw)
        except ValueError as exc:
            self._quarantine(RESPONSES_FILE, exc)
            return ResponseTracker()

    def save_responses(self, tracker: ResponseTracker) -> None:
        self._write(RESPONSES_FILE, tracker.to_json().encode())

    # -- telemetry

    def load_outbox(self, capacity: int = 2016) -> Outbox:
        path = self._path(TELEMETRY_FILE)
        try:
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
        except FileNotFoundError:
            return Outbox(capacity=capacity)
        except OSError as exc:  # an unreadable partition: start without it, say so
            log.error("cannot read stored %s (%s); starting without it", TELEMETRY_FILE, exc)
            return Outbox(capacity=capacity)
        except (ValueError, TypeError) as exc:
            self._quarantine(TELEMETRY_FILE, exc)
            return Outbox(capacity=capacity)

    def save_outbox(self, outbox: Outbox) -> None:
        path = self._path(TELEMETRY_FILE)
        if path is None:
            self._memory[TELEMETRY_FILE] = json.dumps(outbox.to_json()).encode()
        else:
            try:
                write_json(path, outbox.to_json(), mode=0o600)
            except OSError as exc:
                self._write_failed(TELEMETRY_FILE, exc)
            else:
                self._write_ok()
