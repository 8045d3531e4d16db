"""TLS contexts for IEEE 2030.5: TLS 1.2, ECDHE-ECDSA-AES128-CCM8, mutual certificates.

IEEE 2030.5 §6.11 mandates TLS 1.2 with TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 and P-256 certificates.
Python's default cipher string excludes CCM, so the suite is named explicitly. The server chain is
always verified against the configured SERCA file(s); there is deliberately no switch to turn
verification off (the project this one replaces skipped it). Utility servers are often addressed by
IP without a matching SAN, so the hostname check can be relaxed to "chain only".

Files are pre-checked so that a bad installation gets a sentence naming the file and the problem,
not an OpenSSL error code. The checks use ``ssl`` itself (certificates parsed by OpenSSL, the key
matched by ``load_cert_chain``), never ``cryptography``: the running service does not need its
10 MiB (tests/test_imports.py keeps it that way).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path

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


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL
)
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----")


def _der_certificate(der: bytes) -> bool:
    """True when ``der`` is exactly one certificate that OpenSSL parses."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            return False
        end = 2 + count + int.from_bytes(der[2 : 2 + count], "big")
    else:
        end = 2 + first
    if end != len(der):
        return False
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ssl.SSLError, ValueError):
        return False
    return True


def _pem_certificates(data: bytes) -> list[bytes] | None:
    """The DER of every CERTIFICATE block, or None if there is none or one is damaged."""
    ders = []
    for body in _PEM_CERTIFICATE.findall(data):
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            return None
        if not _der_certificate(der):
            return None
        ders.append(der)
    return ders or None


def _parse_certs(data: bytes, path: StrPath, what: str) -> tuple[list[bytes], bool]:
    """The DER certificates in a PEM file (or the one in a DER file), and whether it was PEM."""
    certs = _pem_certificates(data)
    if certs is not None:
        return certs, True
    if not _der_certificate(data):
        raise TlsConfigError(f"{what} file holds no PEM or DER certificate: {path}")
    return [data], False


def _load_certs(path: StrPath, what: str) -> list[bytes]:
    return _parse_certs(_read(path, what), path, what)[0]


def _password_for(key_file: StrPath, password: bytes | None) -> bytes:
    """What ``load_cert_chain`` gets as the key's password, refusing a mismatch up front.

    With no password, OpenSSL would ask for one on the terminal; the service has none.
    """
    data = _read(key_file, "private key")
    match = _PEM_PRIVATE_KEY.search(data)
    if match is None:
        raise TlsConfigError(
            f"private key file holds no readable PEM private key (or the password is wrong): "
            f"{key_file}"
        )
    encrypted = match.group(1) == b"ENCRYPTED " or b"Proc-Type: 4,ENCRYPTED" in data
    if encrypted and password is None:
        raise TlsConfigError(
            f"private key file {key_file}: Password was not given but private key is encrypted"
        )
    if not encrypted and password is not None:
        raise TlsConfigError(
            f"private key file {key_file}: Password was given but private key is not encrypted."
        )
    return password or b""


def _load_pair(
    ctx: ssl.SSLContext, cert_file: StrPath, key_file: StrPath, password: bytes | None
) -> None:
    """Loads the certificate chain and its key, each failure named in a sentence."""
    _, pem = _parse_certs(_read(cert_file, "certificate"), cert_file, "certificate")
    key_password = _password_for(key_file, password)
    try:
        ctx.load_cert_chain(os.fspath(cert_file), os.fspath(key_file), password=key_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(
                f"private key {key_file} does not match the first certificate in {cert_file}"
            ) from None
        if pem:  # the certificates parsed above: what OpenSSL could not read is the key
            raise TlsConfigError(
                "private key file holds no readable PEM private key (or the password is "
                f"wrong): {key_file}"
            ) from None
        raise TlsConfigError(
            f"certificate {cert_file} / key {key_file} rejected by OpenSSL: {exc.reason}"
        ) from None


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
            ctx.load_verify_locations(cadata=b"".join(certs))
        except ssl.SSLError as exc:
            raise TlsConfigError(f"SERCA file {ca} rejected by OpenSSL: {exc.reason}") from None
    _load_pair(ctx, cert_file, key_file, key_password)
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
