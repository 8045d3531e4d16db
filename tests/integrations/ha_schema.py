"""Home Assistant's documented MQTT discovery rules, as a checker for the tests.

From the Home Assistant documentation (integrations/mqtt, sensor.mqtt, binary_sensor.mqtt and
the sensor entity's device classes): the topic format, the keys each platform accepts, what a
``device`` and an ``origin`` block may hold, and which units and state classes each device
class allows. A discovery payload that breaks one of these is ignored or warned about by HA.
"""

from __future__ import annotations

import re
from typing import Any

TOPIC = re.compile(
    r"^(?P<prefix>[^/#+]+)/(?P<component>[a-z_]+)/(?:(?P<node>[a-zA-Z0-9_-]+)/)?"
    r"(?P<object>[a-zA-Z0-9_-]+)/config$"
)
COMMON_KEYS = {
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "device",
    "device_class",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "expire_after",
    "force_update",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "default_entity_id",
    "origin",
    "payload_available",
    "payload_not_available",
    "platform",
    "qos",
    "state_topic",
    "unique_id",
    "value_template",
}
PLATFORM_KEYS = {
    "sensor": COMMON_KEYS
    | {
        "last_reset_value_template",
        "options",
        "state_class",
        "suggested_display_precision",
        "unit_of_measurement",
    },
    "binary_sensor": COMMON_KEYS | {"off_delay", "payload_off", "payload_on"},
}
DEVICE_KEYS = {
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
SENSOR_UNITS = {
    "power": {"W", "kW", "MW", "GW", "TW", "mW", "BTU/h"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal"},
    "battery": {"%"},
}
SENSOR_STATE_CLASSES = {
    "power": {"measurement"},
    "energy": {"total", "total_increasing"},
    "battery": {"measurement"},
}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
BINARY_DEVICE_CLASSES = {
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
}


def check(topic: str, payload: dict[str, Any], discovery_prefix: str) -> list[str]:
    """Every way ``payload`` on ``topic`` breaks HA's documented discovery schema."""
    problems: list[str] = []
    m = TOPIC.match(topic)
    if not m or m.group("prefix") != discovery_prefix:
        return [f"{topic}: not <prefix>/<component>/[<node_id>/]<object_id>/config"]
    component = m.group("component")
    allowed = PLATFORM_KEYS.get(component)
    if allowed is None:
        return [f"{topic}: component {component!r} not checked here"]
    problems += [f"{topic}: unknown key {k!r}" for k in payload if k not in allowed]
    if not isinstance(payload.get("state_topic"), str):
        problems.append(f"{topic}: state_topic is required")
    if not isinstance(payload.get("unique_id"), str) or not payload["unique_id"]:
        problems.append(f"{topic}: unique_id is required for the device registry")
    device = payload.get("device")
    if not isinstance(device, dict):
        problems.append(f"{topic}: device block missing")
    else:
        problems += [f"{topic}: device key {k!r}" for k in device if k not in DEVICE_KEYS]
        if not device.get("identifiers") and not device.get("connections"):
            problems.append(f"{topic}: device needs identifiers or connections")
    origin = payload.get("origin")
    if origin is not None:
        if not isinstance(origin, dict) or not origin.get("name"):
            problems.append(f"{topic}: origin needs a name")
        else:
            problems += [f"{topic}: origin key {k!r}" for k in origin if k not in ORIGIN_KEYS]
    if "availability_topic" in payload:
        for key in ("payload_available", "payload_not_available"):
            if not isinstance(payload.get(key, ""), str):
                problems.append(f"{topic}: {key} must be a string")
    device_class = payload.get("device_class")
    state_class = payload.get("state_class")
    if state_class is not None and state_class not in STATE_CLASSES:
        problems.append(f"{topic}: state_class {state_class!r}")
    if component == "sensor" and device_class is not None:
        units = SENSOR_UNITS.get(device_class)
        if units is None:
            problems.append(f"{topic}: device_class {device_class!r} not checked here")
        else:
            if payload.get("unit_of_measurement") not in units:
                problems.append(
                    f"{topic}: unit {payload.get('unit_of_measurement')!r} for {device_class}"
                )
            if state_class not in SENSOR_STATE_CLASSES[device_class]:
                problems.append(f"{topic}: state_class {state_class!r} for {device_class}")
    if component == "binary_sensor" and device_class not in BINARY_DEVICE_CLASSES | {None}:
        problems.append(f"{topic}: binary_sensor device_class {device_class!r}")
    return problems
