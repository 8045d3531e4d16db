"""Home Assistant MQTT discovery: one retained config per entity, built from a status document.

Home Assistant reads ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``; each config
names its state topic, unit, device class and state class, the availability topic (the broker
publishes ``offline`` there through the last will when the appliance disappears) and a
``device`` block that groups the entities. Inverters get a device of their own, linked to the
appliance with ``via_device``. Pure: the MQTT bridge publishes what this returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dynexport.integrations.topics import (
    AVAILABILITY,
    OFFLINE,
    ONLINE,
    Message,
    inverter_slug,
    node_id,
)

ENERGY_NAMES = {
    "imported": "Energy imported",
    "exported": "Energy exported",
    "generated": "Energy generated",
    "curtailed": "Energy curtailed",
}


def _power(name: str, state: str) -> dict[str, Any]:
    return {
        "name": name,
        "state_topic": state,
        "unit_of_measurement": "W",
        "device_class": "power",
        "state_class": "measurement",
    }


def discovery_messages(
    status: Mapping[str, Any],
    prefix: str,
    discovery_prefix: str,
    *,
    energy_keys: tuple[str, ...] = (),
    sw_version: str = "",
) -> list[Message]:
    """The retained discovery configs for every entity this status has (QoS 1)."""
    node = node_id(prefix)
    appliance = {
        "identifiers": [node],
        "name": f"dynexport {prefix.rsplit('/', 1)[-1]}",
        "manufacturer": "dynexport",
        "model": "Dynamic export controller",
        "sw_version": sw_version or None,
    }
    appliance = {k: v for k, v in appliance.items() if v is not None}
    entities: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
    # (component, object id, config, device)
    entities.append(("sensor", "site_power", _power("Site power", f"{prefix}/site/power"), {}))
    entities.append(("sensor", "solar_power", _power("Solar power", f"{prefix}/solar/power"), {}))
    entities.append(
        ("sensor", "export_limit", _power("Export limit", f"{prefix}/limit/export"), {})
    )
    entities.append(
        (
            "sensor",
            "export_limit_source",
            {"name": "Export limit source", "state_topic": f"{prefix}/limit/export/source"},
            {},
        )
    )
    for i, inv in enumerate(status.get("inverters") or []):
        if not isinstance(inv, Mapping):
            continue
        ident = inverter_slug(inv, i)
        device: dict[str, Any] = {
            "identifiers": [f"{node}_{ident}"],
            "name": f"{inv.get('id') or ident}",
            "via_device": node,
        }
        for key, field in (("manufacturer", "manufacturer"), ("model", "model")):
            if inv.get(field):
                device[key] = str(inv[field])
        if inv.get("serial"):
            device["serial_number"] = str(inv["serial"])
        base = f"{prefix}/inverter/{ident}"
        entities.append(("sensor", f"{ident}_power", _power("Power", f"{base}/power"), device))
        entities.append(
            (
                "sensor",
                f"{ident}_limit",
                {
                    "name": "Power limit",
                    "state_topic": f"{base}/limit",
                    "unit_of_measurement": "%",
                    "state_class": "measurement",
                },
                device,
            )
        )
        entities.append(
            (
                "binary_sensor",
                f"{ident}_online",
                {
                    "name": "Online",
                    "state_topic": f"{base}/online",
                    "device_class": "connectivity",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                },
                device,
            )
        )
    battery = status.get("battery")
    if isinstance(battery, Mapping) and battery.get("configured") is not False:
        entities.append(
            ("sensor", "battery_power", _power("Battery power", f"{prefix}/battery/power"), {})
        )
        entities.append(
            (
                "sensor",
                "battery_soc",
                {
                    "name": "Battery charge",
                    "state_topic": f"{prefix}/battery/soc",
                    "unit_of_measurement": "%",
                    "device_class": "battery",
                    "state_class": "measurement",
                },
                {},
            )
        )
    for key in energy_keys:
        entities.append(
            (
                "sensor",
                f"energy_{key}",
                {
                    "name": ENERGY_NAMES[key],
                    "state_topic": f"{prefix}/energy/{key}",
                    "unit_of_measurement": "Wh",
                    "device_class": "energy",
                    "state_class": "total_increasing",
                },
                {},
            )
        )
    entities.append(
        (
            "binary_sensor",
            "problem",
            {
                "name": "Problem",
                "state_topic": f"{prefix}/problem",
                "device_class": "problem",
                "payload_on": "ON",
                "payload_off": "OFF",
                "json_attributes_topic": f"{prefix}/alerts",
            },
            {},
        )
    )
    out = []
    for component, object_id, config, device in entities:
        payload = {
            **config,
            "unique_id": f"{node}_{object_id}",
            "availability_topic": f"{prefix}/{AVAILABILITY}",
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "device": device or appliance,
            "origin": {"name": "dynexport", "sw_version": sw_version or None},
        }
        if not sw_version:
            payload["origin"] = {"name": "dynexport"}
        topic = f"{discovery_prefix}/{component}/{node}/{object_id}/config"
        out.append(Message(topic, json.dumps(payload, separators=(",", ":")), True, 1))
    return out
