"""Bodies that cost more than their size: requests and responses split into 1-byte chunks, slow
uploads filling every connection, a streamed response that fails half-way.

Nothing here measures speed: memory is measured with tracemalloc, yielding to other tasks by
counting h11 events per trio task step, and time with trio's mock clock.
"""

from __future__ import annotations

import gc
import logging
import math
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import h11
import pytest
import trio
import trio.testing

from dynexport.httpio import HttpClient, Limits, Request, ServerResponse
from dynexport.httpio.server import ConnectionPool
from dynexport.web.events import Broadcaster
from dynexport.web.server import WEB_LIMITS
from tests.httpio.conftest import raw_server, serving
from tests.web import raw

KiB = 1024
#: the body size of the memory and step tests: 64 Ki chunks of 1 byte (about 390 KiB on the wire)
BODY = 64 * KiB


async def body_length(request: Request) -> ServerResponse:
    return ServerResponse(200, str(len(request.body)).encode(), content_type="text/plain")


def server(
    handler: Any = body_length, limits: Limits | None = None, pool: ConnectionPool | None = None
) -> AbstractAsyncContextManager[int]:
    return serving(handler, None, limits, pool)


def chunked(pieces: int, size: int = 1) -> bytes:
    """A chunked request body of ``pieces`` chunks of ``size`` bytes, terminated."""
    return (f"{size:x}\r\n".encode() + b"X" * size + b"\r\n") * pieces + b"0\r\n\r\n"


def chunked_post(pieces: int, size: int = 1) -> bytes:
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    return head + chunked(pieces, size)


async def read_all(stream: trio.abc.Stream) -> bytes:
    out = bytearray()
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


async def received_by_now(stream: trio.abc.Stream) -> bytes:
    """What the peer has sent so far (b"" if nothing): the read gives up once every task waits."""
    got: bytes | bytearray = b""

    async def read() -> None:
        nonlocal got
        got = await stream.receive_some(65536)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return bytes(got)


async def exchange(port: int, wire: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(wire)
        return await read_all(stream)


class DataEventsPerStep(trio.abc.Instrument):
    """The most h11 body events (``Data``) handled in one trio task step, by any task."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.total = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.now = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.most = max(self.most, self.now)


@pytest.fixture
async def data_events(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DataEventsPerStep]:
    steps = DataEventsPerStep()
    original = h11.Connection.next_event

    def counting(self: h11.Connection) -> Any:
        event = original(self)
        if isinstance(event, h11.Data):
            steps.now += 1
            steps.total += 1
        return event

    monkeypatch.setattr(h11.Connection, "next_event", counting)
    trio.lowlevel.add_instrument(steps)
    try:
        yield steps
    finally:
        trio.lowlevel.remove_instrument(steps)


@asynccontextmanager
async def traced() -> AsyncIterator[list[int]]:
    """The peak of traced memory during the block, above what was traced at its start."""
    result: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        yield result
        result.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()


# -- the server reading a request body -------------------------------------------------------------

NO_PIECE_CHECK = Limits(max_body_bytes=BODY, min_body_piece_bytes=0)


async def test_a_request_body_in_1_byte_chunks_costs_the_server_about_its_size() -> None:
    wire = chunked_post(BODY)
    async with server(limits=NO_PIECE_CHECK) as port, traced() as peak:
        reply = await exchange(port, wire)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\n%d" % BODY)
    # the body, its copy handed to the handler, and the 64 KiB read and h11 buffers (a list of
    # one bytes object per chunk: about 125 times the body)
    assert peak[0] < 8 * BODY, f"{peak[0] / KiB:.0f} KiB for a {BODY // KiB} KiB body"


async def test_the_server_lets_other_tasks_run_while_it_reads_a_body_in_1_byte_chunks(
    data_events: DataEventsPerStep,
) -> None:
    async with server(limits=NO_PIECE_CHECK) as port:
        reply = await exchange(port, chunked_post(BODY))
    assert reply.startswith(b"HTTP/1.1 200")
    assert data_events.total == BODY
    # one 64 KiB receive holds about 11,000 chunks: without a checkpoint all in one step
    assert data_events.most <= 256


async def test_a_request_body_in_too_many_tiny_pieces_is_refused() -> None:
    called = []

    async def handler(request: Request) -> ServerResponse:
        called.append(request)
        return await body_length(request)

    async with server(handler, Limits()) as port:
        reply = await exchange(port, chunked_post(2000))
        assert reply.startswith(b"HTTP/1.1 400")
        assert b"body sent in too many pieces (1025)" in reply
        assert not called
        # small pieces, but not absurdly small: accepted
        reply = await exchange(port, chunked_post(2000, 128))
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\n256000")


# -- slow request bodies and a crowded server ------------------------------------------------------


def post_head(length: int) -> bytes:
    return (
        b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % length
    )


async def test_slow_bodies_filling_every_connection_do_not_lock_out_a_new_client(
    mock_clock: trio.testing.MockClock,
) -> None:
    """6 addresses x 12 connections, each sending one byte of its body and then nothing: a new
    client gets in at once (no time passes), in the slot of the longest-waiting body."""
    pool = ConnectionPool(WEB_LIMITS)
    held: list[trio.SocketStream] = []
    async with server(limits=WEB_LIMITS, pool=pool) as port:
        for i in range(WEB_LIMITS.max_connections):
            stream = await raw.connect_from(f"127.0.0.{2 + i // 12}", port)
            await stream.send_all(post_head(1000) + b"A")
            held.append(stream)
            await trio.testing.wait_all_tasks_blocked()
        assert pool.open == WEB_LIMITS.max_connections and pool.dropped == 0
        status, _, body = await raw.request_from("127.0.0.50", port, "POST", "/", b"hello")
        assert (status, body) == (200, b"5")
        assert pool.dropped == 1
        for stream in held:
            await stream.aclose()


async def test_a_stalled_body_is_cut_after_the_pressure_timeout_while_crowded(
    mock_clock: trio.testing.MockClock,
) -> None:
    pool = ConnectionPool(WEB_LIMITS)
    held: list[trio.SocketStream] = []
    async with server(limits=WEB_LIMITS, pool=pool) as port:
        assert pool.pressure_at == 48
        for i in range(pool.pressure_at):
            stream = await raw.connect_from(f"127.0.0.{2 + i // 12}", port)
            await stream.send_all(post_head(1000) + b"A")
            held.append(stream)
            await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(WEB_LIMITS.pressure_timeout + 0.1)  # well before body_timeout (20 s)
        await trio.testing.wait_all_tasks_blocked()
        for stream in held:
            reply = await received_by_now(stream)
            assert reply.startswith(b"HTTP/1.1 408"), reply
            await stream.aclose()


@pytest.mark.parametrize(
    ("piece_every_s", "status"),
    [(0.4, b"200"), (1.0, b"408")],  # 40 KiB/s goes on, 16 KiB/s is cut
)
async def test_while_crowded_a_steady_upload_goes_on_and_a_slow_one_is_cut(
    mock_clock: trio.testing.MockClock, piece_every_s: float, status: bytes
) -> None:
    """One 192 KiB piece of an update bundle (web/updates.py MAX_CHUNK_BYTES) in 16 KiB writes,
    with 47 connections busy in a handler, so the server stays crowded the whole time."""
    release = trio.Event()

    async def handler(request: Request) -> ServerResponse:
        if request.path == "/busy":
            await release.wait()
        return await body_length(request)

    pool = ConnectionPool(WEB_LIMITS)
    busy: list[trio.SocketStream] = []
    size, piece = 192 * KiB, 16 * KiB
    async with server(handler, WEB_LIMITS, pool) as port:
        for i in range(pool.pressure_at - 1):
            stream = await raw.connect_from(f"127.0.0.{2 + i // 12}", port)
            await stream.send_all(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append(stream)
            await trio.testing.wait_all_tasks_blocked()
        upload = await raw.connect_from("127.0.0.50", port)
        await upload.send_all(post_head(size))
        await trio.testing.wait_all_tasks_blocked()
        assert pool.pressured()
        sent = 0
        try:
            while sent < size:
                mock_clock.jump(piece_every_s)
                await trio.testing.wait_all_tasks_blocked()
                await upload.send_all(b"U" * piece)
                sent += piece
                await trio.testing.wait_all_tasks_blocked()
        except trio.BrokenResourceError:
            pass  # cut: the 408 is waiting to be read
        reply = await read_all(upload)
        await upload.aclose()
        assert reply.startswith(b"HTTP/1.1 " + status), reply
        if status == b"200":
            assert sent == size and reply.endswith(b"\r\n\r\n%d" % size)
            assert mock_clock.current_time() > WEB_LIMITS.pressure_timeout * 2
        release.set()
        for stream in busy:
            await stream.aclose()


# -- a streamed response that fails --------------------------------------------------------------


async def test_a_streamed_response_body_that_raises_ends_only_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        raise ValueError("Out of range float values are not JSON compliant")

    async def handler(request: Request) -> ServerResponse:
        if request.path == "/events":
            return ServerResponse(200, events(), content_type="text/event-stream")
        return await body_length(request)

    async with server(handler) as port:
        reply = await exchange(port, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200") and b"data: first" in reply
        assert not reply.endswith(b"0\r\n\r\n")  # left unterminated: the client sees it broke
        again = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert again.startswith(b"HTTP/1.1 200")
    failures = [r for r in caplog.records if "response body failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


async def test_a_status_that_cannot_be_sent_as_json_is_skipped_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    status: dict[str, Any] = {"powerW": math.nan}
    events = Broadcaster(lambda: status)
    stream = events.open("127.0.0.2")
    assert await stream.__anext__() == b"retry: 3000\n\n"
    got: list[bytes] = []

    async def read_one() -> None:
        got.append(await stream.__anext__())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_one)  # publishes, cannot: nothing to send yet
        await trio.testing.wait_all_tasks_blocked()
        events.publish()
        events.publish()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and events.seq == 0
        status["powerW"] = 1200.0
        events.publish()
    assert got == [b'id: 1\nevent: status\ndata: {"powerW":1200.0}\n\n']
    await stream.aclose()  # type: ignore[attr-defined]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot be sent" in errors[0].getMessage()


# -- the client reading a response body ------------------------------------------------------------


def chunked_response(pieces: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(pieces)


@asynccontextmanager
async def hostile_server(wire: bytes) -> AsyncIterator[int]:
    async def answer(stream: trio.abc.Stream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(wire)
        await stream.receive_some(65536)  # until the client closes

    async with raw_server(answer, None) as port:
        yield port


def client(port: int) -> HttpClient:
    return HttpClient(f"http://127.0.0.1:{port}", None, allow_plain_http=True, retries=0)


async def test_a_response_body_in_1_byte_chunks_costs_the_client_about_its_size() -> None:
    async with (
        hostile_server(chunked_response(BODY)) as port,
        traced() as peak,
        client(port) as http,
    ):
        response = await http.get("/")
    assert response.body == b"X" * BODY
    assert peak[0] < 8 * BODY, f"{peak[0] / KiB:.0f} KiB for a {BODY // KiB} KiB body"


async def test_the_client_lets_other_tasks_run_while_it_reads_a_body_in_1_byte_chunks(
    data_events: DataEventsPerStep,
) -> None:
    async with hostile_server(chunked_response(BODY)) as port, client(port) as http:
        response = await http.get("/")
    assert len(response.body) == BODY and data_events.total == BODY
    assert data_events.most <= 256
