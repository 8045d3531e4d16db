"""The overlay's Python helpers: the access point rule and the Wi-Fi configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.image.helpers import load_script

ap_rule = load_script("ap-rule")
wifi_config = load_script("wifi-config")

AP, WIFI = "dynexport-ap.target", "dynexport-wifi.service"


def seen(**kw: Any) -> Any:
    base = dict(
        now=1000.0,
        configured=True,
        wifi_configured=True,
        ap_active=False,
        wifi_active=True,
        online=True,
        stations=0,
    )
    base.update(kw)
    return ap_rule.Seen(**base)


def state(last_online: float = 1000.0, ap_since: float | None = None) -> Any:
    return ap_rule.State(last_online=last_online, ap_since=ap_since)


def test_setup_mode_starts_the_access_point() -> None:
    actions, st = ap_rule.decide(seen(configured=False, online=False), state())
    assert actions == [f"start {AP}"] and st.ap_since == 1000.0


def test_setup_mode_keeps_the_access_point_up() -> None:
    s = seen(configured=False, ap_active=True, now=99999.0)
    assert ap_rule.decide(s, state(ap_since=0.0))[0] == []


def test_a_lost_config_beside_its_last_good_copy_is_not_setup_mode(tmp_path: Path) -> None:
    """The service runs on config.last-good.json when config.json is lost; the access point
    rule must not take the site for unconfigured (the AP up for good, the home Wi-Fi down)."""
    config, last_good = tmp_path / "config.json", tmp_path / "config.last-good.json"
    assert ap_rule.site_configured(config, last_good, data_mounted=True) is False  # a first boot
    last_good.write_text("{}")
    assert ap_rule.site_configured(config, last_good, data_mounted=True) is True
    last_good.unlink()
    config.write_text("{}")
    assert ap_rule.site_configured(config, last_good, data_mounted=True) is True
    assert ap_rule.LAST_GOOD.name == "config.last-good.json"
    assert ap_rule.LAST_GOOD.parent == ap_rule.CONFIG.parent


def test_online_records_the_time() -> None:
    actions, st = ap_rule.decide(seen(now=2000.0), state(last_online=0.0))
    assert actions == [] and st.last_online == 2000.0


def test_short_outage_does_not_start_the_access_point() -> None:
    limit = ap_rule.OFFLINE_LIMIT
    actions, _ = ap_rule.decide(seen(online=False, now=1000.0 + limit - 1), state())
    assert actions == []


def test_long_outage_starts_the_access_point() -> None:
    limit = ap_rule.OFFLINE_LIMIT
    actions, st = ap_rule.decide(seen(online=False, now=1000.0 + limit), state())
    assert actions == [f"start {AP}"] and st.ap_since == 1000.0 + limit


def test_access_point_stays_while_a_phone_is_connected() -> None:
    # up to its bound (tests/image/test_setup_ap_only_in_setup_mode_or_a_long_outage.py)
    s = seen(ap_active=True, stations=1, now=ap_rule.AP_MAX - 1, online=False)
    assert ap_rule.decide(s, state(ap_since=0.0))[0] == []


def test_access_point_stays_for_its_minimum_time() -> None:
    s = seen(ap_active=True, now=ap_rule.AP_MIN - 1, online=False)
    assert ap_rule.decide(s, state(ap_since=0.0))[0] == []


def test_idle_access_point_goes_down_and_home_wifi_returns() -> None:
    s = seen(ap_active=True, now=ap_rule.AP_MIN, online=False)
    actions, st = ap_rule.decide(s, state(last_online=0.0, ap_since=0.0))
    assert actions == [f"stop {AP}", f"start {WIFI}"]
    assert st.last_online == ap_rule.AP_MIN and st.ap_since is None


def test_home_wifi_is_started_once_configured() -> None:
    actions, _ = ap_rule.decide(seen(wifi_active=False, online=False), state())
    assert actions == [f"start {WIFI}"]


def test_default_route_parsing() -> None:
    table = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\n"
        "wlan0\t0004A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
    )
    assert ap_rule.default_route_ifaces(table) == {"eth0"}


def test_wifi_config_encodes_the_values() -> None:
    text = wifi_config.render({"ssid": 'My "Home"\nnetwork={', "psk": "correct horse"})
    assert "ssid=" + b'My "Home"\nnetwork={'.hex() in text
    assert 'psk="correct horse"' in text
    assert text.count("network={") == 1


def test_wifi_config_open_and_hex_keys() -> None:
    assert "key_mgmt=NONE" in wifi_config.render({"ssid": "cafe"})
    hexkey = "ab" * 32
    assert f"psk={hexkey}\n" in wifi_config.render({"ssid": "x", "psk": hexkey.upper()})


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"ssid": ""},
        {"ssid": "x" * 33},
        {"ssid": "x", "psk": "short"},
        {"ssid": "x", "psk": 'has"quote'},
        {"ssid": "x", "psk": "new\nline1"},
        {"ssid": "x", "pkcs11_module_path": "/tmp/evil.so"},
    ],
)
def test_wifi_config_rejects(data: object) -> None:
    with pytest.raises(wifi_config.WifiConfigError):
        wifi_config.render(data)


def test_wifi_config_writes_a_private_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "wifi.json", tmp_path / "wpa.conf"
    src.write_text(json.dumps({"ssid": "home", "psk": "password1"}))
    assert wifi_config.main(["wifi-config", str(src), str(dst)]) == 0
    assert dst.stat().st_mode & 0o777 == 0o600
    src.write_text("{not json")
    assert wifi_config.main(["wifi-config", str(src), str(dst)]) == 1
