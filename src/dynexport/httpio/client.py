"""A keep-alive HTTP/1.1 client: h11 does the protocol, trio does the I/O.

Why not a library: see docs/decisions.md (asks is unmaintained and closes every connection; a new
TLS handshake per request costs ten times a kept-alive request). One connection to one origin is
kept open and reused; requests on one client are serialised. Every wait has a trio deadline, and
anything interrupted half-way (timeout, cancellation, error) discards the connection, because h11's
state would no longer match the wire.

Retries follow what is safe: connection failures (including a connection closed mid-response)
and 5xx are retried only for idempotent methods; 429 and 503 say the server did not act on the
request, so they are retried for every method, waiting as long as ``Retry-After`` asks (capped) or,
for a 503 without it, backing off exponentially with jitter. A 429 without ``Retry-After`` is
returned at once: the caller knows how often the resource may be asked (its pollRate) and backs off
itself. With ``wait_retry_after=False`` a 429/503 with ``Retry-After`` is returned at once too, so
the caller can schedule the retry instead of being held inside the request.
"""

from __future__ import annotations

import logging
import random
import re
import select
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import urljoin, urlsplit

import h11
import trio

from dynexport.httpio.names import lookup_host

log = logging.getLogger("dynexport.httpio")

SEP_XML = "application/sep+xml"
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MiB = 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_EXCERPT = 200
#: the body loop lets other tasks run after this many h11 events: one receive of a response in
#: 1-byte chunks is about ten thousand of them
_CHECKPOINT_EVERY = 256


class HttpError(Exception):
    """Base of every error this client raises."""


class HttpTimeout(HttpError):
    """Connecting or a request took longer than its timeout."""


class HttpConnectionError(HttpError):
    """The TCP connection could not be made or broke."""


class TlsError(HttpConnectionError):
    """The TLS handshake failed; ``reason`` says why in words an installer can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HttpProtocolError(HttpError):
    """The server's bytes were not valid HTTP/1.1."""


class ResponseTooLarge(HttpError):
    """The response body exceeds the configured bound; it was not read further."""


class InvalidUrl(HttpError, ValueError):
    """A URL that cannot be parsed, is not http(s), cannot be sent as a request target, or is
    on another origin than the client's. A server's href or ``Location`` is untrusted input:
    resolving one raises this (never a bare ``ValueError`` from urllib), so callers that handle
    `HttpError` handle it too. Also a ``ValueError``, for callers configuring a client."""


class HttpStatusError(HttpError):
    """A response with an error status, raised by :meth:`Response.raise_for_status`."""

    def __init__(self, status: int, url: str, body: bytes) -> None:
        self.status = status
        self.url = url
        self.excerpt = body[:_EXCERPT].decode("utf-8", "replace")
        super().__init__(f"HTTP {status} from {url}: {self.excerpt!r}")


@dataclass(frozen=True)
class Response:
    """A complete response; header names are lowercase."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def raise_for_status(self) -> Self:
        """Returns self for 1xx-3xx; raises :class:`HttpStatusError` for 4xx and 5xx."""
        if self.status >= 400:
            raise HttpStatusError(self.status, self.url, self.body)
        return self


@dataclass
class HttpStats:
    """Counters for benchmarks (e.g. bytes sent per hour).

    ``bytes_*`` count HTTP bytes (head and body); ``wire_bytes_*`` count what crossed the TCP
    connection, TLS records included.
    """

    requests: int = 0
    connections: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0


class _CountingStream(trio.abc.Stream):
    """Counts the bytes a TLS stream exchanges with its TCP socket."""

    def __init__(self, inner: trio.SocketStream, stats: HttpStats) -> None:
        self.inner = inner
        self._stats = stats

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self._stats.wire_bytes_sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self._stats.wire_bytes_received += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")
"""RFC 9110 delay-seconds: ASCII digits only (``str.isdigit`` also accepts ``²`` and other
Unicode digits that ``int`` refuses), and short enough to be a number of seconds, not a DoS."""
_TARGET_SAFE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
"""What RFC 3986 allows in a URL (no spaces, controls or non-ASCII: h11 refuses them)."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None.

    Strict, because it is untrusted input: delta-seconds are 1 to 10 ASCII digits; anything else
    must parse as an HTTP-date with a time zone; everything else (``²``, ``1e9``, ``-5``, a date
    in year 99999) is ignored (None: the caller's default applies). A past date gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(int(value))
    when = parse_http_date(value)
    return None if when is None else max(0.0, when - now)


def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP-date with a time zone, or None (not one, or out of range)."""
    if value is None:
        return None
    import email.utils  # only for an HTTP-date here: 0.3 MiB the service rarely needs

    try:
        when = email.utils.parsedate_to_datetime(value.strip())
        if when.tzinfo is None:
            return None
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def response_retry_after(response: Response, local_now: float) -> float | None:
    """`parse_retry_after` of ``response``: an HTTP-date is measured from the response's own
    ``Date`` (the server's clock, which set it) when it has a valid one, else from
    ``local_now``. A Pi's clock restarts hours behind after a power cut: measured from it, a
    Retry-After one minute ahead was hours ahead, and the link stayed silent for the cap."""
    server_now = parse_http_date(response.header("date"))
    return parse_retry_after(
        response.header("retry-after"), local_now if server_now is None else server_now
    )


def _declared_over(declared: str, bound: int) -> bool:
    """Whether a Content-Length (h11 has checked it is digits) exceeds ``bound``; compared by
    length first, so a 5000-digit value never reaches ``int`` (which refuses over 4300)."""
    digits = declared.strip()
    if not re.fullmatch(r"[0-9]+", digits):
        return False  # h11 refuses it itself
    digits = digits.lstrip("0") or "0"
    return len(digits) > 18 or int(digits) > bound


def join_url(base: str, href: str) -> str:
    """Resolves an href against ``base``: an absolute path keeps base's scheme, host and port.

    Raises `InvalidUrl` for what urllib cannot parse (``http://[::1/x``, a bad port) and for a
    result that cannot be sent as a request (spaces, control or non-ASCII characters), so an
    href from a server never raises anything else.
    """
    try:
        url = urljoin(base, href.strip())
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number in 0..65535 raises ValueError
    except ValueError as exc:
        raise InvalidUrl(f"unusable URL {href[:200]!r}: {exc}") from None
    if not _TARGET_SAFE.fullmatch(url):
        raise InvalidUrl(f"unusable URL {href[:200]!r}: characters a URL may not contain")
    return url


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an absolute http(s) URL; `InvalidUrl` for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidUrl(f"unusable URL {url[:200]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidUrl(f"not an http(s) URL: {url[:200]!r}")
    if not parts.hostname:
        raise InvalidUrl(f"URL has no host: {url[:200]!r}")
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def _describe_tls_failure(exc: BaseException, host: str) -> str:
    """Turns an OpenSSL error into a sentence naming what is wrong."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in (2, 19, 20, 21):
            return f"server certificate not signed by the configured SERCA ({exc.verify_message})"
        if code == 62:
            return (
                f"server certificate does not name host {host!r} "
                "(set the hostname check to chain-only if the utility addresses it by IP)"
            )
        if code == 10:
            return "server certificate expired"
        if code == 9:
            return "server certificate not yet valid (is the clock right?)"
        return f"server certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if "NO_SHARED_CIPHER" in reason or "HANDSHAKE_FAILURE" in reason:
            return f"TLS handshake failed: no common cipher suite or TLS version ({exc.reason})"
        if "UNSUPPORTED_PROTOCOL" in reason or "VERSION" in reason:
            return f"TLS handshake failed: TLS version not accepted ({exc.reason})"
        if any(k in reason for k in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED")):
            return f"server rejected our client certificate ({exc.reason})"
        if "EOF" in reason:
            return (
                "server closed the connection during the TLS handshake without saying why "
                "(it may refuse our client certificate or cipher suite)"
            )
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS handshake failed: {exc}"


class _Conn:
    """One open connection and its h11 state."""

    def __init__(self, stream: trio.abc.Stream, sock: trio.SocketStream) -> None:
        self.stream = stream
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT)
        self.received = 0  # bytes received in the current exchange
        self.eof = False  # the server closed the connection during the current exchange

    def peer_went_away(self) -> bool:
        """True when an idle connection has pending bytes or EOF: the server closed it."""
        try:
            readable, _, _ = select.select([self.sock.socket.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


class _Retry(Exception):
    """Internal: the connection failed before any response byte; safe to try again."""

    def __init__(self, cause: HttpError) -> None:
        self.cause = cause


class HttpClient:
    """A keep-alive HTTP/1.1 client for one origin (``base_url``)."""

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext | None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        retry_after_cap: float = 300.0,
        max_body: int = MiB,
        user_agent: str = "dynexport",
        content_type: str = SEP_XML,
        follow_redirects: bool = False,
        allow_plain_http: bool = False,
        server_hostname: str | None = None,
        jitter: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
        wait_retry_after: bool = True,
    ) -> None:
        """``ssl_context`` is required for https. Plain http needs ``allow_plain_http=True``
        (tests only: the utility link is always TLS). ``jitter`` returns a value in [0, 1]
        scaling the random half of each backoff; ``wall_clock`` turns Retry-After dates into
        delays. ``wait_retry_after=False``: a 429/503 with ``Retry-After`` is returned instead
        of waited out (the caller schedules the retry).
        """
        scheme, host, port = origin_of(base_url)
        if scheme == "https" and ssl_context is None:
            raise ValueError("https needs an ssl_context")
        if scheme == "http" and not allow_plain_http:
            raise ValueError("plain http refused: pass allow_plain_http=True (tests only)")
        self.base_url = base_url
        self._scheme, self._host, self._port = scheme, host, port
        self._ssl = ssl_context if scheme == "https" else None
        self._server_hostname = server_hostname or host
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_cap = retry_after_cap
        self.max_body = max_body
        self.user_agent = user_agent
        self.content_type = content_type
        self.follow_redirects = follow_redirects
        self._jitter = jitter
        self._wall_clock = wall_clock
        self.wait_retry_after = wait_retry_after
        self.stats = HttpStats()
        self._conn: _Conn | None = None
        self._lock = trio.Lock()
        default_port = 443 if scheme == "https" else 80
        bracketed = f"[{host}]" if ":" in host else host
        self._host_header = bracketed if port == default_port else f"{bracketed}:{port}"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the kept-alive connection, if any."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def url_for(self, path_or_url: str) -> str:
        """The absolute URL for an href or path, resolved against ``base_url``."""
        return join_url(self.base_url, path_or_url)

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half scaled by ``jitter()``."""
        full = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return full / 2 + full / 2 * min(1.0, max(0.0, self._jitter()))

    async def get(
        self,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool | None = None,
    ) -> Response:
        """GET ``path``."""
        return await self.request("GET", path, headers=headers, follow_redirects=follow_redirects)

    async def post(
        self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None
    ) -> Response:
        """POST ``body`` to ``path`` (not retried after it may have reached the server)."""
        return await self.request("POST", path, body=body, headers=headers)

    async def put(
        self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None
    ) -> Response:
        """PUT ``body`` to ``path``."""
        return await self.request("PUT", path, body=body, headers=headers)

    async def delete(self, path: str, *, headers: Mapping[str, str] | None = None) -> Response:
        """DELETE ``path``."""
        return await self.request("DELETE", path, headers=headers)

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool | None = None,
    ) -> Response:
        """Sends one request (with retries as the class docstring says) and returns the response.

        Any status is returned, 3xx included; redirects are followed only when asked, and then
        only to the same scheme, host and port. Raises :class:`HttpError` subclasses.
        """
        method = method.upper()
        follow = self.follow_redirects if follow_redirects is None else follow_redirects
        url = self._same_origin(path_or_url)
        for _ in range(_MAX_REDIRECTS + 1):
            response = await self._with_retries(method, url, body, headers)
            location = response.header("location")
            if not (follow and response.status in _REDIRECTS and location):
                return response
            try:
                target = join_url(url, location)
                if origin_of(target) != (self._scheme, self._host, self._port):
                    return response
            except InvalidUrl:
                return response  # not followed: the caller sees the 3xx
            if response.status in (301, 302, 303) and method != "HEAD":
                method, body = "GET", None
            url = target
        return response

    def _same_origin(self, path_or_url: str) -> str:
        url = self.url_for(path_or_url)
        if origin_of(url) != (self._scheme, self._host, self._port):
            raise InvalidUrl(f"{url} is not on this client's origin {self.base_url}")
        return url

    async def _with_retries(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        idempotent = method in IDEMPOTENT
        attempt = 0
        while True:
            try:
                response = await self._once(method, url, body, headers)
            except (HttpTimeout, HttpConnectionError) as exc:
                if isinstance(exc, TlsError) or not idempotent or attempt >= self.retries:
                    raise
                delay = self.backoff_delay(attempt)
                log.info("%s %s failed (%s); retrying in %.1f s", method, url, exc, delay)
            else:
                status = response.status
                throttled = status in (429, 503)
                if not (throttled or (status >= 500 and idempotent)) or attempt >= self.retries:
                    return response
                asked = None
                if throttled:
                    asked = response_retry_after(response, self._wall_clock())
                    if asked is None and status == 429:
                        return response  # no Retry-After: the caller backs off at its own rate
                    if asked is not None and not self.wait_retry_after:
                        return response  # the caller schedules the retry
                if asked is not None:
                    delay = min(asked, self.retry_after_cap)
                else:
                    delay = self.backoff_delay(attempt)
                log.info("%s %s: HTTP %d; retrying in %.1f s", method, url, status, delay)
            attempt += 1
            await trio.sleep(delay)

    async def _once(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        """One exchange, transparently reconnecting once if a reused connection had died."""
        async with self._lock:
            try:
                return await self._exchange(method, url, body, headers)
            except _Retry as stale:
                # Nothing was received on a reused connection: the server had closed it.
                if method not in IDEMPOTENT:
                    raise stale.cause from None
                log.debug("kept-alive connection was closed by the server; reconnecting")
            try:
                return await self._exchange(method, url, body, headers)
            except _Retry as failed:
                raise failed.cause from None

    async def _connect(self) -> _Conn:
        try:
            with trio.fail_after(self.connect_timeout):
                sock = await trio.open_tcp_stream(lookup_host(self._host), self._port)
                counted = _CountingStream(sock, self.stats)
                if self._ssl is None:
                    conn = _Conn(counted, sock)
                else:
                    # bytes: ssl would encode a str with the idna codec (httpio/names.py)
                    name = lookup_host(self._server_hostname)
                    tls = trio.SSLStream(counted, self._ssl, server_hostname=name)
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError as exc:
                        await trio.aclose_forcefully(sock)
                        cause = exc.__cause__
                        if isinstance(cause, ssl.SSLError):
                            raise TlsError(_describe_tls_failure(cause, self._host)) from exc
                        raise HttpConnectionError(
                            f"connection to {self._host}:{self._port} closed during TLS handshake"
                        ) from exc
                    except BaseException:
                        await trio.aclose_forcefully(sock)
                        raise
                    conn = _Conn(tls, sock)
        except trio.TooSlowError:
            raise HttpTimeout(
                f"connecting to {self._host}:{self._port} took over {self.connect_timeout} s"
            ) from None
        except OSError as exc:
            raise HttpConnectionError(
                f"cannot connect to {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self.stats.connections += 1
        return conn

    def _request_headers(
        self, method: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> list[tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}

        def put(name: str, value: str) -> None:
            out[name.lower()] = (name, value)

        put("Host", self._host_header)
        put("User-Agent", self.user_agent)
        put("Accept", self.content_type)
        if body is not None:
            put("Content-Type", self.content_type)
        for name, value in (headers or {}).items():
            if name.lower() in ("content-length", "transfer-encoding", "host", "connection"):
                continue
            put(name, value)
        if body is not None or method in ("POST", "PUT"):
            put("Content-Length", str(len(body or b"")))
        return list(out.values())

    async def _exchange(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:  # built before any I/O: a request h11 will not send never touches the connection
            request = h11.Request(
                method=method, target=target, headers=self._request_headers(method, body, headers)
            )
        except h11.LocalProtocolError as exc:
            raise HttpProtocolError(f"{method} {url}: cannot be sent: {exc}") from None
        conn = self._conn
        reused = conn is not None
        if conn is not None and conn.peer_went_away():
            log.debug("kept-alive connection closed by the server while idle")
            self._conn = None
            await conn.close()
            conn, reused = None, False
        if conn is None:
            conn = await self._connect()
            self._conn = conn
        conn.received = 0
        conn.eof = False
        done = False
        try:
            with trio.fail_after(self.timeout):
                self.stats.requests += 1
                await self._send(conn, request)
                if body:
                    await self._send(conn, h11.Data(data=body))
                await self._send(conn, h11.EndOfMessage())
                response = await self._read_response(conn, method, url)
            done = True
        except trio.TooSlowError:
            raise HttpTimeout(
                f"{method} {url}: no complete response within {self.timeout} s"
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            err = HttpConnectionError(f"{method} {url}: connection lost ({exc})")
            if reused and conn.received == 0:
                raise _Retry(err) from exc
            raise err from exc
        except h11.RemoteProtocolError as exc:
            if conn.eof:
                # h11 reports an EOF before the response was complete as a protocol error; it is
                # a broken connection, not a malformed response, so it is retried as one
                err = HttpConnectionError(
                    f"{method} {url}: the server closed the connection before its response was "
                    f"complete ({exc})"
                )
                if reused and conn.received == 0:
                    raise _Retry(err) from exc
                raise err from exc
            raise HttpProtocolError(f"{method} {url}: invalid HTTP response: {exc}") from exc
        finally:
            if not done:
                self._conn = None
                await conn.close()
        if (
            conn.h11.our_state is h11.DONE
            and conn.h11.their_state is h11.DONE
            and not conn.h11.trailing_data[0]
        ):
            conn.h11.start_next_cycle()
        else:
            # Bytes beyond the response (a body longer than its Content-Length, a second
            # response) would be read as the answer to the next request on this connection.
            if conn.h11.trailing_data[0]:
                log.warning("%s %s: the server sent %d bytes after its response; connection "
                            "closed", method, url, len(conn.h11.trailing_data[0]))  # fmt: skip
            self._conn = None
            await conn.close()
        return response

    async def _send(self, conn: _Conn, event: h11.Event) -> None:
        data = conn.h11.send(event)
        if data:
            self.stats.bytes_sent += len(data)
            await conn.stream.send_all(data)

    async def _next_event(self, conn: _Conn) -> h11.Event:
        """The next h11 event, reading from the stream as needed (EOF reaches h11 as b"")."""
        while True:
            event = conn.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                raise HttpProtocolError("server sent bytes after its response")
            data = await conn.stream.receive_some(65536)
            conn.received += len(data)
            conn.eof = conn.eof or not data
            self.stats.bytes_received += len(data)
            conn.h11.receive_data(bytes(data))

    async def _read_response(self, conn: _Conn, method: str, url: str) -> Response:
        while True:
            event = await self._next_event(conn)
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("server closed the connection")
            raise HttpProtocolError(f"{method} {url}: unexpected {type(event).__name__}")
        status = event.status_code
        hdrs = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
        declared = next((v for k, v in hdrs if k == "content-length"), None)
        if declared is not None and _declared_over(declared, self.max_body):
            raise ResponseTooLarge(
                f"{method} {url}: body of {declared} bytes exceeds the {self.max_body}-byte bound"
            )
        # one buffer: about the body's size in memory however many pieces it comes in
        body = bytearray()
        pieces = 0
        while True:
            event = await self._next_event(conn)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    raise ResponseTooLarge(
                        f"{method} {url}: body exceeds the {self.max_body}-byte bound"
                    )
                pieces += 1
                if pieces % _CHECKPOINT_EVERY == 0:
                    await trio.lowlevel.checkpoint()
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("server closed the connection mid-body")
            else:
                raise HttpProtocolError(f"{method} {url}: unexpected {type(event).__name__}")
        return Response(status, hdrs, bytes(body), url)


__all__ = [
    "IDEMPOTENT",
    "SEP_XML",
    "HttpClient",
    "HttpConnectionError",
    "HttpError",
    "HttpProtocolError",
    "HttpStats",
    "HttpStatusError",
    "HttpTimeout",
    "InvalidUrl",
    "Response",
    "ResponseTooLarge",
    "TlsError",
    "join_url",
    "origin_of",
    "parse_retry_after",
]
