"""What a typical site's running service never imports, and that the lazy paths still work.

A typical site has inverters, a meter, the utility link and the web page, and no MQTT, no price
source, no update URL; nobody opens the setup wizard's device scan, Wi-Fi page or bundle upload.
Its service must not load the modules of those features (docs/decisions.md, "Lazy imports on
the service's path"): each check runs the real service in a fresh interpreter (a subprocess)
and looks at ``sys.modules``, so a module-level import that brings one back fails here. The
other half proves the features still load when they are used, and that the lazily built MQTT
bridge and price poller report exactly what the eagerly built ones did.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.httpio.names import lookup_host
from dynexport.integrations.amber import PricePoller
from dynexport.integrations.mqtt import MqttBridge
from dynexport.integrations.service import MQTT_OFF, PRICE_OFF, Integrations
from dynexport.sep2 import certs
from dynexport.system.config import Config, parse_config
from tests.test_imports import LAZY, run_fresh

# The real service (the ``run`` command's parser, the App with its web server) against a
# simulated site served in the same process and a utility that does not answer (a closed port
# on 127.0.0.1); it runs until both inverters are online and the controller has decided, the
# page, an asset, the status and the limits were fetched over HTTP, and the utility link has
# tried and failed. argv: config.json, data folder.
SERVICE = """
import json, sys
from pathlib import Path
import trio
from dynexport.cli import build_parser
build_parser(["run", "--config", sys.argv[1]])
import dynexport.app_cli
from dynexport.app import App, AppOptions
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway
from dynexport.system.config import parse_config

async def get(port, path):
    stream = await trio.open_tcp_stream(b"127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n"
    await stream.send_all(request.encode())
    got = b""
    while chunk := await stream.receive_some():
        got += chunk
    await stream.aclose()
    return int(got.split(b" ", 2)[1])

async def main():
    site = fronius_gateway(load_w=1000.0, tau_s=0.3)
    site.set_available(1, 5000.0)
    site.set_available(2, 8200.0)
    with serve_tcp(site) as sim:
        raw = json.loads(Path(sys.argv[1]).read_text())
        ep = f"127.0.0.1:{sim.port}"
        raw["inverters"] = [{"tcp": ep, "unit": 1}, {"tcp": ep, "unit": 2}]
        raw["meter"] = {"tcp": ep, "unit": 240}
        config = parse_config(raw, base_dir=Path(sys.argv[1]).parent)
        options = AppOptions(data_dir=Path(sys.argv[2]), web_host="127.0.0.1", web_port=0)
        app = App(config, options)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            with trio.fail_after(90):  # a bound, not a wait: each loop ends on its condition
                while not (app.output is not None and app.inverters
                           and all(link.state.online for link in app.inverters)):
                    await trio.sleep(0.05)
                codes = [await get(app.web_port, p)
                         for p in ("/", "/static/app.js", "/api/status", "/api/limits")]
                while app.status()["utility"].get("lastError") is None:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))

trio.run(main)
"""


def _lazy_loaded(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(LAZY)]


@pytest.fixture(scope="module")
def site_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A configuration whose utility (a closed port) has real test-PKI files; its folder has
    a ``data`` folder for the service."""
    folder = tmp_path_factory.mktemp("lazy")
    pki = certs.make_test_pki(folder / "pki", now=dt.datetime.now(dt.UTC))
    config = {
        "inverters": [{"tcp": "127.0.0.1:1", "unit": 1}],  # the script points these at its sim
        "meter": {"tcp": "127.0.0.1:1", "unit": 240},
        "utility": {
            "server": "https://127.0.0.1:1",
            "ca": str(pki.files["serca"]),
            "cert": str(pki.files["device_chain"]),
            "key": str(pki.files["device_key"]),
            "nmi": "4312345678",
            "pin": 111115,
        },
        "control": {"intervalS": 1},
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    (folder / "data").mkdir()
    return path


def test_a_typical_site_runs_without_the_integrations_update_url_and_setup_tools(
    site_files: Path,
) -> None:
    report = run_fresh(SERVICE, str(site_files), str(site_files.parent / "data"))
    assert report["codes"] == [200, 200, 200, 200]  # the web page and API were really used
    modules = report["modules"]
    assert "dynexport.web.api" in modules and "dynexport.sep2.client" in modules
    assert "dynexport.integrations.service" in modules  # the integrations' tasks did run
    assert _lazy_loaded(modules) == []


def test_the_lazy_modules_load_when_their_feature_is_used(tmp_path: Path) -> None:
    """The checker is not blind: the same names appear once MQTT, the price source and the
    update URL are configured and the setup tools are asked for. argv: the data folder."""
    code = """
import json, sys
from pathlib import Path
import trio, trio.testing
from dynexport.app import App, AppOptions
from dynexport.integrations.service import Integrations
from dynexport.system.config import parse_config
from dynexport.update.auto import UpdateChecker
from dynexport.web.api import WebApi
config = parse_config({
    "mqtt": {"url": "mqtt://127.0.0.1:1"},
    "price": {"siteId": "s1", "token": "t", "url": "https://127.0.0.1:1"},
    "update": {"url": "https://127.0.0.1:1/manifest.json"},
})
data = Path(sys.argv[1])
async def main():
    integrations = Integrations(lambda: config, lambda: {})
    checker = UpdateChecker(lambda: config.update, data, system_conf=Path("/nonexistent"))
    async with trio.open_nursery() as nursery:
        for _, task in integrations.tasks():
            nursery.start_soon(task)
        await checker.check_once(config.update)
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    status = integrations.status()
    assert status["mqtt"]["configured"] and status["price"]["configured"], status
    api = WebApi(App(config, AppOptions(data_dir=data)))
    assert api.wifi_scanner is api.wifi_scanner and api.updates.state.phase == "idle"
trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
print(json.dumps({"modules": sorted(sys.modules)}))
"""
    modules = set(run_fresh(code, str(tmp_path))["modules"])
    for name in (
        "dynexport.integrations.mqtt",
        "dynexport.integrations.amber",
        "dynexport.integrations.homeassistant",
        "dynexport.update.check",
        "dynexport.update.install",
        "dynexport.web.wifi",
        "dynexport.web.updates",
    ):
        assert name in modules, name


def test_the_http_client_and_server_never_load_the_idna_codec_for_ascii_hosts(
    site_files: Path,
) -> None:
    """``socket.getaddrinfo`` with a ``str`` host, and ``ssl`` with a ``str`` server name, import
    ``encodings.idna`` and ``stringprep`` (about 0.5 MiB): the web server and the HTTP client
    hand them ASCII bytes instead. Mutual TLS on 127.0.0.1 with the test PKI, as the utility
    link does it, with the hostname checked (the server's certificate names 127.0.0.1)."""
    code = """
import json, socket, sys
import trio
from dynexport.httpio import HttpClient, ServerResponse, client_context, serve_http
from dynexport.httpio import server_context
pki = sys.argv[1]

async def handler(request):
    return ServerResponse(200, b"ok", [], "text/plain")

async def main():
    server_tls = server_context(ca_files=[pki + "/serca.pem"],
                                cert_file=pki + "/server-chain.pem",
                                key_file=pki + "/server-key.pem")
    client_tls = client_context(ca_files=[pki + "/serca.pem"],
                                cert_file=pki + "/device-chain.pem",
                                key_file=pki + "/device-key.pem")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_http(
            handler, host="127.0.0.1", port=0, ssl_context=server_tls, task_status=task_status))
        client = HttpClient(f"https://127.0.0.1:{port}/", client_tls, retries=0)
        response = await client.get("/")
        await client.aclose()
        nursery.cancel_scope.cancel()
    return response.status

status = trio.run(main)
before = sorted(sys.modules)
socket.getaddrinfo("127.0.0.1", 80)  # the stdlib's own lookup with a str: the codec loads
print(json.dumps({"status": status, "before": before, "after": sorted(sys.modules)}))
"""
    report = run_fresh(code, str(site_files.parent / "pki"))
    assert report["status"] == 200
    assert not {"encodings.idna", "stringprep"} & set(report["before"])
    assert "encodings.idna" in report["after"]  # the check can see it


def test_lookup_host_passes_ascii_names_as_bytes_and_others_unchanged() -> None:
    assert lookup_host("127.0.0.1") == b"127.0.0.1"
    assert lookup_host("::1") == b"::1"
    assert lookup_host("csip.example.com.au") == b"csip.example.com.au"
    assert lookup_host("bücher.example") == "bücher.example"  # trio encodes it (IDNA 2008)


# -- the lazily built bridge and poller report what eager ones did ---------------------------


def _config(mqtt: bool, price: bool) -> Config:
    raw: dict[str, Any] = {}
    if mqtt:
        raw["mqtt"] = {"url": "mqtt://127.0.0.1:1", "topicPrefix": "d/s"}
    if price:
        raw["price"] = {"siteId": "s1", "token": "t", "url": "https://127.0.0.1:1"}
    return parse_config(raw)


def test_the_off_status_is_what_an_unconfigured_bridge_and_poller_report() -> None:
    async def main() -> None:
        bridge = MqttBridge(lambda: None, lambda: {})
        assert bridge.status(trio.current_time()) == MQTT_OFF
        assert PricePoller(lambda: None).status() == PRICE_OFF

    trio.run(main)


async def test_an_unconfigured_site_never_builds_the_bridge_or_poller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = _config(False, False)
    integrations = Integrations(lambda: config, lambda: {})
    async with trio.open_nursery() as nursery:
        for _, task in integrations.tasks():
            nursery.start_soon(task)
        await trio.sleep(600.0)  # ten virtual minutes of idling
        assert integrations.status() == {"mqtt": MQTT_OFF, "price": PRICE_OFF}
        assert integrations.extra_limits(trio.current_time()) == []
        assert integrations._mqtt is None and integrations._price is None
        nursery.cancel_scope.cancel()


async def test_sections_configured_later_start_within_a_second_like_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = _config(False, False)
    integrations = Integrations(lambda: config, lambda: {})
    async with trio.open_nursery() as nursery:
        for _, task in integrations.tasks():
            nursery.start_soon(task)
        await trio.sleep(30.0)
        config = _config(True, True)  # the web page saved both sections
        await trio.sleep(1.5)
        assert integrations._mqtt is not None and integrations._mqtt.attempts >= 1
        assert integrations._price is not None and integrations._price.polls >= 1
        status = integrations.status()
        assert status["mqtt"]["configured"] and status["mqtt"]["broker"] == "127.0.0.1:1"
        assert status["price"]["configured"]
        nursery.cancel_scope.cancel()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=6))
def test_lazy_integrations_report_what_eager_ones_report_in_every_configuration(
    steps: list[tuple[bool, bool]],
) -> None:
    """Whatever sections come and go, status and extra limits equal those of a bridge and a
    poller built eagerly (as before) from the same configuration, at the same time."""

    async def main() -> None:
        config = _config(False, False)
        lazy = Integrations(lambda: config, lambda: {}, wake=None)
        eager_mqtt = MqttBridge(lambda: config.mqtt, lambda: {})
        eager_price = PricePoller(lambda: config.price)
        for mqtt, price in steps:
            config = _config(mqtt, price)
            now = trio.current_time()
            assert lazy.status() == {
                "mqtt": eager_mqtt.status(now),
                "price": eager_price.status(),
            }
            assert lazy.extra_limits(now) == [
                *eager_mqtt.extra_limits(now),
                *eager_price.extra_limits(now),
            ]

    trio.run(main, clock=trio.testing.MockClock())
