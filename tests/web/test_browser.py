"""Headless Chromium walks the setup wizard against the demo's simulators, then checks the
dashboard shows live values and a chart. Screenshots go to test-artifacts/web/."""

from __future__ import annotations

import shutil
import tempfile
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
from dynexport.sim.profiles import fronius_gateway
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import Config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
PASSWORD = "a strong admin password"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver)",
    ),
]


def _driver(profile: str) -> Any:
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
        "--window-size=390,844",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def _walk(driver: Any, url: str, modbus_port: int, utility: UtilityServer, register: Any) -> None:
    """The installer's walk through the wizard (runs in a worker thread: selenium blocks)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, 30)

    def visible(css: str) -> Any:
        return wait.until(
            lambda d: (
                d.find_element(By.CSS_SELECTOR, css).is_displayed()
                and d.find_element(By.CSS_SELECTOR, css)
            )
        )

    def step(name: str) -> None:
        visible(f'.step.on[data-step="{name}"]')

    def put(css: str, text: str) -> None:
        driver.execute_script(
            "arguments[0].value = arguments[1]", driver.find_element(By.CSS_SELECTOR, css), text
        )

    def shot(name: str) -> None:
        driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    def next_() -> None:
        driver.find_element(By.ID, "next").click()

    driver.get(url)
    step("password")
    shot("01-password")
    driver.find_element(By.ID, "pw1").send_keys(PASSWORD)
    driver.find_element(By.ID, "pw2").send_keys(PASSWORD)
    next_()
    step("network")
    next_()  # Ethernet
    step("utility")
    driver.find_element(By.ID, "u-server").send_keys(utility.url)
    driver.find_element(By.ID, "u-nmi").send_keys("4312345678")
    driver.find_element(By.ID, "u-pin").send_keys("111115")
    put("#u-serca", utility.pki.files["serca"].read_text())
    shot("02-utility")
    next_()
    step("devices")
    driver.find_element(By.ID, "scan-tcp").send_keys(f"127.0.0.1:{modbus_port}")
    driver.find_element(By.ID, "scan-btn").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#found tbody tr")) >= 3)
    uses = {
        s.get_attribute("data-unit"): Select(s).first_selected_option.get_attribute("value")
        for s in driver.find_elements(By.CSS_SELECTOR, "#found select")
    }
    assert uses == {"1": "inverter", "2": "inverter", "240": "meter"}, uses
    shot("03-devices")
    next_()
    step("limits")
    driver.find_element(By.ID, "limit-export").send_keys("4000")
    next_()
    step("certificate")
    driver.find_element(By.ID, "cert-gen").click()
    wait.until(
        lambda d: "CERTIFICATE REQUEST" in d.find_element(By.ID, "csr").get_attribute("value")
    )
    csr_pem = driver.find_element(By.ID, "csr").get_attribute("value").encode()
    put("#chain", register(csr_pem))
    driver.find_element(By.ID, "chain-upload").click()
    wait.until(lambda d: "LFDI" in d.find_element(By.ID, "cert-info").text)
    shot("04-certificate")
    next_()
    step("review")
    review = driver.find_element(By.ID, "review").text
    assert '"exportW": 4000' in review and utility.url in review
    shot("05-review")
    next_()  # Apply
    visible("#dash")


def _dashboard(driver: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 45)
    wait.until(lambda d: d.find_element(By.ID, "site-w").text not in ("", "–"))
    wait.until(lambda d: d.find_element(By.ID, "inverters").text.count("online") == 2)
    wait.until(lambda d: d.find_element(By.ID, "export-limit").text == "4000 W")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart polyline.site"))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#utility dd").text == "connected")
    driver.save_screenshot(str(ARTIFACTS / "06-dashboard.png"))
    got = {
        "site": driver.find_element(By.ID, "site-w").text,
        "limit": driver.find_element(By.ID, "export-limit").text,
        "source": driver.find_element(By.ID, "export-source").text,
        "inverters": driver.find_element(By.ID, "inverters").text,
        "utility": driver.find_element(By.ID, "utility").text,
    }
    driver.set_window_size(390, 2000)
    driver.save_screenshot(str(ARTIFACTS / "07-dashboard-full.png"))
    return got


async def test_chromium_walks_the_setup_wizard_then_sees_the_live_dashboard(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
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

    with serve_tcp(fronius_gateway(tau_s=0.5)) as modbus, tempfile.TemporaryDirectory() as profile:
        async with trio.open_nursery() as nursery:
            await nursery.start(utility.serve)
            await nursery.start(app.run)
            url = f"http://127.0.0.1:{app.web_port}/"
            driver = await trio.to_thread.run_sync(_driver, profile)
            try:
                await trio.to_thread.run_sync(
                    partial(_walk, driver, url, modbus.port, utility, register)
                )
                got = await trio.to_thread.run_sync(_dashboard, driver)
                paused = await _streams_taken(driver, app.web_port or 0, url + "dashboard")
            finally:
                await trio.to_thread.run_sync(driver.quit)
            nursery.cancel_scope.cancel()
    assert not app.setup_mode
    assert app.config.limits.export_w == 4000
    assert [i.unit for i in app.config.inverters] == [1, 2] and app.config.meter is not None
    assert got["site"].endswith("W") and got["inverters"].count("online") == 2
    assert (got["limit"], got["source"]) == ("4000 W", "config")
    assert "connected" in got["utility"]
    assert paused["message"] == "live updates paused — reconnecting"
    assert paused["site"] not in ("", "–")  # the page polls the status meanwhile
    assert paused["after"] is False  # and says nothing once a stream is free again


def _wait_text(driver: Any, element: str, check: Any) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 45).until(lambda d: check(d.find_element(By.ID, element)))
    return str(driver.find_element(By.ID, element).text)


async def _streams_taken(driver: Any, port: int, url: str) -> dict[str, Any]:
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
        driver.save_screenshot(str(ARTIFACTS / "08-live-paused.png"))
    finally:
        for stream in held:
            await stream.aclose()
    await trio.to_thread.run_sync(_wait_text, driver, "live", lambda e: not e.is_displayed())
    return {"message": message, "site": site, "after": False}
