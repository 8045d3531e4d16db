"""A disconnect through 123 Conn whose answer is lost (the write landed, its echo timed out): the
inverter may be open. A reconnect command must close it again, rather than leave it off the grid
until its own revert timer (docs/sunspec.md)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from dynexport.modbus.errors import ModbusExceptionResponse, ModbusTimeout
from dynexport.sim import profiles
from dynexport.sunspec.links import Desired
from tests.sunspec.sitebus import SiteBus
from tests.sunspec.test_link_control import inverter_link, running, settle, state


class LostOpenEcho(SiteBus):
    """The first Conn=0 write lands, but its answer is lost: a timeout, or (``gateway``) a TCP
    gateway's exception 11, the inverter's echo having come after the gateway's own timeout."""

    armed = True
    gateway = False

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        await super().write_registers(unit, address, values, timeout=timeout)
        if self.armed and self.written_to(unit, address, values, 123, "Conn") == 0:
            self.armed = False
            if self.gateway:
                raise ModbusExceptionResponse(unit, 16, address, 11, "gateway")
            raise ModbusTimeout("the echo was lost")


@pytest.mark.parametrize("gateway", [False, True], ids=["timeout", "gateway-no-answer"])
async def test_a_reconnect_closes_an_open_whose_answer_was_lost(
    autojump_clock: trio.testing.MockClock, gateway: bool
) -> None:
    site = profiles.fronius_gateway(tau_s=0.5)
    link = inverter_link(site)
    bus = LostOpenEcho(site)
    bus.gateway = gateway
    link.device.bus = bus
    async with running(link):
        await settle()
        link.command(Desired(pct=0.0, connect=False))
        await trio.sleep(0.02)  # the open landed; its echo timed out
        assert site.get(1, 123, "Conn") == 0
        link.command(Desired(pct=None, connect=True))  # the utility reconnects the site
        await settle(10)
        assert site.get(1, 123, "Conn") == 1, f"still open: connected={state(link).connected}"
