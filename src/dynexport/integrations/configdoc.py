"""The ``mqtt``, ``price`` and ``metrics`` sections written back as configuration JSON.

``web/configdoc.config_document`` adds these, so a configuration PUT back by the web page keeps
them (a section it forgot would be dropped). Secrets are written as they are: the web layer
decides what it shows.
"""

from __future__ import annotations

from typing import Any

from dynexport.system.config import Config


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def integrations_document(config: Config) -> dict[str, Any]:
    """The integration sections of ``config`` as they parse back (absent when not configured)."""
    doc: dict[str, Any] = {}
    m = config.mqtt
    if m is not None:
        mqtt: dict[str, Any] = {"url": m.url}
        if m.username is not None:
            mqtt["username"] = m.username
        if m.password is not None:
            mqtt["password"] = m.password
        for key, path in (("ca", m.ca), ("cert", m.cert), ("key", m.key)):
            if path is not None:
                mqtt[key] = str(path)
        if m.topic_prefix is not None:
            mqtt["topicPrefix"] = m.topic_prefix
        mqtt["discoveryPrefix"] = m.discovery_prefix
        mqtt["publishS"] = _num(m.publish_s)
        mqtt["commandTopic"] = m.command_topic
        mqtt["commandExpiryS"] = _num(m.command_expiry_s)
        doc["mqtt"] = mqtt
    p = config.price
    if p is not None:
        price: dict[str, Any] = {
            "type": p.type,
            "siteId": p.site_id,
            "token": p.token,
            "url": p.url,
            "belowCents": _num(p.below_cents),
            "exportW": _num(p.export_w),
            "pollS": _num(p.poll_s),
            "expiryS": _num(p.expiry_s),
        }
        if p.ca is not None:
            price["ca"] = str(p.ca)
        doc["price"] = price
    if config.metrics is not None:
        doc["metrics"] = {"token": config.metrics.token}
    return doc
