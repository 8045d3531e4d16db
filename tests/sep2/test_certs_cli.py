"""``dynexport cert ...`` end to end, and cross-checks of our output with the openssl tool."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dynexport.cli import main
from dynexport.sep2 import certs

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")


@pytest.fixture
def pki(tmp_path: Path) -> certs.TestPki:
    return certs.make_test_pki(tmp_path / "pki", now=datetime.now(UTC))


def test_request_writes_a_private_key_and_an_empty_subject_csr(tmp_path: Path, capsys):
    folder = tmp_path / "device"
    assert main(["cert", "request", "--dir", str(folder)]) == 0
    key_path, csr_path = folder / "device-key.pem", folder / "device.csr"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = certs.load_private_key(key_path.read_bytes())
    csr = certs.load_csr(csr_path.read_bytes())
    assert csr.is_signature_valid and len(csr.subject) == 0
    assert csr.public_key() == key.public_key()
    assert str(csr_path) in capsys.readouterr().out


def test_request_refuses_to_replace_an_existing_key(tmp_path: Path, capsys):
    assert main(["cert", "request", "--dir", str(tmp_path)]) == 0
    key_before = (tmp_path / "device-key.pem").read_bytes()
    csr_before = (tmp_path / "device.csr").read_bytes()
    capsys.readouterr()
    assert main(["cert", "request", "--dir", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "device-key.pem").read_bytes() == key_before
    assert (tmp_path / "device.csr").read_bytes() == csr_before


def test_request_force_replaces_the_key_and_keeps_the_old_one_as_a_private_backup(tmp_path: Path):
    assert main(["cert", "request", "--dir", str(tmp_path)]) == 0
    old_key = (tmp_path / "device-key.pem").read_bytes()
    assert main(["cert", "request", "--dir", str(tmp_path), "--force"]) == 0
    new_key = (tmp_path / "device-key.pem").read_bytes()
    assert new_key != old_key
    (backup,) = tmp_path.glob("device-key.pem.*.bak")
    assert backup.read_bytes() == old_key
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    csr = certs.load_csr((tmp_path / "device.csr").read_bytes())
    assert csr.public_key() == certs.load_private_key(new_key).public_key()


def test_request_sign_show_is_the_whole_manufacturer_flow(pki, tmp_path: Path, capsys):
    device = tmp_path / "device"
    assert main(["cert", "request", "--dir", str(device)]) == 0
    out = tmp_path / "signed.pem"
    args = ["cert", "sign", "--csr", str(device / "device.csr")]
    args += ["--mica-cert", str(pki.files["mica_cert"]), "--mica-key", str(pki.files["mica_key"])]
    args += ["--out", str(out), "--hw-serial", "PI-4B-0042", "--test"]
    assert main(args) == 0
    chain = certs.load_certificates(out.read_bytes())
    assert len(chain) == 2
    assert chain[1] == certs.load_certificates(pki.files["mica_cert"].read_bytes())[0]
    capsys.readouterr()

    assert main(["cert", "show", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["lfdi"] == certs.lfdi(chain[0])
    assert info["sfdi"] == certs.sfdi_from_lfdi(info["lfdi"])
    assert info["hardwareModuleName"]["hwSerialNumText"] == "PI-4B-0042"
    assert info["policies"] == [certs.OID_DEVICE_GENERIC, certs.OID_POLICY_TEST]
    assert info["notAfter"] == "9999-12-31T23:59:59Z"

    # and what the setup page will do with the upload: it verifies against the SERCA
    result = certs.check_chain(
        out.read_bytes(), (device / "device-key.pem").read_bytes(), pki.files["serca"].read_bytes()
    )
    assert result.lfdi == info["lfdi"]


def test_sign_reports_a_mica_key_mismatch_without_writing(pki, tmp_path: Path, capsys):
    assert main(["cert", "request", "--dir", str(tmp_path)]) == 0
    out = tmp_path / "signed.pem"
    args = ["cert", "sign", "--csr", str(tmp_path / "device.csr")]
    args += ["--mica-cert", str(pki.files["mica_cert"]), "--mica-key", str(pki.files["device_key"])]
    assert main([*args, "--out", str(out)]) == 2
    assert "MICA key does not match" in capsys.readouterr().err
    assert not out.exists()


def test_show_prints_a_readable_summary(pki, capsys):
    assert main(["cert", "show", str(pki.files["device_chain"])]) == 0
    text = capsys.readouterr().out
    assert f"LFDI:      {pki.device_lfdi}" in text
    assert f"SFDI:      {pki.device_sfdi}" in text
    assert "Subject:   (empty)" in text
    assert "1.3.6.1.4.1.40732.2.1 (IEEE 2030.5 test certificate)" in text
    assert "Chain:     2 certificate(s)" in text


def test_show_explains_a_file_that_is_not_a_certificate(tmp_path: Path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main(["cert", "show", str(bad)]) == 2
    assert "not valid PEM" in capsys.readouterr().err


def test_test_pki_command_writes_the_pki_and_refuses_to_overwrite_it(tmp_path: Path, capsys):
    assert main(["cert", "test-pki", "--dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "pki.json").read_text())
    assert summary["device"]["lfdi"] in capsys.readouterr().out
    key_before = (tmp_path / "device-key.pem").read_bytes()
    assert main(["cert", "test-pki", "--dir", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "device-key.pem").read_bytes() == key_before
    assert main(["cert", "test-pki", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "device-key.pem").read_bytes() != key_before


def test_the_installed_command_makes_a_test_pki_and_shows_its_device(tmp_path: Path):
    exe = Path(sys.executable).parent / "dynexport"
    if not exe.exists():
        pytest.skip("dynexport console script not installed next to the interpreter")
    made = subprocess.run(
        [str(exe), "cert", "test-pki", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads((tmp_path / "pki.json").read_text())
    assert summary["device"]["lfdi"] in made.stdout
    shown = subprocess.run(
        [str(exe), "cert", "show", "--json", str(tmp_path / "device-chain.pem")],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(shown.stdout)
    assert (info["lfdi"], info["sfdi"]) == (summary["device"]["lfdi"], summary["device"]["sfdi"])


# --- openssl cross-checks ----------------------------------------------------------------------


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], input=stdin, capture_output=True, check=False)


def device_pem(pki: certs.TestPki, tmp_path: Path) -> Path:
    path = tmp_path / "device.pem"
    path.write_bytes(
        certs.certificate_pem(certs.load_certificates(pki.files["device_chain"].read_bytes())[0])
    )
    return path


@needs_openssl
def test_openssl_verifies_the_device_certificate_through_the_mica_to_the_serca(pki, tmp_path):
    device = device_pem(pki, tmp_path)
    ok = openssl(
        "verify",
        "-CAfile",
        str(pki.files["serca"]),
        "-untrusted",
        str(pki.files["mica_cert"]),
        str(device),
    )
    assert ok.returncode == 0, ok.stderr
    assert b"OK" in ok.stdout
    missing_mica = openssl("verify", "-CAfile", str(pki.files["serca"]), str(device))
    assert missing_mica.returncode != 0


@needs_openssl
def test_openssl_verifies_the_server_chain(pki):
    ok = openssl(
        "verify",
        "-CAfile",
        str(pki.files["serca"]),
        "-untrusted",
        str(pki.files["server_chain"]),
        "-purpose",
        "sslserver",
        str(pki.files["server_chain"]),
    )
    assert ok.returncode == 0, ok.stderr


@needs_openssl
def test_openssl_shows_the_2030_5_extensions(pki, tmp_path):
    text = openssl("x509", "-noout", "-text", "-in", str(device_pem(pki, tmp_path))).stdout.decode()
    assert "Subject Alternative Name: critical" in text
    assert "1.3.6.1.5.5.7.8.4" in text or "Hardware Module Name" in text
    assert "Key Usage: critical" in text and "Digital Signature, Key Agreement" in text
    for oid in certs.TEST_DEVICE_POLICIES:
        assert f"Policy: {oid}" in text
    assert "Not After : Dec 31 23:59:59 9999 GMT" in text
    assert "ecdsa-with-SHA256" in text and "Authority Key Identifier" in text


@needs_openssl
def test_openssl_reads_our_hardware_module_name_der_as_oid_and_octet_string(tmp_path):
    der = certs.hardware_module_name_der("1.3.6.1.4.1.40732.99.7", b"SN-1")
    parsed = openssl("asn1parse", "-inform", "DER", stdin=der)
    assert parsed.returncode == 0, parsed.stderr
    text = parsed.stdout.decode()
    assert "SEQUENCE" in text
    assert "OBJECT            :1.3.6.1.4.1.40732.99.7" in text
    assert "OCTET STRING      :SN-1" in text


@needs_openssl
def test_openssl_agrees_with_the_lfdi(pki, tmp_path):
    der = openssl("x509", "-outform", "DER", "-in", str(device_pem(pki, tmp_path))).stdout
    assert hashlib.sha256(der).hexdigest()[:40].upper() == pki.device_lfdi
    cert = x509.load_der_x509_certificate(der)
    assert cert.public_bytes(serialization.Encoding.DER) == der


@needs_openssl
def test_openssl_verifies_the_csr_and_sees_an_empty_subject(tmp_path):
    assert main(["cert", "request", "--dir", str(tmp_path)]) == 0
    checked = openssl("req", "-in", str(tmp_path / "device.csr"), "-noout", "-verify", "-subject")
    assert checked.returncode == 0, checked.stderr
    assert b"verify OK" in checked.stdout + checked.stderr
    assert checked.stdout.strip().endswith(b"subject=")
