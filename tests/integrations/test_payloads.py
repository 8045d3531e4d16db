"""Topic layout, Home Assistant discovery, energy counters and Prometheus text (pure)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.integrations.energy import EnergyCounters, Powers, integrate, powers_of
from dynexport.integrations.homeassistant import discovery_messages
from dynexport.integrations.metrics import bearer_ok, render_metrics
from dynexport.integrations.topics import alerts, default_prefix, node_id, state_messages
from tests.integrations import ha_schema
from tests.integrations.statusdoc import status


def test_the_default_prefix_is_the_serial_else_the_lfdi_else_the_host() -> None:
    assert default_prefix("10000000ABCDEF", "3E4F45", "pi") == "dynexport/10000000abcdef"
    assert default_prefix(None, "3E4F45AB", "pi") == "dynexport/3e4f45ab"
    assert default_prefix("", None, "my host") == "dynexport/my_host"
    assert node_id("dynexport/3e4f45ab") == "dynexport_3e4f45ab"


def test_unknown_readings_are_published_as_none_for_home_assistant() -> None:
    doc = status(site={"powerW": None, "meterOnline": False, "meterError": "timeout"})
    topics = {m.topic: m.payload for m in state_messages(doc, "p")}
    assert topics["p/site/power"] == "None"
    assert topics["p/problem"] == "ON"
    assert json.loads(topics["p/alerts"]) == {"alerts": ["meter: timeout"], "count": 1}


def test_alerts_gather_faults_problems_fallback_and_device_errors() -> None:
    doc = status(
        faults=[{"task": "meter", "error": "ValueError: x", "count": 2}],
        configProblems=["inverters[0].unit: must be 1..247"],
        utility={"configured": True, "lastError": None, "fallback": "no schedule yet"},
    )
    doc["inverters"][1]["error"] = "no answer"
    got = alerts(doc)
    assert "meter: ValueError: x (2 times)" in got
    assert "configuration: inverters[0].unit: must be 1..247" in got
    assert "inverter 2: no answer" in got
    assert "utility fallback limit in force: no schedule yet" in got


def test_a_battery_gets_its_topics_and_entities_only_when_present() -> None:
    plain = discovery_messages(status(), "p", "homeassistant")
    assert not any("battery" in m.topic for m in plain)
    doc = status(battery={"powerW": -1500.0, "socPct": 64.0})
    msgs = discovery_messages(doc, "p", "homeassistant")
    soc = [json.loads(m.payload) for m in msgs if m.topic.endswith("battery_soc/config")]
    assert soc and soc[0]["device_class"] == "battery" and soc[0]["unit_of_measurement"] == "%"
    states = {m.topic: m.payload for m in state_messages(doc, "p")}
    assert states["p/battery/soc"] == "64.0"
    for m in msgs:
        assert ha_schema.check(m.topic, json.loads(m.payload), "homeassistant") == []


@pytest.mark.parametrize(
    "meter",
    [{"meterOnline": False, "meterError": "timeout"}, {"meterOnline": True, "meterFrozen": True}],
    ids=["offline", "frozen"],
)
def test_energy_is_not_counted_from_a_meter_that_is_offline_or_frozen(
    meter: dict[str, object],
) -> None:
    # the status keeps an offline meter's last reading, and a frozen one repeats it
    c = EnergyCounters()
    doc = {"site": {"powerW": -4000.0, **meter}, "der": {"powerW": None}}
    for i in range(721):  # an hour of 5 s rounds
        c = integrate(c, powers_of(doc, i * 5.0))
    assert (c.exported_wh, c.imported_wh) == (0.0, 0.0)
    back = {"site": {"powerW": -4000.0, "meterOnline": True}, "der": {"powerW": None}}
    c = integrate(c, powers_of(back, 3605.0))
    c = integrate(c, powers_of(back, 3610.0))
    assert c.exported_wh == pytest.approx(4000.0 * 5 / 3600)  # counted again once it answers


def test_the_curtailed_energy_sensor_appears_once_available_power_is_known() -> None:
    c = EnergyCounters()
    doc = status()
    doc["der"] = {"powerW": 4000.0, "availableW": 6000.0}
    c = integrate(c, powers_of(doc, 0.0))
    c = integrate(c, powers_of(doc, 3600.0 / 2 / 60))  # 30 s at 2000 W curtailed
    assert "curtailed" in c.as_dict()
    assert math.isclose(c.curtailed_wh, 2000 * 30 / 3600)
    assert "curtailed" not in EnergyCounters().as_dict()


def test_import_and_export_split_where_site_power_crosses_zero() -> None:
    c = integrate(EnergyCounters(), Powers(0.0, 1000.0, 0.0, None))
    c = integrate(c, Powers(36.0, -1000.0, 0.0, None))  # crosses zero half way
    assert math.isclose(c.imported_wh, 1000 / 2 * 18 / 3600)
    assert math.isclose(c.exported_wh, 1000 / 2 * 18 / 3600)


def test_a_gap_or_an_unknown_reading_is_not_bridged() -> None:
    c = integrate(EnergyCounters(), Powers(0.0, 1000.0, 500.0, None))
    c = integrate(c, Powers(1000.0, 1000.0, 500.0, None))  # over MAX_GAP_S later
    assert c.imported_wh == 0.0 and c.generated_wh == 0.0
    c = integrate(c, Powers(1010.0, None, None, None))
    c = integrate(c, Powers(1020.0, 1000.0, 500.0, None))
    assert c.imported_wh == 0.0


reading = st.one_of(st.none(), st.floats(-20000, 20000), st.just(math.nan))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 200), reading, reading, reading), max_size=30))
def test_property_energy_counters_never_decrease(
    steps: list[tuple[float, float | None, float | None, float | None]],
) -> None:
    c = EnergyCounters()
    t = 0.0
    for dt, site, der, curtailed in steps:
        t += dt
        doc = status(site={"powerW": site}, der={"powerW": der, "availableW": curtailed})
        new = integrate(c, powers_of(doc, t))
        for key, value in new.as_dict().items():
            assert math.isfinite(value)
            assert value >= c.as_dict().get(key, 0.0)
        c = new


def test_metrics_render_the_status_in_prometheus_text() -> None:
    doc = status()
    doc["inverters"][0]["id"] = 'odd "name"\\'
    text = render_metrics(doc)
    lines = text.splitlines()
    assert "dynexport_site_power_watts -2500.0" in lines
    assert 'dynexport_export_limit_watts{source="utility"} 5000.0' in lines
    assert 'dynexport_inverter_power_watts{inverter="odd \\"name\\"\\\\"} 2500.0' in lines
    assert "# TYPE dynexport_inverter_power_watts gauge" in lines
    assert "dynexport_generation_limit_watts" not in text  # unknown: no made-up sample
    assert text.endswith("\n")
    for line in lines:  # every sample line is "name{labels} value"
        if not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            assert name.startswith("dynexport_") and math.isfinite(float(value))


def test_metrics_need_the_exact_bearer_token_and_are_off_without_one() -> None:
    token = "0123456789abcdef-secret"
    assert bearer_ok(f"Bearer {token}", token)
    assert bearer_ok(f"bearer {token}", token)
    assert not bearer_ok(f"Bearer {token}x", token)
    assert not bearer_ok(f"Basic {token}", token)
    assert not bearer_ok(None, token)
    assert not bearer_ok(f"Bearer {token}", None)
    assert not bearer_ok("Bearer ", "")
