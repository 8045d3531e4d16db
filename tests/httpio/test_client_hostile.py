"""The HTTP client against hostile responses and hrefs: only its own errors ever escape.

A utility server (or whatever answers in its place) controls every byte of a response: status,
``Retry-After``, ``Location``, framing. Found by fuzzing: ``Retry-After: ²`` passed
``str.isdigit`` and then failed ``float``, and a ``Location`` with a broken IPv6 host made
urllib raise; both escaped as bare ``ValueError`` and killed the utility link. The examples pin
those cases; the hypothesis tests check the property for any response and any href.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dynexport.httpio import (
    HttpClient,
    HttpError,
    Response,
    join_url,
    parse_retry_after,
    response_retry_after,
)
from dynexport.httpio.client import InvalidUrl, origin_of
from tests.httpio.conftest import raw_server


@asynccontextmanager
async def canned_server(raw: bytes) -> AsyncIterator[int]:
    """A plain-HTTP server on 127.0.0.1 answering every request with ``raw``, then closing."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
            await stream.send_all(raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = int(listeners[0].socket.getsockname()[1])
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        yield port
        nursery.cancel_scope.cancel()


def client_for(port: int, **options: object) -> HttpClient:
    """No waiting anywhere: Retry-After and backoff are capped at 0 s, so no test sleeps."""
    settings_: dict[str, object] = {
        "retries": 1,
        "retry_after_cap": 0.0,
        "backoff_max": 0.0,
        "timeout": 30.0,
        "allow_plain_http": True,
        "follow_redirects": True,
    }
    settings_.update(options)
    return HttpClient(f"http://127.0.0.1:{port}/dcap", None, **settings_)  # type: ignore[arg-type]


def response(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


# --- the cases fuzzing found -----------------------------------------------------------------


def test_retry_after_accepts_only_ascii_delay_seconds_or_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("²", now) is None  # isdigit() says yes, float() says no
    assert parse_retry_after("٣", now) is None  # an Arabic-Indic digit
    assert parse_retry_after("1e3", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after("5.5", now) is None
    assert parse_retry_after("9" * 11, now) is None  # bounded: not a delay, a denial of service
    assert parse_retry_after("9" * 5000, now) is None
    assert parse_retry_after(" 120 ", now) == 120
    assert parse_retry_after("Fri, 31 Dec 99999 23:59:59 GMT", now) is None
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30


def test_a_retry_after_date_is_measured_from_the_servers_date_not_a_clock_hours_behind() -> None:
    """After a power cut a Pi's clock restarts hours behind: a Retry-After date a minute ahead
    of the server's clock was hours ahead of it, and the link stayed silent for the cap."""
    server_now = 1_700_000_000.0
    behind = server_now - 3 * 3600
    fmt = email.utils.formatdate

    def throttled(*headers: tuple[str, str]) -> Response:
        return Response(
            503, (("retry-after", fmt(server_now + 60, usegmt=True)), *headers), b"", "/"
        )

    assert response_retry_after(throttled(("date", fmt(server_now, usegmt=True))), behind) == 60
    assert response_retry_after(throttled(), behind) == 3 * 3600 + 60  # no Date: the local clock
    assert response_retry_after(throttled(("date", "yesterday")), behind) == 3 * 3600 + 60
    delta = Response(429, (("retry-after", "30"), ("date", fmt(0, usegmt=True))), b"", "/")
    assert response_retry_after(delta, behind) == 30  # seconds need no clock at all


def test_unparseable_or_unsendable_hrefs_raise_the_clients_own_error() -> None:
    base = "https://10.0.0.5:8443/dcap"
    for href in ("http://[::1/rsp", "https://host:99999/x", "https://host:port/x", "/a b", "/\x00"):
        with pytest.raises(InvalidUrl):
            join_url(base, href)
    with pytest.raises(InvalidUrl):
        origin_of("ftp://10.0.0.5/x")
    assert issubclass(InvalidUrl, HttpError)


async def test_a_503_with_retry_after_superscript_two_is_returned_not_raised() -> None:
    raw = response(503, [("Retry-After", "²")])
    async with canned_server(raw) as port, client_for(port, wait_retry_after=False) as client:
        answer = await client.get("/tm")
    assert answer.status == 503


async def test_a_redirect_to_a_broken_ipv6_host_is_returned_not_followed() -> None:
    raw = response(302, [("Location", "http://[::1/rsp")])
    async with canned_server(raw) as port, client_for(port) as client:
        answer = await client.get("/tm")
    assert (answer.status, answer.header("location")) == (302, "http://[::1/rsp")


async def test_a_request_to_a_broken_ipv6_url_is_the_clients_own_error() -> None:
    client = client_for(9)
    with pytest.raises(InvalidUrl):
        await client.post("http://[::1/rsp", b"<x/>")
    with pytest.raises(InvalidUrl, match="not on this client's origin"):
        await client.get("http://127.0.0.2:9/edev")


# --- the property ----------------------------------------------------------------------------

LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
HEADER_VALUES = st.one_of(
    st.text(LATIN1, max_size=40),
    st.sampled_from(["²", "120", "0", "-1", "1e9", "http://[::1/rsp", "//evil.example/x", "/x y"]),
    st.sampled_from(["https://127.0.0.1:99999/", "http://127.0.0.1:abc/", "Fri, 31 Dec 9999"]),
)
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["Retry-After", "Location", "Content-Length", "Content-Type", "X-A"]),
        HEADER_VALUES,
    ),
    max_size=4,
)
RESPONSES = st.one_of(
    st.builds(
        response,
        st.sampled_from([200, 201, 204, 301, 302, 303, 307, 308, 404, 409, 429, 500, 503]),
        HEADERS,
        st.binary(max_size=32),
    ),
    st.binary(max_size=200),  # anything at all, framing included
    st.builds(
        lambda status, rest: f"HTTP/1.1 {status}\r\n".encode() + rest,
        st.integers(0, 1200),
        st.binary(max_size=80),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=RESPONSES, wait=st.booleans(), method=st.sampled_from(["GET", "POST", "PUT"]))
@example(raw=response(503, [("Retry-After", "²")]), wait=True, method="GET")
@example(raw=response(429, [("Retry-After", "²")]), wait=False, method="POST")
@example(raw=response(307, [("Location", "http://[::1/rsp")]), wait=True, method="GET")
def test_no_response_makes_anything_but_an_http_error_escape(
    raw: bytes, wait: bool, method: str
) -> None:
    async def exchange() -> None:
        async with canned_server(raw) as port, client_for(port, wait_retry_after=wait) as client:
            try:
                answer = await client.request(method, "/edev", body=b"<x/>")
            except HttpError:
                return
            answer.header("location")
            assert 100 <= answer.status <= 999

    trio.run(exchange)


@settings(max_examples=200, deadline=None)
@given(href=st.one_of(st.text(max_size=40), st.text(LATIN1, max_size=40)))
@example(href="http://[::1/rsp")
@example(href="//[::1")
@example(href="https://127.0.0.1:99999/x")
def test_requesting_any_href_gives_a_response_or_an_http_error(href: str) -> None:
    """Resolution and the origin check raise only `InvalidUrl`; what passes them is sendable
    (here to a closed port on 127.0.0.1, so a connection error)."""
    client = client_for(9, retries=0)
    try:
        url = join_url(client.base_url, href)
        origin_of(url)
    except InvalidUrl:
        pass
    else:
        assert url.isascii() and " " not in url

    async def request() -> None:
        with suppress(HttpError):
            await client.get(href)

    trio.run(request)


async def _answer_each_with_its_path(stream: trio.abc.Stream, extra: bytes) -> None:
    """Answers each request with its own path; the first answer carries ``extra`` after its
    declared body, in the same write (a buggy server, or a smuggled response)."""
    buf = b""
    first = True
    while True:
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        path = head.split(b" ")[1]
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)
        if first:
            reply, first = reply + extra, False
        await stream.send_all(reply)


@pytest.mark.parametrize(
    "extra",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE", b"garbage-beyond-content-length"],
    ids=["a-second-response", "a-longer-body"],
)
async def test_bytes_after_a_response_are_never_read_as_the_next_requests_answer(
    extra: bytes,
) -> None:
    """Found by review: h11 kept them in its buffer, the connection was reused, and GET /b got
    the smuggled response (or failed on the garbage)."""
    async with (
        raw_server(lambda s: _answer_each_with_its_path(s, extra), None) as port,
        HttpClient(f"http://127.0.0.1:{port}", None, allow_plain_http=True, retries=0) as client,
    ):
        assert (await client.get("/a")).body == b"/a"
        assert (await client.get("/b")).body == b"/b"
        assert (await client.get("/c")).body == b"/c"
