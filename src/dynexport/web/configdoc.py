"""A running Config back as its JSON document (docs/configuration.md), for GET /api/config.

``parse_config(config_document(c), base_dir=c.base_dir) == c``: the page edits this document and
PUTs it back. Paths are written absolute.
"""

from __future__ import annotations

from typing import Any

from dynexport.control.limits import POWER_KEYS, LimitsConfig
from dynexport.integrations.configdoc import integrations_document
from dynexport.modbus.endpoints import SerialEndpoint, TcpEndpoint
from dynexport.system.config import Config, DeviceConfig
from dynexport.system.migrate import CURRENT_VERSION


def _device(dev: DeviceConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": dev.type}
    ep = dev.endpoint
    if isinstance(ep, TcpEndpoint):
        doc["tcp"] = str(ep)
    elif isinstance(ep, SerialEndpoint):
        doc.update(rtu=ep.device, baud=ep.baud, parity=ep.parity, stopbits=ep.stopbits)
    doc["unit"] = dev.unit
    return doc


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _num(v: float | None) -> float | int | None:
    if v is None:
        return None
    return int(v) if float(v).is_integer() else v


def limits_document(limits: LimitsConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {key: _num(getattr(limits, attr)) for key, attr in POWER_KEYS}
    doc["connect"] = limits.connect
    doc["windows"] = [
        {
            "from": _hhmm(w.start_min),
            "to": _hhmm(w.end_min),
            **{
                key: _num(getattr(w, attr))
                for key, attr in POWER_KEYS
                if getattr(w, attr) is not None
            },
        }
        for w in limits.windows
    ]
    return doc


def config_document(config: Config) -> dict[str, Any]:
    """The configuration file document that parses back to ``config``."""
    doc: dict[str, Any] = {"inverters": [_device(inv) for inv in config.inverters]}
    if config.batteries:
        doc["batteries"] = [
            {
                **_device(b),
                "maxSocPct": _num(b.max_soc_pct),
                "reserveSocPct": _num(b.reserve_soc_pct),
                **({} if b.evening_soc_pct is None else {"eveningSocPct": _num(b.evening_soc_pct)}),
                **({} if b.capacity_wh is None else {"capacityWh": _num(b.capacity_wh)}),
                "convention": b.convention,
                "dischargePositive": b.discharge_positive,
                "plan": b.plan,
            }
            for b in config.batteries
        ]
    if config.meter is not None:
        doc["meter"] = {**_device(config.meter), "location": config.meter.location}
    c = config.control
    doc["control"] = {
        "intervalS": _num(c.interval_s),
        "revertS": c.revert_s,
        "meterStaleS": _num(c.meter_stale_s),
        "failsafeGenerationW": _num(c.failsafe_generation_w),
    }
    doc["limits"] = limits_document(config.limits)
    doc["web"] = {"host": config.web.host, "port": config.web.port}
    u = config.utility
    if u is not None:
        utility: dict[str, Any] = {
            "type": u.type,
            "server": u.server,
            "dcap": u.dcap,
            "ca": str(u.ca),
            "cert": str(u.cert),
            "key": str(u.key),
            "nmi": u.nmi,
            "checkHostname": u.check_hostname,
        }
        if u.pin is not None:
            utility["pin"] = u.pin
        if u.ciphers:
            utility["ciphers"] = list(u.ciphers)
        utility["pen"] = u.pen
        utility["fallbackExportW"] = _num(u.fallback_export_w)
        if u.csipaus_version != "auto":  # the installer's override (docs/configuration.md)
            utility["csipAusVersion"] = u.csipaus_version
        doc["utility"] = utility
    if config.site.time_zone is not None:
        doc["site"] = {"timeZone": config.site.time_zone}
    if config.update is not None:  # the optional update URL: docs/update.md
        doc["update"] = config.update.document()
    doc["version"] = CURRENT_VERSION  # schema version (system/migrate.py)
    doc.update(integrations_document(config))  # mqtt, price, metrics: docs/integrations.md
    return doc
