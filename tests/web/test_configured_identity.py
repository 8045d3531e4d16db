"""A site enrolled with the README's ``dynexport cert request --dir /data/dynexport/keys`` keeps
its registered identity through the web page: the certificate API reads and writes the running
configuration's ``utility.ca``, ``utility.cert`` and ``utility.key`` (the data folder's
``serca.pem``, ``device-chain.pem`` and ``device-key.pem`` only when no utility is configured),
and Settings' Apply keeps those paths.

Before, GET /api/cert always named the data folder's files: the page's certificate step found
"no key", refused to go on until "Create key and request" made one there (no confirmation), and
Apply pointed the utility link at that new, unregistered key with no chain: the site fell to the
fallback export limit until the utility registered a new LFDI."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dynexport.app import App, AppOptions
from dynexport.sep2 import certs
from dynexport.sep2.identity import chain_lfdi
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway
from dynexport.system.config import parse_config
from dynexport.web.auth import PasswordStore
from tests.web.conftest import Client, Web, logged_in
from tests.web.test_browser import PASSWORD, SIZES, Walk, needs_chromium, walk_served_app

FILES = (
    ("serca.pem", "serca"),
    ("device-chain.pem", "device_chain"),
    ("device-key.pem", "device_key"),
)


def _enrolled_by_the_cli(keys: Path, tmp_path: Path) -> certs.TestPki:
    """``keys`` as `dynexport cert request --dir keys` and the utility's signing leave it."""
    pki = certs.make_test_pki(tmp_path / "pki", now=datetime.now(UTC))
    keys.mkdir(parents=True, exist_ok=True)
    for name, key in FILES:
        (keys / name).write_bytes(pki.files[key].read_bytes())
    return pki


def _utility(keys: Path, server: str = "https://127.0.0.1:9") -> dict[str, Any]:
    return {
        "server": server,
        "nmi": "4312345678",
        "ca": str(keys / "serca.pem"),
        "cert": str(keys / "device-chain.pem"),
        "key": str(keys / "device-key.pem"),
    }


async def _configured(web: Web, tmp_path: Path) -> tuple[Client, Path, certs.TestPki]:
    """A logged-in client of a site whose utility uses ``<data>/keys``."""
    c = await logged_in(web)
    data = web.app.options.data_dir
    keys = data / "keys"
    pki = _enrolled_by_the_cli(keys, tmp_path)
    doc = {"limits": {"exportW": 5000}, "utility": _utility(keys)}
    status, answer = await c.json("PUT", "/api/config", doc)
    assert status == 200, answer
    return c, keys, pki


async def test_the_certificate_state_is_the_configured_utilitys_files(
    web: Web, tmp_path: Path
) -> None:
    c, keys, pki = await _configured(web, tmp_path)
    status, info = await c.json("GET", "/api/cert")
    assert status == 200
    assert info["files"] == {
        "ca": str(keys / "serca.pem"),
        "cert": str(keys / "device-chain.pem"),
        "key": str(keys / "device-key.pem"),
    }
    assert info["key"] is True and info["serca"]
    assert info["chain"]["lfdi"] == pki.device_lfdi


async def test_a_request_on_a_configured_site_keeps_its_key_and_writes_the_csr_beside_it(
    web: Web, tmp_path: Path
) -> None:
    c, keys, _ = await _configured(web, tmp_path)
    key = (keys / "device-key.pem").read_bytes()
    status, doc = await c.json("POST", "/api/cert/request", {})
    assert status == 200 and doc["keyCreated"] is False
    assert (keys / "device-key.pem").read_bytes() == key
    assert (keys / "device.csr").read_text() == doc["csr"]
    data = web.app.options.data_dir
    assert not (data / "device-key.pem").exists() and not (data / "device.csr").exists()


async def test_replacing_the_configured_key_needs_confirmation_and_keeps_a_copy_beside_it(
    web: Web, tmp_path: Path
) -> None:
    c, keys, pki = await _configured(web, tmp_path)
    key, chain = (keys / "device-key.pem").read_bytes(), (keys / "device-chain.pem").read_bytes()
    status, doc = await c.json("POST", "/api/cert/request", {"replace": True})
    assert status == 409 and doc["lfdi"] == pki.device_lfdi  # the identity in use, named
    assert (keys / "device-key.pem").read_bytes() == key
    status, doc = await c.json("POST", "/api/cert/request", {"replace": True, "confirm": True})
    assert status == 200 and doc["keyCreated"] is True and doc["previousLfdi"] == pki.device_lfdi
    assert (keys / "device-key.pem").read_bytes() != key
    assert not (keys / "device-chain.pem").exists()  # a chain for the old key is useless
    copies = {p.name: p.read_bytes() for p in keys.glob("*.bak")}
    assert sorted(copies) == sorted(doc["keptAs"]) and len(copies) == 2
    assert sorted(copies.values()) == sorted([key, chain])
    assert not (web.app.options.data_dir / "device-key.pem").exists()


async def test_a_chain_and_a_serca_saved_on_the_web_go_to_the_configured_files(
    web: Web, tmp_path: Path
) -> None:
    c, keys, pki = await _configured(web, tmp_path)
    data = web.app.options.data_dir
    chain = (keys / "device-chain.pem").read_bytes()
    (keys / "device-chain.pem").unlink()  # the signed chain arrives later, pasted in Settings
    status, doc = await c.json("PUT", "/api/cert/chain", raw=chain)
    assert status == 200 and doc["lfdi"] == pki.device_lfdi
    assert chain_lfdi((keys / "device-chain.pem").read_bytes()) == pki.device_lfdi
    serca = pki.files["serca"].read_bytes()
    (keys / "serca.pem").unlink()
    assert (await c.json("PUT", "/api/cert/serca", raw=serca))[0] == 200
    assert (keys / "serca.pem").is_file()
    assert not any((data / n).exists() for n, _ in FILES)


async def test_configured_files_outside_the_data_folder_are_never_written_from_the_web(
    web: Web, tmp_path: Path
) -> None:
    """A configuration written by hand may keep the identity elsewhere: the page reads it there
    but writes nothing outside the data folder (409 naming the file)."""
    c = await logged_in(web)
    elsewhere = tmp_path / "etc-keys"
    pki = _enrolled_by_the_cli(elsewhere, tmp_path)
    (elsewhere / "device-key.pem").unlink()
    web.app.apply_config(parse_config({"utility": _utility(elsewhere)}, base_dir=tmp_path))
    status, info = await c.json("GET", "/api/cert")
    assert status == 200 and info["files"]["ca"] == str(elsewhere / "serca.pem")
    before = sorted(p.name for p in elsewhere.iterdir())
    for method, path, body in (
        ("PUT", "/api/cert/serca", pki.files["serca"].read_bytes()),
        ("POST", "/api/cert/request", b"{}"),
    ):
        status, doc = await c.json(method, path, raw=body)
        assert status == 409 and "outside the data folder" in doc["error"], doc
    assert sorted(p.name for p in elsewhere.iterdir()) == before
    data = web.app.options.data_dir
    assert not (data / "device-key.pem").exists() and not (data / "serca.pem").exists()


@pytest.mark.slow
@needs_chromium
async def test_walking_settings_to_change_a_limit_keeps_the_configured_device_key(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    keys = data / "keys"  # README: dynexport cert request --dir /data/dynexport/keys
    pki = _enrolled_by_the_cli(keys, tmp_path)
    key = (keys / "device-key.pem").read_bytes()
    PasswordStore(data).create(PASSWORD)
    with serve_tcp(fronius_gateway(tau_s=0.5)) as modbus, tempfile.TemporaryDirectory() as profile:
        document = {
            "inverters": [{"tcp": f"127.0.0.1:{modbus.port}", "unit": 1}],
            "meter": {"tcp": f"127.0.0.1:{modbus.port}", "unit": 240},
            "limits": {"exportW": 3000},
            "utility": _utility(keys),
        }
        (data / "config.json").write_text(json.dumps(document))
        opts = AppOptions(
            data_dir=data, config_path=data / "config.json", web_host="127.0.0.1", web_port=0
        )
        app = App(parse_config(document), opts)
        seen: dict[str, str] = {}

        def walk(driver: Any, url: str) -> None:
            w = Walk(driver, tmp_path / "shots")
            w.d.get(url + "settings")
            w.visible("#login")
            w.find("#login-pw").send_keys(PASSWORD)
            w.click("#login-btn")
            w.step("network")
            w.next()
            w.step("utility")
            assert w.find("#u-server").get_attribute("value") == "https://127.0.0.1:9"
            w.next()  # the SERCA in force is found where the configuration keeps it
            w.step("devices")
            w.next()
            w.step("limits")
            w.find("#limit-export").clear()
            w.find("#limit-export").send_keys("2500")  # all the owner wants to change
            w.next()
            w.step("certificate")
            seen["certificate"] = w.read("#lfdi-now")
            seen["button"] = w.read("#cert-gen")
            w.next()
            w.step("review")
            seen["summary"] = w.read("#summary")
            w.next()
            w.text("#reach", lambda t: "Saved and applied" in t)

        await walk_served_app(app, profile, SIZES["desktop"], walk)
    saved = json.loads((data / "config.json").read_text())
    assert saved["limits"]["exportW"] == 2500
    assert {k: saved["utility"][k] for k in ("ca", "cert", "key")} == {
        k: _utility(keys)[k] for k in ("ca", "cert", "key")
    }
    assert (
        pki.device_lfdi in seen["certificate"]
        and str(keys / "device-key.pem") in seen["certificate"]
    )
    assert seen["button"] == "Show the request for this key"
    assert "signed certificate saved" in seen["summary"]
    assert (keys / "device-key.pem").read_bytes() == key
    assert not (data / "device-key.pem").exists()
    assert app.config.utility is not None and app.config.utility.cert.is_file()


async def test_the_certificate_api_writes_only_its_own_file_names_never_a_service_file(
    web: Web, tmp_path: Path
) -> None:
    """Found by review: with ``utility.cert`` naming ``admin.json`` (inside the data folder),
    a confirmed key replace deleted the admin password file, and the next visitor on the
    network set a new one. The API writes and deletes only ``serca.pem``, ``device-key.pem``,
    ``device.csr`` and ``device-chain.pem``."""
    c = await logged_in(web)
    data = web.app.options.data_dir
    keys = data / "keys"
    _enrolled_by_the_cli(keys, tmp_path)
    utility = _utility(keys) | {"cert": str(data / "admin.json")}
    status, answer = await c.json(
        "PUT", "/api/config", {"limits": {"exportW": 5000}, "utility": utility}
    )
    assert status == 200, answer
    status, answer = await c.json("POST", "/api/cert/request", {"replace": True, "confirm": True})
    assert status == 409 and "not named device-chain.pem" in answer["error"], answer
    assert (data / "admin.json").is_file()
    status, _ = await c.json("PUT", "/api/cert/chain", raw=b"not a chain")
    assert status == 409 and (data / "admin.json").is_file()
    stranger = web.client()
    status, _ = await stranger.json("POST", "/api/setup/password", {"password": "x" * 12 + "Aa1!"})
    assert status != 200, "a stranger set the admin password"


@pytest.mark.parametrize("zone", ["NZ", "Japan", "UTC"])
async def test_a_configured_time_zone_is_one_the_settings_page_offers(web: Web, zone: str) -> None:
    """Found by review: the list held only zones with a "/"; set to one it lacked, the page's
    select read "" and walking Settings dropped the site's time zone (daily windows on UTC)."""
    c = await logged_in(web)
    status, answer = await c.json("PUT", "/api/config", {"site": {"timeZone": zone}})
    assert status == 200, answer
    status, zones = await c.json("GET", "/api/timezones")
    assert status == 200 and zone in zones["all"]
