"""A short rolling mean of timestamped samples, as an immutable value.

The control law averages the site meter (and its own record of inverter output) over the same
short window: averaging one and not the other makes the load estimate jump whenever the
inverters move, which is exactly how a feed-forward controller starts to oscillate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RollingMean:
    """Samples (t, value) in arrival order; ``window_s`` is how far back the mean looks."""

    window_s: float = 1.0
    samples: tuple[tuple[float, float], ...] = ()

    def add(self, t: float, value: float) -> RollingMean:
        """A new buffer with this sample; samples older than the window (from ``t``) are dropped.

        An out-of-order sample (older than the newest) is ignored: a late reply from a retried
        request must not roll the reading back. So is a sample whose time or value is not a
        finite number: one NaN would make every mean over the window NaN.
        """
        if not (math.isfinite(t) and math.isfinite(value)):
            return self
        if self.samples and t < self.samples[-1][0]:
            return self
        kept = tuple(s for s in self.samples if s[0] > t - self.window_s)
        return RollingMean(self.window_s, (*kept, (t, value)))

    @property
    def latest_t(self) -> float | None:
        """When the newest sample was taken, or None if there has never been one."""
        return self.samples[-1][0] if self.samples else None

    @property
    def latest(self) -> float | None:
        return self.samples[-1][1] if self.samples else None

    def mean(self, now: float) -> float | None:
        """Mean of the samples inside (now - window, now]; the newest sample if none are.

        Falling back to the newest keeps a slightly late meter usable; whether it is *too* old
        is the fail-safe's decision (``failsafe.meter_is_stale``), not this buffer's.
        """
        inside = [v for t, v in self.samples if now - self.window_s < t <= now]
        if inside:
            return sum(inside) / len(inside)
        return self.latest
