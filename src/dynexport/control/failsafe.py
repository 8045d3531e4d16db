"""What the controller does when it cannot see: a quiet meter or an unreachable inverter.

Without a fresh meter reading the load is unknown, so the only limit that is safe whatever the
household does is one that keeps export within the limit *with zero load*: total generation no
more than the export limit. An inverter that stops answering is its device link's business (it
is marked offline and retried with backoff); meanwhile its own revert timer (every limit is
written with one) brings it back to its default. The law therefore counts it at the most it may
make (``law.possible_output_w``: its last limit until shortly before that limit's revert time,
then its rating) against this cap; with a fresh meter, the meter sees what it really makes.
The fallback export limit (utility configured, no usable schedule) arrives as an ordinary
effective export limit labelled "utility fallback", so it is also the default fail-safe cap.
"""

from __future__ import annotations

from dynexport.control.average import RollingMean
from dynexport.control.limits import EffectiveLimits

DEFAULT_STALE_S = 5.0
"""No meter sample for this long → fail-safe. A few missed 1 s polls are normal on RS485."""

FAILSAFE_SOURCE = "fail-safe"


def meter_is_stale(meter: RollingMean, now: float, stale_s: float = DEFAULT_STALE_S) -> bool:
    """True when there is no meter sample, or the newest is older than ``stale_s``."""
    latest = meter.latest_t
    return latest is None or now - latest > stale_s


def failsafe_generation_w(
    limits: EffectiveLimits, configured_w: float | None = None
) -> tuple[float | None, str]:
    """The total generation allowed while the meter is quiet, and the source to report.

    ``configured_w`` is the installer's explicit value (they may know a base load). Without it:
    the export limit in force, because generation ≤ export limit keeps export within it at zero
    load. The generation limit still caps either. None: nothing limits the site at all.
    """
    candidates: list[tuple[float, str]] = []
    if configured_w is not None:
        candidates.append((configured_w, FAILSAFE_SOURCE))
    elif limits.export_w is not None:
        candidates.append((max(limits.export_w, 0.0), FAILSAFE_SOURCE))
    if limits.generation_w is not None:
        candidates.append((limits.generation_w, limits.sources.get("generation_w", "limit")))
    if not candidates:
        return None, ""
    value, source = min(candidates, key=lambda c: c[0])
    return value, source
