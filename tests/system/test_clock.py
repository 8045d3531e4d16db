"""Whether the kernel's clock is set by a time server (``system/clock.py``): adjtimex's state,
read without privileges, mapped to yes, no, or "cannot tell"."""

from __future__ import annotations

import ctypes
import sys
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
    monkeypatch: pytest.MonkeyPatch, state: int, expected: bool | None
) -> None:
    libc = _Libc(state)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name, use_errno: libc)
    monkeypatch.setattr(clock, "_ADJTIMEX", {})  # looked up afresh, as at a start
    assert clock.kernel_clock_synchronised() is expected
    assert clock.kernel_clock_synchronised() is expected  # the second time from the lookup kept
    assert libc.calls == [clock._TIMEX_BYTES] * 2


def test_a_system_that_is_not_linux_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert clock.kernel_clock_synchronised() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux's")
def test_the_real_kernel_answers_yes_or_no() -> None:
    """Whatever this machine's clock is, the unprivileged call works (no "cannot tell")."""
    assert clock.kernel_clock_synchronised() in (True, False)
