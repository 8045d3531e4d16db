"""A limit write that lands while its read-back is lost (the inverter, or a shared RS485
adapter, stops answering right after the write): until it answers again the inverter is counted
at the higher of its old and new limit, against the simulated inverter behind a real pymodbus
server on 127.0.0.1. Before, it was counted at the old limit (10 %) while it ran at the new
one (80 %), and the fail-safe's cap counted it too low."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from dynexport.app import App
from dynexport.sim.profiles import sunspec_inverter
from dynexport.sim.sunspec_device import ModbusError, Site
from dynexport.sunspec.links import Desired
from tests.sunspec.running import running_link, wait_until


class SilentAfterWrite(Site):
    """Once ``armed``, the first write is applied and every read after it is refused."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.armed = False
        self.silent = False

    def write(self, unit: int, address: int, values: Sequence[int], now: float) -> None:
        super().write(unit, address, values, now)
        if self.armed:
            self.silent = True

    def read(self, unit: int, address: int, count: int) -> list[int]:
        if self.silent:
            raise ModbusError(4, "server device failure")
        return super().read(unit, address, count)


async def test_a_raised_limit_whose_read_back_is_lost_is_counted_at_the_raised_limit():
    site = SilentAfterWrite({1: sunspec_inverter(available_w=4000.0, tau_s=0.1)})
    async with running_link(site) as link:
        link.command(Desired(pct=10.0))
        await wait_until(lambda: link.state.limit_pct == 10.0)
        first_write = link.state.last_write
        site.armed = True
        link.command(Desired(pct=80.0))
        await wait_until(lambda: not link.state.online)
        assert site.devices[1].get(123, "WMaxLimPct") == 80.0  # it did land
        assert link.state.limit_pct == 80.0
        assert link.state.last_write == first_write  # counted up to the old revert time
        counted = App._law_state(link, trio.current_time())
        assert counted.online is False and counted.last_limit_pct == 80.0
        assert first_write is not None and counted.limit_expires_t == first_write + 60


async def test_a_lowered_limit_whose_read_back_is_lost_is_still_counted_at_the_old_one():
    site = SilentAfterWrite({1: sunspec_inverter(available_w=4000.0, tau_s=0.1)})
    async with running_link(site) as link:
        link.command(Desired(pct=70.0))
        await wait_until(lambda: link.state.limit_pct == 70.0)
        site.armed = True
        link.command(Desired(pct=20.0))
        await wait_until(lambda: not link.state.online)
        assert link.state.limit_pct == 70.0  # it may not have landed: the higher one
