"""Start order (docs/architecture.md): the links and the controller first; the utility link and the
web server once the first limits are written. The first limit does not wait for the link's XML
stack or the web server to import, the stored schedule is obeyed meanwhile exactly as a new link
obeys it until its first poll, and a web server that cannot start never holds up control."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport import app as app_module
from dynexport.app import FALLBACK_SOURCE, App
from dynexport.control.law import ControlOutput
from dynexport.sep2.schedule import ScheduleSnapshot
from dynexport.sep2.state import LinkStore
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import parse_config
from tests.app.conftest import (
    STORED_CONTROL_W,
    make_app,
    simulated_site,
    site_config,
    store_a_schedule,
    utility_section,
    wait_for,
)


def _record_decisions(app: App) -> list[dict[str, Any]]:
    """What the app looked like at each control decision: link built or not, limits decided."""
    seen: list[dict[str, Any]] = []
    decide: Callable[[float], ControlOutput] = app.control_once

    def recording(now: float) -> ControlOutput:
        out = decide(now)
        seen.append(
            {
                "link built": app.utility is not None,
                "starting": app.utility_starting,
                "export_w": app.limits.export_w,
                "source": app.limits.sources.get("export_w", ""),
                "fallback": app.utility_fallback,
            }
        )
        return out

    app.control_once = recording  # type: ignore[method-assign]
    return seen


async def test_the_first_decision_obeys_the_stored_schedule_before_the_link_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10)
    async with server.running() as utility:
        raw = {"utility": utility_section(utility)}
        await store_a_schedule(utility, raw, data)
        reads: list[ScheduleSnapshot | None] = []
        load = LinkStore.load_schedule

        def counted(store: LinkStore) -> ScheduleSnapshot | None:
            reads.append(load(store))
            return reads[-1]

        monkeypatch.setattr(LinkStore, "load_schedule", counted)
        # The service starts again (a reboot): the schedule stored on /data holds the control.
        second = make_app(parse_config(raw), data)
        decisions = _record_decisions(second)
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run)
            await wait_for(lambda: second.utility is not None and len(decisions) >= 2)
            # the link starts from the schedule the app read and obeyed: one read of the file
            assert len(reads) == 1 and reads[0] is not None
            head = decisions[0]
            assert head["link built"] is False and head["starting"] is True
            assert head["export_w"] == STORED_CONTROL_W  # the stored control, not the fallback
            assert head["source"].startswith("utility") and head["source"] != FALLBACK_SOURCE
            assert head["fallback"] is None
            # once built, the link goes on where the stored schedule was, then polls
            await wait_for(lambda: second.status()["utility"]["connected"] is True)
            assert second.utility_starting is False
            assert second.status()["limits"]["exportW"] == STORED_CONTROL_W
            nursery.cancel_scope.cancel()


async def test_without_a_stored_schedule_the_first_decision_holds_the_fallback(
    tmp_path: Path,
) -> None:
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10)
    async with server.running() as utility:
        now = int(utility.now())
        utility.add_control(start=now - 5, duration=3600, export_limit_w=2500)
        raw = {"utility": utility_section(utility, fallbackExportW=800)}
        app = make_app(parse_config(raw), tmp_path / "data")
        decisions = _record_decisions(app)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["limits"]["exportW"] == 2500)
            head = decisions[0]
            assert head["link built"] is False
            assert (head["export_w"], head["source"]) == (800, FALLBACK_SOURCE)
            # the same reason a new link gives until its first poll: nothing flips in the log
            assert head["fallback"] == "no schedule has been received from the utility yet"
            nursery.cancel_scope.cancel()


async def test_a_controller_that_never_decides_does_not_keep_the_link_down(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(app_module, "AFTER_FIRST_LIMITS_S", 0.5)
    server = UtilityServer(pki_dir=tmp_path / "pki", poll_rate_s=10)
    async with server.running() as utility:
        app = make_app(parse_config({"utility": utility_section(utility)}), tmp_path / "data")

        def broken(now: float) -> ControlOutput:
            raise RuntimeError("the control law failed")

        app.control_once = broken  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: app.status()["utility"]["connected"] is True)
            assert not app._decided.is_set()  # built on the bound, not on a decision
            nursery.cancel_scope.cancel()


async def test_the_web_server_starts_after_the_first_limits_are_written(tmp_path: Path) -> None:
    with simulated_site() as sim:
        app = make_app(site_config(sim), tmp_path, web_host="127.0.0.1", web_port=0)
        seen: list[list[float | None]] = []
        serve = app._web_task

        async def recording(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            seen.append([link.state.last_write for link in app.inverters])
            await serve(task_status=task_status)

        app._web_task = recording  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            assert app.web_port is not None and app.output is not None
            assert len(seen) == 1 and len(seen[0]) == 2
            assert all(t is not None for t in seen[0])  # both inverters had their limit
            nursery.cancel_scope.cancel()


async def test_a_web_server_that_cannot_start_does_not_hold_up_control(tmp_path: Path) -> None:
    with simulated_site() as sim, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = make_app(
            site_config(sim, extra={"limits": {"exportW": 2000}}),
            tmp_path,
            web_host="127.0.0.1",
            web_port=port,
        )
        async with trio.open_nursery() as nursery:
            # it reports started all the same (it waited for a port for ever: the demo never
            # printed its banner), with no web port, while the web server is retried
            with trio.fail_after(60):
                await nursery.start(app.run)
            await wait_for(lambda: app.faults.active(trio.current_time()) != [])
            assert [f.task for f in app.faults.active(trio.current_time())] == ["web server"]
            # the site is under control all the same
            await wait_for(lambda: app.ready and app.output is not None)
            assert all(link.state.last_write is not None for link in app.inverters)
            assert app.limits.export_w == 2000
            assert app.web_port is None
            nursery.cancel_scope.cancel()


async def test_restarted_links_do_not_cut_the_inverters_to_zero_with_nothing_to_limit(
    tmp_path: Path,
) -> None:
    """A change that restarts the links (here the revert time): the new generation's first
    decision came before its links had reached any inverter, its 0 W was taken for the command
    in force, and both inverters were written 0 % and held there while their output fell (13 kW
    to nothing, with an export limit far above what the site can make). The same at every
    start."""
    with simulated_site(load_w=1000.0) as sim:
        config = site_config(sim, extra={"limits": {"exportW": 50000}})
        app = make_app(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: all(link.state.last_write is not None for link in app.inverters))
            old = list(app.inverters)
            app.apply_config(replace(config, control=replace(config.control, revert_s=45)))
            await wait_for(lambda: app.inverters != old)
            commanded: list[float | None] = []
            # every command the new links are given until each has written one
            await wait_for(lambda: _written_after(app, commanded), within=60)
            nursery.cancel_scope.cancel()
    assert commanded and all(pct is None or pct > 50.0 for pct in commanded), commanded


def _written_after(app: App, commanded: list[float | None]) -> bool:
    """Notes the links' commands; True once every one has written."""
    commanded.extend(link.desired.pct for link in app.inverters if link.desired is not None)
    return all(link.state.last_write is not None for link in app.inverters)


async def test_a_trial_boot_is_noted_before_the_first_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial task notes its boot only once the first limits are written: a reset before
    that (an early hang) left no note, and U-Boot's next attempt of the slot was checked as a
    first trial and could be committed. The service notes it at its start, in a worker thread,
    importing the update code only when the record says a trial is under way."""
    from dataclasses import replace as changed

    from dynexport.update import service
    from dynexport.update.service import read_record, write_record
    from tests.update.test_service import TRIAL

    data = tmp_path / "data"
    data.mkdir()
    write_record(data, changed(TRIAL, reboot_asked=True))
    monkeypatch.setattr(service, "booted_slot", lambda cmdline: "B")  # the update's slot runs
    monkeypatch.setattr(service, "boot_id", lambda: "trial-boot")
    first_limits = trio.Event()

    async def never_written(self: App) -> None:
        await first_limits.wait()  # the first limits never come in this test

    monkeypatch.setattr(App, "_after_first_limits", never_written)
    app = make_app(parse_config({}), data)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.run)
        await wait_for(lambda: (read_record(data) or TRIAL).trial_boot is not None)
        nursery.cancel_scope.cancel()
    record = read_record(data)
    assert record is not None and record.trial_boot == "trial-boot" and record.state == "trial"
