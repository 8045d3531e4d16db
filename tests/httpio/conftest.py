"""Fixtures for the HTTP layer tests: a test PKI, TLS contexts and a running server."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from dynexport.httpio import Handler, Limits, client_context, serve_http, server_context
from dynexport.httpio.server import ConnectionPool
from tests.httpio.pki import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="session")
def client_ctx(pki: Pki) -> ssl.SSLContext:
    return client_context(ca_files=[pki.serca], cert_file=pki.device_chain, key_file=pki.device_key)


@pytest.fixture(scope="session")
def server_ctx(pki: Pki) -> ssl.SSLContext:
    return server_context(ca_files=[pki.serca], cert_file=pki.server_cert, key_file=pki.server_key)


@asynccontextmanager
async def serving(
    handler: Handler,
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits | None = None,
    pool: ConnectionPool | None = None,
) -> AsyncIterator[int]:
    """Runs serve_http on 127.0.0.1 for the body of the block; yields the port, then stops it."""
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            lambda task_status: serve_http(
                handler,
                ssl_context=ssl_context,
                limits=limits,
                pool=pool,
                task_status=task_status,
            )
        )
        yield port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_server(
    on_connection: Callable[[trio.abc.Stream], Awaitable[None]], ssl_context: ssl.SSLContext | None
) -> AsyncIterator[int]:
    """A hand-written misbehaving server: ``on_connection(stream)`` gets each accepted stream."""

    async def handle(stream: trio.SocketStream) -> None:
        app: trio.abc.Stream = stream
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_side=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                return
            app = tls
        try:
            await on_connection(app)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(app)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = int(listeners[0].socket.getsockname()[1])
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        yield port
        nursery.cancel_scope.cancel()


async def open_tls(
    port: int, ctx: ssl.SSLContext, hostname: str = "127.0.0.1"
) -> trio.SSLStream[trio.SocketStream]:
    """A raw TLS client stream to 127.0.0.1:port, handshake done."""
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(sock, ctx, server_hostname=hostname)
    await stream.do_handshake()
    return stream


async def alerting_handshake(stream: trio.abc.Stream, ctx: ssl.SSLContext) -> None:
    """A server-side TLS handshake that, unlike trio.SSLStream, sends OpenSSL's alert on failure.

    Real utility servers tell the client why they refuse a handshake; this peer does the same,
    so the tests can check that the client turns alerts into readable reasons.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    while True:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                await stream.send_all(pending)
            data = await stream.receive_some(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            continue
        except ssl.SSLError:
            if pending := outgoing.read():
                await stream.send_all(pending)
            return
        raise AssertionError("handshake unexpectedly succeeded")
