"""The MQTT bridge against a real Mosquitto broker started by the test on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport.integrations.homeassistant import discovery_messages
from dynexport.integrations.limitsources import COMMAND_SOURCE
from dynexport.integrations.mqtt import MqttBridge
from dynexport.integrations.topics import ENERGY_KEYS
from dynexport.sep2 import certs
from dynexport.system.config import Config, MqttConfig, parse_config
from dynexport.web.api import alerts
from tests.integrations import ha_schema
from tests.integrations.broker import Broker, Subscriber, publish_once, running_broker
from tests.integrations.statusdoc import status

PREFIX = "dynexport/site1"


def mqtt_config(url: str, **extra: Any) -> MqttConfig:
    cfg = parse_config({"mqtt": {"url": url, "topicPrefix": PREFIX, "publishS": 1, **extra}}).mqtt
    assert cfg is not None
    return cfg


def bridge(cfg: MqttConfig, doc: Callable[[], dict[str, Any]] | None = None) -> MqttBridge:
    return MqttBridge(
        lambda: cfg,
        doc or (lambda: status()),
        min_backoff_s=0.05,
        max_backoff_s=0.2,
        jitter=lambda: 0.5,
    )


async def until(predicate: Callable[[], object], within: float = 20.0) -> None:
    """Waits for state another task or the broker changes; fails after ``within`` s."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def subscribed(broker: Broker, **tls: Any) -> Subscriber:
    sub = Subscriber(broker, **tls)
    await trio.to_thread.run_sync(sub.start)
    return sub


async def test_state_and_discovery_are_retained_and_follow_home_assistants_schema(
    tmp_path: Path,
) -> None:
    with running_broker(tmp_path / "broker") as broker:
        b = bridge(mqtt_config(broker.url))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await until(lambda: b.published >= 2)
            # a subscriber arriving later gets everything at once: all of it is retained
            sub = await subscribed(broker)
            try:
                await until(lambda: sub.get(f"{PREFIX}/availability") == b"online")
                expected = {
                    m.topic
                    for m in discovery_messages(
                        status(), PREFIX, "homeassistant", energy_keys=ENERGY_KEYS[:3]
                    )
                }
                await until(lambda: expected <= set(sub.topics()))
                await until(lambda: sub.get(f"{PREFIX}/energy/generated") is not None)
                topics = sub.topics()
                configs = {t: json.loads(sub.messages[t]) for t in topics if t.endswith("/config")}
                # Every topic seen so far is in the broker's retained store: a second subscriber
                # gets each one first from that store (marked retained), whatever the bridge
                # publishes meanwhile.
                late = await subscribed(broker)
                try:
                    await until(lambda: set(topics) <= set(late.topics()))
                    assert [t for t in topics if not late.retained[t]] == []
                finally:
                    await trio.to_thread.run_sync(late.stop)
            finally:
                await trio.to_thread.run_sync(sub.stop)
            nursery.cancel_scope.cancel()

    assert sub.get(f"{PREFIX}/site/power") == b"-2500.0"  # grid sign: negative = export
    assert sub.get(f"{PREFIX}/solar/power") == b"6000.0"
    assert sub.get(f"{PREFIX}/limit/export") == b"5000.0"
    assert sub.get(f"{PREFIX}/limit/export/source") == b"utility"
    assert sub.get(f"{PREFIX}/inverter/inverter_2/power") == b"3500.0"
    assert json.loads(sub.get(f"{PREFIX}/status") or b"") == status()
    assert sub.get(f"{PREFIX}/problem") == b"OFF"
    problems = [p for t, c in configs.items() for p in ha_schema.check(t, c, "homeassistant")]
    assert problems == []
    by_id = {c["unique_id"]: c for c in configs.values()}
    for key in ("site_power", "solar_power", "export_limit", "inverter_1_power"):
        c = by_id[f"dynexport_site1_{key}"]
        assert (c["device_class"], c["unit_of_measurement"], c["state_class"]) == (
            "power",
            "W",
            "measurement",
        )
        assert c["availability_topic"] == f"{PREFIX}/availability"
    for key in ("imported", "exported", "generated"):
        c = by_id[f"dynexport_site1_energy_{key}"]
        assert (c["device_class"], c["unit_of_measurement"], c["state_class"]) == (
            "energy",
            "Wh",
            "total_increasing",
        )
    inv = by_id["dynexport_site1_inverter_1_power"]["device"]
    assert inv["via_device"] == "dynexport_site1"
    assert inv["serial_number"] == "34119101"
    # every state topic a config names is actually published
    assert {c["state_topic"] for c in configs.values()} <= set(sub.topics())


async def test_a_device_removed_while_the_appliance_was_away_is_cleared_from_the_broker(
    tmp_path: Path,
) -> None:
    """What was published was remembered for one connection only: an inverter removed while
    the appliance was restarting (or away from the broker) stayed in Home Assistant for good, a
    ghost device with retained state. The broker's retained store now says what was left. An
    appliance entity that only comes with daylight (energy curtailed: no inverter reports its
    available power at night) is not a device, and survives a restart at night."""
    day = {"powerW": 6000.0, "availableW": 7000.0}
    two = status(der=day, battery={"configured": True, "powerW": 0.0, "socPct": 55.0})
    one = status(  # inverter 2 and the battery removed; restarted at night
        inverters=two["inverters"][:1],
        der={"powerW": None},
        battery={"configured": False, "powerW": None, "socPct": None},
    )
    curtailed = "homeassistant/sensor/dynexport_site1/energy_curtailed/config"
    kept = {m.topic for m in discovery_messages(one, PREFIX, "homeassistant")} | {curtailed}
    gone = {m.topic for m in discovery_messages(two, PREFIX, "homeassistant")} - kept
    gone |= {f"{PREFIX}/inverter/inverter_2/{k}" for k in ("power", "limit", "online")}
    gone |= {f"{PREFIX}/battery/power", f"{PREFIX}/battery/soc"}
    assert any("inverter_2" in t for t in gone) and any("battery" in t for t in gone)
    with running_broker(tmp_path / "broker") as broker:
        sub = await subscribed(broker)
        try:
            first = bridge(mqtt_config(broker.url), lambda: two)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.run)
                await until(lambda: gone | kept <= set(sub.topics()))
                nursery.cancel_scope.cancel()  # the appliance restarts without them
            assert all(sub.get(t) for t in gone | kept)
            again = bridge(mqtt_config(broker.url), lambda: one)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(again.run)
                await until(lambda: all(sub.get(t) == b"" for t in gone))
                rounds = again.published
                await until(lambda: again.published >= rounds + 2)
                nursery.cancel_scope.cancel()
            late = await subscribed(broker)  # what the retained store holds now
            try:
                await until(lambda: kept <= set(late.topics()))
                assert gone.isdisjoint(late.topics())
                assert late.get(f"{PREFIX}/inverter/inverter_1/power") == b"2500.0"
                assert late.get(curtailed)
            finally:
                await trio.to_thread.run_sync(late.stop)
        finally:
            await trio.to_thread.run_sync(sub.stop)


async def test_a_device_removed_while_connected_has_its_retained_state_cleared_at_once(
    tmp_path: Path,
) -> None:
    """An inverter (and the battery) removed on the settings page while the bridge stays
    connected: their discovery configs were cleared, but their retained state topics stayed at
    the broker until the next reconnect, for any later subscriber to find. Each round now clears
    the retained state topics this connection published that the round no longer has."""
    two = status(battery={"configured": True, "powerW": 0.0, "socPct": 55.0})
    one = status(inverters=two["inverters"][:1], battery={"configured": False, "powerW": None})
    current = {"doc": two}
    gone = {f"{PREFIX}/inverter/inverter_2/{k}" for k in ("power", "limit", "online")}
    gone |= {f"{PREFIX}/battery/power", f"{PREFIX}/battery/soc"}
    kept = {f"{PREFIX}/inverter/inverter_1/{k}" for k in ("power", "limit", "online")}
    with running_broker(tmp_path / "broker") as broker:
        sub = await subscribed(broker)
        try:
            b = bridge(mqtt_config(broker.url), lambda: current["doc"])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.run)
                await until(lambda: all(sub.get(t) for t in gone | kept))
                current["doc"] = one  # the installer removes inverter 2 and the battery
                await until(lambda: all(sub.get(t) == b"" for t in gone))
                late = await subscribed(broker)  # what the retained store holds now
                try:
                    await until(lambda: kept <= set(late.topics()))
                    held = set(late.topics())
                finally:
                    await trio.to_thread.run_sync(late.stop)
                assert b.connects == 1  # cleared by the same connection, not by a reconnect
                nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(sub.stop)
    assert gone.isdisjoint(held), sorted(gone & held)
    assert all(sub.get(t) for t in kept)


async def test_a_retained_config_it_cannot_read_is_left_alone_and_breaks_nothing(
    tmp_path: Path,
) -> None:
    """Someone else's retained message on this appliance's discovery topics (JSON nested too
    deep for the parser, or not JSON) is not the appliance's to clear, and must not end the
    session: an exception out of paho's callback would reconnect forever."""
    deep = "homeassistant/sensor/dynexport_site1/deep/config"
    odd = "homeassistant/sensor/dynexport_site1/odd/config"
    with running_broker(tmp_path / "broker") as broker:
        for topic, payload in ((deep, b"[" * 100_000), (odd, b"not json")):
            await trio.to_thread.run_sync(
                lambda: publish_once(broker, topic, payload, retain=True)  # noqa: B023
            )
        b = bridge(mqtt_config(broker.url))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await until(lambda: b.published >= 3)
            assert (b.connects, b.last_error) == (1, None)
            nursery.cancel_scope.cancel()
        late = await subscribed(broker)
        try:
            await until(lambda: {deep, odd} <= set(late.topics()))
        finally:
            await trio.to_thread.run_sync(late.stop)


async def test_the_last_will_marks_the_appliance_offline_when_it_disappears(
    tmp_path: Path,
) -> None:
    with running_broker(tmp_path / "broker") as broker:
        sub = await subscribed(broker)
        try:
            b = bridge(mqtt_config(broker.url))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.run)
                await until(lambda: sub.get(f"{PREFIX}/availability") == b"online")
                nursery.cancel_scope.cancel()  # the service stops (or dies) without goodbye
            await until(lambda: sub.get(f"{PREFIX}/availability") == b"offline")
        finally:
            await trio.to_thread.run_sync(sub.stop)


async def test_a_bad_password_is_refused_with_a_clear_status(tmp_path: Path) -> None:
    with running_broker(tmp_path / "broker", users={"site": "right-password"}) as broker:
        good = bridge(mqtt_config(broker.url, username="site", password="right-password"))
        bad = bridge(mqtt_config(broker.url, username="site", password="wrong"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good.run)
            nursery.start_soon(bad.run)
            await until(lambda: good.connected and bad.attempts >= 2)
            nursery.cancel_scope.cancel()
    doc = bad.status(0.0)
    assert doc["connected"] is False
    assert doc["state"] == "refused"
    assert "refused the connection" in doc["lastError"]
    assert "mqtt.username and mqtt.password" in doc["lastError"]
    assert good.status(0.0)["lastError"] is None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    files = certs.make_test_pki(folder / "main", now=dt.datetime.now(dt.UTC)).files
    other = certs.make_test_pki(folder / "other", now=dt.datetime.now(dt.UTC)).files
    return {**files, "other_serca": other["serca"]}


async def test_tls_with_the_test_ca_and_a_client_certificate(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    tls = {
        "tls": True,
        "ca": pki["serca"],
        "server_cert": pki["server_chain"],
        "server_key": pki["server_key"],
        "require_certificate": True,
    }
    with running_broker(tmp_path / "broker", **tls) as broker:
        sub = Subscriber(broker, certfile=str(pki["device_chain"]), keyfile=str(pki["device_key"]))
        await trio.to_thread.run_sync(sub.start)
        ok = bridge(
            mqtt_config(
                broker.url,
                ca=str(pki["serca"]),
                cert=str(pki["device_chain"]),
                key=str(pki["device_key"]),
            )
        )
        untrusted = bridge(mqtt_config(broker.url, ca=str(pki["other_serca"])))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ok.run)
                nursery.start_soon(untrusted.run)
                await until(lambda: sub.get(f"{PREFIX}/site/power") == b"-2500.0")
                await until(lambda: untrusted.attempts >= 2)
                nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(sub.stop)
    assert ok.connected is False  # after the cancel
    assert ok.connects == 1
    assert untrusted.connects == 0
    assert "not trusted" in (untrusted.last_error or "")
    assert "mqtt.ca" in (untrusted.last_error or "")


async def test_a_broker_restart_is_followed_by_reconnect_and_republished_retained_state(
    tmp_path: Path,
) -> None:
    with running_broker(tmp_path / "broker") as broker:
        b = bridge(mqtt_config(broker.url))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await until(lambda: b.connects == 1 and b.published >= 1)
            await trio.to_thread.run_sync(broker.stop)  # no persistence: retained state gone
            await until(lambda: not b.connected)
            assert b.status(0.0)["lastError"]
            await trio.to_thread.run_sync(broker.start)
            await until(lambda: b.connects == 2)
            sub = await subscribed(broker)  # only retained messages can reach it at once
            try:
                await until(lambda: sub.get(f"{PREFIX}/availability") == b"online")
                await until(lambda: sub.get(f"{PREFIX}/status") is not None)
                await until(
                    lambda: sub.get("homeassistant/sensor/dynexport_site1/site_power/config")
                )
            finally:
                await trio.to_thread.run_sync(sub.stop)
            nursery.cancel_scope.cancel()
    assert b.last_error is None


async def test_the_command_topic_sets_an_expiring_export_limit(tmp_path: Path) -> None:
    with running_broker(tmp_path / "broker") as broker:
        b = bridge(mqtt_config(broker.url, commandTopic=True, commandExpiryS=60))
        woken = []
        b._wake = lambda: woken.append(True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await until(lambda: b.connected)
            await until(lambda: b.published >= 1)  # subscribed before the first round
            topic = f"{PREFIX}/set/export_limit"
            await trio.to_thread.run_sync(
                lambda: publish_once(broker, topic, b'{"exportW": 1200, "durationS": 30}')
            )
            await until(lambda: b.command is not None)
            now = trio.current_time()
            limits = b.extra_limits(now)
            assert [(x.source, x.export_w) for x in limits] == [(COMMAND_SOURCE, 1200.0)]
            assert b.extra_limits(now + 31) == []  # a dead publisher cannot pin the limit
            assert woken
            await trio.to_thread.run_sync(lambda: publish_once(broker, topic, b""))  # clear
            await until(lambda: b.command is None)
            await trio.to_thread.run_sync(lambda: publish_once(broker, topic, b"-5"))
            await until(lambda: b.command_error is not None and "0..1e+07" in b.command_error)
            assert b.command is None
            nursery.cancel_scope.cancel()


async def test_a_command_repeated_to_keep_it_alive_wakes_the_controller_once(
    tmp_path: Path,
) -> None:
    """A publisher keeps its limit alive by sending it again: each copy refreshes the expiry,
    but only a change of the limit wakes the controller (and is logged). Every copy ran an
    extra control cycle, so a publisher stuck in a loop drove the control loop and the Modbus
    polls as fast as the devices answered."""
    with running_broker(tmp_path / "broker") as broker:
        b = bridge(mqtt_config(broker.url, commandTopic=True, commandExpiryS=60))
        woken: list[float] = []
        b._wake = lambda: woken.append(trio.current_time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await until(lambda: b.connected)
            await until(lambda: b.published >= 1)
            topic = f"{PREFIX}/set/export_limit"
            expiries: list[float] = []
            for _ in range(3):
                await trio.to_thread.run_sync(lambda: publish_once(broker, topic, b"1200"))
                await until(lambda: b.command is not None and b.command.expires_at not in expiries)
                assert b.command is not None and b.command.expires_at is not None
                expiries.append(b.command.expires_at)
            assert len(woken) == 1, "the same limit again wakes nothing"
            assert expiries == sorted(expiries) and len(set(expiries)) == 3, "each one refreshes"
            await trio.to_thread.run_sync(lambda: publish_once(broker, topic, b"800"))
            await until(lambda: b.command is not None and b.command.export_w == 800.0)
            assert len(woken) == 2, "a change wakes it"
            nursery.cancel_scope.cancel()


async def test_a_refused_command_subscription_is_shown_and_asked_again_until_granted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker whose ACL refuses the command topic answers the subscription with 0x80: no
    command can arrive, and that must not pass unnoticed. It is asked for again while the
    connection lasts (a broker may apply a corrected ACL to new subscriptions only); Mosquitto's
    dynamic security disconnects a client whose role changes, and the next connection's
    subscription is granted."""
    caplog.set_level(logging.INFO, logger="dynexport.integrations")
    folder = tmp_path / "broker"
    with running_broker(folder, dynsec=True, log_subscriptions=True) as broker:
        for args in (
            ["createClient", "site", "-p", "pw"],
            ["createRole", "site"],
            ["addClientRole", "site", "site"],
        ):
            await trio.to_thread.run_sync(broker.ctrl, *args)
        cfg = mqtt_config(broker.url, commandTopic=True, username="site", password="pw")
        b = MqttBridge(lambda: cfg, lambda: status(), jitter=lambda: 0.5, subscribe_retry_s=0.1)
        assert b.status(0.0)["commandSubscription"] == "pending"
        topic = f"{PREFIX}/set/export_limit"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await until(lambda: b.subscription == "refused")
            doc = b.status(0.0)
            assert doc["connected"] is True and doc["commandSubscription"] == "refused"
            shown = {a["code"]: a["text"] for a in mqtt_alerts(doc)}
            assert shown == {
                "mqtt-command": "The MQTT broker refused the subscription to the command topic "
                "(check its ACL): export limit commands cannot arrive"
            }
            await until(lambda: broker.subscriptions_logged(topic) >= 3)
            assert b.connects == 1 and b.subscription == "refused", "asked again, same session"
            grant = ["addRoleACL", "site", "subscribePattern", "dynexport/#", "allow"]
            await trio.to_thread.run_sync(broker.ctrl, *grant)
            await until(lambda: b.subscription == "granted")
            await trio.to_thread.run_sync(lambda: publish_once(broker, topic, b"700"))
            await until(lambda: b.command is not None)
            assert b.command is not None and b.command.export_w == 700.0
            doc = b.status(0.0)
            assert doc["commandSubscription"] == "granted"
            assert mqtt_alerts(doc) == []
            nursery.cancel_scope.cancel()
    refusals = [r for r in caplog.records if "refused the subscription" in r.getMessage()]
    assert len(refusals) == 1, "logged once, however often it is asked again"
    assert any("now grants the subscription" in r.getMessage() for r in caplog.records)


def mqtt_alerts(mqtt_status: dict[str, Any]) -> list[dict[str, str]]:
    """The dashboard's MQTT alerts for this status of the bridge."""
    shown = alerts({"integrations": {"mqtt": mqtt_status}}, Config(), 0.0)
    return [a for a in shown if a["code"].startswith("mqtt")]


async def test_commands_are_ignored_unless_the_command_topic_is_enabled(tmp_path: Path) -> None:
    with running_broker(tmp_path / "broker") as broker:
        b = bridge(mqtt_config(broker.url))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await until(lambda: b.published >= 1)
            topic = f"{PREFIX}/set/export_limit"
            await trio.to_thread.run_sync(lambda: publish_once(broker, topic, b"0"))
            sub = await subscribed(broker)  # a round trip through the broker after the command
            try:
                await until(lambda: sub.get(f"{PREFIX}/status") is not None)
            finally:
                await trio.to_thread.run_sync(sub.stop)
            nursery.cancel_scope.cancel()
    assert b.command is None
    assert b.extra_limits(trio.current_time()) == []


async def test_a_retained_command_is_refused_because_it_would_outlive_its_publisher(
    tmp_path: Path,
) -> None:
    with running_broker(tmp_path / "broker") as broker:
        topic = f"{PREFIX}/set/export_limit"
        # left on the broker by a publisher long gone: delivered again on every (re)subscribe
        await trio.to_thread.run_sync(lambda: publish_once(broker, topic, b"0", retain=True))
        b = bridge(mqtt_config(broker.url, commandTopic=True))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.run)
            await until(lambda: b.command_error is not None)
            nursery.cancel_scope.cancel()
    assert b.command is None
    assert "retained command was ignored" in (b.command_error or "")
