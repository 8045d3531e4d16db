"""The service as systemd runs it: sd_notify READY/WATCHDOG/STATUS, and SIGTERM leaving safe."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from dynexport.app import App
from dynexport.system.config import Config, parse_config
from tests.app.conftest import make_app, simulated_site, site_config, wait_for


class NotifySocket:
    """A fake systemd notify socket: a datagram socket collecting what the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sock = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # pings every 0.5 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    yield sock
    sock.close()


async def test_ready_after_first_polls_then_watchdog_pings_and_status(tmp_path: Path, notify):
    with simulated_site() as sim:
        app = make_app(site_config(sim, extra={"limits": {"exportW": 5000}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: any(m.startswith("READY=1") for m in notify.drain()))
            ready = next(m for m in notify.messages if m.startswith("READY=1"))
            assert "STATUS=site" in ready and "2/2 inverters online" in ready
            count = notify.messages.count("WATCHDOG=1")
            await trio.sleep(2.0)
            assert notify.drain().count("WATCHDOG=1") >= count + 2
            nursery.cancel_scope.cancel()
    assert any(m.startswith("STOPPING=1") for m in notify.drain())


async def test_ready_waits_for_the_devices_even_while_the_web_server_starts_first(
    tmp_path: Path, notify
):
    """As on the appliance, the web server starts before the links are made, and the watchdog
    loop runs meanwhile: READY still waits until the meter and an inverter have answered (it
    once went out at once, saying "0/0 inverters online")."""
    with simulated_site() as sim:
        app = make_app(site_config(sim), tmp_path, web_host="127.0.0.1", web_port=0)
        assert not app._devices_answered()  # configured devices, no links yet: not answered
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: any(m.startswith("READY=1") for m in notify.drain()))
            ready = next(m for m in notify.messages if m.startswith("READY=1"))
            assert "/2 inverters online" in ready and "0/2 inverters" not in ready, ready
            assert "site unknown" not in ready, ready
            nursery.cancel_scope.cancel()


def test_a_site_without_devices_counts_as_answered_at_once(tmp_path: Path) -> None:
    """Setup mode and a site still being configured: nothing to wait for."""
    app = make_app(parse_config({}), tmp_path)
    assert app._devices_answered()


async def test_watchdog_pings_stop_when_the_controller_is_stuck(
    tmp_path: Path, notify, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from dynexport.sunspec.links import Desired

    async def stuck_control_loop(self: App) -> None:
        self.control_once(trio.current_time())
        await trio.sleep_forever()  # a controller stuck in an await never progresses again

    monkeypatch.setattr(App, "_control_loop", stuck_control_loop)
    monkeypatch.setattr(App, "CONTROLLER_MAX_SILENCE_S", 2.0)
    with simulated_site() as sim:
        app = make_app(site_config(sim, extra={"limits": {"exportW": 2000}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: any(m.startswith("READY=1") for m in notify.drain()))
            await wait_for(lambda: any("stuck: controller" in m for m in notify.drain()))
            pings = notify.drain().count("WATCHDOG=1")
            await trio.sleep(2.0)
            assert notify.drain().count("WATCHDOG=1") == pings  # no more pings: systemd restarts
            # and its last limit is not left in force meanwhile: every inverter has its fail-safe
            expected = {c.id: Desired(pct=c.limit_pct, connect=c.connect)
                        for c in app._failsafe_commands()}  # fmt: skip
            assert expected and {i.id: i._desired for i in app.inverters} == expected
            assert all(d.pct is not None and d.pct < 100 for d in expected.values())
            assert "the controller is stuck: commanding every inverter's fail-safe" in caplog.text
            nursery.cancel_scope.cancel()


def test_sigterm_leaves_inverters_at_their_fail_safe_and_exits_within_5_s(tmp_path: Path):
    with simulated_site() as sim:
        config = {
            "inverters": [
                {"tcp": sim.endpoint("main"), "unit": 1},
                {"tcp": sim.endpoint("main"), "unit": 2},
            ],
            "meter": {"tcp": sim.endpoint("main"), "unit": 240},
            "limits": {"exportW": 2640},
            "control": {"revertS": 45},
        }
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config))
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynexport", "run", "--config", str(path),
             "--data", str(tmp_path / "data"), "--no-web"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while sim.site.get(1, 123, "WMaxLim_Ena") != 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sim.site.get(1, 123, "WMaxLim_Ena") == 1, "the service never limited"
            time.sleep(2)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr = proc.stderr.read() if proc.stderr else ""
        assert proc.returncode == 0, stderr
        assert "left at fail-safe limit" in stderr
        # Fail-safe: generation at most the export limit (2640 W of 13200 W rated = 20 %),
        # written with the configured revert timeout so the inverter falls back by itself.
        for unit in (1, 2):
            assert sim.site.get(unit, 123, "WMaxLim_Ena") == 1
            assert sim.site.get(unit, 123, "WMaxLimPct") <= 20.0
            assert sim.site.get(unit, 123, "WMaxLimPct_RvrtTms") == 45


UNREADABLE_CONFIGS = {
    "invalid unit": (
        json.dumps({"inverters": [{"tcp": "10.0.0.9", "unit": 999}]}).encode(),
        "inverters[0].unit: must be 1..247",
    ),
    "not UTF-8": (b'{"inverters": [], "x": "\xff"}', "not UTF-8 text"),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested 100000 levels deep"),
    "a 5,000-digit number": (b'{"control": {"intervalS": ' + b"9" * 5000 + b"}}", "not usable"),
}


def _serve_with_config(path: Path, data: Path) -> tuple[dict[str, Any], str]:
    """Runs ``dynexport run --config path`` until its status answers; (status, its stderr)."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynexport", "run", "--config", str(path),
         "--data", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        doc = None
        while doc is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
                    doc = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
        assert proc.poll() is None, "the service exited instead of waiting to be fixed"
        assert doc is not None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    return doc, proc.stderr.read() if proc.stderr else ""


@pytest.mark.parametrize("case", list(UNREADABLE_CONFIGS))
def test_an_invalid_configuration_serves_the_web_ui_with_the_problem_instead_of_exiting(
    tmp_path: Path, case: str
):
    content, problem = UNREADABLE_CONFIGS[case]
    path = tmp_path / "config.json"
    path.write_bytes(content)
    doc, err = _serve_with_config(path, tmp_path / "data")
    assert doc["setupMode"] is True
    assert len(doc["configProblems"]) == 1
    assert problem in doc["configProblems"][0]
    assert any(a["code"] == "config" for a in doc["alerts"])
    assert problem in err
    assert path.read_bytes() == content  # the refused file is left as it was


def test_after_a_rolled_back_update_the_service_runs_on_the_copy_of_its_own_version(
    tmp_path: Path,
):
    """config.json written by a newer release (schema version 2, saved on its trial boot) and
    the trial rolled back: the service runs on config.v1.json (the limits the site had), not
    in setup mode without limits, and the status and the dashboard say so."""
    newer = {"version": 2, "limits": {"exportW": 9000}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(newer))
    (tmp_path / "config.v1.json").write_text(json.dumps({"version": 1, "limits": {"exportW": 0}}))
    doc, err = _serve_with_config(path, tmp_path / "data")
    assert doc["setupMode"] is False
    assert doc["limits"]["exportW"] == 0
    assert len(doc["configProblems"]) == 1
    assert "written by a newer dynexport (version 2)" in doc["configProblems"][0]
    assert "running on config.v1.json" in doc["configProblems"][0]
    assert any(a["code"] == "config" for a in doc["alerts"])
    assert "running on config.v1.json" in err
    assert json.loads(path.read_text()) == newer  # the newer file is left as it was


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_configuration_runs_on_the_last_good_copy_not_in_setup_mode(
    tmp_path: Path, damage: str
):
    """config.json truncated to nothing (a bad SD card) after the service had read it: it ran
    in setup mode and the inverters on their own settings once their limits reverted (12 kW
    exported under a 0 W limit in a review's run). It runs on config.last-good.json (kept at
    every good read), and the status and the dashboard say why. A file gone (its folder entry
    lost, fsck) beside the copy is the same fault, not a first boot."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"version": 1, "limits": {"exportW": 0}}))
    first, _ = _serve_with_config(path, tmp_path / "data")  # a good start keeps the copy
    assert first["configProblems"] == [] and first["limits"]["exportW"] == 0
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(b"")
    doc, err = _serve_with_config(path, tmp_path / "data")
    assert doc["setupMode"] is False
    assert doc["limits"]["exportW"] == 0
    assert len(doc["configProblems"]) == 1
    assert "running on config.last-good.json" in doc["configProblems"][0]
    assert any(a["code"] == "config" for a in doc["alerts"])
    assert "running on config.last-good.json" in err
    if damage == "missing":
        assert not path.exists()
    else:
        assert path.read_bytes() == b""  # left as it was, for the installer to see


def test_with_neither_file_the_first_boot_is_setup_mode(tmp_path: Path):
    """Deleting config.json and config.last-good.json begins the setup afresh."""
    doc, _ = _serve_with_config(tmp_path / "config.json", tmp_path / "data")
    assert doc["setupMode"] is True and doc["configProblems"] == []


def test_a_configuration_path_that_cannot_even_be_looked_at_serves_the_web_ui(tmp_path: Path):
    """Path.exists() raises for errors other than "no such file" (I/O, permissions; here a name
    too long): it ran before the guarded read, so the service died at every start and systemd's
    start limit rebooted the appliance, again and again."""
    path = tmp_path / ("x" * 300) / "config.json"
    doc, err = _serve_with_config(path, tmp_path / "data")
    assert doc["setupMode"] is True
    assert "File name too long" in doc["configProblems"][0]
    assert "invalid configuration" in err


@pytest.mark.parametrize(("interval", "bound"), [(1.0, 10.0), (4.5, 10.0), (10.0, 21.0)])
async def test_the_controllers_silence_bound_follows_a_long_control_interval(
    tmp_path: Path, interval: float, bound: float
) -> None:
    """control.intervalS may be 10 s: a cycle is its interval and the wait for fresh readings,
    so a fixed 10 s bound called such a controller stuck (errors, missed watchdog pings) and
    the update health check never saw two unbroken minutes."""
    from dynexport.modbus.client import BusPool

    app = make_app(parse_config({"control": {"intervalS": interval}}), tmp_path / "data")
    async with BusPool() as pool:
        app._make_links(pool)
    assert app.progress.limits["controller"] == bound


async def test_the_shutdown_writes_every_inverters_fail_safe_at_once_within_its_budget(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two inverters that time out first in the list: the reachable third still gets its
    fail-safe within the 4 s budget (written one after another, it got nothing)."""
    from dynexport.app import SHUTDOWN_BUDGET_S
    from dynexport.control import law

    class Link:
        def __init__(self, id: str, takes_s: float) -> None:
            self.id, self.takes_s = id, takes_s
            self.written: list[object] = []
            self.state = SimpleNamespace(controllable=True, error=None)  # reached before

        async def write(self, desired: object) -> None:
            await trio.sleep(self.takes_s)
            self.written.append(desired)

    app = make_app(parse_config({}), tmp_path)
    links = [Link("silent 1", 2.5), Link("silent 2", 2.5), Link("answers", 0.2)]
    app.inverters = links  # type: ignore[assignment]
    commands = [law.InverterCommand(link.id, 10.0) for link in links]
    monkeypatch.setattr(app, "_failsafe_commands", lambda: commands)
    with trio.move_on_after(SHUTDOWN_BUDGET_S):
        await app.leave_fail_safe()
    assert [len(link.written) for link in links] == [1, 1, 1]


@pytest.mark.parametrize("then", ["valid", "invalid"])
async def test_a_configuration_unreadable_at_the_start_is_read_again_until_it_can_be(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """An I/O error (here the path is a folder) is not the content: the service, in setup mode
    without limits meanwhile, reads the file again (every 30 s) and applies it once it can; a
    file that turns out invalid is reported like any other and not read again."""
    from dynexport.system.config import load_config as real_load

    reads: list[Path] = []

    def counted_load(path: str | Path) -> Config:
        reads.append(Path(path))
        return real_load(path)

    # load_site_config's reader (system/config_file.py)
    monkeypatch.setattr("dynexport.system.config_file.load_config", counted_load)
    monkeypatch.setattr(App, "CONFIG_REREAD_S", 0.05)
    path = tmp_path / "config.json"
    path.mkdir()  # IsADirectoryError: an OSError, as an I/O error of the card would be
    app = make_app(Config(), tmp_path / "data", config_path=path)
    app.setup_mode = True
    app.config_unreadable = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app._reread_unreadable_config)
        await wait_for(lambda: len(reads) >= 3)
        assert app.status()["setupMode"] is True, "still unreadable: waiting in setup mode"
        path.rmdir()
        body = {"limits": {"exportW": 3000}} if then == "valid" else {"limits": {"exportW": -1}}
        path.write_text(json.dumps(body))
        await wait_for(lambda: not app.config_unreadable)  # the task ends once it could read it
        read_count = len(reads)
        doc = app.status()
        if then == "valid":
            assert doc["setupMode"] is False and app.config.limits.export_w == 3000
            assert doc["configProblems"] == []
        else:
            assert doc["setupMode"] is True
            assert doc["configProblems"] and "limits.exportW" in doc["configProblems"][0]
        await trio.sleep(0.3)
        assert len(reads) == read_count, "not read again"
        nursery.cancel_scope.cancel()


async def test_a_flood_of_wake_ups_cannot_drive_decisions_closer_than_the_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every wake-up (a changed MQTT command, a price, a utility schedule) ran a decision at
    once: a publisher sending ever-changing limits drove the control loop, and the inverter
    writes, as fast as it published. Cycles woken early now start ``MIN_DECISION_GAP_S`` apart,
    so n decisions span at least (n - 2) gaps (each decision falls in its own cycle)."""
    decisions: list[float] = []
    decide = App.control_once

    def counted(self: App, now: float) -> Any:
        decisions.append(now)
        return decide(self, now)

    monkeypatch.setattr(App, "control_once", counted)
    with simulated_site() as sim:
        app = make_app(site_config(sim, extra={"limits": {"exportW": 2000}}), tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            await wait_for(lambda: len(decisions) >= 2)

            async def flood() -> None:
                while True:
                    app._limits_changed.set()
                    await trio.sleep(0.001)

            first = len(decisions)
            nursery.start_soon(flood)
            await wait_for(lambda: len(decisions) >= first + 12)
            nursery.cancel_scope.cancel()
    flooded = decisions[first:]
    assert flooded[-1] - flooded[0] >= (len(flooded) - 2) * App.MIN_DECISION_GAP_S


async def test_the_decision_gap_never_delays_a_regular_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The gap between decisions woken early applied after every wait: a wake-up at 1.9 s
    moved the tick due at 2.0 s to 2.2 s (a utility step, or the stale-meter fail-safe, judged
    at that tick came late). It applies only when a wake-up cut the wait short."""
    decisions: list[float] = []
    loop: Any = SimpleNamespace(
        config=SimpleNamespace(control=SimpleNamespace(interval_s=1.0)),
        MIN_DECISION_GAP_S=App.MIN_DECISION_GAP_S,
        _limits_changed=trio.Event(),
        _seconds_to_next_limit_change=lambda horizon: math.inf,
    )

    async def fresh(budget: float) -> None:
        await trio.sleep(0.05)  # the readings take 50 ms

    loop._fresh_readings = fresh
    loop.control_once = decisions.append
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(App._control_loop, loop)
        await trio.sleep_until(start + 1.9)  # regular ticks at 0, 1, 2, 3 ...
        loop._limits_changed.set()  # an MQTT command just before the tick at 2
        await trio.sleep_until(start + 3.5)
        nursery.cancel_scope.cancel()
    assert [round(t - start, 3) for t in decisions] == [0.05, 1.05, 1.95, 2.05, 3.05]
