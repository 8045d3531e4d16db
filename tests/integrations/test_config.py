"""The ``mqtt``, ``price`` and ``metrics`` configuration sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynexport.system.config import ConfigError, parse_config
from dynexport.web.configdoc import config_document


def test_mqtt_needs_only_its_url() -> None:
    cfg = parse_config({"mqtt": {"url": "mqtt://127.0.0.1:1883"}}).mqtt
    assert cfg is not None
    assert (cfg.host, cfg.port, cfg.tls) == ("127.0.0.1", 1883, False)
    assert cfg.discovery_prefix == "homeassistant" and cfg.topic_prefix is None
    assert cfg.command_topic is False
    tls = parse_config({"mqtt": {"url": "mqtts://broker.example"}}).mqtt
    assert tls is not None and (tls.port, tls.tls) == (8883, True)


def test_problems_name_their_key_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "mqtt": {
                    "url": "mqtt://h",
                    "ca": "ca.pem",
                    "password": "x",
                    "topicPrefix": "a/#",
                    "publishS": 0,
                    "cert": "c.pem",
                    "commandTopic": "yes",
                },
                "price": {"siteId": "s", "pollS": 600, "expiryS": 300, "url": "http://x"},
                "metrics": {"token": "short"},
            }
        )
    problems = err.value.problems
    for expected in (
        "mqtt.ca: only applies to mqtts:// (TLS) brokers",
        "mqtt.password: needs a username",
        "mqtt.topicPrefix: must be topic levels",
        "mqtt.publishS: must be 1..3600",
        'mqtt: a client certificate needs both "cert" and "key"',
        "mqtt.commandTopic: must be true or false",
        "price.token: must be a non-empty string",
        "price.expiryS: must be at least pollS",
        "price.url: must be https://",
        "metrics.token: must be at least 16 characters",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    with pytest.raises(ConfigError, match=r"mqtt\.url: must be mqtt://HOST"):
        parse_config({"mqtt": {"url": "tcp://h:1883"}})
    # a port no client can use: said here (a caution: `run` runs on it, the price source
    # reports it; `config check` and the web API refuse it)
    for port in ("99999", "0"):
        doc = {"price": {"siteId": "s", "token": "t", "url": f"https://h:{port}"}}
        assert parse_config(doc).cautions == (
            f"price.url: its port must be 1..65535, not 'https://h:{port}'",
        )
    price = parse_config({"price": {"siteId": "s", "token": "t", "url": "https://h:8443/v1"}})
    assert price.price is not None and price.price.url == "https://h:8443/v1"
    with pytest.raises(ConfigError, match=r"mqtt.url: must be a non-empty string"):
        parse_config({"mqtt": {}})
    with pytest.raises(ConfigError, match=r"mqtt.publishs: unknown key"):
        parse_config({"mqtt": {"url": "mqtt://h", "publishs": 1}})


def test_the_sections_survive_the_web_pages_round_trip(tmp_path: Path) -> None:
    raw = {
        "mqtt": {
            "url": "mqtts://broker.example:8884",
            "username": "site",
            "password": "secret",
            "ca": "ca.pem",
            "cert": "c.pem",
            "key": "k.pem",
            "topicPrefix": "fleet/site-7",
            "discoveryPrefix": "ha",
            "publishS": 2.5,
            "commandTopic": True,
            "commandExpiryS": 120,
        },
        "price": {"siteId": "01ABC", "token": "psk_123", "belowCents": -2.5, "exportW": 500},
        "metrics": {"token": "0123456789abcdef"},
    }
    config = parse_config(raw, base_dir=tmp_path)
    again = parse_config(config_document(config), base_dir=tmp_path)
    assert again == config
    assert again.mqtt is not None and again.mqtt.password == "secret"
    assert again.price is not None and again.price.token == "psk_123"


@pytest.mark.parametrize(
    "host",
    ["a" * 64 + ".example", "\N{SNOWMAN}.local", "broker..lan"],
    ids=["label-over-63", "snowman", "empty-label"],
)
def test_an_mqtt_host_the_name_lookup_cannot_encode_is_named_as_a_problem(host: str) -> None:
    """Such a host passed the check, then every connection attempt raised UnicodeError in the
    name lookup. It is a caution, as the other URLs' problems an earlier release let through:
    ``dynexport run`` runs on it (the bridge's ``lastError`` says why it never connects),
    ``config check`` and the web API refuse it."""
    config = parse_config({"mqtt": {"url": f"mqtt://{host}:1883"}})
    assert len(config.cautions) == 1
    assert config.cautions[0].startswith(f"mqtt.url: its host {host!r} cannot be looked up: ")


def test_an_mqtt_host_idna_can_encode_is_accepted() -> None:
    for host in ("a" * 63 + ".lan", "b\N{LATIN SMALL LETTER U WITH DIAERESIS}cher.example"):
        config = parse_config({"mqtt": {"url": f"mqtts://{host}"}})
        assert config.cautions == ()
        assert config.mqtt is not None and config.mqtt.host == host
    v6 = parse_config({"mqtt": {"url": "mqtt://[fd00::1]:1883"}})
    assert v6.cautions == () and v6.mqtt is not None and v6.mqtt.host == "fd00::1"
