"""A wall clock shared by the utility link and the simulator, moved by hand in tests."""

from __future__ import annotations

T0 = 1_800_000_000.0
"""The fake clock's start (2027-01-15): far from any real date a test might run on."""


class FakeClock:
    """Callable like ``time.time``; ``advance`` moves it."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
