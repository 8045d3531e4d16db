"""The server against hostile and ordinary clients over TLS: it answers clearly and survives."""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import AsyncIterator

import h11
import pytest
import trio
import trio.testing

from dynexport.httpio import Handler, HttpClient, Limits, Request, ServerResponse, serve_http
from dynexport.httpio.server import ConnectionPool
from tests.httpio.conftest import open_tls, serving


async def hello(request: Request) -> ServerResponse:
    """Echoes what the server parsed, so tests can check the Request fields."""
    if request.path == "/boom":
        raise RuntimeError("secret internal detail")
    text = f"{request.method} {request.path} {sorted(request.query.items())} {len(request.body)}"
    return ServerResponse(200, text.encode(), content_type="text/plain")


async def read_all(stream: trio.abc.Stream) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return out
        if not data:
            return out
        out += data


async def good_request_works(port: int, client_ctx: ssl.SSLContext) -> None:
    async with HttpClient(f"https://127.0.0.1:{port}", client_ctx, retries=0) as client:
        response = await client.get("/still/here")
    assert response.status == 200
    assert response.body.startswith(b"GET /still/here")


async def test_parses_request_fields(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> ServerResponse:
        seen.append(request)
        return await hello(request)

    async with (
        serving(handler, server_ctx) as port,
        HttpClient(f"https://127.0.0.1:{port}", client_ctx) as client,
    ):
        response = await client.put("/a%20b/c?x=1&y=&x=2", b"12345")
    assert response.body == b"PUT /a b/c [('x', '2'), ('y', '')] 5"
    assert response.header("content-length") == str(len(response.body))
    (request,) = seen
    assert request.target == "/a%20b/c?x=1&y=&x=2"
    assert request.peer[0] == "127.0.0.1"
    assert request.client_cert is not None


async def test_header_too_large_gets_431_and_server_keeps_serving(
    autojump_clock: trio.testing.MockClock, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    async with serving(hello, server_ctx, Limits(max_header_bytes=4096)) as port:
        stream = await open_tls(port, client_ctx)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n")
        reply = await read_all(stream)
        assert reply.startswith(b"HTTP/1.1 431 "), reply
        assert b"exceed 4096 bytes" in reply
        # A head far beyond the bound, arriving in many TLS records (h11's incomplete-event check)
        stream = await open_tls(port, client_ctx)
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 200_000)
        assert (await read_all(stream)).startswith(b"HTTP/1.1 431 ")
        await good_request_works(port, client_ctx)


async def test_body_too_large_gets_413_declared_or_chunked(
    autojump_clock: trio.testing.MockClock, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    async with serving(hello, server_ctx, Limits(max_body_bytes=1000)) as port:
        stream = await open_tls(port, client_ctx)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        assert (await read_all(stream)).startswith(b"HTTP/1.1 413 ")

        stream = await open_tls(port, client_ctx)
        head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"200\r\n" + b"z" * 512 + b"\r\n"
        await stream.send_all(head + chunk * 3)
        assert (await read_all(stream)).startswith(b"HTTP/1.1 413 ")
        await good_request_works(port, client_ctx)


async def test_garbage_gets_400_and_server_keeps_serving(
    autojump_clock: trio.testing.MockClock, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    async with serving(hello, server_ctx) as port:
        stream = await open_tls(port, client_ctx)
        await stream.send_all(b"\x00\x01 HELLO THERE\r\n\r\n")
        reply = await read_all(stream)
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert b"malformed request" in reply

        stream = await open_tls(port, client_ctx)
        await stream.send_all(b"GET /%FF%FE HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await read_all(stream)
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert b"target" in reply
        await good_request_works(port, client_ctx)


async def test_slowloris_headers_get_408_and_closed(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    limits = Limits(header_timeout=10, idle_timeout=100)
    async with serving(hello, server_ctx, limits) as port:
        stream = await open_tls(port, client_ctx)
        closed_after = None
        start = trio.current_time()
        reply = b""
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100:
            try:
                await stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                closed_after = trio.current_time() - start
                break
            with trio.move_on_after(1):
                data = await stream.receive_some(65536)
                reply += data
                if not data:
                    closed_after = trio.current_time() - start
                    break
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert closed_after is not None
        assert closed_after < 100  # closed by the header deadline, long before the bytes ran out
        await good_request_works(port, client_ctx)


async def test_body_that_never_arrives_gets_408(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    async with serving(hello, server_ctx, Limits(body_timeout=5)) as port:
        stream = await open_tls(port, client_ctx)
        await stream.send_all(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        assert (await read_all(stream)).startswith(b"HTTP/1.1 408 ")
        await good_request_works(port, client_ctx)


async def test_busy_connections_are_kept_and_the_server_refuses_beyond_the_cap(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    release = trio.Event()

    async def slow(request: Request) -> ServerResponse:
        if request.path == "/busy":
            await release.wait()
        return await hello(request)

    async with serving(slow, server_ctx, Limits(max_connections=3)) as port:
        held = [await open_tls(port, client_ctx) for _ in range(3)]
        for stream in held:
            await stream.send_all(b"GET /busy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BrokenResourceError):
            await open_tls(port, client_ctx)
        release.set()
        for stream in held:  # the busy ones were never dropped: each gets its answer
            assert (await read_all(stream)).startswith(b"HTTP/1.1 200 ")
            await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        await good_request_works(port, client_ctx)


# -- crowding: many idle or slow clients (docs/web.md, "Threat model") --------------------------


@contextlib.asynccontextmanager
async def plain_server(
    handler: Handler, limits: Limits
) -> AsyncIterator[tuple[int, ConnectionPool]]:
    """serve_http over plain HTTP on 127.0.0.1 with a pool the test can look at."""
    pool = ConnectionPool(limits)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            functools.partial(serve_http, handler, limits=limits, pool=pool)
        )
        yield port, pool
        nursery.cancel_scope.cancel()


async def connect_from(address: str, port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:port whose source is ``address`` (127.0.0.2, ...): a
    distinct client on the loopback network."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((address, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


def is_closed_by_server(stream: trio.SocketStream) -> bool:
    """True when the server has closed ``stream`` (EOF or reset); never waits."""
    with socket.fromfd(stream.socket.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True


async def plain_get(port: int, path: str = "/x", address: str = "127.0.0.1") -> bytes:
    stream = await connect_from(address, port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        return await read_all(stream)


async def test_one_address_holding_idle_connections_cannot_lock_out_another_client(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dynexport.httpio.server")
    limits = Limits(max_connections=64, max_per_address=8)
    async with plain_server(hello, limits) as (port, pool):
        attacker = []
        for _ in range(70):
            attacker.append(await connect_from("127.0.0.2", port))
            await trio.testing.wait_all_tasks_blocked()
        assert pool.count("127.0.0.2") == 8
        assert (await plain_get(port)).startswith(b"HTTP/1.1 200 ")
        # the attacker's newest eight are held; the older ones were closed (no time passed)
        closed = [is_closed_by_server(s) for s in attacker]
        assert closed == [True] * 62 + [False] * 8
        for stream in attacker:
            await stream.aclose()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # one line for the episode, not one per connection
    assert "127.0.0.2" in warnings[0].getMessage()


async def test_when_many_addresses_fill_the_server_the_longest_idle_connection_makes_room(
    mock_clock: trio.testing.MockClock,
) -> None:
    limits = Limits(max_connections=16, max_per_address=4, pressure_connections=100)
    async with plain_server(hello, limits) as (port, pool):
        held = []
        for i in range(16):  # four addresses fill every slot, one connection at a time
            held.append(await connect_from(f"127.0.0.{2 + i % 4}", port))
            mock_clock.jump(0.1)
            await trio.testing.wait_all_tasks_blocked()
        assert pool.open == 16
        assert (await plain_get(port, address="127.0.0.9")).startswith(b"HTTP/1.1 200 ")
        assert is_closed_by_server(held[0])  # the one idle longest
        assert not any(is_closed_by_server(s) for s in held[1:])
        for stream in held:
            await stream.aclose()


async def test_near_the_cap_idle_and_slow_clients_get_a_short_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    limits = Limits(
        max_connections=8,
        max_per_address=8,
        pressure_connections=6,
        pressure_timeout=2.0,
        header_timeout=10.0,
    )
    async with plain_server(hello, limits) as (port, pool):
        few = [await connect_from("127.0.0.2", port) for _ in range(5)]
        await few[0].send_all(b"GET / HTTP/1.1\r\n")  # a slow one: its head is unfinished
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.5)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.open == 5  # below the pressure mark the usual timeouts hold
        sixth = await connect_from("127.0.0.3", port)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.open == 6
        mock_clock.jump(0.6)  # the first five have now waited 2.1 s
        await trio.testing.wait_all_tasks_blocked()
        assert all(is_closed_by_server(s) for s in few[1:])
        assert (await few[0].receive_some(100)).startswith(b"HTTP/1.1 408 ")
        assert not is_closed_by_server(sixth)
        mock_clock.jump(1.5)  # 2.1 s for the sixth, far less than its 10 s header timeout
        await trio.testing.wait_all_tasks_blocked()
        assert is_closed_by_server(sixth)
        for stream in [*few, sixth]:
            await stream.aclose()


async def test_slow_clients_from_many_connections_get_one_log_line_and_the_ui_stays_up(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """200 clients each sending a header line every 3 s (the reviewer's attack) for 90 s."""
    caplog.set_level(logging.INFO, logger="dynexport.httpio.server")
    limits = Limits(max_connections=64, max_per_address=8, episode_quiet_s=60)
    served = 0
    async with plain_server(hello, limits) as (port, pool):

        async def slow_client() -> None:
            try:
                stream = await connect_from("127.0.0.2", port)
            except OSError:
                return
            async with stream:
                try:
                    await stream.send_all(b"GET / HTTP/1.1\r\n")
                    for i in range(30):
                        await trio.sleep(3)
                        await stream.send_all(f"X-{i}: y\r\n".encode())
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(slow_client)
            for _ in range(59):
                await trio.sleep(1.5)
                if (await plain_get(port, address="127.0.0.3")).startswith(b"HTTP/1.1 200 "):
                    served += 1
        await trio.sleep(61)
        assert (await plain_get(port, address="127.0.0.3")).startswith(b"HTTP/1.1 200 ")
        assert pool.open == 0
    assert served == 59
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # the episode's start and its end
    assert "over after" in warnings[1]


async def test_handler_exception_gives_500_without_leaking_and_is_logged(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dynexport.httpio.server")
    async with (
        serving(hello, server_ctx) as port,
        HttpClient(f"https://127.0.0.1:{port}", client_ctx, retries=0) as client,
    ):
        response = await client.get("/boom")
        assert response.status == 500
        assert b"secret" not in response.body
        assert (await client.get("/after")).status == 200
        assert client.stats.connections == 1  # the connection survives a handler crash
    assert "secret internal detail" in caplog.text


async def test_head_gets_length_without_body_and_connection_close_is_honoured(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    async with serving(hello, server_ctx) as port:
        stream = await open_tls(port, client_ctx)
        await stream.send_all(
            b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reply = await read_all(stream)  # returns only because the server closed
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="HEAD", target="/x", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(reply)
    head = conn.next_event()
    assert isinstance(head, h11.Response)
    assert dict(head.headers)[b"content-length"] == str(len(b"HEAD /x [] 0")).encode()
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    conn.start_next_cycle()
    conn.send(h11.Request(method="GET", target="/x", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    get = conn.next_event()
    assert isinstance(get, h11.Response)
    assert (b"connection", b"close") in get.headers
    body = conn.next_event()
    assert isinstance(body, h11.Data)
    assert body.data == b"GET /x [] 0"


async def test_server_sent_events_arrive_one_by_one(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    produce_next = trio.Event()
    finished = trio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"data: first\n\n"
            await produce_next.wait()
            yield b"data: second\n\n"
        finally:
            finished.set()

    async def handler(request: Request) -> ServerResponse:
        return ServerResponse(
            200, events(), headers=[("Cache-Control", "no-cache")], content_type="text/event-stream"
        )

    async with serving(handler, server_ctx) as port:
        stream = await open_tls(port, client_ctx)
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(
            conn.send(h11.Request(method="GET", target="/api/events", headers=[("Host", "x")]))
            + conn.send(h11.EndOfMessage())
        )

        async def next_event() -> h11.Event:
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            assert isinstance(event, h11.Event)
            return event

        head = await next_event()
        assert isinstance(head, h11.Response)
        assert (b"transfer-encoding", b"chunked") in head.headers
        assert (b"content-type", b"text/event-stream") in head.headers
        first = await next_event()
        assert isinstance(first, h11.Data)
        assert first.data == b"data: first\n\n"
        assert not produce_next.is_set()  # received before the second event even exists
        produce_next.set()
        second = await next_event()
        assert isinstance(second, h11.Data)
        assert second.data == b"data: second\n\n"
        assert isinstance(await next_event(), h11.EndOfMessage)
        await finished.wait()
        await stream.aclose()
