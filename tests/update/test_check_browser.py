"""The update URL's finding on the web page, walked in real Chromium: the running service with an
``update`` section, its check against a real HTTPS server on 127.0.0.1, and the installer's page
(Installer tools, Software update) saying which version is available."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport.app import App, AppOptions
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway
from dynexport.system.config import parse_config
from dynexport.web.auth import PasswordStore
from tests.update.test_check_url import BOARD, Pki, Site, entry, pki, running
from tests.web.test_browser import PASSWORD, SCREENSHOTS, SIZES, Walk, needs_chromium
from tests.web.test_browser import _driver as driver_for

__all__ = ["pki"]  # the fixture, shared with test_check_url

pytestmark = [pytest.mark.slow, needs_chromium]


def _walk(w: Walk, url: str) -> dict[str, str]:
    w.open_tools(url)
    said = w.text("#u-url", lambda t: "is available" in t)
    w.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", w.find("#u-url"))
    w.shot("update-url-available")
    return {"said": said, "class": w.attr("#u-url", "class")}


async def test_chromium_shows_the_version_the_update_url_offers(tmp_path: Path, pki: Pki) -> None:
    bundle = os.urandom(2000)
    site = Site(
        json.dumps(entry(bundle, notes="fixes the retry")).encode(), {"/b/bundle.raucb": bundle}
    )
    data = tmp_path / "data"
    data.mkdir()
    PasswordStore(data).set(PASSWORD)
    conf = tmp_path / "system.conf"
    conf.write_text(f"[system]\ncompatible={BOARD}\n")
    async with running(site, pki) as port:
        with (
            serve_tcp(fronius_gateway(tau_s=0.5)) as modbus,
            tempfile.TemporaryDirectory() as profile,
        ):
            document: dict[str, Any] = {
                "inverters": [{"tcp": f"127.0.0.1:{modbus.port}", "unit": 1}],
                "meter": {"tcp": f"127.0.0.1:{modbus.port}", "unit": 240},
                "update": {"url": f"https://127.0.0.1:{port}/manifest.json", "ca": str(pki.serca)},
            }
            app = App(
                parse_config(document),
                AppOptions(data_dir=data, web_host="127.0.0.1", web_port=0),
            )
            app.update_check.system_conf = conf
            app.update_check.running_version = "1.0.0"
            async with trio.open_nursery() as nursery:
                await nursery.start(app.run)
                assert app.config.update is not None
                assert await app.update_check.check_once(app.config.update)
                driver = await trio.to_thread.run_sync(driver_for, profile, SIZES["desktop"])
                try:
                    w = Walk(driver, SCREENSHOTS / "desktop")
                    got = await trio.to_thread.run_sync(
                        _walk, w, f"http://127.0.0.1:{app.web_port}/"
                    )
                finally:
                    await trio.to_thread.run_sync(driver.quit)
                nursery.cancel_scope.cancel()
    said = got["said"]
    assert said.startswith(
        "Update URL (shows new versions): 1.4.0+url is available: install it from Installer "
        "tools, Software update. Bundle 1.4.0+url, 0.0 MB: fixes the retry. Checked "
    ), said
    assert "bad" not in got["class"].split()
    assert [path for path, _ in site.seen] == ["/manifest.json"]
