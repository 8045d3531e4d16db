"""Fault containment: every long-running task of the service runs under a supervisor.

One nursery holds everything (structured concurrency), so an exception that escapes one task
would cancel them all: a bug in parsing one utility response, a full data partition or a
device that answers nonsense would stop the controller and, at the next start, hit the same
fault again. A supervised task that raises is logged with its traceback, recorded as a fault
the status and the dashboard show, and restarted after a backoff (1, 2, 4 ... 60 s), while the
other tasks go on. Cancellation is never caught: shutdown stays structured, and an error that
comes together with a cancellation (one exception group) is logged and the cancellation goes on.

The supervisor decides nothing about safety itself; each task's ``on_fault`` hook does (the
controller's, for example, writes the fail-safe limits before the backoff).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

log = logging.getLogger("dynexport.system")

MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 120.0
"""A task that has run this long since its last restart is healthy again: backoff resets."""


@dataclass
class Fault:
    """The last unexpected exception of one task, for the status API."""

    task: str
    error: str
    count: int
    at: float
    """trio time of the last fault."""
    restarted_at: float | None = None
    """trio time the task was started again after it (None: still waiting out its backoff)."""

    def active(self, now: float) -> bool:
        """Still a problem: waiting to restart, or restarted less than HEALTHY_AFTER_S ago."""
        return self.restarted_at is None or now - self.restarted_at < HEALTHY_AFTER_S


@dataclass
class FaultLog:
    """The faults of every supervised task, by task name (one owner: the supervisors)."""

    faults: dict[str, Fault] = field(default_factory=dict)

    def record(self, task: str, exc: BaseException, now: float) -> Fault:
        old = self.faults.get(task)
        fault = Fault(task, describe(exc), (old.count if old else 0) + 1, now)
        self.faults[task] = fault
        return fault

    def restarted(self, task: str, now: float) -> None:
        fault = self.faults.get(task)
        if fault is not None:
            fault.restarted_at = now

    def active(self, now: float) -> list[Fault]:
        return [f for f in self.faults.values() if f.active(now)]


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def backoff_s(failures: int) -> float:
    """1, 2, 4 ... 60 s after the 1st, 2nd, 3rd ... consecutive failure."""
    return min(MIN_BACKOFF_S * 2.0 ** min(max(failures - 1, 0), 16), MAX_BACKOFF_S)


async def supervised(
    name: str,
    run: Callable[[], Awaitable[object]],
    faults: FaultLog,
    *,
    on_fault: Callable[[BaseException], Awaitable[None]] | None = None,
) -> None:
    """Runs ``run()`` until it returns; restarts it with backoff whenever it raises.

    ``on_fault`` runs after each failure, before the backoff; it should be quick, and if it
    raises, that is logged and the restart goes ahead all the same.
    """
    failures = 0
    while True:
        started = trio.current_time()
        try:
            await run()
            return
        except Exception as exc:  # containment is the point
            now = trio.current_time()
            if now - started >= HEALTHY_AFTER_S:
                failures = 0
            failures += 1
            fault = faults.record(name, exc, now)
            delay = backoff_s(failures)
            log.error(
                "%s failed (%s, %d time(s)); restarting it in %.0f s",
                name,
                fault.error,
                fault.count,
                delay,
                exc_info=exc,
            )
            if on_fault is not None:
                try:
                    await on_fault(exc)
                except Exception as hook_exc:
                    log.error("%s: its fault handler failed too", name, exc_info=hook_exc)
            await trio.sleep(delay)
            faults.restarted(name, trio.current_time())
        except BaseExceptionGroup as group:
            # An error and a cancellation at once (a nursery inside the task failed while the
            # scope around it was being cancelled): the cancellation goes on, the error is
            # logged. No fault is recorded, since no restart will ever clear it.
            errors, rest = group.split(Exception)
            if errors is None or rest is None:
                raise
            log.error("%s failed as it was being stopped", name, exc_info=errors)
            raise rest from None
