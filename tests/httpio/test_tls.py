"""TLS contexts: IEEE 2030.5 settings, mutual TLS end to end, readable failures."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trio

from dynexport.httpio import (
    HttpClient,
    Request,
    ServerResponse,
    TlsConfigError,
    TlsError,
    client_context,
    server_context,
)
from tests.httpio.conftest import alerting_handshake, open_tls, raw_server, serving
from tests.httpio.pki import Pki


async def echo_cert(request: Request) -> ServerResponse:
    """Answers with the client certificate the server saw."""
    return ServerResponse(200, request.client_cert or b"none")


def test_client_context_uses_tls12_ccm8_and_requires_verification(pki: Pki) -> None:
    ctx = client_context(
        ca_files=[pki.serca],
        cert_file=pki.device_chain,
        key_file=pki.device_key,
        check_hostname=False,
    )
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version is ssl.TLSVersion.TLSv1_2
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES128-CCM8"]
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname is False


def test_extra_cipher_suites_are_added_after_ccm8(pki: Pki) -> None:
    ctx = client_context(
        ca_files=[pki.serca],
        cert_file=pki.device_chain,
        key_file=pki.device_key,
        extra_ciphers=["ECDHE-ECDSA-AES128-GCM-SHA256"],
    )
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12[0] == "ECDHE-ECDSA-AES128-CCM8"
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" in tls12


def test_server_context_requires_a_client_certificate(pki: Pki) -> None:
    ctx = server_context(ca_files=[pki.serca], cert_file=pki.server_cert, key_file=pki.server_key)
    assert ctx.verify_mode is ssl.CERT_REQUIRED


def test_missing_serca_file_is_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsConfigError, match=r"SERCA file not found: .*nope\.pem"):
        client_context(ca_files=[missing], cert_file=pki.device_chain, key_file=pki.device_key)


def test_no_serca_configured_is_refused(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="no SERCA"):
        client_context(ca_files=[], cert_file=pki.device_chain, key_file=pki.device_key)


def test_garbage_certificate_file_is_named(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    with pytest.raises(TlsConfigError, match=r"no PEM or DER certificate: .*junk\.pem"):
        client_context(ca_files=[pki.serca], cert_file=junk, key_file=pki.device_key)


def test_key_that_does_not_match_the_certificate_is_refused(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="does not match"):
        client_context(ca_files=[pki.serca], cert_file=pki.device_chain, key_file=pki.server_key)


def test_unreadable_key_file_is_named(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(pki.device_key.read_bytes())
    key.chmod(0)
    try:
        if os.access(key, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(TlsConfigError, match="not readable"):
            client_context(ca_files=[pki.serca], cert_file=pki.device_chain, key_file=key)
    finally:
        key.chmod(0o600)


async def test_mutual_tls_negotiates_ccm8_and_server_sees_device_cert(
    pki: Pki, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    async with serving(echo_cert, server_ctx) as port:
        stream = await open_tls(port, client_ctx)
        assert stream.cipher() == ("ECDHE-ECDSA-AES128-CCM8", "TLSv1.2", 128)
        await stream.aclose()
        async with HttpClient(f"https://127.0.0.1:{port}", client_ctx) as client:
            response = await client.get("/whoami")
    assert response.status == 200
    assert response.body == pki.device_cert_der


async def test_server_not_signed_by_configured_serca_is_refused(
    pki: Pki, server_ctx: ssl.SSLContext
) -> None:
    wrong = client_context(
        ca_files=[pki.other_serca], cert_file=pki.device_chain, key_file=pki.device_key
    )
    async with (
        serving(echo_cert, server_ctx) as port,
        HttpClient(f"https://127.0.0.1:{port}", wrong, retries=3) as client,
    ):
        with pytest.raises(TlsError, match="not signed by the configured SERCA"):
            await client.get("/")
        assert client.stats.connections == 0
        assert client.stats.requests == 0


async def test_hostname_mismatch_is_named_and_chain_only_mode_accepts(
    pki: Pki, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    chain_only = client_context(
        ca_files=[pki.serca],
        cert_file=pki.device_chain,
        key_file=pki.device_key,
        check_hostname=False,
    )
    async with serving(echo_cert, server_ctx) as port:
        url = f"https://127.0.0.1:{port}"
        async with HttpClient(url, client_ctx, server_hostname="utility.example") as client:
            with pytest.raises(TlsError, match="does not name host"):
                await client.get("/")
        async with HttpClient(url, chain_only, server_hostname="utility.example") as client:
            assert (await client.get("/")).status == 200


async def test_client_cert_from_unknown_serca_is_reported_from_the_server_alert(
    pki: Pki, server_ctx: ssl.SSLContext
) -> None:
    stranger = client_context(
        ca_files=[pki.serca], cert_file=pki.other_device_chain, key_file=pki.other_device_key
    )

    async def refuse(stream: trio.abc.Stream) -> None:
        await alerting_handshake(stream, server_ctx)

    async with (
        raw_server(refuse, None) as port,
        HttpClient(f"https://127.0.0.1:{port}", stranger) as client,
    ):
        with pytest.raises(TlsError, match="rejected our client certificate"):
            await client.get("/")


async def test_server_without_ccm8_is_reported_as_no_common_suite(
    pki: Pki, client_ctx: ssl.SSLContext
) -> None:
    gcm_only = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    gcm_only.maximum_version = ssl.TLSVersion.TLSv1_2
    gcm_only.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    gcm_only.load_cert_chain(pki.server_cert, pki.server_key)

    async def refuse(stream: trio.abc.Stream) -> None:
        await alerting_handshake(stream, gcm_only)

    async with (
        raw_server(refuse, None) as port,
        HttpClient(f"https://127.0.0.1:{port}", client_ctx) as client,
    ):
        with pytest.raises(TlsError, match="no common cipher suite"):
            await client.get("/")


async def test_server_drops_unknown_client_cert_and_keeps_serving(
    pki: Pki, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    stranger = client_context(
        ca_files=[pki.serca], cert_file=pki.other_device_chain, key_file=pki.other_device_key
    )
    async with serving(echo_cert, server_ctx) as port:
        url = f"https://127.0.0.1:{port}"
        async with HttpClient(url, stranger) as client:
            with pytest.raises(TlsError, match="during the TLS handshake"):
                await client.get("/")
        async with HttpClient(url, client_ctx) as client:
            response = await client.get("/")
    assert response.body == pki.device_cert_der


async def test_plain_http_needs_an_explicit_flag(client_ctx: ssl.SSLContext) -> None:
    with pytest.raises(ValueError, match="allow_plain_http"):
        HttpClient("http://127.0.0.1:1", None)
    with pytest.raises(ValueError, match="ssl_context"):
        HttpClient("https://127.0.0.1:1", None)
    await trio.lowlevel.checkpoint()
