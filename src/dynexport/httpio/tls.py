"""TLS contexts for IEEE 2030.5: TLS 1.2, ECDHE-ECDSA-AES128-CCM8, mutual certificates.

IEEE 2030.5 §6.11 mandates TLS 1.2 with TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 and P-256 certificates.
Python's default cipher string excludes CCM, so the suite is named explicitly. The server chain is
always verified against the configured SERCA file(s); there is deliberately no switch to turn
verification off (the project this one replaces skipped it). Utility servers are often addressed by
IP without a matching SAN, so the hostname check can be relaxed to "chain only".

Files are pre-checked with ``cryptography`` so that a bad installation gets a sentence naming the
file and the problem, not an OpenSSL error code.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

#: The IEEE 2030.5 mandatory cipher suite (OpenSSL name).
SEP2_CIPHER = "ECDHE-ECDSA-AES128-CCM8"

StrPath = str | os.PathLike[str]


class TlsConfigError(ValueError):
    """A certificate, key or TLS setting cannot be used; the message names the file."""


def _read(path: StrPath, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{what} file not found: {p}") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{what} path is a directory, not a file: {p}") from None
    except PermissionError:
        raise TlsConfigError(f"{what} file not readable (permission denied): {p}") from None
    except OSError as exc:
        raise TlsConfigError(f"{what} file cannot be read: {p}: {exc.strerror or exc}") from None


def _load_certs(path: StrPath, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise TlsConfigError(f"{what} file holds no PEM or DER certificate: {path}") from None
    return certs


def _load_key(path: StrPath, password: bytes | None) -> PrivateKeyTypes:
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:
        raise TlsConfigError(f"private key file {path}: {exc}") from None
    except ValueError:
        raise TlsConfigError(
            f"private key file holds no readable PEM private key (or the password is wrong): {path}"
        ) from None


def _check_pair(cert_file: StrPath, key_file: StrPath, password: bytes | None) -> None:
    certs = _load_certs(cert_file, "certificate")
    key = _load_key(key_file, password)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(der, pub) != key.public_key().public_bytes(der, pub):
        raise TlsConfigError(
            f"private key {key_file} does not match the first certificate in {cert_file}"
        )


def _ciphers(extra: Iterable[str]) -> str:
    suites = [SEP2_CIPHER, *(s.strip() for s in extra if s.strip())]
    return ":".join(dict.fromkeys(suites))


def _base_context(
    purpose: int,
    ca_files: Sequence[StrPath],
    cert_file: StrPath,
    key_file: StrPath,
    key_password: bytes | None,
    extra_ciphers: Iterable[str],
    min_version: ssl.TLSVersion,
    max_version: ssl.TLSVersion,
) -> ssl.SSLContext:
    if not ca_files:
        raise TlsConfigError("no SERCA file configured: the peer could not be verified")
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = min_version
    ctx.maximum_version = max_version
    try:
        ctx.set_ciphers(_ciphers(extra_ciphers))
    except ssl.SSLError:
        raise TlsConfigError(
            f"cipher list not usable by this OpenSSL: {_ciphers(extra_ciphers)}"
        ) from None
    for ca in ca_files:
        certs = _load_certs(ca, "SERCA")
        try:
            ctx.load_verify_locations(
                cadata=b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)
            )
        except ssl.SSLError as exc:
            raise TlsConfigError(f"SERCA file {ca} rejected by OpenSSL: {exc.reason}") from None
    _check_pair(cert_file, key_file, key_password)
    try:
        ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file), password=key_password)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"certificate {cert_file} / key {key_file} rejected by OpenSSL: {exc.reason}"
        ) from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    *,
    ca_files: Sequence[StrPath],
    cert_file: StrPath,
    key_file: StrPath,
    key_password: bytes | None = None,
    check_hostname: bool = True,
    extra_ciphers: Iterable[str] = (),
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> ssl.SSLContext:
    """A client context for a utility server: mutual TLS, server verified against the SERCA.

    ``cert_file`` holds the device certificate followed by its MICA (the chain the server needs).
    ``check_hostname=False`` still verifies the chain to the SERCA; it only skips matching the
    server name (for utility servers addressed by an IP missing from their certificate).
    """
    ctx = _base_context(
        ssl.PROTOCOL_TLS_CLIENT,
        ca_files,
        cert_file,
        key_file,
        key_password,
        extra_ciphers,
        min_version,
        max_version,
    )
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED  # set again: assigning check_hostname never weakens it
    return ctx


def server_context(
    *,
    ca_files: Sequence[StrPath],
    cert_file: StrPath,
    key_file: StrPath,
    key_password: bytes | None = None,
    extra_ciphers: Iterable[str] = (),
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> ssl.SSLContext:
    """A server context (utility simulator, tests): client certificate required, SERCA-verified."""
    return _base_context(
        ssl.PROTOCOL_TLS_SERVER,
        ca_files,
        cert_file,
        key_file,
        key_password,
        extra_ciphers,
        min_version,
        max_version,
    )
