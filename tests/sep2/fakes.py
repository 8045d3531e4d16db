"""Test doubles for the utility link: a hand-moved clock, a configuration for the simulator."""

from __future__ import annotations

from dataclasses import replace

from dynexport.sim.utility_server import UtilityServer
from dynexport.system.config import UtilityConfig

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


NMI = "4312345678"
PIN = 111115


def utility_config(srv: UtilityServer, **changes: object) -> UtilityConfig:
    """A device configured for the simulated utility ``srv`` and its test PKI."""
    files = srv.pki.files
    config = UtilityConfig(
        server=srv.url,
        ca=files["serca"],
        cert=files["device_chain"],
        key=files["device_key"],
        nmi=NMI,
        pin=PIN,
    )
    return replace(config, **changes)  # type: ignore[arg-type]
