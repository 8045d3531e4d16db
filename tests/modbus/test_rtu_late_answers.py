"""RTU answers carry no transaction id: a late answer to one request must never be taken for the
answer to the next, whatever its address (a real pty pair and a hostile peer; docs/modbus.md)."""

from __future__ import annotations

import pytest
import trio

from dynexport.modbus.client import open_bus
from dynexport.modbus.endpoints import SerialEndpoint
from dynexport.modbus.errors import ModbusFrameError, ModbusTimeout
from tests.modbus.servers import HostilePeer, hostile_rtu_peer
from tests.modbus.test_hostile import rtu_answer, rtu_endpoint, values_for


async def test_an_answer_after_the_timeout_is_not_read_as_the_next_requests(
    pty_pair: tuple[str, str],
) -> None:
    """The device answered 200 ms after the client's 1 s deadline. The line was watched for
    50 ms of quiet only, and the next read (40100) returned the registers of 40010."""

    async def slow_first(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        if len(peer.requests) == 1:
            await trio.sleep(1.2)
        await stream.send_all(rtu_answer(request))

    peer_end, client_end = pty_pair
    with trio.fail_after(10):
        async with (
            hostile_rtu_peer(peer_end, slow_first) as peer,
            open_bus(rtu_endpoint(client_end), timeout=1.0, retries=0) as bus,
        ):
            with pytest.raises(ModbusTimeout):
                await bus.read_holding_registers(1, 40010, 3)
            got = await bus.read_holding_registers(1, 40100, 3)
    assert got == values_for(40100, 3), f"read 40100 returned {got}"
    assert len(peer.requests) == 2


async def test_a_noise_byte_before_the_answer_does_not_end_the_wait_for_it(
    pty_pair: tuple[str, str],
) -> None:
    """A noise byte (unit 0) came first and failed the read at once; the device's own answer
    came 200 ms later. The first byte had ended the watch for that answer, and the next read
    returned it."""

    async def noisy(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        if len(peer.requests) == 1:
            await stream.send_all(b"\x00")
            await trio.sleep(0.2)
        await stream.send_all(rtu_answer(request))

    peer_end, client_end = pty_pair
    with trio.fail_after(10):
        async with (
            hostile_rtu_peer(peer_end, noisy) as peer,
            open_bus(rtu_endpoint(client_end), timeout=1.0, retries=0) as bus,
        ):
            with pytest.raises(ModbusFrameError, match="wrong unit 0"):
                await bus.read_holding_registers(1, 40010, 3)
            got = await bus.read_holding_registers(1, 40100, 3)
    assert got == values_for(40100, 3), f"read 40100 returned {got}"
    assert len(peer.requests) == 2


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
