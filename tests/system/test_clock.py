"""Whether the kernel's clock is set by a time server (``system/clock.py``): adjtimex's state,
read without privileges, mapped to yes, no, or "cannot tell"."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Any

import pytest

from dynexport.system import clock


class _Libc:
    def __init__(self, state: int) -> None:
        self.state = state
        self.calls: list[int] = []

    def adjtimex(self, buf: Any) -> int:
        self.calls.append(len(buf.raw))
        assert set(buf.raw) == {0}  # modes 0: asks the kernel for nothing but its state
        return self.state


@pytest.mark.parametrize(
    ("state", "expected"),
    [(0, True), (1, True), (4, True), (clock.TIME_ERROR, False), (-1, None)],
    ids=["ok", "insert-leap", "wait", "unsynchronised", "failed"],
)
def test_the_kernels_state_says_whether_the_clock_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state: int, expected: bool | None
) -> None:
    libc = _Libc(state)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name, use_errno: libc)
    monkeypatch.setattr(clock, "_ADJTIMEX", {})  # looked up afresh, as at a start
    no_flag = tmp_path / "synchronized"
    assert clock.kernel_clock_synchronised(no_flag) is expected
    assert clock.kernel_clock_synchronised(no_flag) is expected  # from the lookup kept
    assert libc.calls == [clock._TIMEX_BYTES] * 2


@pytest.mark.parametrize("state", [0, clock.TIME_ERROR])
def test_where_adjtimex_answers_the_kernel_is_believed_over_timesyncds_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state: int
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name, use_errno: _Libc(state))
    monkeypatch.setattr(clock, "_ADJTIMEX", {})
    flag = tmp_path / "synchronized"
    flag.touch()
    assert clock.kernel_clock_synchronised(flag) is (state != clock.TIME_ERROR)


def test_where_adjtimex_is_refused_timesyncds_flag_says_the_clock_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The service runs with ``ProtectClock=yes``, whose seccomp filter refuses adjtimex even
    asked for nothing (-1, EPERM): the kernel's state could never be read there, and the link
    obeyed the strictest schedule until the utility's Time was read, or for ever without it.
    systemd-timesyncd's flag file answers instead."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name, use_errno: _Libc(-1))
    monkeypatch.setattr(clock, "_ADJTIMEX", {})
    flag = tmp_path / "synchronized"
    assert clock.kernel_clock_synchronised(flag) is None  # not set yet: cannot tell
    flag.touch()  # timesyncd has set the clock
    assert clock.kernel_clock_synchronised(flag) is True
    assert Path("/run/systemd/timesync/synchronized") == clock.TIMESYNCD_SYNCHRONISED


def test_the_service_is_sandboxed_as_the_flag_fallback_assumes() -> None:
    """The fallback exists because of ``ProtectClock=yes``; /run stays readable (not hidden by
    ``InaccessiblePaths=`` or a private /run) so the flag can be seen."""
    unit = (Path(__file__).parents[2] / "systemd" / "dynexport.service").read_text()
    assert "ProtectClock=yes" in unit
    assert "InaccessiblePaths" not in unit and "TemporaryFileSystem=/run" not in unit


def test_a_system_that_is_not_linux_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert clock.kernel_clock_synchronised() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_the_real_kernel_answers_yes_or_no() -> None:
    """Whatever this machine's clock is, the unprivileged call works (no "cannot tell")."""
    assert clock.kernel_clock_synchronised() in (True, False)
