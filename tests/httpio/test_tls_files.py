"""The TLS context's file checks, done with ``ssl`` alone: each bad file is named in a sentence.

The service no longer loads ``cryptography`` to pre-check its certificate and key files; these
cases pin the messages the installer sees (the same ones the ``cryptography`` checks gave) and
that a good DER or PEM file still loads.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from dynexport.httpio import TlsConfigError, client_context
from tests.httpio.pki import Pki


def _encrypted_key(pki: Pki, folder: Path, password: bytes, fmt: str) -> Path:
    key = serialization.load_pem_private_key(pki.device_key.read_bytes(), password=None)
    private_format = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
    }[fmt]
    path = folder / f"key-{fmt}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            private_format,
            serialization.BestAvailableEncryption(password),
        )
    )
    return path


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_an_encrypted_key_loads_with_its_password(pki: Pki, tmp_path: Path, fmt: str) -> None:
    key = _encrypted_key(pki, tmp_path, b"secret", fmt)
    ctx = client_context(
        ca_files=[pki.serca], cert_file=pki.device_chain, key_file=key, key_password=b"secret"
    )
    assert ctx.verify_mode is ssl.CERT_REQUIRED


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_an_encrypted_key_without_its_password_is_named_not_prompted_for(
    pki: Pki, tmp_path: Path, fmt: str
) -> None:
    key = _encrypted_key(pki, tmp_path, b"secret", fmt)
    with pytest.raises(TlsConfigError, match=r"private key file .*: Password was not given"):
        client_context(ca_files=[pki.serca], cert_file=pki.device_chain, key_file=key)


def test_a_wrong_password_is_named(pki: Pki, tmp_path: Path) -> None:
    key = _encrypted_key(pki, tmp_path, b"secret", "pkcs8")
    with pytest.raises(TlsConfigError, match=r"\(or the password is wrong\): .*key-pkcs8\.pem"):
        client_context(
            ca_files=[pki.serca], cert_file=pki.device_chain, key_file=key, key_password=b"nope"
        )


def test_a_password_for_an_unencrypted_key_is_refused(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="Password was given but private key is not"):
        client_context(
            ca_files=[pki.serca],
            cert_file=pki.device_chain,
            key_file=pki.device_key,
            key_password=b"secret",
        )


@pytest.mark.parametrize(
    "content",
    [
        b"not a key\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
    ids=["no PEM block", "damaged key"],
)
def test_a_key_file_without_a_readable_key_is_named(
    pki: Pki, tmp_path: Path, content: bytes
) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(content)
    with pytest.raises(TlsConfigError, match=r"no readable PEM private key .*key\.pem"):
        client_context(ca_files=[pki.serca], cert_file=pki.device_chain, key_file=key)


def test_a_key_that_does_not_match_names_both_files(pki: Pki) -> None:
    with pytest.raises(TlsConfigError) as caught:
        client_context(ca_files=[pki.serca], cert_file=pki.device_chain, key_file=pki.server_key)
    assert str(caught.value) == (
        f"private key {pki.server_key} does not match the first certificate in {pki.device_chain}"
    )


def test_a_der_serca_file_is_accepted(pki: Pki, tmp_path: Path) -> None:
    der = tmp_path / "serca.der"
    der.write_bytes(ssl.PEM_cert_to_DER_cert(pki.serca.read_text()))
    ctx = client_context(ca_files=[der], cert_file=pki.device_chain, key_file=pki.device_key)
    assert ctx.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda pem: pem.replace(b"\n", b"\n!", 3),  # not base64
        lambda pem: pem[:120] + pem[-30:],  # truncated certificate
        lambda pem: pem + b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        lambda pem: ssl.PEM_cert_to_DER_cert(pem.decode()) + b"\0",  # DER with trailing data
    ],
    ids=["bad base64", "truncated", "one good one bad", "DER with trailing bytes"],
)
def test_a_damaged_serca_file_is_named(pki: Pki, tmp_path: Path, damage: object) -> None:
    bad = tmp_path / "serca.pem"
    assert callable(damage)
    bad.write_bytes(damage(pki.serca.read_bytes()))
    with pytest.raises(TlsConfigError, match=r"SERCA file holds no PEM or DER certificate: "):
        client_context(ca_files=[bad], cert_file=pki.device_chain, key_file=pki.device_key)


def test_a_der_device_certificate_is_named_as_rejected(pki: Pki, tmp_path: Path) -> None:
    der = tmp_path / "device.der"
    der.write_bytes(pki.device_cert_der)
    with pytest.raises(TlsConfigError, match=r"certificate .*device\.der / key .* rejected"):
        client_context(ca_files=[pki.serca], cert_file=der, key_file=pki.device_key)
