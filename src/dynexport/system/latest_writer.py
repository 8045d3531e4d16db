"""One file's writer off the event loop: the latest state wins, one write at a time.

The service is one trio process: a plain ``open``/``fsync`` on a hung or very slow SD card would
stall every task in it, the control loop included. A `LatestWriter` takes states without ever
blocking (`submit`), and its task (`run`) writes the newest one in a worker thread
(``trio.to_thread.run_sync``). A state submitted while a write is in flight replaces any state
still waiting (latest wins), so at most one write is in flight and at most one waits, whatever
the rate of changes. A failed write is reported once per episode (``on_error``), the state stays
in memory and is tried again after a backoff or at the next submit. When `run` is cancelled (the
service stops) it writes whatever is still unwritten on its way out, within ``exit_flush_s``: a
hung card's thread is left behind, the shutdown is not. `flush` does the same for a caller
that bounds it.

Without a running `run` task (a one-shot tool, a test stepping the link by hand) `submit` writes at
once in the caller, as a plain function would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

log = logging.getLogger("dynexport.system.latest_writer")

T = TypeVar("T")

RETRY_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
"""Backoff between attempts after a failed write (a newer state is tried at once)."""


SLOW_S = 10.0
"""A write that takes longer than this is logged (the card is failing or overloaded)."""

EXIT_FLUSH_S = 2.0
"""What a cancelled `run` spends, at most, writing the latest state on its way out."""


class LatestWriter(Generic[T]):
    """Writes the latest submitted state with ``write`` (called in a worker thread).

    ``write`` must be safe to call from a thread with a state that the event loop no longer
    changes: submit immutable values, or a copy. ``on_error(exc)`` and ``on_ok()`` are called on
    the event loop after each failed or good attempt (so the owner can log once per episode)."""

    def __init__(
        self,
        name: str,
        write: Callable[[T], None],
        *,
        on_error: Callable[[BaseException], None] | None = None,
        on_ok: Callable[[], None] | None = None,
        retry_s: Sequence[float] = RETRY_S,
        exit_flush_s: float = EXIT_FLUSH_S,
    ) -> None:
        self.name = name
        self._exit_flush_s = exit_flush_s
        self._write = write
        self._on_error = on_error
        self._on_ok = on_ok
        self._retry_s = tuple(retry_s) or RETRY_S
        self._latest: Any = None
        self._version = 0
        """Submissions so far; the latest state is version ``_version``."""
        self._written = 0
        """Newest version known to be on disk."""
        self._attempted = 0
        """Newest version whose write finished, well or not."""
        self._disk_version = 0
        """Newest version a thread wrote; only read and written under ``_lock``."""
        self._lock = threading.Lock()
        """Held by the thread that writes: never two writes of this file at once, even when a
        cancelled (abandoned) write is still running while the shutdown flush starts."""
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._running = False
        self.failures = 0
        """Consecutive failed attempts (0 once one works)."""

    # -- what the owner calls ----------------------------------------------------------------

    def submit(self, state: T) -> int:
        """Makes ``state`` the one to write; returns its version. Never blocks on the disk
        while `run` is running (without it, writes at once in the caller)."""
        self._latest = state
        self._version += 1
        if self._running:
            self._wake.set()
        else:
            self._write_now()
        return self._version

    @property
    def version(self) -> int:
        return self._version

    @property
    def unwritten(self) -> bool:
        """A submitted state is not on disk yet (waiting, in flight, or failed)."""
        return self._written < self._version

    def attempted(self, version: int) -> bool:
        """Whether a write of ``version`` or a newer one has finished (well or not)."""
        return self._attempted >= version

    async def wait_attempted(self, version: int) -> None:
        """Waits until a write of ``version`` or newer has finished, well or not (the caller
        bounds the wait: a hung card never finishes one)."""
        while self._attempted < version:
            await self._progress.wait()

    async def wait_written(self, version: int) -> None:
        """Waits until ``version`` or a newer one is on disk (bound it: it may never be)."""
        while self._written < version:
            await self._progress.wait()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: writes the newest state whenever one is unwritten, until cancelled;
        then what is still unwritten, within ``exit_flush_s`` (shielded: the shutdown that
        cancelled it is what the flush is for)."""
        self._running = True
        self._wake = trio.Event()
        task_status.started()
        try:
            while True:
                if not self.unwritten:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                self._wake = trio.Event()
                if await self._attempt():
                    continue
                delay = self._retry_s[min(self.failures - 1, len(self._retry_s) - 1)]
                with trio.move_on_after(delay):
                    await self._wake.wait()  # a newer state is tried at once
        finally:
            try:
                if self.unwritten:
                    with trio.CancelScope(shield=True), trio.move_on_after(self._exit_flush_s):
                        await self.flush()  # a state submitted meanwhile is written too
            finally:
                self._running = False

    async def flush(self) -> bool:
        """Writes the latest state if it is not on disk yet (after any write in flight); True
        when it is. Bound it with a timeout: a hung card never returns (the thread is left)."""
        while self.unwritten:
            if not await self._attempt():
                return False
        return True

    # -- the writing ---------------------------------------------------------------------------

    def _write_version(self, state: T, version: int) -> None:
        """In the worker thread: one write at a time, and never an older state over a newer."""
        with self._lock:
            if version <= self._disk_version:
                return
            self._write(state)
            self._disk_version = version

    async def _attempt(self) -> bool:
        state, version = self._latest, self._version
        started = trio.current_time()
        try:
            await trio.to_thread.run_sync(
                self._write_version, state, version, abandon_on_cancel=True
            )
        except Exception as exc:  # a full/failing partition, or a bug in ``write``: never fatal
            self._failed(version, exc)
            return False
        finally:
            took = trio.current_time() - started
            if took > SLOW_S:
                log.warning("writing %s took %.0f s (a slow or failing card?)", self.name, took)
        self._done(version)
        return True

    def _write_now(self) -> None:
        state, version = self._latest, self._version
        try:
            self._write_version(state, version)
        except Exception as exc:
            self._failed(version, exc)
        else:
            self._done(version)

    def _done(self, version: int) -> None:
        self._written = max(self._written, version)
        self.failures = 0
        self._progressed(version)
        if self._on_ok is not None:
            self._on_ok()

    def _failed(self, version: int, exc: Exception) -> None:
        self.failures += 1
        self._progressed(version)
        if self._on_error is not None:
            self._on_error(exc)
        elif self.failures == 1:
            log.error("cannot save %s: %s", self.name, exc)

    def _progressed(self, version: int) -> None:
        self._attempted = max(self._attempted, version)
        self._progress.set()
        self._progress = trio.Event()
