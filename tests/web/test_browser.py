"""Headless Chromium walks each installer flow against the simulated site and utility, at desktop
and phone width: the wizard (a refused scan, the time zone, commissioning before enrolment), the
dashboard, Settings on a configured device (filled, the chain uploaded, the key kept unless
confirmed), the installer tools and the printable report; and a hand-configured device without a
password. The walked site has a battery (the demo's, at unit 3): the scan offers it as one and the
dashboard shows its card, its power in the chart and what it stored instead of curtailed.
Screenshots go to build/screenshots/<width>/, for a person to look through."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport.app import App, AppOptions
from dynexport.sep2 import certs
from dynexport.sep2.schema import schema_available
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_battery_site, fronius_gateway
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import Config
from tests.ports import refusing_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
PASSWORD = "a strong admin password"

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
"""For every test that drives Chromium (this file's and the other walks')."""

pytestmark = [
    pytest.mark.slow,
    needs_chromium,
]


def _driver(profile: str, size: tuple[int, int] = SIZES["phone"]) -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={max(size[0], 500)},{size[1]}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    if size[0] < 500:
        # Headless windows are at least 500 px wide: a phone's viewport is emulated instead.
        _emulate(driver, size[0], size[1])
    return driver


async def walk_served_app(
    app: Any, profile: str, size: tuple[int, int], walk: Callable[[Any, str], None]
) -> None:
    """Runs ``app``, opens Chromium (``profile``, window ``size``) and walks its page with
    ``walk(driver, url)`` in a worker thread; then quits Chromium and stops the app."""
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        driver = await trio.to_thread.run_sync(_driver, profile, size)
        try:
            await trio.to_thread.run_sync(walk, driver, f"http://127.0.0.1:{app.web_port}/")
        finally:
            await trio.to_thread.run_sync(driver.quit)
        nursery.cancel_scope.cancel()


def _emulate(driver: Any, width: int, height: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True},
    )
    driver.dynexport_viewport = (width, height)


class Walk:
    """Selenium helpers for one browser (everything here blocks: run it in a worker thread)."""

    def __init__(self, driver: Any, folder: Path) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        self.d = driver
        self.folder = folder
        # The live dashboard redraws its cards on every update: an element found a moment ago may be
        # gone by the time it is read, so every wait tries again instead of failing.
        self.wait = WebDriverWait(driver, 45, ignored_exceptions=(StaleElementReferenceException,))
        folder.mkdir(parents=True, exist_ok=True)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.CSS_SELECTOR, css)

    def visible(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        def shown(d: Any) -> Any:
            found = d.find_elements(By.CSS_SELECTOR, css)
            return found[0] if found and found[0].is_displayed() else False

        return self.wait.until(shown)

    def text(self, css: str, check: Any) -> str:
        """The element's text once it passes `check` (read and checked in one step). If it never
        does, the failure says what the element said instead, with a screenshot of the page
        (``timeout-*.png``): a wait that only times out says nothing about why."""
        from selenium.common.exceptions import TimeoutException

        last: list[str] = []

        def passed(_: Any) -> tuple[str] | bool:
            got = str(self.find(css).text)
            last[:] = [got]
            return (got,) if check(got) else False

        try:
            found = self.wait.until(passed)
        except TimeoutException:
            shot = self.folder / f"timeout-{css.strip('#.').replace(' ', '-')}.png"
            self.d.save_screenshot(str(shot))
            raise AssertionError(
                f"{css} never passed its check in 45 s; it said {last[0] if last else None!r} "
                f"(screenshot {shot})"
            ) from None
        assert isinstance(found, tuple)
        return str(found[0])

    def read(self, css: str) -> str:
        """The element's text now (found again if the page redrew it before it was read)."""
        return self.text(css, lambda _: True)

    def attr(self, css: str, name: str) -> str:
        """An attribute of the element now (found again if the page redrew it meanwhile)."""

        def got(_: Any) -> tuple[str]:
            return (str(self.find(css).get_attribute(name) or ""),)

        return str(self.wait.until(got)[0])

    def step(self, name: str) -> None:
        self.visible(f'.step.on[data-step="{name}"]')

    def open_tools(self, url: str) -> Any:
        """Logs in on the settings page and goes to the dashboard's installer tools."""
        self.d.get(url + "settings")
        self.visible("#login")
        self.find("#login-pw").send_keys(PASSWORD)
        self.click("#login-btn")
        self.step("network")
        self.click('[data-go="dash"]')
        return self.visible("#tools")

    def put(self, css: str, value: str) -> None:
        self.d.execute_script("arguments[0].value = arguments[1]", self.find(css), value)

    def click(self, css: str) -> None:
        """Clicks, again if the live page redrew the element meanwhile."""
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked(_: Any) -> bool:
            try:
                self.find(css).click()
            except StaleElementReferenceException:
                return False
            return True

        self.wait.until(clicked)

    def next(self) -> None:
        self.click("#next")

    def shot(self, name: str) -> None:
        self.d.save_screenshot(str(self.folder / f"{name}.png"))

    def full_shot(self, name: str) -> None:
        """The whole page, however long (the window is made as tall as the page, then back)."""
        height = int(self.d.execute_script("return document.documentElement.scrollHeight"))
        viewport = getattr(self.d, "dynexport_viewport", None)
        if viewport is not None:  # an emulated phone: stretch the emulated screen
            _emulate(self.d, viewport[0], max(viewport[1], height + 120))
            self.shot(name)
            _emulate(self.d, *viewport)
            return
        size = self.d.get_window_size()
        self.d.set_window_size(size["width"], max(size["height"], height + 120))
        self.shot(name)
        self.d.set_window_size(size["width"], size["height"])


def _wizard(w: Walk, url: str, modbus_port: int, closed_port: int, utility: UtilityServer) -> str:
    """First boot: password, network, utility, devices (a refused address first), limits with the
    time zone, the key made but the chain still pending, review, apply. Returns the CSR."""
    from selenium.webdriver.support.ui import Select

    w.d.get(url)
    w.step("password")
    assert w.read("#step-count") == "1 / 7"
    w.shot("01-password")
    w.find("#pw1").send_keys(PASSWORD)
    w.find("#pw2").send_keys(PASSWORD)
    w.next()
    w.step("network")
    assert w.read("#step-count") == "2 / 7"  # the counter never jumps back
    # The list of networks comes after the step is shown (a radio scan takes seconds); this
    # host has no scan helper, and the page says so in words (under the Wi-Fi choice, hidden while
    # Ethernet is chosen: read as textContent).
    w.wait.until(
        lambda _: "no Wi-Fi scan helper on this system" in w.attr("#wifi-seen", "textContent")
    )
    w.next()  # Ethernet
    w.step("utility")
    w.find("#u-server").send_keys(utility.url)
    w.find("#u-nmi").send_keys("4312345678")
    w.find("#u-pin").send_keys("111115")
    w.put("#u-serca", utility.pki.files["serca"].read_text())
    w.shot("02-utility")
    w.next()
    w.step("devices")
    w.find("#scan-tcp").send_keys(f"127.0.0.1:{closed_port}")
    w.click("#scan-btn")
    refused = w.text("#msg", lambda t: "cannot connect" in t)
    assert f"127.0.0.1:{closed_port}" in refused
    w.shot("03-scan-refused")
    w.find("#scan-tcp").clear()
    w.find("#scan-tcp").send_keys(f"127.0.0.1:{modbus_port}")
    w.click("#scan-btn")
    w.wait.until(lambda d: len(d.find_elements("css selector", "#found tbody tr")) >= 4)
    uses = {
        s.get_attribute("data-unit"): Select(s).first_selected_option.get_attribute("value")
        for s in w.d.find_elements("css selector", "#found select")
    }
    # the AC battery (storage models, no inverter control model) is offered as a battery
    assert uses == {"1": "inverter", "2": "inverter", "3": "battery", "240": "meter"}, uses
    w.shot("04-devices")
    w.next()
    w.step("limits")
    w.find("#limit-export").send_keys("4000")
    Select(w.find("#site-tz")).select_by_value("Australia/Adelaide")
    w.shot("05-limits")
    w.next()
    w.step("certificate")
    w.click("#cert-gen")
    w.wait.until(lambda d: "CERTIFICATE REQUEST" in w.find("#csr").get_attribute("value"))
    csr = str(w.find("#csr").get_attribute("value"))
    w.shot("06-certificate-pending")
    w.next()  # enrolment takes days: commission without the signed chain
    w.step("review")
    summary = w.read("#summary")
    assert "waiting for the signed certificate" in summary and "Australia/Adelaide" in summary
    assert f"127.0.0.1:{modbus_port} unit 3" in summary.split("Batteries", 1)[1]
    details = str(w.find("#review").get_attribute("textContent"))
    assert '"exportW": 4000' in details and utility.url in details
    w.shot("07-review")
    w.next()  # Apply
    reach = w.text("#reach", lambda t: "To reach this device again" in t)
    assert ".local" in reach and "waiting for the signed certificate" in reach
    w.shot("08-applied")
    w.next()  # Open the dashboard
    w.visible("#dash")
    return csr


def _pending_dashboard(w: Walk) -> None:
    w.text("#utility dd", lambda t: t == "waiting for the signed certificate")
    w.text("#export-limit", lambda t: t == "1500 W")  # the utility's fallback meanwhile
    w.text("#alerts", lambda t: "waiting for the signed certificate" in t)
    w.shot("09-dashboard-waiting-for-certificate")


def _settings_upload_chain(w: Walk, chain: str) -> None:
    """Settings on the configured device: filled with the running configuration; the key is
    not replaced when the confirmation is declined; the signed chain goes in."""
    from selenium.webdriver.support.ui import Select

    w.click('[data-go="setup"]')
    w.step("network")
    w.next()
    w.step("utility")
    assert w.find("#use-utility").is_selected()
    assert w.find("#u-nmi").get_attribute("value") == "4312345678"
    w.next()
    w.step("devices")
    assert len(w.d.find_elements("css selector", "#found tbody tr")) == 4
    battery = w.find('#found select[data-unit="3"]')
    assert Select(battery).first_selected_option.get_attribute("value") == "battery"
    w.next()
    w.step("limits")
    assert w.find("#limit-export").get_attribute("value") == "4000"
    assert Select(w.find("#site-tz")).first_selected_option.get_attribute("value") == (
        "Australia/Adelaide"
    )
    w.next()
    w.step("certificate")
    w.click("#cert-replace")
    from selenium.webdriver.support import expected_conditions

    alert = w.wait.until(expected_conditions.alert_is_present())
    assert "the utility must register the new lfdi" in alert.text.lower()
    alert.dismiss()
    w.text("#msg", lambda t: t == "The key was kept.")
    w.put("#chain", chain)
    w.click("#chain-upload")
    w.text("#cert-info", lambda t: "LFDI" in t)
    w.shot("10-certificate-saved")
    w.next()
    w.step("review")
    assert "signed certificate saved" in w.read("#summary")
    w.next()
    w.text("#reach", lambda t: "Saved and applied" in t)
    w.next()
    w.visible("#dash")


def _dashboard(w: Walk) -> dict[str, str]:
    w.text("#site-w", lambda t: t not in ("", "–"))
    w.text("#inverters", lambda t: t.count("online") == 2)
    w.text("#export-limit", lambda t: t == "4000 W")
    w.wait.until(lambda d: d.find_elements("css selector", "#chart polyline.site"))
    w.wait.until(
        lambda d: any(e.is_displayed() for e in d.find_elements("css selector", "#outlook path"))
    )
    w.text("#utility dd", lambda t: t == "connected")
    w.text("#energy", lambda t: "Curtailed" in t and "Wh" in t)
    soc = w.text("#bat-soc", lambda t: t.endswith(" %"))
    assert 0 <= int(soc.removesuffix(" %")) <= 100
    power = w.text("#bat-power", lambda t: t not in ("", "no reading"))
    assert power == "idle" or power.startswith(("charging ", "discharging ")), power
    w.text("#bat-mode", lambda t: t != "")
    w.text("#energy", lambda t: "Stored instead of curtailed" in t)
    w.wait.until(lambda d: d.find_elements("css selector", "#chart polyline.bat"))
    w.text("#legend", lambda t: "Battery (discharging above 0, charging below)" in t)
    legend = w.read("#legend")
    assert all(name in legend for name in ("Site export", "Export limit", "Solar", "inverter 1"))
    assert "kW" in w.attr("#chart", "textContent")
    w.visible("#battery")
    assert w.wait.until(lambda _: w.find("#battery").size["width"] > 0)
    w.shot("11-dashboard")
    got = {
        "site": w.read("#site-w"),
        "limit": w.read("#export-limit"),
        "source": w.read("#export-source"),
        "inverters": w.read("#inverters"),
        "utility": w.read("#utility"),
        "next": w.read("#next-change"),
        "battery": w.read("#battery"),
    }
    w.full_shot("12-dashboard-full")
    return got


def _tools(w: Walk) -> None:
    from selenium.webdriver.support.ui import Select

    tools = w.visible("#tools")
    w.d.execute_script("arguments[0].scrollIntoView()", tools)
    Select(w.find("#t-inv")).select_by_value("inverter 1")
    w.put("#t-pct", "0")
    w.put("#t-s", "20")
    w.click("#t-go")
    w.text("#t-out", lambda t: "limited to 0 %" in t)
    w.shot("13-test-limit")
    w.click("#r-go")
    w.visible("#report")
    report = w.read("#report")
    assert "NMI" in report and "4312345678" in report and "Test limit inverter 1 0 %" in report
    w.full_shot("14-commissioning-report")
    w.click("#r-back")
    w.visible("#dash")


def _run_walk(
    driver: Any, folder: Path, url: str, modbus_port: int, closed: int, utility: UtilityServer,
    register: Any,
) -> dict[str, str]:  # fmt: skip
    w = Walk(driver, folder)
    csr = _wizard(w, url, modbus_port, closed, utility)
    _pending_dashboard(w)
    _settings_upload_chain(w, register(csr.encode()))
    got = _dashboard(w)
    _tools(w)
    return got


@pytest.mark.parametrize("size", sorted(SIZES))
async def test_chromium_walks_each_installer_flow_then_sees_the_live_dashboard(
    tmp_path: Path, size: str
) -> None:
    utility = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=5, validate=schema_available())
    app = App(
        Config(base_dir=tmp_path),
        AppOptions(
            data_dir=tmp_path / "data",
            config_path=tmp_path / "data" / "config.json",
            web_host="127.0.0.1",
            web_port=0,
        ),
        setup_mode=True,
    )
    mica = certs.load_certificates(utility.pki.files["mica_cert"].read_bytes())[0]
    mica_key = certs.load_private_key(utility.pki.files["mica_key"].read_bytes())

    def register(csr_pem: bytes) -> str:
        """The utility's side: sign the request and register the device (as its portal would)."""
        from cryptography.hazmat.primitives.serialization import Encoding

        device = certs.sign_device_cert(
            certs.load_csr(csr_pem), mica, mica_key, now=datetime.now(UTC)
        )
        trio.from_thread.run_sync(utility.add_end_device, certs.lfdi(device))
        return (device.public_bytes(Encoding.PEM) + mica.public_bytes(Encoding.PEM)).decode()

    folder = SCREENSHOTS / size
    site = fronius_battery_site(tau_s=0.5)
    with (
        refusing_port() as closed,
        serve_tcp(site) as modbus,
        tempfile.TemporaryDirectory() as profile,
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(utility.serve)
            await nursery.start(app.run)
            url = f"http://127.0.0.1:{app.web_port}/"
            driver = await trio.to_thread.run_sync(_driver, profile, SIZES[size])
            try:
                got = await trio.to_thread.run_sync(
                    partial(_run_walk, driver, folder, url, modbus.port, closed, utility, register)
                )
                paused = await _streams_taken(driver, folder, app.web_port or 0, url + "dashboard")
            finally:
                await trio.to_thread.run_sync(driver.quit)
            nursery.cancel_scope.cancel()
    assert not app.setup_mode
    assert app.config.limits.export_w == 4000
    assert app.config.site.time_zone == "Australia/Adelaide"
    assert [i.unit for i in app.config.inverters] == [1, 2] and app.config.meter is not None
    assert [b.unit for b in app.config.batteries] == [3]
    assert got["battery"].startswith("Battery")
    assert app.config.utility is not None and app.config.utility.cert.is_file()
    assert got["site"].endswith("W") and got["inverters"].count("online") == 2
    assert got["limit"] == "4000 W" and got["source"].endswith("config")
    assert "connected" in got["utility"]
    assert paused["message"] == "live updates paused — reconnecting"
    assert paused["site"] not in ("", "–")  # the page polls the status meanwhile
    assert paused["after"] is False  # and says nothing once a stream is free again


@pytest.mark.parametrize("size", sorted(SIZES))
async def test_a_hand_configured_device_says_it_has_no_password_and_settings_open_filled(
    tmp_path: Path, size: str
) -> None:
    """No admin password yet: the dashboard says so; once it is set in Settings the form holds
    the running configuration, and Apply keeps the utility section it could not show before."""
    from dynexport.system.config import parse_config

    pki = certs.make_test_pki(tmp_path / "pki", now=datetime.now(UTC))
    data = tmp_path / "data"
    data.mkdir()
    for name, key in (("serca.pem", "serca"), ("device-chain.pem", "device_chain")):
        (data / name).write_bytes(pki.files[key].read_bytes())
    (data / "device-key.pem").write_bytes(pki.files["device_key"].read_bytes())
    folder = SCREENSHOTS / size
    with serve_tcp(fronius_gateway(tau_s=0.5)) as modbus, tempfile.TemporaryDirectory() as profile:
        document = {
            "inverters": [{"tcp": f"127.0.0.1:{modbus.port}", "unit": 1}],
            "meter": {"tcp": f"127.0.0.1:{modbus.port}", "unit": 240},
            "limits": {"exportW": 3000},
            "utility": {
                "server": "https://127.0.0.1:9",
                "nmi": "4312345678",
                "ca": str(data / "serca.pem"),
                "cert": str(data / "device-chain.pem"),
                "key": str(data / "device-key.pem"),
            },
        }
        (data / "config.json").write_text(json.dumps(document))
        app = App(
            parse_config(document),
            AppOptions(
                data_dir=data, config_path=data / "config.json", web_host="127.0.0.1", web_port=0
            ),
        )

        def walk(driver: Any, url: str) -> None:
            w = Walk(driver, folder)
            w.d.get(url)
            w.text("#alerts", lambda t: "anyone on this network can set the admin password" in t)
            w.shot("20-no-password")
            w.click("#alerts a")
            w.step("password")
            w.find("#pw1").send_keys(PASSWORD)
            w.find("#pw2").send_keys(PASSWORD)
            w.next()
            w.step("network")
            w.next()
            w.step("utility")
            assert w.find("#use-utility").is_selected()
            assert w.find("#u-server").get_attribute("value") == "https://127.0.0.1:9"
            w.shot("21-settings-filled")
            for name in ("devices", "limits", "certificate", "review"):
                w.next()
                w.step(name)
            w.next()
            w.text("#reach", lambda t: "Saved and applied" in t)

        await walk_served_app(app, profile, SIZES[size], walk)
    saved = json.loads((data / "config.json").read_text())
    assert saved["utility"]["server"] == "https://127.0.0.1:9"  # nothing dropped
    assert saved["limits"]["exportW"] == 3000


def _wait_text(driver: Any, element: str, check: Any) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def passed(d: Any) -> tuple[str] | bool:
        found = d.find_element(By.ID, element)
        return (str(found.text),) if check(found) else False

    wait = WebDriverWait(driver, 45, ignored_exceptions=(StaleElementReferenceException,))
    got = wait.until(passed)
    assert isinstance(got, tuple)
    return str(got[0])


async def _streams_taken(driver: Any, folder: Path, port: int, url: str) -> dict[str, Any]:
    """Other clients hold every live-event stream; a dashboard opened then says live updates
    are paused, still shows values, and recovers when a stream is free."""
    from tests.web import raw

    def close_the_dashboard() -> None:
        """Its tab is closed (not just left, which may keep the page and its stream cached)."""
        old = driver.current_window_handle
        driver.switch_to.new_window("tab")
        new = driver.current_window_handle
        driver.switch_to.window(old)
        driver.close()
        driver.switch_to.window(new)

    await trio.to_thread.run_sync(close_the_dashboard)
    held: list[trio.SocketStream] = []
    source = 10
    with trio.fail_after(60):
        while len(held) < 16:  # until the page's old stream is gone and all 16 are ours
            stream = await raw.connect_from(f"127.0.0.{source}", port)
            await stream.send_all(raw.get("/api/events", f"127.0.0.1:{port}"))
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(65536)
            if raw.status_of(head) == 200:
                held.append(stream)
                source += 1
            else:
                await stream.aclose()
                await trio.sleep(0.5)
    try:
        await trio.to_thread.run_sync(driver.get, url)
        message = await trio.to_thread.run_sync(
            _wait_text, driver, "live", lambda e: e.is_displayed()
        )
        site = await trio.to_thread.run_sync(
            _wait_text, driver, "site-w", lambda e: e.text not in ("", "–")
        )
        driver.save_screenshot(str(folder / "15-live-paused.png"))
    finally:
        for stream in held:
            await stream.aclose()
    await trio.to_thread.run_sync(_wait_text, driver, "live", lambda e: not e.is_displayed())
    return {"message": message, "site": site, "after": False}
