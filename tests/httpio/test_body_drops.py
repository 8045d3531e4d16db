"""Request bodies as waits the pool may drop to make room: a body whose last bytes had already
arrived when it was dropped is not served (it was, by a connection the pool no longer counted),
and an upload still arriving is dropped after a connection that has sent nothing."""

from __future__ import annotations

import trio
import trio.testing

from dynexport.httpio import Limits, Request, ServerResponse
from dynexport.httpio.server import ConnectionPool, _Connection


async def test_a_dropped_body_wait_whose_bytes_already_arrived_is_not_served() -> None:
    limits = Limits(max_connections=2, max_per_address=2, pressure_connections=99)
    pool = ConnectionPool(limits)
    called: list[Request] = []

    async def handler(request: Request) -> ServerResponse:
        called.append(request)
        return ServerResponse(200, b"ok", content_type="text/plain")

    to_server = trio.testing.MemoryReceiveStream()
    from_server = trio.testing.MemorySendStream()
    stream = trio.StapledStream(from_server, to_server)
    slot = pool.admit("10.0.0.1")
    assert slot is not None
    conn = _Connection(stream, handler, limits, ("10.0.0.1", 1), None, pool, slot)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        to_server.put_data(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert slot.scope is not None  # waiting for the body: droppable
        assert pool.admit("10.0.0.2") is not None
        # The body arrives (the server task is rescheduled with it) and, in the same scheduler
        # batch, a new connection makes room by dropping the longest-waiting one: this one.
        to_server.put_data(b"hello")
        assert pool.admit("10.0.0.3") is not None
        assert slot.dropped and pool.open == 2
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    try:
        sent = bytes(from_server.get_data_nowait())
    except trio.WouldBlock:
        sent = b""
    # Found: the handler ran and answered on a connection the pool had dropped and forgotten
    # (3 connections held with max_connections=2).
    assert not called, (called, sent)


async def test_an_upload_making_progress_is_not_dropped_before_a_silent_connection(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The victim is the wait that *began* first: a body that keeps arriving (the update
    page's 192 KiB piece) is dropped before a connection that has sent nothing at all."""
    limits = Limits(max_connections=2, max_per_address=2, pressure_connections=99)
    pool = ConnectionPool(limits)

    async def handler(request: Request) -> ServerResponse:
        return ServerResponse(200, b"ok", content_type="text/plain")

    def connection(address: str) -> tuple[trio.testing.MemoryReceiveStream, _Connection]:
        to_server = trio.testing.MemoryReceiveStream()
        stream = trio.StapledStream(trio.testing.MemorySendStream(), to_server)
        slot = pool.admit(address)
        assert slot is not None
        return to_server, _Connection(stream, handler, limits, (address, 1), None, pool, slot)

    upload_in, upload = connection("10.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload.serve)
        upload_in.put_data(b"PUT /u HTTP/1.1\r\nHost: x\r\nContent-Length: 196608\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.1)
        _, silent = connection("10.0.0.2")  # connects, sends nothing
        nursery.start_soon(silent.serve)
        for _ in range(10):  # 16 KiB every 0.1 s: 160 KiB/s, steady
            mock_clock.jump(0.1)
            upload_in.put_data(b"U" * 16384)
            await trio.testing.wait_all_tasks_blocked()
        assert pool.admit("10.0.0.3") is not None  # one more client: someone makes room
        dropped = {"upload": upload.slot.dropped, "silent": silent.slot.dropped}
        nursery.cancel_scope.cancel()
    assert dropped == {"upload": False, "silent": True}, dropped
