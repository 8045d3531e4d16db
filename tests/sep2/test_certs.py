"""IEEE 2030.5 certificate core: identifiers, key files, the device profile, chain checks."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import SignatureAlgorithmOID
from hypothesis import given
from hypothesis import strategies as st

from dynexport.sep2 import certs

NOW = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


@pytest.fixture
def pki(tmp_path: Path) -> certs.TestPki:
    return certs.make_test_pki(tmp_path / "pki", now=NOW)


def read(pki: certs.TestPki, name: str) -> bytes:
    return pki.files[name].read_bytes()


def mica_of(pki: certs.TestPki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = certs.load_certificates(read(pki, "mica_cert"))[0]
    return cert, certs.load_private_key(read(pki, "mica_key"))


# --- identifiers -------------------------------------------------------------------------------


def test_sfdi_of_the_spec_example_lfdi():
    assert certs.sfdi_from_lfdi("3E4F45AB31EDFE5B67E343E5E4562E31984E23E5") == 167261211391


@given(st.binary(min_size=20, max_size=20))
def test_sfdi_is_36_bits_times_ten_plus_a_check_digit_making_the_digit_sum_a_multiple_of_ten(
    raw: bytes,
):
    value = certs.sfdi_from_lfdi(raw.hex().upper())
    assert value // 10 == int.from_bytes(raw[:5]) >> 4
    assert sum(int(d) for d in str(value)) % 10 == 0


@pytest.mark.parametrize(
    "bad", ["", "3E4F", "ZZ" * 20, "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5AA"]
)
def test_sfdi_rejects_what_is_not_a_40_digit_hex_lfdi(bad: str):
    with pytest.raises(certs.CertError):
        certs.sfdi_from_lfdi(bad)


def test_lfdi_is_the_first_20_bytes_of_sha256_over_the_der_certificate_in_uppercase(pki):
    device = certs.load_certificates(read(pki, "device_chain"))[0]
    der = device.public_bytes(serialization.Encoding.DER)
    value = certs.lfdi(device)
    assert value == hashlib.sha256(der).hexdigest()[:40].upper()
    assert value == value.upper() and len(value) == 40
    assert value == pki.device_lfdi


# --- hardwareModuleName DER --------------------------------------------------------------------


def test_hardware_module_name_der_matches_the_x690_encoding_worked_by_hand():
    # SEQUENCE(9) { OID(3) 1.2.3.4 = 2A 03 04, OCTET STRING(2) "AB" }
    assert certs.hardware_module_name_der("1.2.3.4", b"AB") == bytes.fromhex(
        "3009 06032A0304 04024142"
    )


def test_hardware_module_name_der_uses_base128_for_large_arcs_and_long_lengths():
    der = certs.hardware_module_name_der("1.3.6.1.4.1.40732.1", b"x" * 200)
    # 40732 = 0x9F1C -> base 128: 0x82 0xBE 0x1C; 200 bytes -> long-form length 81 C8
    assert bytes.fromhex("2B0601040182BE1C01") in der
    assert bytes.fromhex("0481C8") in der
    assert der[:3] == bytes.fromhex("3081D6")


@pytest.mark.parametrize(
    "oid", ["1.2.3.4", "2.25.19430633615952803159040096754306174038", "2.999.1", "0.9.2342"]
)
def test_hardware_module_name_round_trips(oid: str):
    serial = bytes(range(256))
    assert certs.parse_hardware_module_name(certs.hardware_module_name_der(oid, serial)) == (
        oid,
        serial,
    )


@pytest.mark.parametrize("der", [b"", b"\x30\x05\x06\x01", bytes.fromhex("3005 0403414243")])
def test_malformed_hardware_module_name_is_a_cert_error(der: bytes):
    with pytest.raises(certs.CertError):
        certs.parse_hardware_module_name(der)


# --- keys and CSRs -----------------------------------------------------------------------------


def test_csr_has_an_empty_subject_a_p256_key_and_a_valid_signature():
    key = certs.generate_key()
    csr = certs.make_csr(key)
    assert len(csr.subject) == 0
    assert csr.is_signature_valid
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert csr.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256


def test_private_key_is_written_0600_even_with_a_permissive_umask(tmp_path: Path):
    key = certs.generate_key()
    path = tmp_path / "device-key.pem"
    old = os.umask(0)
    try:
        certs.write_private_key(path, key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = certs.load_private_key(path.read_bytes())
    assert loaded.private_numbers() == key.private_numbers()
    assert [p.name for p in tmp_path.iterdir()] == ["device-key.pem"]  # no temp file left


def test_an_existing_private_key_is_never_overwritten_unless_asked(tmp_path: Path):
    path = tmp_path / "device-key.pem"
    certs.write_private_key(path, certs.generate_key())
    original = path.read_bytes()
    with pytest.raises(FileExistsError):
        certs.write_private_key(path, certs.generate_key())
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["device-key.pem"]
    replacement = certs.generate_key()
    certs.write_private_key(path, replacement, overwrite=True)
    assert certs.load_private_key(path.read_bytes()).private_numbers() == (
        replacement.private_numbers()
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello", "not valid PEM"),
        (
            ec.generate_private_key(ec.SECP384R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "P-256",
        ),
        (
            certs.generate_key().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "encrypted",
        ),
    ],
)
def test_unusable_private_keys_are_refused_with_the_reason(data: bytes, message: str):
    with pytest.raises(certs.CertError, match=message):
        certs.load_private_key(data)


# --- the device certificate profile ------------------------------------------------------------


def sign(pki: certs.TestPki, key: ec.EllipticCurvePrivateKey, **kwargs) -> x509.Certificate:
    mica, mica_key = mica_of(pki)
    return certs.sign_device_cert(certs.make_csr(key), mica, mica_key, now=NOW, **kwargs)


def test_device_certificate_follows_the_ieee_2030_5_profile(pki):
    mica, _ = mica_of(pki)
    key = certs.generate_key()
    cert = sign(pki, key, hardware_serial=b"SN-0001")

    assert len(cert.subject) == 0
    assert cert.issuer == mica.subject
    assert cert.not_valid_before_utc == NOW.replace(microsecond=0)
    assert cert.not_valid_after_utc == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    # GeneralizedTime (tag 0x18, 15 bytes) 99991231235959Z
    assert b"\x18\x0f99991231235959Z" in cert.public_bytes(serialization.Encoding.DER)
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    cert.verify_directly_issued_by(mica)
    assert certs.lfdi(cert) != pki.device_lfdi

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    (other,) = san.value
    assert isinstance(other, x509.OtherName)
    assert other.type_id.dotted_string == "1.3.6.1.5.5.7.8.4"
    assert certs.parse_hardware_module_name(other.value) == (certs.DEFAULT_HW_TYPE, b"SN-0001")

    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_agreement
    assert not (usage.value.key_cert_sign or usage.value.key_encipherment)

    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier.dotted_string for p in policies] == ["1.3.6.1.4.1.40732.1.1"]

    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    mica_ski = mica.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == mica_ski.digest
    assert cert.public_key() == key.public_key()


def test_each_signing_gets_a_fresh_random_serial_but_the_same_key_derived_hardware_serial(pki):
    key = certs.generate_key()
    first, second = sign(pki, key), sign(pki, key)
    assert first.serial_number != second.serial_number
    hw_first, hw_second = certs.hardware_module_name(first), certs.hardware_module_name(second)
    assert hw_first is not None and hw_first == hw_second
    other = certs.hardware_module_name(sign(pki, certs.generate_key()))
    assert other is not None and other[1] != hw_first[1]


def test_custom_hw_type_and_policies_are_used(pki):
    cert = sign(
        pki,
        certs.generate_key(),
        hw_type="1.3.6.1.4.1.99999.1",
        policies=[certs.OID_DEVICE_GENERIC, certs.OID_POLICY_TEST],
    )
    hmn = certs.hardware_module_name(cert)
    assert hmn is not None and hmn[0] == "1.3.6.1.4.1.99999.1"
    assert certs.describe(certs.certificate_pem(cert))["policies"] == [
        certs.OID_DEVICE_GENERIC,
        certs.OID_POLICY_TEST,
    ]


def test_a_csr_whose_signature_does_not_verify_is_not_signed(pki):
    mica, mica_key = mica_of(pki)
    der = bytearray(certs.make_csr(certs.generate_key()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s
    tampered = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(certs.CertError, match="CSR signature is invalid"):
        certs.sign_device_cert(tampered, mica, mica_key, now=NOW)


def test_signing_refuses_a_mica_key_that_is_not_the_mica_certificates(pki):
    mica, _ = mica_of(pki)
    with pytest.raises(certs.CertError, match="MICA key does not match"):
        certs.sign_device_cert(
            certs.make_csr(certs.generate_key()), mica, certs.generate_key(), now=NOW
        )


def test_signing_refuses_a_non_ca_issuer(pki):
    device = certs.load_certificates(read(pki, "device_chain"))[0]
    device_key = certs.load_private_key(read(pki, "device_key"))
    with pytest.raises(certs.CertError, match="not a CA"):
        certs.sign_device_cert(certs.make_csr(certs.generate_key()), device, device_key, now=NOW)


def test_signing_refuses_a_non_p256_csr(pki):
    mica, mica_key = mica_of(pki)
    other = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(other, hashes.SHA256())
    )
    with pytest.raises(certs.CertError, match="P-256"):
        certs.sign_device_cert(csr, mica, mica_key, now=NOW)


# --- the test PKI ------------------------------------------------------------------------------


def test_test_pki_writes_every_file_with_keys_private(pki):
    names = sorted(p.name for p in pki.directory.iterdir())
    assert names == sorted(certs.TEST_PKI_FILES.values())
    for name in ("device_key", "mica_key", "server_key"):
        assert stat.S_IMODE(pki.files[name].stat().st_mode) == 0o600
    summary = json.loads(read(pki, "summary"))
    assert summary["device"] == {"lfdi": pki.device_lfdi, "sfdi": pki.device_sfdi}


def test_test_pki_chains_hold_the_leaf_then_its_issuer_under_one_serca(pki):
    serca = certs.load_certificates(read(pki, "serca"))[0]
    device, mica = certs.load_certificates(read(pki, "device_chain"))
    server, server_ca = certs.load_certificates(read(pki, "server_chain"))
    serca.verify_directly_issued_by(serca)
    mica.verify_directly_issued_by(serca)
    server_ca.verify_directly_issued_by(serca)
    device.verify_directly_issued_by(mica)
    server.verify_directly_issued_by(server_ca)
    assert mica.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert certs.load_certificates(read(pki, "mica_cert")) == [mica]


def test_test_pki_refuses_to_overwrite_an_existing_key_folder(tmp_path: Path):
    (tmp_path / "device-key.pem").write_bytes(b"the real key")
    with pytest.raises(FileExistsError):
        certs.make_test_pki(tmp_path, now=NOW)
    assert (tmp_path / "device-key.pem").read_bytes() == b"the real key"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device-key.pem"]


def test_test_pki_overwrites_an_earlier_one_when_asked(pki):
    again = certs.make_test_pki(pki.directory, now=NOW, overwrite=True)
    assert again.device_lfdi != pki.device_lfdi
    assert json.loads(read(again, "summary"))["device"]["lfdi"] == again.device_lfdi


# --- describe ----------------------------------------------------------------------------------


def test_describe_reports_the_device_identity_and_profile(pki):
    info = certs.describe(read(pki, "device_chain"))
    json.dumps(info)  # serialisable as is
    assert info["lfdi"] == pki.device_lfdi
    assert info["sfdi"] == pki.device_sfdi
    assert info["subject"] == ""
    assert "CN=dynexport test MICA" in info["issuer"]
    assert info["notBefore"] == "2026-03-01T12:30:45Z"
    assert info["notAfter"] == "9999-12-31T23:59:59Z"
    device = certs.load_certificates(read(pki, "device_chain"))[0]
    assert int(info["serial"], 16) == device.serial_number
    assert info["hardwareModuleName"]["hwType"] == certs.DEFAULT_HW_TYPE
    serial_text = info["hardwareModuleName"]["hwSerialNumText"]
    assert bytes.fromhex(info["hardwareModuleName"]["hwSerialNum"]) == serial_text.encode()
    assert info["policies"] == list(certs.TEST_DEVICE_POLICIES)
    assert [c["ca"] for c in info["chain"]] == [False, True]
    assert info["chain"][1]["subject"] == info["issuer"]


def test_describe_gives_null_hardware_name_for_a_certificate_without_one(pki):
    info = certs.describe(read(pki, "server_chain"))
    assert info["hardwareModuleName"] is None
    assert info["policies"] == []
    assert info["subject"] == "CN=localhost"


def test_describe_accepts_a_der_certificate(pki):
    device = certs.load_certificates(read(pki, "device_chain"))[0]
    info = certs.describe(device.public_bytes(serialization.Encoding.DER))
    assert info["lfdi"] == pki.device_lfdi and len(info["chain"]) == 1


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_describe_rejects_what_is_not_a_certificate(data: bytes):
    with pytest.raises(certs.CertError, match="not valid PEM"):
        certs.describe(data)


# --- check_chain -------------------------------------------------------------------------------


def test_check_chain_accepts_the_device_chain_and_returns_its_identity(pki):
    result = certs.check_chain(
        read(pki, "device_chain"), read(pki, "device_key"), [read(pki, "serca")], now=NOW
    )
    assert (result.lfdi, result.sfdi) == (pki.device_lfdi, pki.device_sfdi)
    assert [c.subject.rfc4514_string() for c in result.path][1:] == [
        "CN=dynexport test MICA,O=dynexport test PKI (not for production)",
        "CN=dynexport test SERCA,O=dynexport test PKI (not for production)",
    ]
    assert result.warnings == ()


def test_check_chain_finds_the_right_serca_among_several(pki, tmp_path: Path):
    other = certs.make_test_pki(tmp_path / "other", now=NOW)
    result = certs.check_chain(
        read(pki, "device_chain"),
        read(pki, "device_key"),
        [read(other, "serca"), read(pki, "serca")],
    )
    assert result.lfdi == pki.device_lfdi


def test_check_chain_rejects_a_certificate_for_another_key(pki):
    with pytest.raises(certs.CertError, match="certificate does not match the private key"):
        certs.check_chain(
            read(pki, "device_chain"),
            certs.private_key_pem(certs.generate_key()),
            read(pki, "serca"),
        )


def test_check_chain_rejects_a_chain_from_another_serca(pki, tmp_path: Path):
    other = certs.make_test_pki(tmp_path / "other", now=NOW)
    with pytest.raises(certs.CertError, match="not signed by the configured SERCA"):
        certs.check_chain(read(pki, "device_chain"), read(pki, "device_key"), read(other, "serca"))


def test_check_chain_rejects_a_device_certificate_without_its_mica(pki):
    device = certs.load_certificates(read(pki, "device_chain"))[0]
    with pytest.raises(certs.CertError, match="not signed by the configured SERCA"):
        certs.check_chain(
            certs.certificate_pem(device), read(pki, "device_key"), read(pki, "serca")
        )


def test_check_chain_rejects_a_forged_mica_with_the_same_name(pki):
    """A MICA with the right name but another key must not pass: signatures are checked."""
    real_mica, _ = mica_of(pki)
    forged_key = certs.generate_key()
    forged = (
        x509.CertificateBuilder()
        .subject_name(real_mica.subject)
        .issuer_name(real_mica.issuer)
        .public_key(forged_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(certs.NOT_AFTER_INDEFINITE)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(forged_key, hashes.SHA256())
    )
    device_key = certs.generate_key()
    device = certs.sign_device_cert(certs.make_csr(device_key), forged, forged_key, now=NOW)
    with pytest.raises(certs.CertError, match="not signed by the configured SERCA"):
        certs.check_chain(
            certs.certificate_pem(device, forged),
            certs.private_key_pem(device_key),
            read(pki, "serca"),
        )


def test_check_chain_rejects_an_end_entity_used_as_issuer(pki):
    """A device certificate must not vouch for another one, whatever the signature says."""
    device, mica = certs.load_certificates(read(pki, "device_chain"))
    device_key = certs.load_private_key(read(pki, "device_key"))
    victim_key = certs.generate_key()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(device.subject)
        .public_key(victim_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(certs.NOT_AFTER_INDEFINITE)
        .sign(device_key, hashes.SHA256())
    )
    with pytest.raises(certs.CertError, match="not a CA"):
        certs.check_chain(
            certs.certificate_pem(leaf, device, mica),
            certs.private_key_pem(victim_key),
            read(pki, "serca"),
        )


def test_check_chain_reports_a_certificate_not_yet_valid(pki):
    with pytest.raises(certs.CertError, match="not valid before 2026-03-01T12:30:45Z"):
        certs.check_chain(
            read(pki, "device_chain"),
            read(pki, "device_key"),
            read(pki, "serca"),
            now=NOW - timedelta(days=1),
        )


@pytest.mark.parametrize(
    ("chain", "key", "serca", "message"),
    [
        (b"nonsense", None, None, "certificate chain is not valid PEM"),
        (None, b"nonsense", None, "private key is not valid PEM"),
        (None, None, b"nonsense", "SERCA file is not valid PEM"),
    ],
)
def test_check_chain_names_the_file_that_is_not_pem(pki, chain, key, serca, message):
    with pytest.raises(certs.CertError, match=message):
        certs.check_chain(
            chain or read(pki, "device_chain"),
            key or read(pki, "device_key"),
            serca or read(pki, "serca"),
        )


def test_check_chain_warns_about_a_certificate_outside_the_2030_5_profile(pki):
    mica, mica_key = mica_of(pki)
    key = certs.generate_key()
    plain = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "dev")]))
        .issuer_name(mica.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=365))
        .sign(mica_key, hashes.SHA256())
    )
    result = certs.check_chain(
        certs.certificate_pem(plain, mica), certs.private_key_pem(key), read(pki, "serca")
    )
    assert len(result.warnings) == 4
    assert any("hardwareModuleName" in w for w in result.warnings)


def test_cryptography_web_pki_verifier_refuses_2030_5_device_certificates(pki):
    """Why check_chain verifies by hand: the library's verifier rejects the device profile."""
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    device, mica = certs.load_certificates(read(pki, "device_chain"))
    verifier = (
        PolicyBuilder()
        .store(Store(certs.load_certificates(read(pki, "serca"))))
        .time(NOW + timedelta(days=1))
        .build_client_verifier()
    )
    with pytest.raises(VerificationError):
        verifier.verify(device, [mica])
    # while the hand verification accepts the very same chain
    certs.check_chain(read(pki, "device_chain"), read(pki, "device_key"), read(pki, "serca"))
