"""Peers that misbehave on purpose (raw trio sockets and raw pty writes).

Each test proves one failure mode gives a clear error, bounded retries (counted at the peer), no
hang (a generous ``fail_after`` guards every test), no leaked task, and a bus that still works.
"""

from __future__ import annotations

from collections.abc import Awaitable

import pytest
import trio

from dynexport.modbus.client import Backoff, ModbusBus, open_bus
from dynexport.modbus.endpoints import SerialEndpoint, TcpEndpoint
from dynexport.modbus.errors import (
    ModbusConnectionError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTimeout,
)
from tests.modbus.servers import (
    HostilePeer,
    hostile_rtu_peer,
    hostile_tcp_peer,
    read_answer_pdu,
    rtu_frame,
    tcp_frame,
)
from tests.modbus.test_real_peers import task_count

FAST = Backoff(initial=0.01, maximum=0.05)
WHAT = "unit 1 function 3 address 40010"


def values_for(address: int, count: int) -> list[int]:
    """What the honest answers of these peers contain: the address itself, counting up."""
    return [(address + i) & 0xFFFF for i in range(count)]


def tcp_answer(request: bytes) -> bytes:
    """The correct Modbus TCP answer to a function 3/4 request."""
    address = int.from_bytes(request[8:10], "big")
    count = int.from_bytes(request[10:12], "big")
    pdu = read_answer_pdu(request[7], values_for(address, count))
    return tcp_frame(int.from_bytes(request[0:2], "big"), request[6], pdu)


def rtu_answer(request: bytes) -> bytes:
    address = int.from_bytes(request[2:4], "big")
    count = int.from_bytes(request[4:6], "big")
    return rtu_frame(request[0], read_answer_pdu(request[1], values_for(address, count)))


def tcp_bus(peer: HostilePeer, **kw: object) -> ModbusBus:
    return ModbusBus(TcpEndpoint("127.0.0.1", peer.port), backoff=FAST, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Modbus TCP


async def test_tcp_silent_device_times_out_after_bounded_retries() -> None:
    async def never_answer(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        pass

    tasks = task_count()
    with trio.fail_after(30):
        async with hostile_tcp_peer(never_answer) as peer:
            # 1 s, not 0.1: the timeout also bounds the backoff and the connect, and a loaded
            # clean-clone run could not connect on loopback within 0.1 s (a bound, not a speed)
            bus = tcp_bus(peer, timeout=1.0, retries=2)
            with pytest.raises(ModbusTimeout) as err:
                await bus.read_holding_registers(1, 40010, 2)
            await bus.aclose()
    message = str(err.value)
    assert WHAT in message and f"127.0.0.1:{peer.port}" in message
    assert "after 3 attempts" in message
    assert len(peer.requests) == 3
    assert peer.connections == 3, "a timed-out connection is closed, never reused"
    assert task_count() == tasks


async def test_tcp_garbage_is_a_frame_error_and_the_bus_recovers() -> None:
    async def garbage_first(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        if len(peer.requests) == 1:
            await stream.send_all(b"\xde\xad\xbe\xef" * 4)
        else:
            await stream.send_all(tcp_answer(request))

    with trio.fail_after(10):
        async with hostile_tcp_peer(garbage_first) as peer:
            bus = tcp_bus(peer, retries=0)
            with pytest.raises(ModbusFrameError, match=f"{WHAT}: protocol id"):
                await bus.read_holding_registers(1, 40010, 2)
            assert await bus.read_holding_registers(1, 40010, 2) == values_for(40010, 2)
            await bus.aclose()
    assert peer.connections == 2, "after garbage the connection is replaced"


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (lambda f: bytes([f[0] ^ 0x55]) + f[1:], "wrong transaction id"),
        (lambda f: f[:6] + b"\x07" + f[7:], "wrong unit 7"),
        (lambda f: f[:7] + b"\x04" + f[8:], "function 4"),
    ],
)
async def test_tcp_mismatched_answers_are_retried_then_reported(corrupt, problem: str) -> None:
    async def corrupted(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        await stream.send_all(corrupt(tcp_answer(request)))

    with trio.fail_after(10):
        async with hostile_tcp_peer(corrupted) as peer:
            bus = tcp_bus(peer, retries=1)
            with pytest.raises(ModbusFrameError, match=problem) as err:
                await bus.read_holding_registers(1, 40010, 2)
            await bus.aclose()
    assert WHAT in str(err.value)
    assert len(peer.requests) == 2


async def test_tcp_exception_response_is_not_retried() -> None:
    async def refuse(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        await stream.send_all(tcp_frame(int.from_bytes(request[:2], "big"), 1, b"\x83\x0b"))

    with trio.fail_after(10):
        async with hostile_tcp_peer(refuse) as peer:
            bus = tcp_bus(peer, retries=5)
            with pytest.raises(ModbusExceptionResponse, match=r"exception 11 \(gateway target"):
                await bus.read_holding_registers(1, 40010, 2)
            await bus.aclose()
    assert len(peer.requests) == 1


async def test_tcp_connection_dropped_mid_frame_reconnects_on_retry() -> None:
    async def drop_first(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        if len(peer.requests) == 1:
            await stream.send_all(tcp_answer(request)[:9])
            await stream.aclose()
        else:
            await stream.send_all(tcp_answer(request))

    with trio.fail_after(10):
        async with hostile_tcp_peer(drop_first) as peer:
            bus = tcp_bus(peer, retries=1)
            assert await bus.read_holding_registers(1, 40010, 3) == values_for(40010, 3)
            await bus.aclose()
    assert peer.connections == 2

    with trio.fail_after(10):
        async with hostile_tcp_peer(drop_first) as peer:
            bus = tcp_bus(peer, retries=0)
            with pytest.raises(ModbusConnectionError, match=f"{WHAT}: connection closed by peer"):
                await bus.read_holding_registers(1, 40010, 3)
            await bus.aclose()


async def test_tcp_half_frame_then_silence_times_out_and_is_not_misread() -> None:
    async def half_first(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        answer = tcp_answer(request)
        await stream.send_all(answer[:5] if len(peer.requests) == 1 else answer)

    with trio.fail_after(10):
        async with hostile_tcp_peer(half_first) as peer:
            # long enough for the half frame to arrive on a loaded machine; the silence after it
            # is what times out
            bus = tcp_bus(peer, timeout=3.0, retries=0)
            with pytest.raises(ModbusTimeout, match=rf"{WHAT}: no answer within 3 s \(got 5 bytes"):
                await bus.read_holding_registers(1, 40010, 3)
            assert await bus.read_holding_registers(1, 40020, 3) == values_for(40020, 3)
            await bus.aclose()
    assert peer.connections == 2


async def given_up_once(event: trio.Event, request: Awaitable[object]) -> bool:
    """Awaits ``request`` and gives up (cancels it) once ``event`` is set, not after a timer
    (a short one ran out before a loaded machine had even written the request). True when it
    was given up."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def give_up() -> None:
                await event.wait()
                scope.cancel()

            nursery.start_soon(give_up)
            await request
            nursery.cancel_scope.cancel()  # answered before the event: nothing to give up
    return scope.cancelled_caught


async def test_tcp_cancelled_request_does_not_confuse_the_next_one() -> None:
    received, release = trio.Event(), trio.Event()

    async def slow_first(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        if len(peer.requests) == 1:
            received.set()
            await release.wait()  # answers the first request late, on its old connection
            await stream.send_all(tcp_answer(request))
        else:
            await stream.send_all(tcp_answer(request))

    tasks = task_count()
    with trio.fail_after(10):
        async with hostile_tcp_peer(slow_first) as peer:
            bus = tcp_bus(peer, timeout=5.0, retries=0)
            # given up once the peer has the request
            assert await given_up_once(received, bus.read_holding_registers(1, 40010, 3))
            release.set()
            assert await bus.read_holding_registers(1, 40100, 3) == values_for(40100, 3)
            assert await bus.read_holding_registers(1, 40200, 1) == values_for(40200, 1)
            await bus.aclose()
    assert peer.connections == 2
    assert task_count() == tasks


async def test_tcp_idle_connection_closed_by_device_is_reopened_transparently() -> None:
    async def answer_then_hang_up(
        stream: trio.abc.Stream, request: bytes, peer: HostilePeer
    ) -> None:
        await stream.send_all(tcp_answer(request))
        await stream.aclose()

    with trio.fail_after(10):
        async with hostile_tcp_peer(answer_then_hang_up) as peer:
            bus = tcp_bus(peer, retries=0)
            for address in (40010, 40011, 40012):
                assert await bus.read_holding_registers(1, address, 1) == [address]
                await trio.sleep(0.02)  # let the FIN arrive while the connection is idle
            await bus.aclose()
    assert peer.connections == 3 and len(peer.requests) == 3


async def test_tcp_backoff_is_bounded_by_the_request_deadline() -> None:
    async def hang_up(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        await stream.aclose()

    with trio.fail_after(10):
        async with hostile_tcp_peer(hang_up) as peer:
            bus = ModbusBus(
                TcpEndpoint("127.0.0.1", peer.port),
                timeout=1.0,  # a bound for the loopback connect on a loaded machine; < 30 s
                retries=2,
                backoff=Backoff(initial=30.0, maximum=60.0),
            )
            with pytest.raises(ModbusConnectionError, match="not reconnecting for another") as err:
                await bus.read_holding_registers(1, 40010, 1)
            with pytest.raises(ModbusConnectionError, match="not reconnecting for another"):
                await bus.read_holding_registers(1, 40010, 1)
            await bus.aclose()
    assert "connection closed by peer" in str(err.value), "names the failure behind the backoff"
    assert peer.connections == 1, "no reconnect before the backoff delay"


async def test_request_running_when_the_bus_closes_fails_cleanly() -> None:
    arrived = trio.Event()

    async def never_answer(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        arrived.set()

    with trio.fail_after(10):
        async with hostile_tcp_peer(never_answer) as peer:
            bus = tcp_bus(peer, timeout=5.0, retries=3)
            errors: list[BaseException] = []

            async def request() -> None:
                try:
                    await bus.read_holding_registers(1, 40010, 1)
                except ModbusConnectionError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(request)
                await arrived.wait()
                await bus.aclose()
    assert len(errors) == 1 and "closed" in str(errors[0])
    assert len(peer.requests) == 1, "a closed bus does not retry"


# --------------------------------------------------------------------------------------
# Modbus RTU over a pty pair


def rtu_endpoint(device: str) -> SerialEndpoint:
    return SerialEndpoint(device, 115200, "N", 1)


async def test_rtu_silent_device_times_out_after_bounded_retries(
    pty_pair: tuple[str, str],
) -> None:
    async def never_answer(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        pass

    peer_end, client_end = pty_pair
    tasks = task_count()
    with trio.fail_after(10):
        async with (
            hostile_rtu_peer(peer_end, never_answer) as peer,
            open_bus(rtu_endpoint(client_end), timeout=0.1, retries=1) as bus,
        ):
            with pytest.raises(ModbusTimeout) as err:
                await bus.read_holding_registers(1, 40010, 2)
            # The retry may still be on its way to the peer (or, on a loaded machine, its time
            # ran out while the line was drained before it, so it was never sent: two clean-clone
            # runs saw only the first): whatever came, never more than the one retry.
            with trio.move_on_after(3):
                while len(peer.requests) < 3:  # noqa: ASYNC110
                    await trio.sleep(0.01)
    assert WHAT in str(err.value) and client_end in str(err.value)
    assert 1 <= len(peer.requests) <= 2, peer.requests
    assert task_count() == tasks


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (lambda f: f[:-1] + bytes([f[-1] ^ 0xFF]), "bad CRC"),
        (lambda f: f[:3] + bytes([f[3] ^ 0x01]) + f[4:], "bad CRC"),
        (lambda f: rtu_frame(9, f[1:-2]), "wrong unit 9"),
        (lambda f: b"\x00\xff\x13\x37" + f, "wrong unit 0"),
    ],
)
async def test_rtu_corrupt_answers_are_frame_errors_and_the_bus_recovers(
    pty_pair: tuple[str, str], corrupt, problem: str
) -> None:
    async def corrupt_first(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        answer = rtu_answer(request)
        await stream.send_all(corrupt(answer) if len(peer.requests) <= 2 else answer)

    peer_end, client_end = pty_pair
    with trio.fail_after(10):
        async with (
            hostile_rtu_peer(peer_end, corrupt_first) as peer,
            open_bus(rtu_endpoint(client_end), retries=1) as bus,
        ):
            with pytest.raises(ModbusFrameError, match=problem) as err:
                await bus.read_holding_registers(1, 40010, 2)
            assert len(peer.requests) == 2
            assert await bus.read_holding_registers(1, 40010, 2) == values_for(40010, 2)
    assert WHAT in str(err.value)


async def test_rtu_half_frame_then_silence_is_not_misread(pty_pair: tuple[str, str]) -> None:
    async def half_first(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        answer = rtu_answer(request)
        await stream.send_all(answer[:4] if len(peer.requests) == 1 else answer)

    peer_end, client_end = pty_pair
    with trio.fail_after(10):
        async with (
            hostile_rtu_peer(peer_end, half_first) as peer,
            # long enough for the half frame to arrive on a loaded machine; the silence after it
            # is what times out
            open_bus(rtu_endpoint(client_end), timeout=3.0, retries=0) as bus,
        ):
            with pytest.raises(ModbusTimeout, match="got 4 bytes of a frame"):
                await bus.read_holding_registers(1, 40010, 3)
            assert await bus.read_holding_registers(1, 40020, 3) == values_for(40020, 3)
    assert len(peer.requests) == 2


async def test_rtu_cancelled_request_does_not_confuse_the_next_one(
    pty_pair: tuple[str, str],
) -> None:
    sent, gave_up = trio.Event(), trio.Event()

    async def slow_second(stream: trio.abc.Stream, request: bytes, peer: HostilePeer) -> None:
        if len(peer.requests) == 2:
            sent.set()
            await gave_up.wait()  # the answer arrives after the caller gave up
        await stream.send_all(rtu_answer(request))

    peer_end, client_end = pty_pair
    tasks = task_count()
    with trio.fail_after(10):
        async with (
            hostile_rtu_peer(peer_end, slow_second) as peer,
            open_bus(rtu_endpoint(client_end), timeout=2.0, retries=0) as bus,
        ):
            assert await bus.read_holding_registers(1, 40000, 1) == [40000]
            # The caller gives up once its request is on the line (an event, not a timer: a
            # 30 ms timer ran out before a loaded machine had written it).
            assert await given_up_once(sent, bus.read_holding_registers(1, 40010, 3))
            gave_up.set()
            assert len(peer.requests) == 2, "the abandoned request did go out"
            assert await bus.read_holding_registers(1, 40100, 3) == values_for(40100, 3)
            assert await bus.read_holding_registers(1, 40200, 1) == values_for(40200, 1)
    assert len(peer.requests) == 4
    assert task_count() == tasks
