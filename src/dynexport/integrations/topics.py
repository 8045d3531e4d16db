"""The MQTT topic layout and the state payloads, from the app's status document (pure).

Everything lives under one prefix per appliance (``dynexport/<serial or LFDI>`` by default), so
a central broker that many sites bridge into sees ``dynexport/+/status`` without any per-site
configuration. State topics are retained: a subscriber (Home Assistant, Grafana, a fleet tool)
that connects later gets the last value at once. Values are plain text (``1234.5``), ``None``
when unknown (Home Assistant's MQTT sensor reads that payload as "unknown").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STATUS = "status"
AVAILABILITY = "availability"
ONLINE = "online"
OFFLINE = "offline"
COMMAND = "set/export_limit"
"""Relative topic of the installer's export limit command (when ``mqtt.commandTopic``)."""
UNKNOWN = "None"
ENERGY_KEYS = ("imported", "exported", "generated", "curtailed")


@dataclass(frozen=True)
class Message:
    """One MQTT publish."""

    topic: str
    payload: str
    retain: bool = True
    qos: int = 0


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def slug(text: str) -> str:
    """A topic level / Home Assistant id fragment: letters, digits, ``_`` and ``-`` only."""
    cleaned = _UNSAFE.sub("_", text.strip()).strip("_")
    return cleaned or "unknown"


def default_prefix(serial: str | None, lfdi: str | None, hostname: str | None) -> str:
    """``dynexport/<serial or LFDI>``: the board's serial number, else the utility LFDI, else
    the host name. Set ``mqtt.topicPrefix`` to pin it (recommended for fleets)."""
    for ident in (serial, lfdi, hostname):
        if ident and ident.strip():
            return f"dynexport/{slug(ident.lower())}"
    return "dynexport/unknown"


def node_id(prefix: str) -> str:
    """The Home Assistant node id for a prefix (``dynexport/abc`` → ``dynexport_abc``)."""
    return slug(prefix.replace("/", "_"))


def number(value: object) -> str:
    """A reading as its payload: ``None`` when unknown or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return UNKNOWN
    return f"{float(value):.1f}"


def inverter_slug(inverter: Mapping[str, Any], index: int) -> str:
    """``inverter_1`` for the status id ``inverter 1`` (the index when it has no id)."""
    ident = inverter.get("id")
    return slug(str(ident)) if ident else f"inverter_{index + 1}"


def alerts(status: Mapping[str, Any]) -> list[str]:
    """What needs attention, in words, from the status document."""
    out: list[str] = []
    out.extend(f"configuration: {p}" for p in status.get("configProblems") or [])
    out.extend(
        f"{f.get('task')}: {f.get('error')} ({f.get('count')} times)"
        for f in status.get("faults") or []
        if isinstance(f, Mapping)
    )
    site = status.get("site") or {}
    if site.get("meterError"):
        out.append(f"meter: {site['meterError']}")
    for i, inv in enumerate(status.get("inverters") or []):
        if isinstance(inv, Mapping) and inv.get("error"):
            out.append(f"{inv.get('id') or f'inverter {i + 1}'}: {inv['error']}")
    utility = status.get("utility") or {}
    if utility.get("lastError"):
        out.append(f"utility: {utility['lastError']}")
    if utility.get("fallback"):
        out.append(f"utility fallback limit in force: {utility['fallback']}")
    price = (status.get("integrations") or {}).get("price") or {}
    if price.get("error"):
        out.append(f"price: {price['error']}")
    return out


def state_messages(
    status: Mapping[str, Any], prefix: str, energy: Mapping[str, float] | None = None
) -> list[Message]:
    """Every retained state topic for one status document (``energy``: Wh counters)."""
    site = status.get("site") or {}
    der = status.get("der") or {}
    limits = status.get("limits") or {}
    sources = limits.get("source") or {}
    values: dict[str, str] = {
        "site/power": number(site.get("powerW")),
        "solar/power": number(der.get("powerW")),
        "limit/export": number(limits.get("exportW")),
        "limit/export/source": str(sources.get("export_w") or "none"),
    }
    for i, inv in enumerate(status.get("inverters") or []):
        if not isinstance(inv, Mapping):
            continue
        base = f"inverter/{inverter_slug(inv, i)}"
        values[f"{base}/power"] = number(inv.get("powerW"))
        values[f"{base}/limit"] = number(inv.get("limitPct"))
        values[f"{base}/online"] = "ON" if inv.get("online") else "OFF"
    battery = status.get("battery")
    if isinstance(battery, Mapping) and battery.get("configured") is not False:
        values["battery/power"] = number(battery.get("powerW"))
        values["battery/soc"] = number(battery.get("socPct"))
    problems = alerts(status)
    values["alerts"] = json.dumps({"alerts": problems, "count": len(problems)})
    values["problem"] = "ON" if problems else "OFF"
    for key, wh in (energy or {}).items():
        values[f"energy/{key}"] = number(wh)
    messages = [Message(f"{prefix}/{STATUS}", json.dumps(status, separators=(",", ":")))]
    messages.extend(Message(f"{prefix}/{rel}", payload) for rel, payload in values.items())
    return messages
