"""A small, defensive HTTP/1.1 server on h11 for the web UI and the utility simulator.

It faces phones on a setup Wi-Fi and, in tests, deliberately hostile clients, so every resource is
bounded: header bytes (h11's ``max_incomplete_event_size``), body bytes, the time a client may take
to send its request, the time it may take to read the response, idle keep-alive time and the number
of connections. Every failure is confined to its connection: a bad request gets a clear 4xx, a
handler crash gets a 500 (logged here, never shown to the client), and the server keeps serving.

Responses are either bytes (always sent with ``Content-Length``) or an async iterator of bytes,
sent chunked as it is produced, which is what Server-Sent Events need.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

log = logging.getLogger("dynexport.httpio.server")

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may cost the server (seconds and bytes)."""

    max_header_bytes: int = 16 * KiB
    max_body_bytes: int = MiB
    #: the request line and headers must arrive within this time of the request's first byte
    header_timeout: float = 10.0
    #: the body must arrive within this time after the headers
    body_timeout: float = 30.0
    #: a kept-alive connection with no new request is closed after this time
    idle_timeout: float = 30.0
    #: each write of the response must be accepted by the client within this time
    send_timeout: float = 30.0
    #: the TLS handshake must finish within this time
    handshake_timeout: float = 10.0
    #: a handler taking longer gets its request answered with 503
    handler_timeout: float = 60.0
    #: connections beyond this are closed at once
    max_connections: int = 64
    #: after an error response, unread request bytes are drained for up to this time and size,
    #: so that closing does not reset the connection before the client has read the error
    linger_timeout: float = 2.0
    linger_bytes: int = MiB


@dataclass(frozen=True)
class Request:
    """A complete request. Header names are lowercase; ``path`` is percent-decoded."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client_cert: bytes | None  # the peer's DER certificate under mutual TLS
    peer: tuple[str, int]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Response:
    """What a handler returns. ``body`` as bytes, or an async iterator streamed chunked."""

    status: int = 200
    body: bytes | AsyncIterator[bytes] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        """A plain-text response."""
        return cls(status, text.encode(), content_type="text/plain; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]


class _Closed(Exception):
    """Internal: stop serving this connection (its client is gone or misbehaved)."""


def _reason(status: int) -> str:
    return {
        400: "Bad Request",
        408: "Request Timeout",
        413: "Content Too Large",
        431: "Request Header Fields Too Large",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }.get(status, "")


class _Connection:
    """One client connection: the h11 state machine plus trio I/O with deadlines."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        limits: Limits,
        peer: tuple[str, int],
        client_cert: bytes | None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.peer = peer
        self.client_cert = client_cert
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.got_bytes = False  # whether any byte of the current request has arrived
        self.fed = 0  # bytes given to h11 during the current request head
        self.error_sent = False

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive_some(64 * KiB)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _Closed from exc
        if data:
            self.got_bytes = True
            self.fed += len(data)
        self.conn.receive_data(bytes(data))

    async def _next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Event):
                return event
            else:  # PAUSED: a pipelined request waits until this cycle ends
                raise _Closed

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if not data:
            return
        try:
            with trio.fail_after(self.limits.send_timeout):
                await self.stream.send_all(data)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Closed from exc
        except OSError as exc:
            raise _Closed from exc

    async def _send_error(self, status: int, message: str) -> None:
        """Sends a short plain-text error and marks the connection to close after it."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _Closed
        body = f"{status} {_reason(status)}: {message}\n".encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            await self._send(
                h11.Response(status_code=status, headers=headers, reason=_reason(status))
            )
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise _Closed from exc
        self.error_sent = True
        raise _Closed

    async def _linger(self) -> None:
        """Reads and discards what the client is still sending, within the linger bounds."""
        drained = 0
        with trio.move_on_after(self.limits.linger_timeout):
            while drained < self.limits.linger_bytes:
                try:
                    data = await self.stream.receive_some(64 * KiB)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not data:
                    return
                drained += len(data)

    async def serve(self) -> None:
        """Serves requests until the client closes, misbehaves or the server stops."""
        try:
            first = True
            while True:
                await self._one_cycle(first)
                first = False
                if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    self.conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except _Closed:
            if self.error_sent:
                await self._linger()

    async def _read_head(self, first: bool) -> h11.Request | None:
        """The next request head, or None when the client closed or stayed idle."""
        self.got_bytes = False
        self.fed = len(self.conn.trailing_data[0])  # a pipelined request's bytes count too
        idle = self.limits.header_timeout if first else self.limits.idle_timeout
        with trio.CancelScope(deadline=trio.current_time() + idle) as scope:
            while True:
                event = self.conn.next_event()
                if event is not h11.NEED_DATA:
                    break
                was_idle = not self.got_bytes
                await self._receive()
                if was_idle and self.got_bytes:
                    # The clock for a slow request starts at its first byte.
                    scope.deadline = trio.current_time() + self.limits.header_timeout
        if scope.cancelled_caught:
            if self.got_bytes:
                await self._send_error(408, "request headers not received in time")
            return None
        if isinstance(event, h11.Request):
            # h11 bounds only an *incomplete* head; one that arrived whole is measured here.
            if self.fed - len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:
                raise h11.RemoteProtocolError("head too long", error_status_hint=431)
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None
        raise _Closed

    async def _one_cycle(self, first: bool) -> None:
        try:
            head = await self._read_head(first)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 431:
                message = f"request headers exceed {self.limits.max_header_bytes} bytes"
            else:
                message = f"malformed request: {exc}"
            await self._send_error(status, message)
            return
        if head is None:
            raise _Closed
        body = await self._read_body(head)
        request = self._make_request(head, body)
        if request is None:
            await self._send_error(400, "request target is not valid")
            return
        response = await self._call_handler(request)
        await self._send_response(request, response)

    async def _read_body(self, head: h11.Request) -> bytes:
        declared = next((v for k, v in head.headers if k == b"content-length"), None)
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            await self._send_error(413, f"body exceeds {self.limits.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            with trio.fail_after(self.limits.body_timeout):
                while True:
                    event = await self._next_event()
                    if isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > self.limits.max_body_bytes:
                            await self._send_error(
                                413, f"body exceeds {self.limits.max_body_bytes} bytes"
                            )
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        return b"".join(chunks)
                    else:
                        raise _Closed
        except trio.TooSlowError:
            await self._send_error(408, "request body not received in time")
        except h11.RemoteProtocolError as exc:
            await self._send_error(exc.error_status_hint, f"malformed request body: {exc}")
        raise _Closed  # unreachable: _send_error always raises

    def _make_request(self, head: h11.Request, body: bytes) -> Request | None:
        try:
            target = head.target.decode("ascii")
            parts = urlsplit(target)
            path = unquote(parts.path or "/", errors="strict")
            query = dict(parse_qsl(parts.query, keep_blank_values=True, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            return None
        return Request(
            method=head.method.decode("ascii"),
            target=target,
            path=path,
            query=query,
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
            body=body,
            client_cert=self.client_cert,
            peer=self.peer,
        )

    async def _call_handler(self, request: Request) -> Response:
        try:
            with trio.fail_after(self.limits.handler_timeout):
                response = await self.handler(request)
        except trio.TooSlowError:
            log.error("%s %s: handler timed out", request.method, request.path)
            return Response.text(503, "503 Service Unavailable: request took too long\n")
        except Exception:
            log.exception("%s %s: handler failed", request.method, request.path)
            return Response.text(500, "500 Internal Server Error\n")
        return response

    def _headers(self, response: Response) -> list[tuple[str, str]]:
        skip = {"content-length", "transfer-encoding", "connection"}
        headers = [(k, v) for k, v in response.headers if k.lower() not in skip]
        if response.content_type and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", response.content_type))
        if any(k.lower() == "connection" and v.lower() == "close" for k, v in response.headers):
            headers.append(("Connection", "close"))
        return headers

    async def _send_response(self, request: Request, response: Response) -> None:
        headers = self._headers(response)
        head_only = request.method == "HEAD"
        body = response.body
        try:
            if isinstance(body, bytes | bytearray):
                headers.append(("Content-Length", str(len(body))))
                await self._send(h11.Response(status_code=response.status, headers=headers))
                if body and not head_only:
                    await self._send(h11.Data(data=bytes(body)))
                await self._send(h11.EndOfMessage())
                return
            try:
                await self._send(h11.Response(status_code=response.status, headers=headers))
                if not head_only:
                    async for chunk in body:
                        if chunk:
                            await self._send(h11.Data(data=chunk))
                await self._send(h11.EndOfMessage())
            finally:
                aclose: Any = getattr(body, "aclose", None)
                if aclose is not None:
                    with trio.CancelScope(shield=True):
                        await aclose()
        except h11.LocalProtocolError as exc:
            log.error("%s %s: cannot send response: %s", request.method, request.path, exc)
            raise _Closed from exc


async def _serve_connection(
    stream: trio.SocketStream,
    handler: Handler,
    ssl_context: ssl.SSLContext | None,
    limits: Limits,
    active: list[int],
) -> None:
    try:
        peer_addr = stream.socket.getpeername()
        peer = (str(peer_addr[0]), int(peer_addr[1]))
    except OSError:
        await trio.aclose_forcefully(stream)
        return
    if active[0] >= limits.max_connections:
        log.warning("connection from %s refused: %d connections open", peer[0], active[0])
        await trio.aclose_forcefully(stream)
        return
    active[0] += 1
    app_stream: trio.abc.Stream = stream
    try:
        client_cert: bytes | None = None
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_side=True)
            app_stream = tls
            try:
                with trio.fail_after(limits.handshake_timeout):
                    await tls.do_handshake()
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.info("TLS handshake with %s failed: %s", peer[0], exc.__cause__ or exc)
                return
            client_cert = tls.getpeercert(binary_form=True)
        await _Connection(app_stream, handler, limits, peer, client_cert).serve()
    finally:
        active[0] -= 1
        if app_stream is not stream:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await app_stream.aclose()
        await trio.aclose_forcefully(stream)


async def serve_http(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves ``handler`` until cancelled; ``nursery.start`` returns the bound port.

    With ``ssl_context`` (see :func:`dynexport.httpio.tls.server_context`) every connection is
    TLS and ``Request.client_cert`` holds the client's certificate.
    """
    limits = limits or Limits()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = int(listeners[0].socket.getsockname()[1])
    active = [0]

    async def on_connection(stream: trio.SocketStream) -> None:
        await _serve_connection(stream, handler, ssl_context, limits, active)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        log.info("HTTP server listening on %s:%d", host, bound)
        task_status.started(bound)
