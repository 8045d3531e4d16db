"""Issue 12, behind the web API: scan messages, key replacement, commissioning before enrolment,
the dashboard's alerts, /metrics, time zones, backup and restore, energy today."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding

from dynexport.modbus.endpoints import parse_tcp
from dynexport.sep2 import certs
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway
from dynexport.sunspec import cli as sunspec_cli
from dynexport.system.config import Config, parse_config
from dynexport.web.api import _summarise_scan, alerts, plain_tls, restore_secrets, without_secrets
from dynexport.web.energy import EnergyToday
from dynexport.web.wifi import parse_scan
from tests.ports import refusing_port
from tests.web import raw
from tests.web.conftest import Web, logged_in

NOW = 1_780_000_000.0  # 2026-05-28, a set clock


# -- scan: three failures, three messages -----------------------------------------------------


async def test_a_refused_connection_is_502_refused_naming_the_address(web: Web) -> None:
    c = await logged_in(web)
    with refusing_port() as port:
        status, doc = await c.json("POST", "/api/devices/scan", {"tcp": f"127.0.0.1:{port}"})
    assert status == 502 and doc["reason"] == "refused"
    assert doc["error"].startswith(f"cannot connect to 127.0.0.1:{port}")


async def test_a_missing_serial_port_is_502_no_port(web: Web) -> None:
    c = await logged_in(web)
    body = {"rtu": "/dev/ttyUSB97", "units": [1]}
    status, doc = await c.json("POST", "/api/devices/scan", body)
    assert status == 502 and doc["reason"] == "no-port"
    assert "no serial port /dev/ttyUSB97" in doc["error"]


async def test_a_bus_where_nobody_answers_is_502_silent_and_progress_lists_each_unit(
    web: Web, nursery: trio.Nursery
) -> None:
    """A gateway that accepts the connection and never answers: every unit is "no answer"."""

    async def mute(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(1024):
                pass

    listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    c = await logged_in(web)
    body = {"tcp": f"127.0.0.1:{port}", "units": [1, 2]}
    status, doc = await c.json("POST", "/api/devices/scan", body)
    assert status == 502 and doc["reason"] == "silent"
    assert "no unit answered (tried 1, 2)" in doc["error"]
    status, progress = await c.json("GET", "/api/devices/scan")
    assert status == 200 and progress["running"] is False
    assert [(p["unit"], p["result"]) for p in progress["probed"]] == [
        (1, "no-answer"),
        (2, "no-answer"),
    ]


async def test_scan_progress_names_found_units_and_an_absent_unit_is_no_failure(web: Web) -> None:
    c = await logged_in(web)
    with serve_tcp(fronius_gateway()) as sim:
        body = {"tcp": f"127.0.0.1:{sim.port}", "units": [1, 240]}
        status, doc = await c.json("POST", "/api/devices/scan", body)
    assert status == 200
    assert [d["controllable"] for d in doc["devices"]] == [True, None]
    status, progress = await c.json("GET", "/api/devices/scan")
    assert [(p["unit"], p["result"]) for p in progress["probed"]] == [(1, "found"), (240, "found")]


def test_an_inverter_without_a_control_model_is_flagged_before_it_is_chosen() -> None:
    class Model:
        def __init__(self, mid: int) -> None:
            self.id = mid
            self.points: dict[str, Any] = {}

    class Dev:
        unit, common = 3, None

    endpoint = parse_tcp("127.0.0.1:502")
    only_measures = _summarise_scan(endpoint, [(Dev(), [Model(1), Model(103), Model(120)])])
    dev = only_measures["devices"][0]
    assert dev["kind"] == "inverter" and dev["controllable"] is False
    assert "no SunSpec control model (123 or 704)" in dev["warning"]
    controls = _summarise_scan(endpoint, [(Dev(), [Model(1), Model(103), Model(123)])])
    assert controls["devices"][0]["controllable"] is True
    assert controls["devices"][0]["warning"] is None


def test_the_cli_scan_says_the_same_in_its_json_and_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    with refusing_port() as port:
        args = argparse.Namespace(
            tcp=f"127.0.0.1:{port}", rtu=None, baud=9600, parity="N", stopbits=1,
            unit=[1], json=True, timeout=0.5,
        )  # fmt: skip
        assert sunspec_cli.scan_command(args) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["reason"] == "refused" and doc["devices"] == []
    args.tcp, args.rtu = None, "/dev/ttyUSB97"
    assert sunspec_cli.scan_command(args) == 2
    assert json.loads(capsys.readouterr().out)["reason"] == "no-port"


# -- the device key: never replaced without a confirmation naming the consequence -------------


def _pki(tmp: Path) -> certs.TestPki:
    return certs.make_test_pki(tmp / "pki", now=datetime.now(UTC))


async def _enrol(c: Any, pki: certs.TestPki) -> str:
    """Saves the SERCA, makes the key and returns the signed chain (not yet uploaded)."""
    assert (await c.json("PUT", "/api/cert/serca", raw=pki.files["serca"].read_bytes()))[0] == 200
    status, doc = await c.json("POST", "/api/cert/request")
    assert status == 200
    csr = certs.load_csr(doc["csr"].encode())
    mica = certs.load_certificates(pki.files["mica_cert"].read_bytes())[0]
    mica_key = certs.load_private_key(pki.files["mica_key"].read_bytes())
    device = certs.sign_device_cert(csr, mica, mica_key, now=datetime.now(UTC))
    return (device.public_bytes(Encoding.PEM) + mica.public_bytes(Encoding.PEM)).decode()


async def test_replacing_the_key_needs_a_confirmation_that_names_the_new_lfdi(
    web: Web, tmp_path: Path
) -> None:
    c = await logged_in(web)
    chain = await _enrol(c, _pki(tmp_path))
    status, saved = await c.json("PUT", "/api/cert/chain", raw=chain.encode())
    assert status == 200
    key = (web.app.options.data_dir / "device-key.pem").read_bytes()
    status, doc = await c.json("POST", "/api/cert/request", {"replace": True})
    assert status == 409 and doc["confirm"] is True and doc["lfdi"] == saved["lfdi"]
    assert (
        "the utility must register the new LFDI" in doc["error"] and saved["lfdi"] in doc["error"]
    )
    assert (web.app.options.data_dir / "device-key.pem").read_bytes() == key  # untouched
    status, doc = await c.json("POST", "/api/cert/request", {"replace": True, "confirm": True})
    assert status == 200 and doc["keyCreated"]
    assert (doc["previousLfdi"], doc["lfdi"]) == (saved["lfdi"], None)
    assert (web.app.options.data_dir / "device-key.pem").read_bytes() != key


async def test_a_replaced_key_and_its_chain_are_kept_beside_them_never_overwritten(
    web: Web, tmp_path: Path
) -> None:
    """docs/certificates.md: the key is never replaced without a copy kept. The web's confirmed
    replace kept none (found by review): one click lost the site's registered identity."""
    c = await logged_in(web)
    chain = await _enrol(c, _pki(tmp_path))
    assert (await c.json("PUT", "/api/cert/chain", raw=chain.encode()))[0] == 200
    data = web.app.options.data_dir
    old_key, old_chain = (
        (data / "device-key.pem").read_bytes(),
        (data / "device-chain.pem").read_bytes(),
    )
    status, doc = await c.json("POST", "/api/cert/request", {"replace": True, "confirm": True})
    assert status == 200 and len(doc["keptAs"]) == 2
    key_copy, chain_copy = (data / name for name in doc["keptAs"])
    assert key_copy.read_bytes() == old_key and chain_copy.read_bytes() == old_chain
    assert key_copy.name.startswith("device-key.pem.") and key_copy.name.endswith(".bak")
    assert key_copy.stat().st_mode & 0o777 == 0o600 and chain_copy.stat().st_mode & 0o777 == 0o600
    second_key = (data / "device-key.pem").read_bytes()
    status, doc = await c.json("POST", "/api/cert/request", {"replace": True, "confirm": True})
    assert status == 200 and len(doc["keptAs"]) == 1, "no chain for the second key yet"
    assert (data / doc["keptAs"][0]).read_bytes() == second_key
    assert key_copy.read_bytes() == old_key, "an earlier copy is never overwritten"


# -- commissioning before enrolment -----------------------------------------------------------


def _utility_config(web: Web, pki_url: str = "https://127.0.0.1:1") -> dict[str, Any]:
    data = web.app.options.data_dir
    return {
        "limits": {"exportW": 5000},
        "utility": {
            "server": pki_url,
            "nmi": "4312345678",
            "ca": str(data / "serca.pem"),
            "cert": str(data / "device-chain.pem"),
            "key": str(data / "device-key.pem"),
        },
    }


async def test_a_site_is_commissioned_with_the_signed_certificate_still_pending(
    web: Web, tmp_path: Path
) -> None:
    c = await logged_in(web)
    doc = _utility_config(web)
    assert (await c.json("PUT", "/api/cert/serca", raw=_pki(tmp_path).files["serca"].read_bytes()))[
        0
    ] == 200
    status, refused = await c.json("PUT", "/api/config", doc)
    assert status == 422  # no key yet: nothing to wait for
    assert any("utility.key: file not found" in p for p in refused["problems"])
    assert (await c.json("POST", "/api/cert/request"))[0] == 200
    status, applied = await c.json("PUT", "/api/config", doc)
    assert status == 200 and applied["applied"]
    assert "waiting for the signed certificate" in applied["pending"][0]
    status, st = await c.json("GET", "/api/status")
    assert st["utility"]["waitingForCertificate"] is True
    codes = {a["code"] for a in st["alerts"]}
    assert "enrolment" in codes and "certificate" not in codes


async def test_saving_the_signed_chain_starts_the_waiting_utility_link(
    web: Web, tmp_path: Path
) -> None:
    c = await logged_in(web)
    chain = await _enrol(c, _pki(tmp_path))
    assert (await c.json("PUT", "/api/config", _utility_config(web)))[0] == 200
    web.app.utility_error = "utility link not started: no such file"
    reloads: list[bool] = []
    web.app.reload_utility = lambda: reloads.append(True)  # type: ignore[method-assign]
    assert (await c.json("PUT", "/api/cert/chain", raw=chain.encode()))[0] == 200
    assert reloads == [True]
    _, st = await c.json("GET", "/api/status")
    assert st["utility"]["waitingForCertificate"] is False


# -- alerts -------------------------------------------------------------------------------------


def _codes(status: dict[str, Any], config: Config | None = None) -> dict[str, str]:
    got = alerts(status, config or Config(), NOW)
    return {a["code"]: a["text"] for a in got}


def test_a_task_fault_is_an_error_naming_the_task_and_its_count() -> None:
    codes = _codes({"faults": [{"task": "meter", "error": "KeyError: 'W'", "count": 3}]})
    assert codes["task-fault"] == "meter failed (3 times) and is restarting: KeyError: 'W'"


def test_the_utility_fallback_names_the_reason_and_the_limit(tmp_path: Path) -> None:
    config = parse_config(
        {"utility": {"server": "https://u.example", "nmi": "4312345678", "ca": "ca.pem",
                     "cert": "c.pem", "key": "k.pem", "fallbackExportW": 1500, "pen": 12345}},
        base_dir=tmp_path,
    )  # fmt: skip
    status = {"utility": {"configured": True, "fallback": "no signed certificate yet"}}
    codes = _codes(status, config)
    assert codes["utility-fallback"] == (
        "Utility has no usable schedule (no signed certificate yet): holding export at the "
        "fallback limit 1500 W"
    )
    assert "pen" not in codes


def test_an_unread_inverter_and_one_without_a_rating_are_each_an_error() -> None:
    status = {
        "inverters": [
            {"id": "a", "online": True, "controllable": True, "unread": True},
            {"id": "b", "online": True, "controllable": True, "skipped": "no rating"},
            {"id": "c", "online": True, "controllable": True, "skipped": None, "unread": False},
        ]
    }
    got = {a["code"]: a["text"] for a in alerts(status, Config(), NOW)}
    assert got["inverter-unread"].startswith("a answers but its output cannot be read")
    assert got["inverter-no-rating"].startswith("b: its rating (WMax) cannot be read")
    assert all(not text.startswith("c") for text in got.values())


def test_an_inverter_without_a_limit_revert_timer_is_a_warning() -> None:
    """Its limit stays in force if this appliance stops (docs/sunspec.md, optional points)."""
    inverter = {"online": True, "controllable": True}
    status = {
        "inverters": [
            {**inverter, "id": "a", "revertTimer": False},
            {**inverter, "id": "b", "revertTimer": None},
        ]
    }
    got = [(a["code"], a["level"], a["text"][:2]) for a in alerts(status, Config(), NOW)]
    assert [g for g in got if g[0] == "inverter-no-revert"] == [
        ("inverter-no-revert", "warning", "a:")
    ]


def test_storage_clock_price_and_mqtt_problems_are_each_shown() -> None:
    status = {
        "utility": {"storageError": "No space left on device", "clockAlert": "server time 1999"},
        "integrations": {
            "price": {"configured": True, "lapsed": True, "reason": "lapsed: no price for now"},
            "mqtt": {"configured": True, "connected": False, "lastError": "connection refused"},
        },
    }
    got = {a["code"] + ":" + a["level"]: a["text"] for a in alerts(status, Config(), NOW)}
    assert "No space left on device" in got["storage:error"]
    assert "server time 1999" in got["clock:error"]
    assert got["price-lapsed:warning"] == "Price source: lapsed: no price for now"
    assert got["mqtt:warning"] == "MQTT broker not connected: connection refused"


def test_a_caution_the_configuration_runs_with_is_a_warning_and_a_refusal_an_error() -> None:
    """A caution (Config.cautions: here a web.host that is not an address) runs as it is: the
    dashboard showed it at the error level of a refused file, as if the site ran without it."""
    config = parse_config({"web": {"host": "dynexport-setup"}})
    (caution,) = config.cautions
    refusal = "config.json: not JSON; running on config.last-good.json, the configuration last read"
    got = alerts({"configProblems": [caution, refusal]}, config, NOW)
    assert [(a["code"], a["level"], a["text"]) for a in got] == [
        ("config", "warning", f"Configuration: {caution}"),
        ("config", "error", f"Configuration: {refusal}"),
    ]


def test_a_connected_mqtt_and_a_live_price_raise_nothing() -> None:
    status = {
        "integrations": {
            "price": {"configured": True, "lapsed": False, "reason": "price 12 c/kWh"},
            "mqtt": {"configured": True, "connected": True, "lastError": None},
        }
    }
    assert _codes(status) == {}


def test_an_unset_pen_and_windows_without_a_time_zone_are_warnings(tmp_path: Path) -> None:
    config = parse_config(
        {"utility": {"server": "https://u.example", "nmi": "4312345678", "ca": "ca.pem",
                     "cert": "c.pem", "key": "k.pem"},
         "limits": {"windows": [{"from": "10:00", "to": "16:00", "exportW": 0}]}},
        base_dir=tmp_path,
    )  # fmt: skip
    codes = _codes({}, config)
    assert codes["pen"] == "Set utility.pen to your organisation's IANA Private Enterprise Number"
    assert codes["time-zone"] == "Daily windows run in UTC: set the site's time zone"
    zoned = parse_config(
        {"limits": {"windows": [{"from": "10:00", "to": "16:00", "exportW": 0}]},
         "site": {"timeZone": "Australia/Brisbane"}}
    )  # fmt: skip
    assert "time-zone" not in _codes({}, zoned)


@pytest.mark.parametrize("phase", ["failed", "rolled-back"])
def test_a_failed_or_rolled_back_update_is_an_error_with_its_message(phase: str) -> None:
    message = "update to 1.5.0 failed and was rolled back, because the service never became READY"
    codes = _codes({"update": {"phase": phase, "version": "1.5.0", "message": message}})
    assert codes["update"] == message


@pytest.mark.parametrize("phase", ["none", "trial", "committed", "installing"])
def test_an_update_that_did_not_fail_raises_nothing(phase: str) -> None:
    assert "update" not in _codes({"update": {"phase": phase, "message": "fine"}})


def test_an_update_the_url_offers_is_an_alert_only_when_it_waits_for_the_owner() -> None:
    check = {"configured": True, "install": "notify", "error": None, "failures": 0}
    offered = {"phase": "committed", "available": {"version": "1.6.0"}, "check": check}
    assert _codes({"update": offered})["update-available"] == (
        "Update 1.6.0 is available: install it from Installer tools, Software update"
    )
    auto = {**offered, "check": {**check, "install": "auto"}}  # it installs by itself
    assert "update-available" not in _codes({"update": auto})
    assert "update-available" not in _codes({"update": {**offered, "available": None}})


def test_an_update_url_that_keeps_failing_is_a_warning_after_three_tries() -> None:
    check = {"configured": True, "install": "notify", "error": "cannot connect", "failures": 2}
    assert "update-check" not in _codes({"update": {"check": check}})
    third = {"check": {**check, "failures": 3}}
    assert _codes({"update": third})["update-check"] == (
        "The update URL cannot be checked: cannot connect"
    )


def test_certificate_errors_are_said_without_library_internals() -> None:
    text = (
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
        "issuer certificate (_ssl.c:1006)"
    )
    assert "SSL:" not in plain_tls(text) and "_ssl.c" not in plain_tls(text)
    assert "not signed by the SERCA" in plain_tls(text)
    assert plain_tls("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)") == (
        "wrong version number"
    )


# -- the no-password banner, metrics --------------------------------------------------------


def _get(path: str, host: str, headers: Mapping[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


async def _configure(web: Web, document: dict[str, Any]) -> None:
    """The device configured by hand (no admin password), as app_cli would start it."""
    web.app.apply_config(parse_config(document))


async def test_a_configured_device_without_a_password_says_so_plainly(web: Web) -> None:
    await _configure(web, {"limits": {"exportW": 5000}})
    _, st = await web.client().json("GET", "/api/status")
    first = st["alerts"][0]
    assert first["code"] == "no-password" and first["level"] == "error"
    assert "anyone on this network can set the admin password" in first["text"]
    await logged_in(web)
    _, st = await web.client().json("GET", "/api/status")
    assert "no-password" not in {a["code"] for a in st["alerts"]}


async def test_metrics_are_off_until_a_token_is_configured(web: Web) -> None:
    await _configure(web, {"limits": {"exportW": 5000}})
    reply = await raw.exchange(web.port, raw.get("/metrics", f"127.0.0.1:{web.port}"))
    assert raw.status_of(reply) == 404
    assert b"metrics are off (set metrics.token)" in reply


async def test_metrics_need_the_exact_bearer_token_and_answer_an_ip_host(web: Web) -> None:
    await _configure(
        web, {"limits": {"exportW": 5000}, "metrics": {"token": "s3cret-token-0123456789"}}
    )
    host = f"127.0.0.1:{web.port}"  # a scraper names the address
    for auth in (
        None,
        "Bearer wrong",
        "Basic czNjcmV0LXRva2VuLTAxMjM0NTY3ODk=",
        "Bearer s3cret-token-01234567892",
    ):
        headers = {} if auth is None else {"Authorization": auth}
        reply = await raw.exchange(web.port, _get("/metrics", host, headers))
        assert raw.status_of(reply) == 401, auth
        assert raw.header(reply, "www-authenticate") == 'Bearer realm="metrics"'
    good = {"Authorization": "Bearer s3cret-token-0123456789"}
    reply = await raw.exchange(web.port, _get("/metrics", host, good))
    assert raw.status_of(reply) == 200
    assert raw.header(reply, "content-type") == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE dynexport_" in reply
    # a foreign name is still refused, as for /api/status (DNS rebinding)
    reply = await raw.exchange(web.port, _get("/metrics", "evil.example.com", good))
    assert raw.status_of(reply) == 421


# -- site time zone -------------------------------------------------------------------------


async def test_the_time_zone_list_puts_australia_first_and_the_parser_checks_the_choice(
    web: Web,
) -> None:
    c = await logged_in(web)
    status, zones = await c.json("GET", "/api/timezones")
    assert zones["australia"][0] == "Australia/Sydney" and "Australia/Perth" in zones["australia"]
    assert "Europe/Berlin" in zones["all"]
    status, doc = await c.json("PUT", "/api/config", {"site": {"timeZone": "Mars/Olympus"}})
    assert status == 422 and any(p.startswith("site.timeZone") for p in doc["problems"])
    status, doc = await c.json("PUT", "/api/config", {"site": {"timeZone": "Australia/Perth"}})
    assert status == 200 and doc["config"]["site"] == {"timeZone": "Australia/Perth"}
    assert web.app.config.site.time_zone == "Australia/Perth"


# -- backup and restore ---------------------------------------------------------------------


def test_a_backup_leaves_out_every_secret_and_a_restore_keeps_the_devices_own() -> None:
    doc: dict[str, Any] = {
        "limits": {"exportW": 5000},
        "mqtt": {"url": "mqtt://broker", "username": "u", "password": "p"},
        "price": {"siteId": "s", "token": "t"},
        "metrics": {"token": "m"},
    }
    backup, removed = without_secrets(doc)
    assert removed == ["mqtt.password", "price.token", "metrics.token"]
    assert "password" not in backup["mqtt"] and "token" not in backup["price"]
    assert doc["mqtt"]["password"] == "p"  # the running document is untouched
    kept = restore_secrets(backup, doc)
    assert kept == removed and backup == doc


async def test_backup_download_then_restore_through_the_api(web: Web) -> None:
    c = await logged_in(web)
    document = {"limits": {"exportW": 4200}, "metrics": {"token": "keep-me-0123456789abcdef"}}
    assert (await c.json("PUT", "/api/config", document))[0] == 200
    resp = await c.request("GET", "/api/config/backup")
    assert resp.status == 200 and "attachment" in (resp.header("content-disposition") or "")
    backup = json.loads(resp.body)
    assert "token" not in backup["metrics"] and backup["backup"]["secretsRemoved"] == [
        "metrics.token"
    ]
    backup["limits"]["exportW"] = 3000
    status, doc = await c.json("POST", "/api/config/restore", backup)
    assert status == 200 and doc["secretsKept"] == ["metrics.token"]
    assert web.app.config.limits.export_w == 3000
    assert (
        web.app.config.metrics is not None
        and web.app.config.metrics.token == "keep-me-0123456789abcdef"
    )


# -- energy today -------------------------------------------------------------------------


def test_energy_today_counts_each_kind_and_restarts_at_local_midnight() -> None:
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Australia/Brisbane")  # UTC+10, no daylight saving
    midnight = datetime(2026, 5, 29, 0, 0, tzinfo=zone).timestamp()
    e = EnergyToday()
    exporting = {"site": {"powerW": -3600.0}, "der": {"powerW": 4000.0, "availableW": 7600.0}}
    for i in range(61):  # one minute before midnight, one sample a second
        e.add(exporting, midnight - 60 + i - 1, zone)
    doc = e.to_json()
    assert doc["day"] == "2026-05-28"
    assert doc["exportedWh"] == pytest.approx(60.0, abs=0.1)  # 3600 W for 60 s
    assert doc["curtailedWh"] == pytest.approx(60.0, abs=0.1)  # 3600 W available, not made
    assert doc["importedWh"] == 0.0
    e.add(exporting, midnight + 1, zone)
    assert e.to_json()["day"] == "2026-05-29" and e.to_json()["exportedWh"] == 0.0


def test_curtailed_energy_is_unknown_until_available_power_is_reported() -> None:
    e = EnergyToday()
    for t in range(10):
        e.add({"site": {"powerW": 100.0}, "der": {"powerW": 0.0}}, NOW + t, UTC)
    assert e.to_json()["curtailedWh"] is None and e.to_json()["importedWh"] > 0


# -- Wi-Fi networks in range ------------------------------------------------------------------


def test_the_wifi_list_parses_iw_scan_dump_strongest_first_each_name_once() -> None:
    dump = (
        "BSS 11:22:33:44:55:66(on wlan0)\n\tsignal: -71.00 dBm\n\tSSID: Home\n"
        "BSS 11:22:33:44:55:67(on wlan0)\n\tsignal: -48.00 dBm\n\tSSID: Home\n"
        "BSS 22:22:33:44:55:66(on wlan0)\n\tsignal: -60.00 dBm\n\tSSID: Neighbour\n"
        "BSS 33:22:33:44:55:66(on wlan0)\n\tsignal: -30.00 dBm\n\tSSID: \n"
    )
    assert parse_scan(dump) == [
        {"ssid": "Home", "signal": "-48 dBm"},
        {"ssid": "Neighbour", "signal": "-60 dBm"},
    ]
