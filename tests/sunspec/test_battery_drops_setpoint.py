"""A battery that does not keep a setpoint (it accepts and reads it back, then falls back to its
own mode within a second: at its reserve, a service or calibration mode, a firmware that answers
before it decides) was written again at every 1 s poll once a poll finding it lost triggered a
rewrite: a write storm on a shared Modbus bus. Early rewrites are now spaced out (the 1st, 2nd,
4th, 8th... contradicting poll)."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from dynexport.modbus.client import Backoff
from dynexport.sim import profiles
from dynexport.sim.sunspec_device import Battery, Site
from dynexport.sunspec.links import BatteryDesired, BatteryLink
from dynexport.sunspec.storage import StorageConvention
from tests.sunspec.sitebus import SiteBus
from tests.sunspec.test_link_control import running, settle


class DropsStorCtl(SiteBus):
    """124 StorCtl_Mod is back to 0 (own mode) 0.5 s after each write of it."""

    def __init__(self, site: Site, bat: Battery) -> None:
        super().__init__(site)
        self.bat = bat
        self.written_t: float | None = None
        self.storctl_writes = 0
        self.requests = 0

    async def read_holding_registers(self, unit, address, count, *, timeout=None):  # noqa: ASYNC109
        self.requests += 1
        now = trio.current_time()
        if unit == 3 and self.written_t is not None and now >= self.written_t + 0.5:
            self.bat.step(now)
            self.bat.set(124, "StorCtl_Mod", 0)
            self.bat._storctl_timer.deadline = None
            self.written_t = None
        return await super().read_holding_registers(unit, address, count, timeout=timeout)

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        self.requests += 1
        await super().write_registers(unit, address, values, timeout=timeout)
        mode = self.written_to(unit, address, values, 124, "StorCtl_Mod")
        if unit == 3 and mode is not None and mode != 0:
            self.storctl_writes += 1
            self.written_t = trio.current_time()


async def test_a_battery_that_drops_its_setpoint_is_not_written_at_every_poll(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site = profiles.fronius_battery_site(soc_pct=40.0, window=True)
    bat = site.devices[3]
    assert isinstance(bat, Battery)
    bus = DropsStorCtl(site, bat)
    link = BatteryLink(
        "battery", bus, 3, revert_s=60, fast_s=1.0,
        convention=StorageConvention.WINDOW, backoff=Backoff(initial=0.5, maximum=2.0),
    )  # fmt: skip
    async with running(link):  # type: ignore[arg-type]
        await settle(5)
        link.command(BatteryDesired(-2000.0))
        await settle(120)
    # Before 93f395a: written at the command and every revert_s/3 = 20 s: 7 writes in 120 s.
    # The inverter's equivalent (Conn) is bounded at one write per CONN_SETTLE_S (10 s).
    assert bus.storctl_writes <= 13, (bus.storctl_writes, bus.requests)
