"""A limit written to an inverter whose WMaxLimPct_SF is not implemented (0x8000), against the
simulated inverter behind a real pymodbus server on 127.0.0.1."""

from __future__ import annotations

from dynexport.sim.profiles import sunspec_inverter
from dynexport.sim.sunspec_device import Site
from dynexport.sunspec.links import Desired
from tests.sunspec.running import running_link, wait_until


async def test_a_limit_written_without_a_scale_factor_reads_back_as_written():
    """WMaxLimPct_SF not implemented (0x8000): the limit is written in whole percent
    (``control.limit_sf``), and read back the same way: it read back as unknown, so the status
    showed no limit and the law took the curtailed inverter for a free one."""
    site = Site({1: sunspec_inverter(available_w=4000.0, tau_s=0.1)})
    site.devices[1].set(123, "WMaxLimPct_SF", None)
    async with running_link(site) as link:
        link.command(Desired(pct=30.0))
        await wait_until(lambda: link.state.commanded_pct == 30.0)
        assert site.devices[1].get_raw(123, "WMaxLimPct") == 30
        await wait_until(lambda: link.state.limit_pct == 30.0)
