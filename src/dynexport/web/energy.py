"""Energy today for the dashboard: exported, imported, generated and curtailed (pure).

Integrated from the status the history recorder samples every second (the same trapezoids as
the MQTT counters, ``integrations/energy.py``), restarted at the site's local midnight. Counted
in memory: after a restart of the service "today" starts at that restart, and the page says
since when. Curtailed energy (what the limits cost the owner) is the inverters' available
power (SunSpec model 122 ``WAval``) less what they made; it is unknown (None) for inverters
that do not report it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from dynexport.integrations.energy import EnergyCounters, integrate, powers_of


@dataclass
class EnergyToday:
    day: str | None = None
    since: str | None = None
    counters: EnergyCounters = field(default_factory=EnergyCounters)

    def add(self, status: Mapping[str, Any], t: float, zone: tzinfo | None) -> None:
        """One more status sample taken at unix time ``t``."""
        local = datetime.fromtimestamp(t, UTC).astimezone(zone)
        day = local.date().isoformat()
        if day != self.day:
            self.day = day
            self.since = local.isoformat(timespec="seconds")
            self.counters = EnergyCounters()
        self.counters = integrate(self.counters, powers_of(status, t))

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        return {
            "day": self.day,
            "since": self.since,
            "exportedWh": round(c.exported_wh, 1),
            "importedWh": round(c.imported_wh, 1),
            "generatedWh": round(c.generated_wh, 1),
            "curtailedWh": round(c.curtailed_wh, 1) if c.curtailment_known else None,
        }
