"""A configured utility without a usable schedule fails closed at its fallback export limit."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from dynexport.app import FALLBACK_SOURCE, App
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import parse_config
from tests.app.conftest import make_app, utility_section, wait_for


def _decide_once(app: App) -> None:
    """Starts the utility link as a generation would, then makes one control decision."""
    assert app.config.utility is not None
    app._start_utility_link(app.config.utility)
    app.progress.register("controller", 10.0, 0.0)
    app.control_once(0.0)


async def test_no_certificate_yet_and_no_stored_schedule_applies_the_fallback(
    tmp_path: Path,
) -> None:
    raw = {
        "utility": {
            "server": "https://127.0.0.1:9",
            "ca": str(tmp_path / "serca.pem"),
            "cert": str(tmp_path / "missing-chain.pem"),  # enrolment still pending
            "key": str(tmp_path / "missing-key.pem"),
            "nmi": "4312345678",
        }
    }
    app = make_app(parse_config(raw), tmp_path / "data")
    _decide_once(app)
    assert app.utility is None  # its files are unusable
    doc = app.status()
    assert doc["limits"]["exportW"] == 1500
    assert doc["limits"]["source"]["export_w"] == FALLBACK_SOURCE
    assert "not started" in doc["utility"]["fallback"]


async def test_the_fallback_value_is_configurable_and_still_merges_as_the_most_restrictive(
    tmp_path: Path,
) -> None:
    base = {
        "server": "https://127.0.0.1:9",
        "ca": str(tmp_path / "a.pem"),
        "cert": str(tmp_path / "b.pem"),
        "key": str(tmp_path / "c.pem"),
        "nmi": "4312345678",
    }
    for fallback, installer, expected, source in (
        (800, 5000, 800, FALLBACK_SOURCE),
        (3000, 1000, 1000, "config"),
    ):
        raw = {"utility": {**base, "fallbackExportW": fallback}, "limits": {"exportW": installer}}
        app = make_app(parse_config(raw), tmp_path / "data")
        _decide_once(app)
        assert app.limits.export_w == expected
        assert app.limits.sources["export_w"] == source


async def test_the_fallback_is_not_ramped_by_a_utility_ramp_time(tmp_path: Path) -> None:
    """The fallback is a safety limit of the appliance's own, not a utility control."""
    raw = {
        "utility": {
            "server": "https://127.0.0.1:9",
            "ca": str(tmp_path / "a.pem"),
            "cert": str(tmp_path / "b.pem"),
            "key": str(tmp_path / "c.pem"),
            "nmi": "4312345678",
        }
    }
    app = make_app(parse_config(raw), tmp_path / "data")
    _decide_once(app)
    assert app.limits.ramp_tms is None


async def test_a_registration_pin_mismatch_applies_the_fallback_not_no_limit(
    tmp_path: Path,
) -> None:
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=5, pin=222220)
    async with server.running() as utility:
        utility.set_default(export_limit_w=5000)
        raw = {"utility": utility_section(utility, pin=111115)}
        app = make_app(parse_config(raw), tmp_path / "data")
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["utility"].get("acting") is False, within=30)
            await wait_for(lambda: "PIN" in (app.status()["utility"]["fallback"] or ""))
            assert app.limits.export_w == 1500
            assert app.limits.sources["export_w"] == FALLBACK_SOURCE
            outlook = app.limits_outlook(hours=1)
            assert all(limits.export_w == 1500 for _, limits in outlook)
            nursery.cancel_scope.cancel()


async def test_a_working_utility_replaces_the_fallback_with_its_schedule(tmp_path: Path) -> None:
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=5)
    async with server.running() as utility:
        utility.set_default(export_limit_w=5000)
        raw = {"utility": utility_section(utility)}
        app = make_app(parse_config(raw), tmp_path / "data")
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.limits.export_w == 5000, within=30)
            assert app.limits.sources["export_w"] == "utility"
            assert app.status()["utility"]["fallback"] is None
            nursery.cancel_scope.cancel()


class UnevaluableSchedule:
    """A utility link whose stored schedule cannot be evaluated (a bug, a corrupt snapshot)."""

    acting = True
    clock_offset = 0

    def active_controls(self, local: float | None = None) -> object:
        raise ValueError("cannot evaluate")

    def schedule(self, hours: float = 24.0, local: float | None = None) -> object:
        raise ValueError("cannot evaluate")


async def test_a_schedule_that_cannot_be_evaluated_is_the_fallback_not_a_controller_fault(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The controller applies the fallback export limit and keeps deciding: no fault, never
    stuck, and the outlook (the web page's, the quiet-reboot wait's) shows the same fallback.
    Before, the cycle's look-ahead to the next limit change raised after the fallback was
    applied: the controller faulted at every cycle, commanded the fail-safe, and was restarted."""
    from dynexport.modbus.client import BusPool
    from dynexport.system.supervise import supervised

    raw = {"utility": utility_section_for_files(tmp_path), "limits": {"exportW": 5000}}
    app = make_app(parse_config(raw), tmp_path / "data")
    async with BusPool() as pool:
        app._make_links(pool)
    app.utility = UnevaluableSchedule()  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervised, "controller", app._control_loop, app.faults)
        await trio.sleep(30)
        assert app.faults.faults == {}
        assert app.progress.stuck(trio.current_time()) == []
        assert app.limits.export_w == 1500
        assert app.limits.sources["export_w"] == FALLBACK_SOURCE
        assert "could not be evaluated" in (app.utility_fallback or "")
        outlook = app.limits_outlook(hours=1)
        assert [limits.export_w for _, limits in outlook] == [1500]
        nursery.cancel_scope.cancel()


def utility_section_for_files(tmp_path: Path) -> dict[str, str]:
    return {
        "server": "https://127.0.0.1:9",
        "ca": str(tmp_path / "serca.pem"),
        "cert": str(tmp_path / "chain.pem"),
        "key": str(tmp_path / "key.pem"),
        "nmi": "4312345678",
    }
