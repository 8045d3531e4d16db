"""RTU timing on a slow line: the line's own time for the bytes comes on top of the timeout (a
real pty pair and a hostile peer; docs/modbus.md)."""

from __future__ import annotations

import trio

from dynexport.modbus.client import open_bus
from dynexport.modbus.endpoints import SerialEndpoint
from tests.modbus.servers import HostilePeer, hostile_rtu_peer
from tests.modbus.test_hostile import rtu_answer, values_for


async def test_a_slow_lines_own_time_for_the_bytes_comes_on_top_of_the_timeout(
    pty_pair: tuple[str, str],
) -> None:
    """At 2400 baud a 125-register answer alone takes 1.06 s on the wire: with a 1 s timeout
    every such read timed out, and an inverter whose slow poll has one was never controlled.
    (A pty passes bytes at once: the peer waits a little over the timeout, less than the line
    itself would have taken.)"""
    endpoint = SerialEndpoint(pty_pair[1], 2400, "N", 1)

    async def as_slow_as_the_line(
        stream: trio.abc.Stream, request: bytes, peer: HostilePeer
    ) -> None:
        await trio.sleep(1.02)  # the request and the answer take 1.1 s at 2400 baud
        await stream.send_all(rtu_answer(request))

    with trio.fail_after(20):
        async with (
            hostile_rtu_peer(pty_pair[0], as_slow_as_the_line),
            open_bus(endpoint, timeout=1.0, retries=0) as bus,
        ):
            got = await bus.read_holding_registers(1, 40122, 125)
    assert got == values_for(40122, 125)
