"""``GET /metrics``: the status document in the Prometheus text exposition format (pure).

Off unless ``metrics.token`` is configured; a scraper sends ``Authorization: Bearer <token>``
(Prometheus: ``authorization: {credentials: ...}``). Fleets scrape many appliances with one
job; every series carries only labels the appliance knows (inverter id, limit source).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """True when ``Authorization`` carries exactly ``Bearer <token>`` (constant-time compare).
    No token configured: metrics are off and nothing is allowed."""
    if not token or authorization is None:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(v: object) -> str | None:
    if isinstance(v, bool):
        return "1" if v else "0"
    if not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return repr(float(v)) if isinstance(v, float) else str(v)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        help_text: str,
        samples: list[tuple[Mapping[str, str], object]],
        kind: str = "gauge",
    ) -> None:
        rendered = []
        for labels, value in samples:
            text = _value(value)
            if text is None:
                continue  # unknown: no sample, rather than a made-up zero
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            rendered.append(f"{name}{{{label_text}}} {text}" if label_text else f"{name} {text}")
        if rendered:
            self.lines.append(f"# HELP {name} {help_text}")
            self.lines.append(f"# TYPE {name} {kind}")
            self.lines.extend(rendered)


def render_metrics(status: Mapping[str, Any]) -> str:
    """The status document as Prometheus text (version 0.0.4)."""
    w = _Writer()
    site = status.get("site") or {}
    der = status.get("der") or {}
    limits = status.get("limits") or {}
    sources = limits.get("source") or {}
    control = status.get("control") or {}
    utility = status.get("utility") or {}
    w.metric(
        "dynexport_site_power_watts",
        "Power at the grid connection, positive import.",
        [({}, site.get("powerW"))],
    )
    w.metric("dynexport_meter_online", "The site meter answers.", [({}, site.get("meterOnline"))])
    w.metric("dynexport_der_power_watts", "Total inverter output.", [({}, der.get("powerW"))])
    for key, name in (
        ("exportW", "export"),
        ("generationW", "generation"),
        ("importW", "import"),
        ("loadW", "load"),
    ):
        attr = {"exportW": "export_w", "generationW": "generation_w"}.get(key, key)
        attr = {"importW": "import_w", "loadW": "load_w"}.get(attr, attr)
        w.metric(
            f"dynexport_{name}_limit_watts",
            f"Effective {name} limit, labelled with its source.",
            [({"source": str(sources.get(attr, "none"))}, limits.get(key))],
        )
    w.metric(
        "dynexport_control_target_watts",
        "What the control law aims the site at.",
        [({}, control.get("targetW"))],
    )
    w.metric(
        "dynexport_control_mode",
        "The control law's mode (1 for the current one).",
        [({"mode": str(control.get("mode"))}, 1)] if control.get("mode") else [],
    )
    inverters = [i for i in status.get("inverters") or [] if isinstance(i, Mapping)]
    for name, field, help_text in (
        ("dynexport_inverter_power_watts", "powerW", "Inverter output."),
        ("dynexport_inverter_rated_watts", "ratedW", "Inverter rated output."),
        ("dynexport_inverter_limit_percent", "limitPct", "Inverter limit as read back."),
        ("dynexport_inverter_online", "online", "The inverter answers."),
    ):
        w.metric(
            name, help_text, [({"inverter": str(i.get("id"))}, i.get(field)) for i in inverters]
        )
    w.metric(
        "dynexport_utility_connected",
        "The utility link is connected.",
        [({}, utility.get("connected"))] if utility.get("configured") else [],
    )
    w.metric(
        "dynexport_utility_fallback",
        "The utility's fallback export limit is in force.",
        [({}, utility.get("fallback") is not None)] if utility.get("configured") else [],
    )
    faults = [f for f in status.get("faults") or [] if isinstance(f, Mapping)]
    w.metric(
        "dynexport_task_faults",
        "Unexpected exceptions of a supervised task (active faults only).",
        [({"task": str(f.get("task"))}, f.get("count")) for f in faults],
    )
    w.metric("dynexport_ready", "The service is ready.", [({}, status.get("ready"))])
    integrations = status.get("integrations") or {}
    mqtt = integrations.get("mqtt") or {}
    if mqtt.get("configured"):
        w.metric(
            "dynexport_mqtt_connected",
            "Connected to the MQTT broker.",
            [({}, mqtt.get("connected"))],
        )
        w.metric(
            "dynexport_mqtt_dropped_rounds_total",
            "Publish rounds skipped because the broker was slow.",
            [({}, mqtt.get("droppedRounds"))],
            "counter",
        )
    price = integrations.get("price") or {}
    if price.get("configured"):
        w.metric(
            "dynexport_feed_in_price_cents",
            "What exporting earns now, c/kWh (negative: it costs).",
            [({}, price.get("feedInCents"))],
        )
        w.metric(
            "dynexport_price_lapsed", "The price source has lapsed.", [({}, price.get("lapsed"))]
        )
    return "\n".join(w.lines) + "\n"
