"""Energy counters (Wh) for Home Assistant's energy dashboard, integrated from power (pure).

The status document carries power, not energy: these counters integrate it between successive
status snapshots (trapezoids; a gap longer than ``MAX_GAP_S`` or an unknown reading is skipped,
never bridged by a guess), which a sampler takes every ``SAMPLE_EVERY_S`` at least. They start
at zero when the service starts; Home Assistant's ``total_increasing`` state class reads a
decrease as a new meter cycle, so a restart loses at most the energy of the gap, it never
counts anything twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

MAX_GAP_S = 120.0
"""Two samples further apart than this are not bridged (the appliance was busy or stopped)."""
SAMPLE_EVERY_S = MAX_GAP_S / 2
"""A sampler takes a sample at least this often, whatever it publishes at: then only an outage
(not a long publish interval, ``mqtt.publishS`` up to an hour) leaves a gap unbridged."""


@dataclass(frozen=True)
class Powers:
    """The powers the counters integrate, at one instant (W; None: unknown)."""

    t: float
    site_w: float | None
    """Grid connection, positive import (the project's and Home Assistant's sign)."""
    der_w: float | None
    curtailed_w: float | None
    """Available minus produced, when the status knows the available power."""


@dataclass(frozen=True)
class EnergyCounters:
    imported_wh: float = 0.0
    exported_wh: float = 0.0
    generated_wh: float = 0.0
    curtailed_wh: float = 0.0
    curtailment_known: bool = False
    """The status has reported available power at least once (else no curtailed sensor)."""
    last: Powers | None = None

    def as_dict(self) -> dict[str, float]:
        out = {
            "imported": self.imported_wh,
            "exported": self.exported_wh,
            "generated": self.generated_wh,
        }
        if self.curtailment_known:
            out["curtailed"] = self.curtailed_wh
        return out


def _finite(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def powers_of(status: Mapping[str, Any], t: float) -> Powers:
    """The integrated powers from a status document taken at time ``t`` (seconds). The site's
    power counts only while the meter answers and moves: an offline meter's status keeps its
    last reading (an hour at -4000 W counted 4 kWh of export that never happened), and a
    frozen one repeats it."""
    site = status.get("site") or {}
    der = status.get("der") or {}
    if site.get("meterOnline") is False or site.get("meterFrozen") is True:
        site = {}
    der_w = _finite(der.get("powerW"))
    available = _finite(der.get("availableW"))
    curtailed = None
    if available is not None and der_w is not None:
        curtailed = max(0.0, available - der_w)
    return Powers(t, _finite(site.get("powerW")), der_w, curtailed)


def _area(a: float | None, b: float | None, dt: float) -> float | None:
    """Watt-hours under a trapezoid of two readings ``dt`` seconds apart."""
    if a is None or b is None:
        return None
    return (a + b) / 2 * dt / 3600.0


def integrate(counters: EnergyCounters, now: Powers) -> EnergyCounters:
    """The counters after one more sample; counters never decrease."""
    known = counters.curtailment_known or now.curtailed_w is not None
    last = counters.last
    if last is None or not 0 < now.t - last.t <= MAX_GAP_S:
        return replace(counters, last=now, curtailment_known=known)
    dt = now.t - last.t
    imported = exported = 0.0
    if last.site_w is not None and now.site_w is not None:
        # import and export are the positive and negative parts of the site power; a sign
        # change inside the interval is split where the straight line crosses zero
        a, b = last.site_w, now.site_w
        if (a >= 0) == (b >= 0):
            part = (a + b) / 2 * dt / 3600.0
            imported, exported = (part, 0.0) if a >= 0 else (0.0, -part)
        else:
            cross = dt * abs(a) / (abs(a) + abs(b))
            first = a / 2 * cross / 3600.0
            second = b / 2 * (dt - cross) / 3600.0
            imported = max(first, 0.0) + max(second, 0.0)
            exported = -min(first, 0.0) - min(second, 0.0)
    generated = _area(last.der_w, now.der_w, dt)
    curtailed = _area(last.curtailed_w, now.curtailed_w, dt)
    return EnergyCounters(
        imported_wh=counters.imported_wh + imported,
        exported_wh=counters.exported_wh + exported,
        generated_wh=counters.generated_wh + max(generated or 0.0, 0.0),
        curtailed_wh=counters.curtailed_wh + max(curtailed or 0.0, 0.0),
        curtailment_known=known,
        last=now,
    )
