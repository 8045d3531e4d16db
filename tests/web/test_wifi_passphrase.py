"""The saved home Wi-Fi passphrase survives Settings: the page never gets it back, so a save
without one keeps it for the same network name, an open network is only written when asked for
(``open: true``), and a new network without a passphrase is refused, not saved open.

Before, the Network step sent ``{ssid, psk: ""}`` on every Next and the API took "" as an open
network: an owner walking through Settings to change a limit made the next boot join the home
Wi-Fi as an open network, and lose it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from dynexport.app import App, AppOptions
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway
from dynexport.system.config import parse_config
from dynexport.web.auth import PasswordStore
from tests.web.conftest import Web, logged_in
from tests.web.test_browser import PASSWORD, SIZES, Walk, needs_chromium, walk_served_app

HOME = {"ssid": "HomeNet", "psk": "the home wifi passphrase"}


def _saved(web: Web) -> object:
    return json.loads((web.app.options.data_dir / "wifi.json").read_text())


async def test_a_wifi_save_without_a_passphrase_keeps_the_saved_one_for_the_same_network(
    web: Web,
) -> None:
    c = await logged_in(web)
    assert (await c.json("PUT", "/api/wifi", HOME))[0] == 200
    status, doc = await c.json("PUT", "/api/wifi", {"ssid": "HomeNet"})
    assert status == 200 and doc == {"configured": True, "ssid": "HomeNet", "open": False}
    assert _saved(web) == HOME
    # an empty passphrase (what the page used to send) keeps it too: never an open network
    assert (await c.json("PUT", "/api/wifi", {"ssid": "HomeNet", "psk": ""}))[0] == 200
    assert _saved(web) == HOME
    assert await c.json("GET", "/api/wifi") == (
        200,
        {"configured": True, "ssid": "HomeNet", "open": False},
    )


async def test_a_new_network_without_a_passphrase_is_refused_not_saved_open(web: Web) -> None:
    c = await logged_in(web)
    status, doc = await c.json("PUT", "/api/wifi", {"ssid": "Cafe"})  # nothing saved yet
    assert status == 422 and "enter the password of 'Cafe'" in doc["error"]
    assert "open: true" in doc["error"]
    assert not (web.app.options.data_dir / "wifi.json").exists()
    assert (await c.json("PUT", "/api/wifi", HOME))[0] == 200
    for body in ({"ssid": "Neighbour"}, {"ssid": "Neighbour", "psk": ""}):
        status, doc = await c.json("PUT", "/api/wifi", body)
        assert status == 422 and "enter the password of 'Neighbour'" in doc["error"], doc
        assert _saved(web) == HOME


async def test_an_open_network_is_saved_only_when_asked_for_with_open_true(web: Web) -> None:
    c = await logged_in(web)
    assert (await c.json("PUT", "/api/wifi", HOME))[0] == 200
    status, doc = await c.json("PUT", "/api/wifi", {"ssid": "Cafe", "open": True})
    assert status == 200 and doc == {"configured": True, "ssid": "Cafe", "open": True}
    assert _saved(web) == {"ssid": "Cafe", "psk": ""}
    assert (await c.json("GET", "/api/wifi"))[1]["open"] is True
    # the open network saved is kept open by a save that leaves the passphrase out
    assert (await c.json("PUT", "/api/wifi", {"ssid": "Cafe"}))[0] == 200
    assert _saved(web) == {"ssid": "Cafe", "psk": ""}
    for body, problem in (
        ({"ssid": "Cafe", "open": True, "psk": "a good passphrase"}, "an open network"),
        ({"ssid": "Cafe", "open": "yes"}, "open: must be true or false"),
    ):
        status, doc = await c.json("PUT", "/api/wifi", body)
        assert status == 422 and problem in doc["error"], doc
    assert _saved(web) == {"ssid": "Cafe", "psk": ""}


@pytest.mark.slow
@needs_chromium
async def test_walking_settings_keeps_the_home_wifi_passphrase(tmp_path: Path) -> None:
    """Next on the Network step with the password left empty keeps the saved one (and the page
    says so); a new network name with no password is refused on the page, nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    PasswordStore(data).create(PASSWORD)
    (data / "wifi.json").write_text(json.dumps(HOME))
    with serve_tcp(fronius_gateway(tau_s=0.5)) as modbus, tempfile.TemporaryDirectory() as profile:
        ep = f"127.0.0.1:{modbus.port}"
        doc = {"inverters": [{"tcp": ep, "unit": 1}], "meter": {"tcp": ep, "unit": 240}}
        (data / "config.json").write_text(json.dumps(doc))
        opts = AppOptions(
            data_dir=data, config_path=data / "config.json", web_host="127.0.0.1", web_port=0
        )
        app = App(parse_config(doc), opts)
        refused: list[str] = []

        def walk(driver: Any, url: str) -> None:
            w = Walk(driver, tmp_path / "shots")
            w.d.get(url + "settings")
            w.visible("#login")
            w.find("#login-pw").send_keys(PASSWORD)
            w.click("#login-btn")
            w.step("network")
            w.wait.until(lambda _: w.find("#ssid").get_attribute("value") == "HomeNet")
            assert w.find("#net-wifi").is_selected()
            w.next()  # the owner only wants to change something later on
            w.step("utility")
            saved = json.loads((data / "wifi.json").read_text())
            assert saved == HOME, f"walking Settings rewrote wifi.json as {saved}"
            w.click("#back")
            w.step("network")
            assert not w.find("#wifi-open").is_selected()
            w.text("#psk-hint", lambda t: "keep the saved passphrase" in t)
            assert w.attr("#psk", "placeholder") == "leave empty to keep the saved passphrase"
            w.find("#ssid").clear()
            w.find("#ssid").send_keys("Neighbour")
            w.next()
            refused.append(w.text("#msg", lambda t: t != ""))
            w.step("network")

        await walk_served_app(app, profile, SIZES["desktop"], walk)
    assert json.loads((data / "wifi.json").read_text()) == HOME
    assert "Enter the password of Neighbour" in refused[0]
