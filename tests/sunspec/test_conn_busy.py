"""A "busy" answer to a 123 Conn write is not the inverter refusing its connect control,
against the simulated inverter behind a real pymodbus server on 127.0.0.1. Before, any exception
answer took the connect control away until a restart: every later disconnect was a 0 % limit
only, and the utility's connect mode was no longer offered."""

from __future__ import annotations

from collections.abc import Sequence

from dynexport.sim.profiles import sunspec_inverter
from dynexport.sim.sunspec_device import ModbusError, Site
from dynexport.sunspec.links import CONN_TRIES, Desired, InverterLink
from tests.sunspec.running import running_link, wait_until


class BusyConnWrite(Site):
    """Answers ``code`` to the next ``count`` writes that touch register ``at``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.at = -1
        self.code = 6
        self.count = 0
        self.answered = 0

    def write(self, unit: int, address: int, values: Sequence[int], now: float) -> None:
        if self.count and address <= self.at < address + len(values):
            self.count -= 1
            self.answered += 1
            raise ModbusError(self.code, "refused for the test")
        super().write(unit, address, values, now)


async def disconnect_with_conn_answering(
    code: int, times: int = 1
) -> tuple[InverterLink, BusyConnWrite]:
    site = BusyConnWrite({1: sunspec_inverter(available_w=4000.0, tau_s=0.1)})
    site.at = site.devices[1].point_address(123, "Conn")
    async with running_link(site) as link:
        await wait_until(lambda: link.state.can_disconnect is True)
        site.code, site.count = code, times
        link.command(Desired(pct=50.0, connect=False))
        await wait_until(lambda: site.answered >= 1)
        await wait_until(lambda: link.state.disconnect_method is not None)
        await wait_until(lambda: site.get(1, 123, "WMaxLim_Ena") == 1)
        if code == 6:
            await wait_until(lambda: site.get(1, 123, "Conn") == 0)
        await wait_until(lambda: link.state.online)
    assert isinstance(link, InverterLink)
    return link, site


async def test_a_busy_answer_to_a_conn_write_is_tried_again_and_the_inverter_opens():
    link, site = await disconnect_with_conn_answering(6)
    assert site.get(1, 123, "Conn") == 0
    assert link.state.disconnect_method == "conn"
    assert link.state.can_disconnect is True


async def test_an_illegal_value_answer_is_a_refusal_and_the_0_pct_limit_is_the_disconnect():
    link, site = await disconnect_with_conn_answering(3)
    assert link.state.disconnect_method == "limit"
    assert link.state.can_disconnect is False
    assert site.get(1, 123, "Conn") == 1  # never opened
    assert site.get(1, 123, "WMaxLimPct") == 0.0


async def test_an_inverter_that_always_answers_device_failure_to_conn_is_refused_after_a_few():
    """Retried without end, every disconnect kept the link offline (its state unknown to the
    utility) although the 0 % limit held."""
    link, site = await disconnect_with_conn_answering(4, times=100)
    assert link.state.disconnect_method == "limit"
    assert link.state.can_disconnect is False
    assert site.answered == CONN_TRIES
    assert site.get(1, 123, "WMaxLimPct") == 0.0
