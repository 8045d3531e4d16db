"""A dynexport.service that never becomes READY leads to StartLimitAction=reboot in bounded
time (docs/image.md "Watchdog chain").

WatchdogSec counts only from READY (or the first WATCHDOG=1): a start that hangs before that ends
at TimeoutStartSec, then SIGTERM (SIGKILL after TimeoutStopSec), then RestartSec. systemd's start
limit counts starts in fixed windows (src/basic/ratelimit.c, ratelimit_below(): a window opens
at the first start more than StartLimitIntervalSec after the window's opening, and the start
that makes the count exceed StartLimitBurst is refused, which runs StartLimitAction). With
TimeoutStartSec=120 five attempts took 625-675 s, more than the 10-minute interval, so no window
ever saw a sixth start: restarts for ever, no reboot. The simulation below is that algorithm,
driven by the unit file's own values."""

from __future__ import annotations

import ast
import re

import pytest

from tests.image.helpers import ROOT, unit

SERVICE = ROOT / "systemd/dynexport.service"
APP = ROOT / "src/dynexport/app.py"
UNITS_S = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "ms": 0.001}


def seconds(span: str) -> float:
    """A systemd time span ("75", "5s", "10min", "1min 30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    return sum(float(n) * UNITS_S[u] for n, u in parts)


def value(key: str) -> float:
    values = unit(SERVICE).get(key)
    assert values, f"{key} not set in {SERVICE.name}"
    return seconds(values[-1])


def ready_after_s() -> float:
    """READY_AFTER_S from the service's source (read, not imported)."""
    for node in ast.parse(APP.read_text()).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "READY_AFTER_S" for t in targets):
                assert node.value is not None
                return float(ast.literal_eval(node.value))
    raise AssertionError("READY_AFTER_S not found in src/dynexport/app.py")


class RateLimit:
    """systemd's ratelimit_below(): fixed windows opened by the first start past the last."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval, self.burst = interval, burst
        self.begin: float | None = None
        self.num = 0

    def below(self, t: float) -> bool:
        if self.begin is None or t - self.begin > self.interval:
            self.begin, self.num = t, 1
            return True
        self.num += 1
        return self.num <= self.burst


def reboot_after(stop_s: float, history: list[float], horizon_s: float = 86400.0) -> float | None:
    """Seconds from the first hung start to the reboot (None: none within ``horizon_s``), each
    hung start taking TimeoutStartSec, ``stop_s`` to stop, then RestartSec; ``history``: earlier
    (successful) starts, at negative times, already counted by the rate limit."""
    limit = RateLimit(value("Unit.StartLimitIntervalSec"), int(value("Unit.StartLimitBurst")))
    for t in history:
        assert limit.below(t)
    cycle = value("Service.TimeoutStartSec") + stop_s + value("Service.RestartSec")
    t = 0.0
    while t < horizon_s:
        if not limit.below(t):
            return t
        t += cycle
    return None


def test_the_unit_reboots_when_the_start_limit_is_hit() -> None:
    svc = unit(SERVICE)
    assert svc["Unit.StartLimitAction"] == ["reboot"]
    assert svc["Service.Restart"] == ["always"]
    assert svc["Service.Type"] == ["notify"]


@pytest.mark.parametrize("stop", ["none", "term", "kill"])
def test_a_start_that_never_becomes_ready_reboots_within_25_minutes(stop: str) -> None:
    """The process dies at once, at SIGTERM, or only at SIGKILL (twice TimeoutStopSec: systemd
    waits that long again after SIGKILL); earlier starts may have opened a window at any time."""
    stop_s = {"none": 0.0, "term": 0.5, "kill": 2 * value("Service.TimeoutStopSec")}[stop]
    interval = value("Unit.StartLimitIntervalSec")
    histories: list[list[float]] = [[]]
    for k in range(1, int(value("Unit.StartLimitBurst")) + 1):
        for offset in range(0, int(interval) + 60, 15):
            histories.append([-offset - 10.0 * (k - 1 - i) for i in range(k)])
    worst = 0.0
    for history in histories:
        after = reboot_after(stop_s, history)
        assert after is not None, f"restarted for ever (history {history})"
        worst = max(worst, after)
    assert worst <= 25 * 60, worst


def test_a_quick_crash_loop_reboots_within_a_minute() -> None:
    limit = RateLimit(value("Unit.StartLimitIntervalSec"), int(value("Unit.StartLimitBurst")))
    t, cycle = 0.0, 1.0 + value("Service.RestartSec")  # exits one second after each start
    while limit.below(t):
        t += cycle
    assert t <= 60


def test_a_slow_legitimate_start_fits_in_the_start_timeout() -> None:
    """READY comes at the latest READY_AFTER_S after the service's own start (plus a pass of the
    watchdog loop, 2 s), which comes after the interpreter's start and imports: 8-20 s to READY
    in the system test under qemu TCG with the devices answering. 30 s are allowed for a cold
    start on the slowest board before READY_AFTER_S begins."""
    assert value("Service.TimeoutStartSec") >= ready_after_s() + 2 + 30
    # the watchdog still ends a hang after READY long before the start timeout would
    assert value("Service.WatchdogSec") < value("Service.TimeoutStartSec")


def test_the_old_values_never_rebooted() -> None:
    """The simulation itself: TimeoutStartSec=120 restarted a hung start for ever (692 starts
    in 24 h in the review's run)."""
    limit = RateLimit(600.0, 5)
    t, starts = 0.0, 0
    while t < 86400 and limit.below(t):
        starts += 1
        t += 120 + 5 + 5
    assert t >= 86400 and starts == 665
