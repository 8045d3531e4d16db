"""The test PKI works as a real IEEE 2030.5 mutual-TLS PKI (TLS 1.2, ECDHE-ECDSA-AES128-CCM8)."""

from __future__ import annotations

import contextlib
import functools
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from dynexport.sep2 import certs

CIPHER = "ECDHE-ECDSA-AES128-CCM8"


@pytest.fixture
def pki(tmp_path: Path) -> certs.TestPki:
    # real time: OpenSSL checks notBefore against the clock during the handshake
    return certs.make_test_pki(tmp_path / "pki", now=datetime.now(UTC))


def server_context(pki: certs.TestPki, trust: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHER)
    ctx.load_cert_chain(pki.files["server_chain"], pki.files["server_key"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(trust)
    return ctx


def client_context(pki: certs.TestPki, trust: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its name
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHER)
    ctx.load_verify_locations(trust)
    ctx.load_cert_chain(pki.files["device_chain"], pki.files["device_key"])
    return ctx


@dataclass
class Outcome:
    peer_der: bytes | None = None
    server_cipher: tuple[str, str, int] | None = None
    received: bytes | None = None
    server_error: BaseException | None = None
    client_error: BaseException | None = None


async def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> Outcome:
    """One connection to a 127.0.0.1 TLS server; returns what each side saw."""
    outcome = Outcome()
    served = trio.Event()

    async def handler(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        try:
            await stream.do_handshake()
            outcome.peer_der = stream.getpeercert(binary_form=True)
            outcome.server_cipher = stream.cipher()
            await stream.send_all(b"hello device")
        except trio.BrokenResourceError as exc:
            outcome.server_error = exc
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()
            served.set()

    with trio.fail_after(20):  # a deadlock guard, not a timing assertion
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            port = listeners[0].socket.getsockname()[1]
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = trio.SSLStream(tcp, client_ctx, server_hostname=server_hostname)
            try:
                await client.do_handshake()
                outcome.received = bytes(await client.receive_some(100))
            except trio.BrokenResourceError as exc:
                outcome.client_error = exc
            finally:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client.aclose()
            await served.wait()
            nursery.cancel_scope.cancel()
    return outcome


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
async def test_mutual_tls_handshake_succeeds_and_the_server_sees_the_device_lfdi(
    pki, server_hostname
):
    serca = pki.files["serca"]
    outcome = await handshake(
        server_context(pki, serca), client_context(pki, serca), server_hostname
    )
    assert outcome.client_error is None and outcome.server_error is None
    assert outcome.received == b"hello device"
    assert outcome.server_cipher is not None
    assert outcome.server_cipher[:2] == (CIPHER, "TLSv1.2")
    assert outcome.peer_der is not None
    peer = certs.load_certificates(outcome.peer_der)[0]
    assert certs.lfdi(peer) == pki.device_lfdi


async def test_client_refuses_a_server_not_under_its_serca(pki, tmp_path: Path):
    stranger = certs.make_test_pki(tmp_path / "stranger", now=datetime.now(UTC))
    outcome = await handshake(
        server_context(pki, pki.files["serca"]),
        client_context(pki, stranger.files["serca"]),
        "localhost",
    )
    assert outcome.received is None
    assert isinstance(outcome.client_error, trio.BrokenResourceError)
    cause = outcome.client_error.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(cause)
    assert outcome.peer_der is None


async def test_server_refuses_a_device_not_under_its_serca(pki, tmp_path: Path):
    stranger = certs.make_test_pki(tmp_path / "stranger", now=datetime.now(UTC))
    outcome = await handshake(
        server_context(pki, stranger.files["serca"]),
        client_context(pki, pki.files["serca"]),
        "localhost",
    )
    assert outcome.peer_der is None and outcome.received is None
    assert isinstance(outcome.server_error, trio.BrokenResourceError)
    assert isinstance(outcome.server_error.__cause__, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(outcome.server_error.__cause__)
    # the client only learns that the server hung up (trio drops the pending alert on failure)
    assert isinstance(outcome.client_error, trio.BrokenResourceError)
    assert isinstance(outcome.client_error.__cause__, ssl.SSLError)


async def test_client_refuses_a_server_name_the_certificate_does_not_cover(pki):
    serca = pki.files["serca"]
    outcome = await handshake(
        server_context(pki, serca), client_context(pki, serca), "utility.example.com"
    )
    assert isinstance(outcome.client_error, trio.BrokenResourceError)
    assert "Hostname mismatch" in str(outcome.client_error.__cause__)
