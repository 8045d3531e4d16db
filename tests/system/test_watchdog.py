"""Watchdog pings reflect real progress; sd_notify messages reach a real notify socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dynexport.system.watchdog import Notifier, ProgressTracker, watchdog_interval_s


def test_tracker_is_healthy_while_every_task_progresses():
    t = ProgressTracker()
    t.register("meter", 5.0, now=0.0)
    t.register("controller", 3.0, now=0.0)
    for now in (1.0, 2.0, 3.0, 4.0):
        t.progress("meter", now)
        t.progress("controller", now)
        assert t.healthy(now)


def test_one_stuck_task_makes_the_tracker_unhealthy_and_is_named():
    t = ProgressTracker()
    t.register("meter", 5.0, now=0.0)
    t.register("controller", 3.0, now=0.0)
    t.progress("meter", 9.0)
    assert not t.healthy(9.0)
    assert t.stuck(9.0) == ["controller (silent 9 s)"]
    t.progress("controller", 9.5)
    assert t.healthy(10.0)


def test_progress_of_an_unknown_task_is_an_error():
    with pytest.raises(KeyError, match="not a registered critical task"):
        ProgressTracker().progress("ghost", 1.0)


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}) == 2.0


def test_notifier_sends_ready_status_and_watchdog_to_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        n = Notifier()
        assert n.active
        n.ready("site -1200 W, limit 1500 W\n2 inverters")
        n.watchdog()
        assert server.recv(1024) == b"READY=1\nSTATUS=site -1200 W, limit 1500 W 2 inverters"
        assert server.recv(1024) == b"WATCHDOG=1"
    finally:
        server.close()


def test_notifier_is_inert_outside_systemd(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.active
    n.watchdog()
    assert n.sent == ["WATCHDOG=1"]
