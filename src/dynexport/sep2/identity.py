"""The device's IEEE 2030.5 identity (LFDI, SFDI) from certificate bytes, without ``cryptography``.

The running service needs only its LFDI (the first 20 bytes of SHA-256 over the DER device
certificate, IEEE 2030.5 §6.3.4) and the SFDI derived from it. ``ssl``, which the service loads
anyway for its TLS link, parses and checks each certificate and ``hashlib`` hashes it, so the
10 MiB of ``cryptography`` stay with the tools that make keys and CSRs and check an uploaded
chain (:mod:`dynexport.sep2.certs`, which re-exports what is here).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import ssl
import string


class CertError(ValueError):
    """A certificate, key or CSR problem, with a message meant for the person at the screen."""


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL
)


def sfdi_from_lfdi(lfdi_hex: str) -> int:
    """Short-form device identifier: the LFDI's first 36 bits, times ten, plus a check digit.

    The check digit makes the decimal digit sum a multiple of ten, so a mistyped SFDI on an
    installer's form is caught.
    """
    text = lfdi_hex.strip()
    if len(text) != 40:
        raise CertError(f"LFDI must be 40 hex digits, got {len(text)}")
    if any(c not in string.hexdigits for c in text):
        raise CertError("LFDI must be hex digits")
    value = int(text[:9], 16)  # 9 hex digits = 36 bits
    digit_sum = sum(int(d) for d in str(value))
    return value * 10 + (10 - digit_sum % 10) % 10


def lfdi_of_der(der: bytes) -> str:
    """Long-form device identifier of a DER certificate: SHA-256, first 20 bytes, upper hex."""
    return hashlib.sha256(der).digest()[:20].hex().upper()


def _single_der_length(der: bytes) -> int | None:
    """Length of the DER SEQUENCE at the start of ``der`` (header included), None if none."""
    if len(der) < 2 or der[0] != 0x30:
        return None
    first = der[1]
    if not first & 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(der) < 2 + count:
        return None
    return 2 + count + int.from_bytes(der[2 : 2 + count], "big")


def _is_certificate(der: bytes) -> bool:
    """True when ``der`` is exactly one certificate OpenSSL can parse."""
    if _single_der_length(der) != len(der):
        return False  # trailing or missing bytes: cryptography refused these too
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ssl.SSLError, ValueError):
        return False
    return True


def certificate_ders(data: bytes) -> list[bytes]:
    """The DER of every certificate in a PEM file (or of a single DER certificate), in order.

    Other PEM blocks (a key kept in the same file) are skipped. The messages are those of
    :func:`dynexport.sep2.certs.load_certificates`, which parses the same files with
    ``cryptography``.
    """
    if b"-----BEGIN" in data:
        ders = []
        for number, body in enumerate(_PEM_CERTIFICATE.findall(data), start=1):
            try:
                der = base64.b64decode(b"".join(body.split()), validate=True)
            except (binascii.Error, ValueError):
                raise CertError(f"not valid PEM: certificate {number} is not base64") from None
            if not _is_certificate(der):
                raise CertError(f"not valid PEM: certificate {number} is malformed") from None
            ders.append(der)
        if not ders:
            raise CertError("not valid PEM: no certificate found")
        return ders
    if not _is_certificate(data):
        raise CertError("not valid PEM (no BEGIN CERTIFICATE block) nor DER")
    return [data]


def chain_lfdi(data: bytes) -> str:
    """The LFDI of the first certificate in a chain file (the device's own certificate)."""
    return lfdi_of_der(certificate_ders(data)[0])


def device_lfdi(cert_file: str | os.PathLike[str]) -> str:
    """The LFDI of the first certificate in the configured chain (our device certificate).

    Read with ``ssl`` and ``hashlib``: the running service never loads ``cryptography``, and
    the controller can seed the stored schedule's randomization before the utility link (and
    its XML stack) is imported."""
    with open(cert_file, "rb") as fh:
        return chain_lfdi(fh.read())
