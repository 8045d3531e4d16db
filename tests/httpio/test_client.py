"""The keep-alive client against real TLS peers: reuse, reconnects, retries, bounds, redirects."""

from __future__ import annotations

import email.utils
import ssl
from collections.abc import AsyncIterator

import h11
import pytest
import trio
import trio.testing

from dynexport.httpio import (
    HttpClient,
    HttpConnectionError,
    HttpStatusError,
    HttpTimeout,
    Limits,
    Request,
    ResponseTooLarge,
    ServerResponse,
    join_url,
    parse_retry_after,
)
from tests.httpio.conftest import raw_server, serving


class Recorder:
    """A handler that records each request's arrival (trio time) and peer, answering from a script.

    ``script`` is a list of (status, headers) used in order; when it runs out, 200 is answered.
    """

    def __init__(self, script: list[tuple[int, list[tuple[str, str]]]] | None = None) -> None:
        self.script = list(script or [])
        self.times: list[float] = []
        self.peers: list[tuple[str, int]] = []
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> ServerResponse:
        self.times.append(trio.current_time())
        self.peers.append(request.peer)
        self.requests.append(request)
        if self.script:
            status, headers = self.script.pop(0)
            return ServerResponse(status, b"scripted", headers=headers)
        return ServerResponse(
            200, request.method.encode() + b" " + request.target.encode() + b" " + request.body
        )

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def url(port: int) -> str:
    return f"https://127.0.0.1:{port}"


async def test_keep_alive_reuses_one_connection_for_many_requests(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    recorder = Recorder()
    async with serving(recorder, server_ctx) as port, HttpClient(url(port), client_ctx) as client:
        for i in range(10):
            response = await client.put(f"/r/{i}", b"<x/>")
            assert response.body == f"PUT /r/{i} <x/>".encode()
    assert len(set(recorder.peers)) == 1
    assert client.stats.connections == 1
    assert client.stats.requests == 10
    assert client.stats.bytes_sent > 0
    assert client.stats.wire_bytes_sent > client.stats.bytes_sent  # TLS records add overhead
    assert client.stats.wire_bytes_received > client.stats.bytes_received


async def test_sends_sep_xml_headers_by_default(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    recorder = Recorder()
    async with (
        serving(recorder, server_ctx) as port,
        HttpClient(url(port), client_ctx, user_agent="dynexport-test") as client,
    ):
        await client.post("/edev", b"<EndDevice/>")
        await client.get("/dcap", headers={"Accept": "text/plain"})
    post, get = recorder.requests
    assert post.header("content-type") == "application/sep+xml"
    assert post.header("accept") == "application/sep+xml"
    assert post.header("content-length") == "12"
    assert post.header("user-agent") == "dynexport-test"
    assert post.header("host") == f"127.0.0.1:{port}"
    assert get.header("accept") == "text/plain"
    assert get.header("content-type") is None


async def test_reconnects_after_server_closed_idle_connection(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    recorder = Recorder()
    async with (
        serving(recorder, server_ctx, Limits(idle_timeout=5)) as port,
        HttpClient(url(port), client_ctx, retries=0) as client,
    ):
        assert (await client.get("/a")).status == 200
        await trio.sleep(10)  # the server drops the idle connection meanwhile
        assert (await client.get("/b")).status == 200
        await trio.sleep(10)
        assert (await client.post("/c", b"x")).status == 200  # not retried: checked first
    assert len(set(recorder.peers)) == 3
    assert client.stats.connections == 3
    assert [r.path for r in recorder.requests] == ["/a", "/b", "/c"]


async def close_on_second_request(stream: trio.abc.Stream, seen: list[bytes]) -> None:
    """Answers the first request on a connection, then reads the next one and hangs up."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            seen.append(event.method + b" " + event.target)
            if len(seen) % 2 == 0:
                return  # hang up with the request unanswered
        if isinstance(event, h11.EndOfMessage):
            await stream.send_all(
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
                + conn.send(h11.Data(data=b"ok"))
                + conn.send(h11.EndOfMessage())
            )
            conn.start_next_cycle()


async def test_idempotent_request_retried_once_when_reused_connection_dies_unanswered(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    seen: list[bytes] = []
    async with (
        raw_server(lambda s: close_on_second_request(s, seen), server_ctx) as port,
        HttpClient(url(port), client_ctx, retries=0) as client,
    ):
        assert (await client.get("/one")).body == b"ok"
        assert (await client.get("/two")).body == b"ok"
    assert seen == [b"GET /one", b"GET /two", b"GET /two"]
    assert client.stats.connections == 2


async def test_post_is_not_resent_when_connection_dies_after_sending(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    seen: list[bytes] = []
    async with (
        raw_server(lambda s: close_on_second_request(s, seen), server_ctx) as port,
        HttpClient(url(port), client_ctx, retries=3) as client,
    ):
        assert (await client.get("/one")).body == b"ok"
        with pytest.raises(HttpConnectionError):
            await client.post("/rsp", b"<Response/>")
    assert seen == [b"GET /one", b"POST /rsp"]


async def close_mid_response_first(
    stream: trio.abc.Stream, seen: list[bytes], *, clean: bool
) -> None:
    """The first connection ever gets half a response, then EOF; later ones a whole one."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            seen.append(event.method + b" " + event.target)
        if isinstance(event, h11.EndOfMessage):
            head = h11.Response(status_code=200, headers=[("Content-Length", "10")])
            if len(seen) == 1:
                await stream.send_all(conn.send(head) + conn.send(h11.Data(data=b"half")))
                if clean:
                    await stream.aclose()  # TLS close_notify, then EOF
                return  # else: the connection is dropped without close_notify
            await stream.send_all(
                conn.send(head)
                + conn.send(h11.Data(data=b"0123456789"))
                + conn.send(h11.EndOfMessage())
            )
            conn.start_next_cycle()


@pytest.mark.parametrize("clean", [True, False])
async def test_eof_mid_response_is_a_connection_error_and_a_get_is_retried(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    clean: bool,
) -> None:
    seen: list[bytes] = []
    async with (
        raw_server(lambda s: close_mid_response_first(s, seen, clean=clean), server_ctx) as port,
        HttpClient(url(port), client_ctx, retries=1) as client,
    ):
        response = await client.get("/derp/1/derc")
        assert response.body == b"0123456789"
    assert seen == [b"GET /derp/1/derc", b"GET /derp/1/derc"]
    assert client.stats.connections == 2


async def test_eof_mid_response_without_retries_left_is_a_connection_error(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    seen: list[bytes] = []
    async with (
        raw_server(lambda s: close_mid_response_first(s, seen, clean=True), server_ctx) as port,
        HttpClient(url(port), client_ctx, retries=0) as client,
    ):
        with pytest.raises(HttpConnectionError, match="before its response was complete"):
            await client.get("/derp/1/derc")
    assert seen == [b"GET /derp/1/derc"]


async def test_eof_mid_response_to_a_post_is_a_connection_error_not_resent(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    seen: list[bytes] = []
    async with (
        raw_server(lambda s: close_mid_response_first(s, seen, clean=True), server_ctx) as port,
        HttpClient(url(port), client_ctx, retries=3) as client,
    ):
        with pytest.raises(HttpConnectionError, match="before its response was complete"):
            await client.post("/rsp", b"<Response/>")
    assert seen == [b"POST /rsp"]


async def test_429_with_retry_after_seconds_waits_that_long(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    recorder = Recorder([(429, [("Retry-After", "120")])])
    limits = Limits(idle_timeout=1000)
    async with (
        serving(recorder, server_ctx, limits) as port,
        HttpClient(url(port), client_ctx, backoff_base=1) as client,
    ):
        response = await client.post("/mup", b"<MirrorUsagePoint/>")
    assert response.status == 200
    assert len(recorder.times) == 2
    assert recorder.gaps()[0] == pytest.approx(120, abs=0.5)


async def test_503_with_retry_after_date_waits_until_then_capped(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    wall = 1_700_000_000.0
    soon = email.utils.formatdate(wall + 30, usegmt=True)
    late = email.utils.formatdate(wall + 100_000, usegmt=True)
    recorder = Recorder([(503, [("Retry-After", soon)]), (503, [("Retry-After", late)])])
    async with (
        serving(recorder, server_ctx, Limits(idle_timeout=10_000)) as port,
        HttpClient(url(port), client_ctx, retry_after_cap=600, wall_clock=lambda: wall) as client,
    ):
        response = await client.get("/derp")
    assert response.status == 200
    gaps = recorder.gaps()
    assert gaps[0] == pytest.approx(30, abs=0.5)
    assert gaps[1] == pytest.approx(600, abs=0.5)


@pytest.mark.parametrize(("jitter", "expected"), [(1.0, [2, 4, 8]), (0.0, [1, 2, 4])])
async def test_503_without_retry_after_backs_off_exponentially_with_jitter(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    jitter: float,
    expected: list[float],
) -> None:
    recorder = Recorder([(503, []), (503, []), (503, [])])
    async with (
        serving(recorder, server_ctx, Limits(idle_timeout=1000)) as port,
        HttpClient(
            url(port), client_ctx, backoff_base=2, retries=5, jitter=lambda: jitter
        ) as client,
    ):
        response = await client.get("/tm")
    assert response.status == 200
    assert recorder.gaps() == pytest.approx(expected, abs=0.5)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_429_without_retry_after_is_returned_for_the_caller_to_back_off(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    method: str,
) -> None:
    # the caller knows the resource's pollRate; short internal retries would hammer the server
    recorder = Recorder([(429, [])])
    async with (
        serving(recorder, server_ctx, Limits(idle_timeout=1000)) as port,
        HttpClient(url(port), client_ctx, retries=5) as client,
    ):
        response = await client.request(method, "/derp/1/derc", body=b"x")
    assert response.status == 429
    assert len(recorder.times) == 1


async def test_retry_after_is_returned_not_waited_when_the_caller_schedules_it(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    recorder = Recorder([(429, [("Retry-After", "120")]), (503, [("Retry-After", "30")])])
    async with (
        serving(recorder, server_ctx, Limits(idle_timeout=1000)) as port,
        HttpClient(url(port), client_ctx, retries=5, wait_retry_after=False) as client,
    ):
        started = trio.current_time()
        first = await client.get("/derp/1/derc")
        second = await client.post("/rsp", b"<Response/>")
        assert trio.current_time() - started < 1
    assert (first.status, first.header("retry-after")) == (429, "120")
    assert (second.status, second.header("retry-after")) == (503, "30")
    assert len(recorder.times) == 2


async def test_5xx_retries_are_bounded_and_the_last_response_returned(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    recorder = Recorder([(500, [])] * 10)
    async with (
        serving(recorder, server_ctx, Limits(idle_timeout=1000)) as port,
        HttpClient(url(port), client_ctx, retries=2) as client,
    ):
        response = await client.get("/dcap")
        assert response.status == 500
        with pytest.raises(HttpStatusError) as info:
            response.raise_for_status()
        assert info.value.status == 500
        assert info.value.excerpt == "scripted"
        assert len(recorder.requests) == 3
        post = await client.post("/rsps", b"<x/>")
    assert post.status == 500
    assert len(recorder.requests) == 4  # a non-idempotent POST is not retried on 500


async def test_response_over_the_body_bound_is_refused_without_reading_it_all(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    async def handler(request: Request) -> ServerResponse:
        if request.path == "/declared":
            return ServerResponse(200, b"y" * 200_000)
        if request.path == "/small":
            return ServerResponse(200, b"ok")
        return ServerResponse(200, endless())

    bound = 100_000
    async with (
        serving(handler, server_ctx) as port,
        HttpClient(url(port), client_ctx, max_body=bound) as client,
    ):
        with pytest.raises(ResponseTooLarge, match="100000-byte bound"):
            await client.get("/chunked")
        assert client.stats.bytes_received < bound + 2 * 65536
        before = client.stats.bytes_received
        with pytest.raises(ResponseTooLarge, match="200000 bytes"):
            await client.get("/declared")
        assert client.stats.bytes_received - before < 65536 + 1024
        assert (await client.get("/small")).body == b"ok"  # the client is still usable


async def test_server_sending_headers_slowly_times_out(
    autojump_clock: trio.testing.MockClock,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
) -> None:
    async def slow(stream: trio.abc.Stream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")
        await trio.sleep(1000)

    async with (
        raw_server(slow, server_ctx) as port,
        HttpClient(url(port), client_ctx, timeout=5, retries=0) as client,
    ):
        with pytest.raises(HttpTimeout, match="within 5"):
            await client.get("/dcap")


async def test_redirects_are_returned_unless_asked_and_only_same_origin_followed(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    async def handler(request: Request) -> ServerResponse:
        if request.path == "/old":
            return ServerResponse(302, headers=[("Location", "/new")])
        if request.path == "/away":
            return ServerResponse(307, headers=[("Location", "https://evil.example/new")])
        return ServerResponse(200, request.method.encode() + b" " + request.path.encode())

    async with serving(handler, server_ctx) as port, HttpClient(url(port), client_ctx) as client:
        plain = await client.get("/old")
        assert plain.status == 302
        assert plain.header("location") == "/new"
        followed = await client.get("/old", follow_redirects=True)
        assert (followed.status, followed.body) == (200, b"GET /new")
        assert followed.url == f"{url(port)}/new"
        away = await client.get("/away", follow_redirects=True)
        assert away.status == 307


async def test_requests_to_another_origin_are_refused(client_ctx: ssl.SSLContext) -> None:
    client = HttpClient("https://127.0.0.1:8443/dcap", client_ctx)
    with pytest.raises(ValueError, match="not on this client's origin"):
        await client.get("https://127.0.0.2:8443/edev")


def test_join_url_keeps_origin_for_absolute_paths() -> None:
    base = "https://10.0.0.5:8443/sep2/dcap"
    assert join_url(base, "/edev/3") == "https://10.0.0.5:8443/edev/3"
    assert join_url(base, "tm") == "https://10.0.0.5:8443/sep2/tm"
    assert join_url(base, "https://other:1/x") == "https://other:1/x"


def test_parse_retry_after_accepts_seconds_and_dates_and_ignores_junk() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("42", now) == 42
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == 90
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
