"""Installer tools against the real service and the simulated site: the test limit (a ceiling
that reverts by itself), the meter-direction check, the commissioning report, available power;
and the update upload with real RAUC bundles."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.app import App, AppOptions, meter_verdict
from dynexport.system.config import Config
from tests.app.conftest import make_app, simulated_site, site_config, wait_for
from tests.web.conftest import Client, Web, logged_in

# -- the test limit is only ever a ceiling below the controller's command ---------------------


@settings(max_examples=200, deadline=None)
@given(
    controller=st.one_of(st.none(), st.floats(0, 100)),
    test=st.floats(0, 100),
    elapsed=st.floats(0, 400),
    seconds=st.floats(5, 300),
)
def test_a_test_limit_never_raises_the_controllers_limit(
    controller: float | None, test: float, elapsed: float, seconds: float
) -> None:
    app = App(Config(), _options())
    app.inverters = [_Link("inverter 1")]  # type: ignore[list-item]

    async def main() -> float | None:
        app.test_limit("inverter 1", test, seconds)
        return app.tested_pct("inverter 1", controller, trio.current_time() + elapsed)

    got = trio.run(main)
    if controller is not None:
        assert got is not None and got <= controller
    if elapsed < seconds:
        assert got is not None and got <= test
    else:
        assert got == controller  # ended: the controller's own command, untouched


def test_a_test_limit_refuses_unknown_inverters_and_absurd_numbers() -> None:
    app = App(Config(), _options())
    app.inverters = [_Link("inverter 1")]  # type: ignore[list-item]

    async def main() -> None:
        with pytest.raises(KeyError):
            app.test_limit("inverter 9", 10, 30)
        for pct, seconds in ((-1, 30), (101, 30), (float("nan"), 30), (10, 1), (10, 3600)):
            with pytest.raises(ValueError):
                app.test_limit("inverter 1", pct, seconds)

    trio.run(main)


class _State:
    power_w = 1000.0


class _Link:
    def __init__(self, name: str) -> None:
        self.id = name
        self.state = _State()


def _options() -> AppOptions:
    return AppOptions(data_dir=Path("/nonexistent"))


# -- the meter-direction verdict ----------------------------------------------------------


def test_import_rising_by_what_solar_stopped_is_the_right_direction() -> None:
    ok, text = meter_verdict(-4000.0, 900.0, 5000.0, 0.0)
    assert ok is True and "direction right" in text


def test_a_reading_that_falls_when_solar_stops_is_a_reversed_meter() -> None:
    ok, text = meter_verdict(4000.0, -900.0, 5000.0, 0.0)
    assert ok is False and "wrong way round" in text and "CT direction" in text


def test_a_meter_that_hardly_moves_is_not_at_the_grid_connection() -> None:
    ok, text = meter_verdict(-4000.0, -3900.0, 5000.0, 0.0)
    assert ok is False and "hardly moved" in text


def test_too_little_change_is_no_verdict() -> None:
    ok, text = meter_verdict(-100.0, 0.0, 150.0, 50.0)
    assert ok is None and "cannot judge" in text


# -- against the simulated site ------------------------------------------------------------------


async def test_the_installer_tools_against_the_simulated_site(tmp_path: Path) -> None:
    with simulated_site(load_w=1000.0) as sim:
        config = site_config(sim)
        app = make_app(
            config,
            tmp_path / "data",
            web_host="127.0.0.1",
            web_port=0,
            config_path=tmp_path / "data" / "config.json",
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            assert app.web_port is not None
            await wait_for(lambda: (app.status()["der"]["powerW"] or 0) > 10_000, within=30)
            # available power (model 122 WAval) is reported beside the output
            der = app.status()["der"]
            assert der["availableW"] == pytest.approx(13_200, abs=300)
            assert der["availableW"] >= der["powerW"] - 1

            c = Client(app.web_port)
            from tests.web.conftest import PASSWORD

            assert (await c.json("POST", "/api/setup/password", {"password": PASSWORD}))[0] == 200
            status, doc = await c.json(
                "POST", "/api/tools/test-limit", {"inverter": "inverter 2", "pct": 10, "seconds": 8}
            )
            assert status == 200 and doc["pct"] == 10

            def by_id() -> dict[str, Any]:
                return {i["id"]: i for i in app.status()["inverters"]}

            await wait_for(lambda: (by_id()["inverter 2"]["powerW"] or 1e9) < 1000)
            status, st = await c.json("GET", "/api/status")
            assert st["tools"]["tests"][0]["inverter"] == "inverter 2"
            # it reverts by itself: the controller's own command (no limit here) returns
            await wait_for(lambda: (by_id()["inverter 2"]["powerW"] or 0) > 7000, within=30)

            status, check = await c.json("POST", "/api/tools/meter-check", {})
            assert status == 200 and check["ok"] is True, check
            await wait_for(lambda: (app.status()["der"]["powerW"] or 0) > 10_000, within=30)

            status, report = await c.json("GET", "/api/tools/report")
            assert status == 200
            assert [d["role"] for d in report["devices"]] == ["inverter", "inverter", "meter"]
            assert all(d["serial"] for d in report["devices"])
            assert report["tests"][0]["inverter"] == "inverter 2"
            assert report["meterCheck"]["ok"] is True
            await c.aclose()
            nursery.cancel_scope.cancel()


# -- update upload ------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
needs_rauc = pytest.mark.skipif(
    shutil.which("rauc") is None or shutil.which("openssl") is None,
    reason="needs rauc and openssl (Debian: rauc)",
)


async def _upload(c: Client, bundle: Path) -> tuple[int, Any]:
    data = await trio.Path(bundle).read_bytes()
    status, _ = await c.json("POST", "/api/update/upload", {"size": len(data)})
    assert status == 200
    step = 150 * 1024
    for at in range(0, len(data), step):
        resp = await c.request(
            "PUT",
            f"/api/update/upload?offset={at}",
            raw=data[at : at + step],
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status == 200, resp.body
    status, doc = await c.json("POST", "/api/update/check", {})
    return int(status), doc


@needs_rauc
async def test_an_uploaded_bundle_shows_its_version_and_signer_and_a_foreign_one_is_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    from functools import partial

    from dynexport.update.rauc import Rauc
    from dynexport.web.server import serve_web
    from tests.update.bundles import SIGNING_KEY, make_bundle
    from tests.web.conftest import setup_app

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    await trio.run_process([str(SIGNING_KEY), str(ours)], capture_stderr=True)
    await trio.run_process([str(SIGNING_KEY), str(theirs), "someone else"], capture_stderr=True)
    good = make_bundle(tmp_path, ours, "1.4.0+abc")
    foreign = make_bundle(tmp_path, theirs, "6.6.6")
    app = setup_app(tmp_path / "site")
    app.options.data_dir.mkdir(parents=True)
    rauc = Rauc(extra=[f"--keyring={ours}/keyring.pem"])
    port = await nursery.start(
        partial(serve_web, app, host="127.0.0.1", port=0, api_options={"rauc": rauc})
    )
    c = Client(port)
    from tests.web.conftest import PASSWORD

    assert (await c.json("POST", "/api/setup/password", {"password": PASSWORD}))[0] == 200
    data = app.options.data_dir

    # installing before the check is refused
    status, doc = await c.json("POST", "/api/update/install", {})
    assert status == 409 and "check the bundle" in doc["error"]

    status, doc = await _upload(c, foreign)
    assert status == 422 and doc["error"].startswith("refused, nothing was written")
    assert "signature verification failed" in doc["error"]
    assert not (data / "update-upload.raucb").exists()
    assert not (data / "update.json").exists()

    status, doc = await _upload(c, good)
    assert status == 200, doc
    assert doc["bundle"]["version"] == "1.4.0+abc"
    assert "NOT FOR FIELD USE" in doc["bundle"]["signer"]
    assert (data / "update-upload.raucb").read_bytes() == good.read_bytes()


async def test_upload_pieces_must_come_in_order_and_within_the_announced_size(web: Web) -> None:
    c = await logged_in(web)
    status, _ = await c.json("POST", "/api/update/upload", {"size": 10})
    assert status == 200
    octets = {"Content-Type": "application/octet-stream"}
    resp = await c.request("PUT", "/api/update/upload?offset=5", raw=b"12345", headers=octets)
    assert resp.status == 409 and b"expected the piece at offset 0" in resp.body
    resp = await c.request("PUT", "/api/update/upload?offset=0", raw=b"x" * 11, headers=octets)
    assert resp.status == 413
    status, _ = await c.json("POST", "/api/update/upload", {"size": 10**12})
    assert status == 413
    stranger = web.client()
    assert (await stranger.request("POST", "/api/update/upload", {"size": 10})).status == 401
