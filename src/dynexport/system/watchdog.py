"""Liveness: which critical tasks have made progress recently (pure), and sd_notify (thin I/O).

systemd's watchdog restarts the service when ``WATCHDOG=1`` pings stop. Pinging from a timer
alone would prove only that the timer runs; so each critical task (meter poller, inverter and
battery pollers, controller) reports progress, and the pinger pings only while every one of them
has done so within its allowed silence. A stuck poller or controller therefore stops the pings,
and systemd restarts the process; the inverters' revert timers keep the site safe meanwhile.
The utility link is not one of them: it bounds each request itself, its stored schedule stays in
force while it cannot reach the server, and a restart would not bring the server back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger("dynexport.system")


@dataclass
class ProgressTracker:
    """Last progress time of each critical task, in monotonic seconds passed in by the caller."""

    limits: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)

    def register(self, name: str, max_silence_s: float, now: float) -> None:
        """Declares a critical task; it counts as fresh from ``now``."""
        self.limits[name] = max_silence_s
        self.last[name] = now

    def unregister(self, name: str) -> None:
        self.limits.pop(name, None)
        self.last.pop(name, None)

    def progress(self, name: str, now: float) -> None:
        if name not in self.limits:
            raise KeyError(f"{name!r} is not a registered critical task")
        self.last[name] = now

    def stuck(self, now: float) -> list[str]:
        """The critical tasks silent for longer than allowed, with how long, for logs and STATUS."""
        return [
            f"{name} (silent {now - self.last[name]:.0f} s)"
            for name, limit in sorted(self.limits.items())
            if now - self.last[name] > limit
        ]

    def healthy(self, now: float) -> bool:
        return not self.stuck(now)

    def is_stuck(self, name: str, now: float) -> bool:
        """Whether the registered task ``name`` has been silent for longer than allowed."""
        return name in self.limits and now - self.last[name] > self.limits[name]


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of systemd's WatchdogSec (from ``WATCHDOG_USEC``), or None when no watchdog is set.

    ``WATCHDOG_PID``, when present, must be our pid: the variables are meant for the main process.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
        return None
    return value / 2_000_000 if value > 0 else None


class Notifier:
    """sd_notify through sdnotify; does nothing outside systemd (no ``NOTIFY_SOCKET``)."""

    def __init__(self) -> None:
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        self.sent: list[str] = []

    @property
    def active(self) -> bool:
        return self._notifier is not None

    def notify(self, message: str) -> None:
        self.sent.append(message)
        del self.sent[:-50]  # keep a short history for the status API
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={_one_line(status)}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.notify(f"STOPPING=1\nSTATUS={_one_line(status)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
