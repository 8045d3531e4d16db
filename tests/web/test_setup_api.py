"""Setup steps behind the login: device scan, home Wi-Fi, the device certificate."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from dynexport.sep2 import certs
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway
from tests.web.conftest import Web, logged_in


async def test_a_tcp_scan_finds_the_gateways_inverters_and_meter(web: Web) -> None:
    c = await logged_in(web)
    with serve_tcp(fronius_gateway()) as sim:
        status, doc = await c.json(
            "POST", "/api/devices/scan", {"tcp": f"127.0.0.1:{sim.port}", "units": [1, 2, 3, 240]}
        )
    assert status == 200
    found = {d["unit"]: d for d in doc["devices"]}
    assert sorted(found) == [1, 2, 240]
    assert found[1]["kind"] == "inverter" and found[240]["kind"] == "meter"
    assert found[1]["config"] == {"type": "sunspec", "tcp": f"127.0.0.1:{sim.port}", "unit": 1}
    assert found[1]["manufacturer"]


async def test_a_scan_needs_the_login_and_a_valid_endpoint(web: Web) -> None:
    await logged_in(web)
    status, _ = await web.client().json("POST", "/api/devices/scan", {"tcp": "127.0.0.1:1"})
    assert status == 401
    c = await _login(web)
    for body, message in [
        ({}, 'give exactly one of "tcp"'),
        ({"rtu": "/etc/passwd"}, "rtu must be a serial device"),
        ({"tcp": "127.0.0.1:99999"}, "tcp: port must be 1..65535"),
        ({"tcp": "127.0.0.1", "units": [0]}, "units must be"),
    ]:
        status, doc = await c.json("POST", "/api/devices/scan", body)
        assert status == 400 and doc["error"].startswith(message), doc


async def test_a_scan_of_an_address_where_nothing_answers_finds_nothing(web: Web) -> None:
    c = await logged_in(web)
    status, doc = await c.json("POST", "/api/devices/scan", {"tcp": "127.0.0.1:1", "units": [1]})
    assert status in (200, 502)
    if status == 200:
        assert doc["devices"] == []


async def _login(web: Web):
    from tests.web.conftest import PASSWORD

    c = web.client()
    status, _ = await c.json("POST", "/api/login", {"password": PASSWORD})
    assert status == 200
    return c


async def test_home_wifi_is_written_for_the_image_with_mode_0600(web: Web) -> None:
    c = await logged_in(web)
    status, doc = await c.json("PUT", "/api/wifi", {"ssid": "Home", "psk": "short"})
    assert status == 422 and "8 to 63" in doc["error"]
    status, doc = await c.json("PUT", "/api/wifi", {"ssid": "Home", "psk": "a good passphrase"})
    assert (status, doc) == (200, {"configured": True, "ssid": "Home", "open": False})
    path = web.app.options.data_dir / "wifi.json"
    assert json.loads(path.read_text()) == {"ssid": "Home", "psk": "a good passphrase"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    status, doc = await c.json("GET", "/api/wifi")
    # the passphrase is never sent back
    assert doc == {"configured": True, "ssid": "Home", "open": False}
    status, doc = await c.json("DELETE", "/api/wifi")
    assert not path.exists()


def _pki(tmp: Path) -> certs.TestPki:
    return certs.make_test_pki(tmp / "pki", now=datetime.now(UTC))


async def test_the_certificate_flow_key_csr_signed_chain_lfdi(web: Web, tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    c = await logged_in(web)
    status, doc = await c.json("PUT", "/api/cert/chain", raw=b"x")
    assert status == 409  # no key yet
    status, doc = await c.json("PUT", "/api/cert/serca", raw=b"not a certificate")
    assert status == 422
    status, doc = await c.json("PUT", "/api/cert/serca", raw=pki.files["serca"].read_bytes())
    assert status == 200
    status, doc = await c.json("POST", "/api/cert/request")
    assert status == 200 and doc["keyCreated"] and "CERTIFICATE REQUEST" in doc["csr"]
    key_file = web.app.options.data_dir / "device-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    status, again = await c.json("POST", "/api/cert/request")
    assert not again["keyCreated"]  # the key is kept: a new one means a new registration
    resp = await c.request("GET", "/api/cert/csr")
    assert resp.header("content-type") == "application/pkcs10"
    csr = certs.load_csr(resp.body)

    # the utility signs it (here: the test PKI's MICA)
    mica = certs.load_certificates(pki.files["mica_cert"].read_bytes())[0]
    mica_key = certs.load_private_key(pki.files["mica_key"].read_bytes())
    device = certs.sign_device_cert(csr, mica, mica_key, now=datetime.now(UTC))
    chain = device.public_bytes(Encoding.PEM) + mica.public_bytes(Encoding.PEM)

    # a chain for somebody else's key is refused
    status, doc = await c.json("PUT", "/api/cert/chain", raw=pki.files["device_chain"].read_bytes())
    assert status == 422 and "does not match the private key" in doc["error"]
    # the device certificate alone (no MICA) does not chain to the SERCA
    status, doc = await c.json("PUT", "/api/cert/chain", raw=device.public_bytes(Encoding.PEM))
    assert status == 422 and "not signed by the configured SERCA" in doc["error"]

    status, doc = await c.json("PUT", "/api/cert/chain", raw=chain)
    assert status == 200
    assert doc["lfdi"] == certs.lfdi(device) and doc["sfdi"] == certs.sfdi(device)
    status, info = await c.json("GET", "/api/cert")
    assert info["chain"]["lfdi"] == doc["lfdi"] and info["key"] and info["csr"]
    assert info["files"]["cert"].endswith("device-chain.pem")


async def test_certificate_routes_need_the_login(web: Web) -> None:
    await logged_in(web)
    stranger = web.client()
    for method, path in [
        ("POST", "/api/cert/request"),
        ("GET", "/api/cert/csr"),
        ("PUT", "/api/cert/chain"),
        ("PUT", "/api/cert/serca"),
        ("PUT", "/api/wifi"),
    ]:
        assert (await stranger.request(method, path, {})).status == 401, path
