"""Extra export limit sources: an installer's MQTT command and the feed-in price.

They join the merged limits (utility, configuration, daily windows) under the same rule: for
export, the most restrictive wins and the effective limit names its source. Each one carries an
expiry, so a publisher or price API that goes quiet lapses instead of pinning the site's export.
Pure: the caller passes the time; nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from dynexport.control.limits import EffectiveLimits

COMMAND_SOURCE = "mqtt command"
"""The source named for an export limit set on the MQTT command topic."""
PRICE_SOURCE = "price (Amber)"
"""The source named for the price-aware export limit."""
MAX_COMMAND_BYTES = 256
MAX_EXPORT_W = 1e7


@dataclass(frozen=True)
class ExtraLimit:
    """One more export limit (W, site total at the grid connection) from ``source``.

    ``expires_at`` is on the caller's clock (the app's trio clock); None: no expiry of its own
    (the source re-evaluates it every time it is asked).
    """

    source: str
    export_w: float
    expires_at: float | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


class LimitSource(Protocol):
    """Anything that can say which extra limits are in force at ``now``."""

    def extra_limits(self, now: float) -> Sequence[ExtraLimit]: ...


def _usable(value: float) -> float | None:
    """+inf is no limit; NaN, -inf and negatives fail closed at 0 W (a limit was asked for)."""
    if math.isnan(value) or value < 0:
        return 0.0
    if math.isinf(value):
        return None
    return float(value)


def apply_extra_limits(
    limits: EffectiveLimits,
    sources: LimitSource | Iterable[ExtraLimit | None] | None,
    now: float,
) -> EffectiveLimits:
    """``limits`` with every active extra export limit merged in: the most restrictive wins.

    On a tie the limit already in force keeps its source (the utility's and the installer's
    limits are named first, as ``merge_limits`` does). Expired limits are ignored. Nothing but
    ``export_w`` and its source changes: these sources can only lower export, never raise it.
    """
    if sources is None:
        return limits
    items: Iterable[ExtraLimit | None]
    items = sources.extra_limits(now) if hasattr(sources, "extra_limits") else sources
    best = limits.export_w
    source = limits.sources.get("export_w")
    for extra in items:
        if extra is None or not extra.active(now):
            continue
        value = _usable(extra.export_w)
        if value is not None and (best is None or value < best):
            best, source = value, extra.source
    if best == limits.export_w and source == limits.sources.get("export_w"):
        return limits
    sources_out = dict(limits.sources)
    if source is not None:
        sources_out["export_w"] = source
    return replace(limits, export_w=best, sources=sources_out)


class CommandError(ValueError):
    """A command payload that cannot be obeyed; the message says why."""


def parse_command(payload: bytes, now: float, expiry_s: float) -> ExtraLimit | None:
    """An export limit command from the MQTT command topic; None clears the limit.

    Accepted payloads: a number of watts (``2000``); a JSON object
    ``{"exportW": 2000, "durationS": 600}`` (``durationS`` at most ``expiry_s``, the default);
    an empty payload, ``null`` or ``clear`` to remove the limit. Anything else raises
    :class:`CommandError` naming the problem: a limit that was meant but cannot be read must be
    reported, not guessed.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes; at most {MAX_COMMAND_BYTES}")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("payload is not UTF-8 text") from None
    if text in ("", "null", "clear"):
        return None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise CommandError(f"not a number of watts or a JSON object: {text[:40]!r}") from None
    duration = expiry_s
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"exportW", "durationS"})
        if unknown:
            raise CommandError(f"unknown key {unknown[0]!r} (allowed: exportW, durationS)")
        if doc.get("exportW") is None:
            if "exportW" in doc:
                return None
            raise CommandError("exportW is required")
        watts = _number(doc["exportW"], "exportW", 0.0, MAX_EXPORT_W)
        if doc.get("durationS") is not None:
            duration = min(_number(doc["durationS"], "durationS", 1.0, 86400.0), expiry_s)
    else:
        watts = _number(doc, "the limit", 0.0, MAX_EXPORT_W)
    return ExtraLimit(COMMAND_SOURCE, watts, now + duration)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _number(value: object, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"{name} must be a number, not {json.dumps(value)[:40]}")
    if not lo <= value <= hi:
        raise CommandError(f"{name} must be {lo:g}..{hi:g}, not {value:g}")
    return float(value)
