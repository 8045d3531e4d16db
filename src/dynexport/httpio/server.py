"""A small, defensive HTTP/1.1 server on h11 for the web UI and the utility simulator.

It faces phones on a setup Wi-Fi and, in tests, deliberately hostile clients, so every resource is
bounded: header bytes (h11's ``max_incomplete_event_size``), body bytes, the time a client may take
to send its request, the time it may take to read the response, idle keep-alive time and the number
of connections, in all and per client address. Every failure is confined to its connection: a bad
request gets a clear 4xx, a handler crash gets a 500 (logged here, never shown to the client), and
the server keeps serving.

A few clients must not be able to take every connection (slow or idle ones, docs/web.md): each
address holds at most ``max_per_address``; when the server is full, the connection that has waited
longest for the client (for its next request, for the rest of a request body, or lingering after
an error) is dropped to make room, and while it is nearly full every such wait is cut to
``pressure_timeout`` (a body earns more time as its bytes arrive, so a steady upload goes on and a
trickle is cut). Connections busy in a handler are never dropped. One log line marks the start of
such an episode and one its end, whatever the number of connections.

A request body costs about its size in memory however it is split, and the reading task yields to
the others every ``_CHECKPOINT_EVERY`` pieces; a body split into absurdly many small pieces (which
costs CPU per piece) is refused.

Responses are either bytes (always sent with ``Content-Length``) or an async iterator of bytes,
sent chunked as it is produced, which is what Server-Sent Events need.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

from dynexport.httpio.names import lookup_host

log = logging.getLogger("dynexport.httpio.server")

KiB = 1024
MiB = 1024 * KiB

#: the body loops (here and in the client) let other tasks run after this many h11 events: one
#: receive of 1-byte chunks is about ten thousand of them
_CHECKPOINT_EVERY = 256
#: a body may arrive in this many pieces whatever their size (see ``Limits.min_body_piece_bytes``)
_FREE_BODY_PIECES = 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may cost the server (seconds and bytes)."""

    max_header_bytes: int = 16 * KiB
    max_body_bytes: int = MiB
    #: the request line and headers must arrive within this time of the request's first byte
    header_timeout: float = 10.0
    #: the body must arrive within this time after the headers
    body_timeout: float = 30.0
    #: a body arriving in more than 1024 pieces (chunks, or reads of a trickling client) that
    #: average fewer bytes than this is refused with 400: each piece costs the server CPU
    #: (0: no such check)
    min_body_piece_bytes: int = 64
    #: a kept-alive connection with no new request is closed after this time
    idle_timeout: float = 30.0
    #: each write of the response must be accepted by the client within this time
    send_timeout: float = 30.0
    #: the TLS handshake must finish within this time
    handshake_timeout: float = 10.0
    #: a handler taking longer gets its request answered with 503
    handler_timeout: float = 60.0
    #: at most this many connections at once; beyond it the longest-waiting idle one is dropped,
    #: or, when every connection is busy in a handler, the new one is closed at once
    max_connections: int = 64
    #: at most this many from one client address (its own longest-waiting idle one makes room)
    max_per_address: int = 16
    #: from this many open connections on (None: three quarters of ``max_connections``), a wait
    #: for a request (idle keep-alive, slow headers, the TLS handshake) lasts at most
    #: ``pressure_timeout``
    pressure_connections: int | None = None
    pressure_timeout: float = 2.0
    #: while nearly full, reading a request body is such a wait too, extended by one second for
    #: every this many bytes received: a steady upload goes on, a slow one is cut
    pressure_body_rate: int = 32 * KiB
    #: an episode of refused or dropped connections ends (one log line) after this quiet time
    episode_quiet_s: float = 60.0
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
    #: the server's own address of this connection (the address the client reached)
    local: tuple[str, int] | None = None

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


class _Slot:
    """One admitted connection as the pool sees it."""

    __slots__ = ("address", "dropped", "earned", "heard", "scope", "wait_order", "wait_started")

    def __init__(self, address: str) -> None:
        self.address = address
        self.scope: trio.CancelScope | None = None  # set while waiting for the client: droppable
        self.wait_started = 0.0
        self.heard = 0.0  # when the client last sent something in the current wait
        self.earned = 0.0  # seconds beyond pressure_timeout the current wait has earned (a body)
        self.wait_order = 0  # breaks ties between waits that began at the same time
        self.dropped = False


class ConnectionPool:
    """Which connections the server holds, and which to drop or refuse when clients crowd it.

    Bookkeeping only (no I/O): a connection is admitted before anything is read from it, marks
    the times it waits for the client (a request, a request body, lingering after an error) with
    :meth:`waiting`, and is released when it ends."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.pressure_at = (
            limits.pressure_connections
            if limits.pressure_connections is not None
            else max(1, limits.max_connections * 3 // 4)
        )
        self._slots: set[_Slot] = set()
        self._by_address: dict[str, int] = {}
        self._waits = 0
        self.refused = 0
        self.dropped = 0
        self.episodes = 0
        self._episode_start: float | None = None
        self._episode_last = 0.0
        self._episode_refused = 0
        self._episode_dropped = 0
        self._episode_addresses: dict[str, int] = {}

    @property
    def open(self) -> int:
        return len(self._slots)

    def count(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def pressured(self) -> bool:
        return len(self._slots) >= self.pressure_at

    def admit(self, address: str) -> _Slot | None:
        """A slot for a new connection from ``address``, or None: close it at once."""
        now = trio.current_time()
        self._maybe_end_episode(now)
        over_address = self.count(address) >= self.limits.max_per_address
        if over_address or len(self._slots) >= self.limits.max_connections:
            victim = self._longest_waiting(address if over_address else None)
            if victim is None:  # every one is busy in a handler: the newcomer is refused
                self.refused += 1
                self._note(address, now, refused=True)
                return None
            self._drop(victim, now)
        slot = _Slot(address)
        self._slots.add(slot)
        self._by_address[address] = self.count(address) + 1
        if self.pressured():
            for other in self._slots:  # nearly full: every wait for the client gets short
                if other.scope is not None:
                    other.scope.deadline = self.deadline(other, other.scope.deadline)
        return slot

    def release(self, slot: _Slot) -> None:
        if slot in self._slots:
            self._forget(slot)
        self._maybe_end_episode(trio.current_time())

    @contextlib.contextmanager
    def waiting(self, slot: _Slot, timeout: float) -> Iterator[trio.CancelScope]:
        """A cancel scope for a wait for the client (droppable while it lasts); its deadline is
        ``timeout`` from now, or ``pressure_timeout`` while the server is nearly full."""
        now = trio.current_time()
        slot.wait_started = slot.heard = now
        slot.earned = 0.0
        self._waits += 1
        slot.wait_order = self._waits
        scope = trio.CancelScope(deadline=self.deadline(slot, now + timeout))
        slot.scope = scope
        try:
            with scope:
                yield scope
        finally:
            slot.scope = None

    def deadline(self, slot: _Slot, wanted: float) -> float:
        """``wanted``, shortened while the server is nearly full."""
        if self.pressured():
            return min(wanted, slot.wait_started + self.limits.pressure_timeout + slot.earned)
        return wanted

    def _longest_waiting(self, address: str | None) -> _Slot | None:
        waiting = [
            s
            for s in self._slots
            if s.scope is not None and (address is None or s.address == address)
        ]
        # the one not heard from for longest: an upload still arriving goes on before a
        # connection that has sent nothing since it began to wait
        return min(waiting, key=lambda s: (s.heard, s.wait_order)) if waiting else None

    def _forget(self, slot: _Slot) -> None:
        self._slots.discard(slot)
        left = self.count(slot.address) - 1
        if left > 0:
            self._by_address[slot.address] = left
        else:
            self._by_address.pop(slot.address, None)

    def _drop(self, slot: _Slot, now: float) -> None:
        slot.dropped = True
        if slot.scope is not None:
            slot.scope.cancel()
        self._forget(slot)
        self.dropped += 1
        self._note(slot.address, now, refused=False)

    def _note(self, address: str, now: float, *, refused: bool) -> None:
        if self._episode_start is None:
            self._episode_start = now
            self.episodes += 1
            self._episode_refused = self._episode_dropped = 0
            self._episode_addresses = {}
            log.warning(
                "too many connections (%d open, %d from %s): dropping idle ones and refusing "
                "new ones until it stops",
                len(self._slots),
                self.count(address),
                address,
            )
        self._episode_last = now
        if refused:
            self._episode_refused += 1
        else:
            self._episode_dropped += 1
        if address in self._episode_addresses or len(self._episode_addresses) < 64:
            self._episode_addresses[address] = self._episode_addresses.get(address, 0) + 1

    def _maybe_end_episode(self, now: float) -> None:
        if self._episode_start is None or now - self._episode_last < self.limits.episode_quiet_s:
            return
        top = sorted(self._episode_addresses.items(), key=lambda kv: -kv[1])[:3]
        log.warning(
            "connection crowding over after %.0f s: %d refused, %d idle dropped (most from %s)",
            self._episode_last - self._episode_start,
            self._episode_refused,
            self._episode_dropped,
            ", ".join(f"{a} ({n})" for a, n in top),
        )
        self._episode_start = None


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
        pool: ConnectionPool,
        slot: _Slot,
        local: tuple[str, int] | None = None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.limits = limits
        self.peer = peer
        self.local = local
        self.pool = pool
        self.slot = slot
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
        """Reads and discards what the client is still sending, within the linger bounds (a wait
        for the client like any other: droppable, and cut short while the server is crowded)."""
        drained = 0
        with self.pool.waiting(self.slot, self.limits.linger_timeout):
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
        with self.pool.waiting(self.slot, idle) as scope:
            while True:
                event = self.conn.next_event()
                if event is not h11.NEED_DATA:
                    break
                was_idle = not self.got_bytes
                await self._receive()
                if was_idle and self.got_bytes:
                    # The clock for a slow request starts at its first byte.
                    scope.deadline = self.pool.deadline(
                        self.slot, trio.current_time() + self.limits.header_timeout
                    )
        if self.slot.dropped:  # the longest-waiting connection made room for a new one
            raise _Closed
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
        """The request body, read as a wait for the client: droppable, and cut short while the
        server is crowded unless it keeps arriving at ``pressure_body_rate``. It is collected in
        one buffer (about its size in memory, however many pieces it comes in), and other tasks
        get to run every ``_CHECKPOINT_EVERY`` pieces."""
        limits = self.limits
        declared = next((v for k, v in head.headers if k == b"content-length"), None)
        if declared is not None and int(declared) > limits.max_body_bytes:
            await self._send_error(413, f"body exceeds {limits.max_body_bytes} bytes")
        body = bytearray()
        pieces = 0
        # what the client is told when the loop ends without the body: unless it says otherwise,
        # the wait was cut (too slow, or too slow while the server is crowded)
        problem = (408, "request body not received in time")
        wanted = trio.current_time() + limits.body_timeout
        with self.pool.waiting(self.slot, limits.body_timeout) as scope:
            try:
                while True:
                    event = await self._next_event()
                    if isinstance(event, h11.Data):
                        body += event.data
                        pieces += 1
                        if len(body) > limits.max_body_bytes:
                            problem = (413, f"body exceeds {limits.max_body_bytes} bytes")
                            break
                        if (
                            pieces > _FREE_BODY_PIECES
                            and len(body) < pieces * limits.min_body_piece_bytes
                        ):
                            problem = (400, f"body sent in too many pieces ({pieces})")
                            break
                        self.slot.earned = len(body) / limits.pressure_body_rate
                        self.slot.heard = trio.current_time()
                        scope.deadline = self.pool.deadline(self.slot, wanted)
                        if pieces % _CHECKPOINT_EVERY == 0:
                            await trio.lowlevel.checkpoint()
                    elif isinstance(event, h11.EndOfMessage):
                        if self.slot.dropped:  # made room while its last bytes came in
                            raise _Closed
                        return bytes(body)
                    else:
                        raise _Closed
            except h11.RemoteProtocolError as exc:
                problem = (exc.error_status_hint, f"malformed request body: {exc}")
        if self.slot.dropped:  # the longest-waiting connection made room for a new one
            raise _Closed
        del body
        await self._send_error(*problem)
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
            local=self.local,
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
        except _Closed:
            raise
        except h11.LocalProtocolError as exc:
            log.error("%s %s: cannot send response: %s", request.method, request.path, exc)
            raise _Closed from exc
        except Exception as exc:  # a streamed body failed: only this connection ends
            # (its chunked response is left unterminated, so the client sees it incomplete)
            log.exception("%s %s: response body failed", request.method, request.path)
            raise _Closed from exc


async def _serve_connection(
    stream: trio.SocketStream,
    handler: Handler,
    ssl_context: ssl.SSLContext | None,
    limits: Limits,
    pool: ConnectionPool,
) -> None:
    try:
        peer_addr = stream.socket.getpeername()
        peer = (str(peer_addr[0]), int(peer_addr[1]))
        local_addr = stream.socket.getsockname()
        local = (str(local_addr[0]), int(local_addr[1]))
    except OSError:
        await trio.aclose_forcefully(stream)
        return
    slot = pool.admit(peer[0])
    if slot is None:
        await trio.aclose_forcefully(stream)
        return
    app_stream: trio.abc.Stream = stream
    try:
        client_cert: bytes | None = None
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_side=True)
            app_stream = tls
            with pool.waiting(slot, limits.handshake_timeout) as scope:
                try:
                    await tls.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    log.info("TLS handshake with %s failed: %s", peer[0], exc.__cause__ or exc)
                    return
            if scope.cancelled_caught or slot.dropped:
                log.info("TLS handshake with %s failed: not finished in time", peer[0])
                return
            client_cert = tls.getpeercert(binary_form=True)
        await _Connection(app_stream, handler, limits, peer, client_cert, pool, slot, local).serve()
    finally:
        pool.release(slot)
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
    pool: ConnectionPool | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves ``handler`` until cancelled; ``nursery.start`` returns the bound port.

    With ``ssl_context`` (see :func:`dynexport.httpio.tls.server_context`) every connection is
    TLS and ``Request.client_cert`` holds the client's certificate. ``pool`` (made from
    ``limits`` when not given) lets a caller or a test see the connections held.
    """
    limits = limits or Limits()
    if pool is None:
        pool = ConnectionPool(limits)
    listeners = await trio.open_tcp_listeners(port, host=lookup_host(host))
    bound = int(listeners[0].socket.getsockname()[1])
    held = pool

    async def on_connection(stream: trio.SocketStream) -> None:
        await _serve_connection(stream, handler, ssl_context, limits, held)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        log.info("HTTP server listening on %s:%d", host, bound)
        task_status.started(bound)
