"""A status document shaped like ``App.status()`` (docs/api.md) for the integration tests."""

from __future__ import annotations

import copy
from typing import Any

STATUS: dict[str, Any] = {
    "site": {"powerW": -2500.0, "meterOnline": True, "meterError": None},
    "der": {"powerW": 6000.0},
    "limits": {
        "exportW": 5000.0,
        "generationW": None,
        "importW": None,
        "loadW": None,
        "connect": True,
        "energize": True,
        "source": {"export_w": "utility"},
        "notEnforced": [],
    },
    "control": {"mode": "normal", "targetW": -4900.0, "loadEstimateW": 3500.0, "boundBy": None},
    "inverters": [
        {
            "id": "inverter 1",
            "online": True,
            "controllable": True,
            "notControllable": None,
            "powerW": 2500.0,
            "ratedW": 5000.0,
            "limitPct": 80.0,
            "manufacturer": "Fronius",
            "model": "Primo 5.0-1",
            "serial": "34119101",
            "error": None,
        },
        {
            "id": "inverter 2",
            "online": True,
            "controllable": True,
            "notControllable": None,
            "powerW": 3500.0,
            "ratedW": 8200.0,
            "limitPct": None,
            "manufacturer": "Fronius",
            "model": "Symo 8.2-3-M",
            "serial": "34119102",
            "error": None,
        },
    ],
    "utility": {"configured": True, "connected": True, "lfdi": "ABCDEF0123", "fallback": None},
    "faults": [],
    "ready": True,
    "setupMode": False,
    "configProblems": [],
}


def status(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(STATUS)
    doc.update(changes)
    return doc
