"""IEEE 2030.5 certificates: device identity (LFDI/SFDI), keys, CSRs, signing and chain checks.

The utility identifies this appliance by a hash of its certificate, and authenticates it by the
private key behind that certificate, so the key is written once (mode 0600, atomically) and
never silently replaced: losing it means a new certificate and a new utility registration.

Everything here works on bytes and objects with ``now`` passed in; the files are written by
the small ``write_*`` helpers and :func:`make_test_pki`. Only ``cryptography`` is used. The
running service never imports this module: the LFDI and SFDI it needs come from
:mod:`dynexport.sep2.identity` (``ssl`` and ``hashlib``), re-exported here.

Profile (IEEE 2030.5-2018 §6.11.8, "device certificate"): empty subject, issuer = MICA
subject, notAfter 99991231235959Z ("no well-defined expiration", RFC 5280 §4.1.2.5), a
critical subjectAltName carrying an RFC 4108 hardwareModuleName otherName (critical because
the subject is empty, RFC 5280 §4.2.1.6), critical keyUsage digitalSignature+keyAgreement,
certificate policies under the IEEE 2030.5 arc 1.3.6.1.4.1.40732, an authority key identifier
and an ECDSA-with-SHA256 signature over a P-256 key.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import ipaddress
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dynexport.sep2.identity import CertError as CertError
from dynexport.sep2.identity import lfdi_of_der
from dynexport.sep2.identity import sfdi_from_lfdi as sfdi_from_lfdi
from dynexport.system.storage import atomic_write

P = ParamSpec("P")
R = TypeVar("R")

# --- OIDs -------------------------------------------------------------------------------------
# IEEE 2030.5-2018 §6.11.7.2 (device types) and §6.11.7.3 (policies), under the IEEE 2030.5
# private enterprise arc 1.3.6.1.4.1.40732. Cross-checked against the official CSIP-AUS client
# test harness (github bsgip/cactus-orchestrator, src/cactus_orchestrator/certificate/create.py),
# whose device end-entity profile is {1.1 generic, 1.3 post-manufacture, 2.1 test}.
OID_DEVICE_GENERIC = "1.3.6.1.4.1.40732.1.1"
OID_DEVICE_MOBILE = "1.3.6.1.4.1.40732.1.2"
OID_DEVICE_POST_MANUFACTURE = "1.3.6.1.4.1.40732.1.3"
OID_POLICY_TEST = "1.3.6.1.4.1.40732.2.1"
OID_POLICY_SELF_SIGNED = "1.3.6.1.4.1.40732.2.2"
OID_POLICY_SERVICE_PROVIDER = "1.3.6.1.4.1.40732.2.3"
OID_POLICY_BULK_ISSUED = "1.3.6.1.4.1.40732.2.4"

POLICY_NAMES: dict[str, str] = {
    OID_DEVICE_GENERIC: "IEEE 2030.5 device (generic)",
    OID_DEVICE_MOBILE: "IEEE 2030.5 device (mobile)",
    OID_DEVICE_POST_MANUFACTURE: "IEEE 2030.5 device (post-manufacture)",
    OID_POLICY_TEST: "IEEE 2030.5 test certificate",
    OID_POLICY_SELF_SIGNED: "IEEE 2030.5 self-signed",
    OID_POLICY_SERVICE_PROVIDER: "IEEE 2030.5 service provider",
    OID_POLICY_BULK_ISSUED: "IEEE 2030.5 bulk-issued",
}

#: What ``sign`` puts in a production device certificate unless told otherwise.
DEVICE_POLICIES: tuple[str, ...] = (OID_DEVICE_GENERIC,)
#: The test PKI uses the harness's device profile, so it is recognisably a test certificate.
TEST_DEVICE_POLICIES: tuple[str, ...] = (
    OID_DEVICE_GENERIC,
    OID_DEVICE_POST_MANUFACTURE,
    OID_POLICY_TEST,
)

#: RFC 4108 id-on-hardwareModuleName.
OID_HARDWARE_MODULE_NAME = "1.3.6.1.5.5.7.8.4"
#: hwType used when the manufacturer has no OID of its own: a UUID OID (ITU-T X.667, arc
#: 2.25), which anyone may mint without registration; this one was minted for dynexport.
DEFAULT_HW_TYPE = "2.25.19430633615952803159040096754306174038"

#: notAfter of IEEE 2030.5 device certificates; cryptography encodes years >= 2050 as
#: GeneralizedTime, giving exactly 99991231235959Z.
NOT_AFTER_INDEFINITE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

_MAX_CHAIN_DEPTH = 8


# --- identity ---------------------------------------------------------------------------------


def lfdi(cert: x509.Certificate) -> str:
    """Long-form device identifier: first 20 bytes of SHA-256 over the DER certificate."""
    return lfdi_of_der(cert.public_bytes(serialization.Encoding.DER))


def sfdi(cert: x509.Certificate) -> int:
    """SFDI of a certificate."""
    return sfdi_from_lfdi(lfdi(cert))


# --- minimal DER (hardwareModuleName) ---------------------------------------------------------
# cryptography 47 has no encoder for otherName values, so the few bytes are built here.
# HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }
# e.g. hwType 1.2.3.4, serial b"AB" -> 30 09 | 06 03 2A 03 04 | 04 02 41 42


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _encode_oid(dotted: str) -> bytes:
    """Content octets of an OBJECT IDENTIFIER (X.690 §8.19): base-128 sub-identifiers."""
    x509.ObjectIdentifier(dotted)  # validates the dotted form (arc ranges etc.)
    arcs = [int(a) for a in dotted.split(".")]
    subids = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    out = bytearray()
    for sub in subids:
        chunk = [sub & 0x7F]
        sub >>= 7
        while sub:
            chunk.append(0x80 | (sub & 0x7F))
            sub >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def _decode_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise CertError("malformed OBJECT IDENTIFIER")
    subids: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            subids.append(value)
            value = 0
    first = subids[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in [*head, *subids[1:]])


def _der_read(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """One TLV at ``pos``: (tag, content, next position). Definite lengths only (DER)."""
    if pos + 2 > len(data):
        raise CertError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise CertError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(data):
        raise CertError("truncated DER")
    return tag, data[pos : pos + length], pos + length


def hardware_module_name_der(hw_type: str, hw_serial: bytes) -> bytes:
    """DER of an RFC 4108 HardwareModuleName, the value of the SAN otherName."""
    return _der_tlv(0x30, _der_tlv(0x06, _encode_oid(hw_type)) + _der_tlv(0x04, bytes(hw_serial)))


def parse_hardware_module_name(der: bytes) -> tuple[str, bytes]:
    """(hwType, hwSerialNum) from the DER of a HardwareModuleName."""
    tag, seq, end = _der_read(der, 0)
    if tag != 0x30 or end != len(der):
        raise CertError("hardwareModuleName is not a single SEQUENCE")
    tag, oid, pos = _der_read(seq, 0)
    if tag != 0x06:
        raise CertError("hardwareModuleName hwType is not an OBJECT IDENTIFIER")
    tag, serial, pos = _der_read(seq, pos)
    if tag != 0x04 or pos != len(seq):
        raise CertError("hardwareModuleName hwSerialNum is not an OCTET STRING")
    return _decode_oid(oid), serial


def hardware_module_name(cert: x509.Certificate) -> tuple[str, bytes] | None:
    """The certificate's (hwType, hwSerialNum), or None when it carries none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for name in san.get_values_for_type(x509.OtherName):
        if name.type_id.dotted_string == OID_HARDWARE_MODULE_NAME:
            return parse_hardware_module_name(name.value)
    return None


# --- loading ----------------------------------------------------------------------------------


def _unreadable(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turns any exception a malformed certificate raises inside cryptography into CertError.

    cryptography parses lazily: extensions, names, validity dates, the public key and the
    signature are decoded when first read, and each can raise its own exception (ValueError,
    KeyError, TypeError, DuplicateExtension, UnsupportedGeneralNameType, InvalidVersion,
    UnsupportedAlgorithm...; fuzzing found 34 places). Callers handle one error type with a
    message an installer can act on, so every entry point that reads an uploaded certificate
    goes through this.
    """

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                with warnings.catch_warnings():
                    # e.g. a non-positive serial number: reported, never a crash
                    warnings.simplefilter("ignore", category=Warning)
                    return fn(*args, **kwargs)
            except CertError:
                raise
            except Exception as exc:
                detail = str(exc) or type(exc).__name__
                raise CertError(f"{what}: a certificate is malformed ({detail})") from exc

        return inner

    return wrap


@_unreadable("cannot read the certificate file")
def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM file (or a single DER certificate), in file order."""
    if b"-----BEGIN" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise CertError(f"not valid PEM: {exc}") from None
    else:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise CertError("not valid PEM (no BEGIN CERTIFICATE block) nor DER") from None
    if not certs:
        raise CertError("not valid PEM: no certificate found")
    return certs


def load_private_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """An unencrypted EC P-256 key from PEM: the only kind IEEE 2030.5 devices use."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertError("private key is encrypted; dynexport needs an unencrypted key") from None
    except ValueError:
        raise CertError("private key is not valid PEM") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertError("private key is not an EC P-256 (secp256r1) key")
    return key


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A CSR from PEM or DER."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise CertError("CSR is not valid PEM or DER") from None


def certificate_pem(*certs: x509.Certificate) -> bytes:
    """The PEM of one or more certificates, concatenated (a chain file, leaf first)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: the appliance must start unattended, so no passphrase."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- keys, CSRs, files ------------------------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new P-256 key: the curve IEEE 2030.5 §6.11 mandates."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    """A CSR with an empty subject: a 2030.5 device is named by its LFDI, not by a DN."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )


def write_private_key(
    path: Path | str, key: ec.EllipticCurvePrivateKey, *, overwrite: bool = False
) -> None:
    """Write ``key`` as PEM, mode 0600; an existing key is kept unless ``overwrite``."""
    atomic_write(path, private_key_pem(key), mode=0o600, overwrite=overwrite)


def keep_copy(path: Path, now: datetime | None = None) -> Path | None:
    """Copies ``path`` (the device key, or its chain) beside it as ``<name>.<UTC time>.bak``,
    mode 0600, before it is replaced; None when there is nothing to copy. Never overwrites a
    copy (a second one in the same second gets ``-2``, ...), and never deletes one: the key is
    the site's registered identity, and a replace by mistake must be undoable by copying it
    back."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        suffix = "" if n == 1 else f"-{n}"
        copy = Path(path).with_name(f"{Path(path).name}.{stamp}{suffix}.bak")
        try:
            atomic_write(copy, data, mode=0o600, overwrite=False)
        except FileExistsError:
            continue
        return copy
    raise FileExistsError(f"{path}: no free name for a copy of it")


# --- signing ----------------------------------------------------------------------------------


def _aki_for(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(
            _ec_public_key(issuer, "issuer certificate")
        )
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ec_public_key(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CertError(f"{what} does not hold an EC key")
    return key


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _utc_seconds(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).replace(microsecond=0)


def _policies(oids: Sequence[str]) -> x509.CertificatePolicies:
    return x509.CertificatePolicies(
        [x509.PolicyInformation(x509.ObjectIdentifier(oid), None) for oid in oids]
    )


_DEVICE_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=True,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def sign_device_cert(
    csr: x509.CertificateSigningRequest,
    mica_cert: x509.Certificate,
    mica_key: ec.EllipticCurvePrivateKey,
    *,
    hardware_serial: bytes | None = None,
    hw_type: str = DEFAULT_HW_TYPE,
    policies: Sequence[str] = DEVICE_POLICIES,
    now: datetime,
) -> x509.Certificate:
    """An IEEE 2030.5 device certificate for the key in ``csr``, issued by the MICA.

    Without ``hardware_serial`` the serial is derived from the device's public key (first
    10 bytes of SHA-256 over its SubjectPublicKeyInfo, as 20 uppercase hex ASCII characters),
    so re-signing the same CSR keeps the same hardware identity.
    """
    if not csr.is_signature_valid:
        raise CertError("CSR signature is invalid (it was not signed by the key it carries)")
    device_key = csr.public_key()
    if not isinstance(device_key, ec.EllipticCurvePublicKey) or not isinstance(
        device_key.curve, ec.SECP256R1
    ):
        raise CertError("CSR key is not an EC P-256 key, as IEEE 2030.5 requires")
    if _spki(mica_key.public_key()) != _spki(mica_cert.public_key()):
        raise CertError("MICA key does not match the MICA certificate")
    if not _is_ca(mica_cert):
        raise CertError("MICA certificate is not a CA certificate")
    if not policies:
        raise CertError("a device certificate needs at least one IEEE 2030.5 policy")
    if hardware_serial is None:
        hardware_serial = hashlib.sha256(_spki(device_key)).digest()[:10].hex().upper().encode()
    other_name = x509.OtherName(
        x509.ObjectIdentifier(OID_HARDWARE_MODULE_NAME),
        hardware_module_name_der(hw_type, hardware_serial),
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(mica_cert.subject)
        .public_key(device_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc_seconds(now))
        .not_valid_after(NOT_AFTER_INDEFINITE)
        .add_extension(x509.SubjectAlternativeName([other_name]), critical=True)
        .add_extension(_DEVICE_KEY_USAGE, critical=True)
        .add_extension(_policies(policies), critical=True)
        .add_extension(_aki_for(mica_cert), critical=False)
    )
    return builder.sign(mica_key, hashes.SHA256())


def _ca_cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    path_length: int | None,
    policies: Sequence[str],
    now: datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc_seconds(now))
        .not_valid_after(NOT_AFTER_INDEFINITE)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(_aki_for(issuer), critical=False)
    if policies:
        builder = builder.add_extension(_policies(policies), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _test_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "dynexport test PKI (not for production)"
            ),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class TestPki:
    """Where :func:`make_test_pki` put things, and who the device is."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    device_lfdi: str
    device_sfdi: int
    files: dict[str, Path] = field(default_factory=dict)


TEST_PKI_FILES: dict[str, str] = {
    "serca": "serca.pem",
    "mica_cert": "mica-cert.pem",
    "mica_key": "mica-key.pem",
    "device_key": "device-key.pem",
    "device_chain": "device-chain.pem",
    "server_key": "server-key.pem",
    "server_chain": "server-chain.pem",
    "summary": "pki.json",
}


def make_test_pki(directory: Path | str, *, now: datetime, overwrite: bool = False) -> TestPki:
    """A complete SERCA → MICA → device and SERCA → server CA → server test PKI, all P-256.

    For local testing and the demo only (every certificate says so in its O= and policies).
    Refuses to write into a folder that already holds any of its files unless ``overwrite``,
    so it can never clobber a real device key.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / file for name, file in TEST_PKI_FILES.items()}
    if not overwrite:
        existing = [p.name for p in paths.values() if p.exists()]
        if existing:
            raise FileExistsError(
                errno.EEXIST, f"refusing to overwrite {', '.join(existing)}", str(folder)
            )

    serca_key = generate_key()
    serca = _ca_cert(
        _test_name("dynexport test SERCA"),
        serca_key,
        None,
        serca_key,
        path_length=1,
        policies=(),
        now=now,
    )
    mica_key = generate_key()
    mica = _ca_cert(
        _test_name("dynexport test MICA"),
        mica_key,
        serca,
        serca_key,
        path_length=0,
        policies=TEST_DEVICE_POLICIES,
        now=now,
    )
    device_key = generate_key()
    device = sign_device_cert(
        make_csr(device_key), mica, mica_key, policies=TEST_DEVICE_POLICIES, now=now
    )

    server_ca_key = generate_key()
    server_ca = _ca_cert(
        _test_name("dynexport test server CA"),
        server_ca_key,
        serca,
        serca_key,
        path_length=0,
        policies=(),
        now=now,
    )
    server_key = generate_key()
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(server_ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc_seconds(now))
        .not_valid_after(NOT_AFTER_INDEFINITE)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(_DEVICE_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_aki_for(server_ca), critical=False)
        .sign(server_ca_key, hashes.SHA256())
    )

    device_lfdi = lfdi(device)
    summary = {
        "note": "TEST PKI for local testing only; never use these certificates with a utility",
        "created": _utc_seconds(now).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": {"lfdi": device_lfdi, "sfdi": sfdi_from_lfdi(device_lfdi)},
        "serca": serca.subject.rfc4514_string(),
        "files": {name: file for name, file in TEST_PKI_FILES.items() if name != "summary"},
    }
    writes = [
        ("serca", certificate_pem(serca), 0o644),
        ("mica_cert", certificate_pem(mica), 0o644),
        ("mica_key", private_key_pem(mica_key), 0o600),
        ("device_key", private_key_pem(device_key), 0o600),
        ("device_chain", certificate_pem(device, mica), 0o644),
        ("server_key", private_key_pem(server_key), 0o600),
        ("server_chain", certificate_pem(server, server_ca), 0o644),
        ("summary", (json.dumps(summary, indent=2) + "\n").encode(), 0o644),
    ]
    for name, data, mode in writes:
        atomic_write(paths[name], data, mode=mode, overwrite=overwrite)
    return TestPki(folder, device_lfdi, sfdi_from_lfdi(device_lfdi), paths)


# --- inspecting -------------------------------------------------------------------------------


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _policy_oids(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        return []
    return [p.policy_identifier.dotted_string for p in ext]


def _summary(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "notBefore": _time(cert.not_valid_before_utc),
        "notAfter": _time(cert.not_valid_after_utc),
        "serial": format(cert.serial_number, "X"),
        "ca": _is_ca(cert),
        "lfdi": lfdi(cert),
    }


@_unreadable("cannot describe the certificate")
def describe(cert_chain_pem: bytes) -> dict[str, Any]:
    """What an installer needs to know about a certificate file (first cert = the device).

    ``chain`` lists every certificate in the file, in order, the device first.
    """
    certs = load_certificates(cert_chain_pem)
    leaf = certs[0]
    leaf_lfdi = lfdi(leaf)
    hmn = hardware_module_name(leaf)
    hardware: dict[str, Any] | None = None
    if hmn is not None:
        hw_type, serial = hmn
        text = serial.decode("ascii", "replace")
        hardware = {
            "hwType": hw_type,
            "hwSerialNum": serial.hex().upper(),
            "hwSerialNumText": text if serial.isascii() and text.isprintable() else None,
        }
    return {
        "lfdi": leaf_lfdi,
        "sfdi": sfdi_from_lfdi(leaf_lfdi),
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "notBefore": _time(leaf.not_valid_before_utc),
        "notAfter": _time(leaf.not_valid_after_utc),
        "serial": format(leaf.serial_number, "X"),
        "hardwareModuleName": hardware,
        "policies": _policy_oids(leaf),
        "chain": [_summary(c) for c in certs],
    }


# --- checking an uploaded chain ---------------------------------------------------------------


@dataclass(frozen=True)
class ChainCheck:
    """A chain that verified: who the device is, the path up to the SERCA, profile remarks."""

    lfdi: str
    sfdi: int
    certificate: x509.Certificate
    path: tuple[x509.Certificate, ...]
    warnings: tuple[str, ...] = ()


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_issuer(issuer: x509.Certificate, below: int) -> None:
    """``issuer`` may sign certificates, with ``below`` intermediate CAs under it."""
    name = issuer.subject.rfc4514_string() or "(empty subject)"
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertError(f"issuer {name!r} is not a CA certificate") from None
    if not bc.ca:
        raise CertError(f"issuer {name!r} is not a CA certificate")
    if bc.path_length is not None and below > bc.path_length:
        raise CertError(f"issuer {name!r} may not have {below} intermediate CA(s) below it")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise CertError(f"issuer {name!r} is not allowed to sign certificates (keyUsage)")


def _profile_warnings(leaf: x509.Certificate) -> tuple[str, ...]:
    warnings = []
    if len(leaf.subject) != 0:
        warnings.append("subject is not empty (IEEE 2030.5 device certificates have none)")
    if leaf.not_valid_after_utc != NOT_AFTER_INDEFINITE:
        warnings.append("notAfter is not 99991231235959Z")
    try:
        if hardware_module_name(leaf) is None:
            warnings.append("no hardwareModuleName in subjectAltName")
    except CertError as exc:
        warnings.append(f"hardwareModuleName unreadable: {exc}")
    if not any(oid.startswith("1.3.6.1.4.1.40732.") for oid in _policy_oids(leaf)):
        warnings.append("no IEEE 2030.5 certificate policy")
    return tuple(warnings)


@_unreadable("cannot check the certificate chain")
def check_chain(
    chain_pem: bytes,
    key_pem: bytes,
    serca_pems: bytes | Sequence[bytes],
    *,
    now: datetime | None = None,
) -> ChainCheck:
    """Check an uploaded device chain against our private key and the configured SERCA(s).

    Signatures are verified by hand, one link at a time, because cryptography's
    ``x509.verification`` verifiers implement a web-PKI profile that refuses IEEE 2030.5
    device certificates: cryptography 47 fails them with "certificate contains
    unaccounted-for critical extensions" (the critical certificatePolicies the profile
    requires), and its client verifier is built around SAN names (email/DNS) that a
    device certificate with an empty subject does not carry. Checked here:
    each link's issuer name and ECDSA signature, CA basicConstraints, pathLen and keyUsage,
    and, when ``now`` is given, every validity period (``None`` skips that: a Raspberry Pi
    has no real-time clock, and TLS checks the dates again at every connection).
    """
    try:
        certs = load_certificates(chain_pem)
    except CertError as exc:
        raise CertError(f"certificate chain is {exc}") from None
    key = load_private_key(key_pem)
    anchors: list[x509.Certificate] = []
    for pem in [serca_pems] if isinstance(serca_pems, bytes) else serca_pems:
        try:
            anchors.extend(load_certificates(pem))
        except CertError as exc:
            raise CertError(f"SERCA file is {exc}") from None
    if not anchors:
        raise CertError("no SERCA configured")

    leaf = certs[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise CertError("certificate does not match the private key")
    if _is_ca(leaf):
        raise CertError("the first certificate is a CA certificate, not the device certificate")

    path = [leaf]
    current = leaf
    pool = certs[1:]
    while True:
        anchor = next((a for a in anchors if _signed_by(current, a)), None)
        if anchor is not None:
            _check_issuer(anchor, len(path) - 1)
            path.append(anchor)
            break
        issuer = next((c for c in pool if c not in path and _signed_by(current, c)), None)
        if issuer is None or len(path) >= _MAX_CHAIN_DEPTH:
            raise CertError(
                "certificate is not signed by the configured SERCA "
                f"(no issuer found for {current.issuer.rfc4514_string()!r}; "
                "is the MICA certificate appended to the chain?)"
            )
        _check_issuer(issuer, len(path) - 1)
        path.append(issuer)
        current = issuer

    if now is not None:
        when = now.astimezone(UTC)
        for cert in path:
            name = cert.subject.rfc4514_string() or "the device certificate"
            if when < cert.not_valid_before_utc:
                raise CertError(f"{name} is not valid before {_time(cert.not_valid_before_utc)}")
            if when > cert.not_valid_after_utc:
                raise CertError(f"{name} expired at {_time(cert.not_valid_after_utc)}")

    leaf_lfdi = lfdi(leaf)
    return ChainCheck(
        leaf_lfdi, sfdi_from_lfdi(leaf_lfdi), leaf, tuple(path), _profile_warnings(leaf)
    )
