"""A small IEEE 2030.5-shaped test PKI (P-256), generated per test session.

SERCA (root) -> MICA -> device certificate (empty subject, hardwareModuleName SAN, as in §6.11.8)
and SERCA -> server certificate (SAN 127.0.0.1 and localhost). A second, unrelated SERCA lets
tests prove that a client trusting the wrong root refuses the server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HW_MODULE_NAME = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4")
NOT_AFTER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Pki:
    serca: Path
    other_serca: Path
    server_cert: Path
    server_key: Path
    device_chain: Path
    device_key: Path
    device_cert_der: bytes
    other_device_chain: Path
    other_device_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    san: x509.SubjectAlternativeName | None = None,
    san_critical: bool = False,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, True, False, False, False, False),
            critical=True,
        )
    if san is not None:
        b = b.add_extension(san, critical=san_critical)
    return b.sign(issuer_key, hashes.SHA256())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _device(
    mica: x509.Certificate, mica_key: ec.EllipticCurvePrivateKey, serial: bytes
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    # hardwareModuleName ::= SEQUENCE { hwType OID, hwSerialNum OCTET STRING }, DER-encoded.
    oid = bytes.fromhex("06082b06010401829c1c01")  # OID 1.3.6.1.4.1.40732.1 as hwType
    octets = b"\x04" + bytes([len(serial)]) + serial
    body = oid + octets
    value = b"\x30" + bytes([len(body)]) + body
    san = x509.SubjectAlternativeName([x509.OtherName(HW_MODULE_NAME, value)])
    cert = _cert(x509.Name([]), key, mica.subject, mica_key, ca=False, san=san, san_critical=True)
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Writes the test PKI's PEM files into ``folder`` and returns their paths."""
    serca_key = _key()
    serca = _cert(_name("Test SERCA"), serca_key, _name("Test SERCA"), serca_key, ca=True)
    mica_key = _key()
    mica = _cert(_name("Test MICA"), mica_key, serca.subject, serca_key, ca=True)
    server_key = _key()
    server_san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    server = _cert(
        _name("utility.test"), server_key, serca.subject, serca_key, ca=False, san=server_san
    )
    device, device_key = _device(mica, mica_key, b"SN-0001")

    other_key = _key()
    other = _cert(_name("Other SERCA"), other_key, _name("Other SERCA"), other_key, ca=True)
    other_mica_key = _key()
    other_mica = _cert(_name("Other MICA"), other_mica_key, other.subject, other_key, ca=True)
    other_device, other_device_key = _device(other_mica, other_mica_key, b"SN-9999")

    files = {
        "serca.pem": _pem(serca),
        "other-serca.pem": _pem(other),
        "server.pem": _pem(server),
        "server-key.pem": _key_pem(server_key),
        "device-chain.pem": _pem(device, mica),
        "device-key.pem": _key_pem(device_key),
        "other-device-chain.pem": _pem(other_device, other_mica),
        "other-device-key.pem": _key_pem(other_device_key),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return Pki(
        serca=folder / "serca.pem",
        other_serca=folder / "other-serca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        device_chain=folder / "device-chain.pem",
        device_key=folder / "device-key.pem",
        device_cert_der=device.public_bytes(serialization.Encoding.DER),
        other_device_chain=folder / "other-device-chain.pem",
        other_device_key=folder / "other-device-key.pem",
    )
