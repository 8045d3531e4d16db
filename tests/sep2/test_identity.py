"""The device identity the running service computes with ``ssl`` and ``hashlib`` alone.

``sep2.identity`` must give exactly the LFDI and SFDI that ``sep2.certs`` computes with
``cryptography`` (the utility registers the device by them), and refuse what it cannot read with
a CertError, never another exception.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.sep2 import certs, identity
from dynexport.sep2.identity import device_lfdi


def _chain(pki_dir: Path) -> bytes:
    return (pki_dir / certs.TEST_PKI_FILES["device_chain"]).read_bytes()


def test_the_lfdi_matches_the_one_cryptography_computes(pki_dir: Path) -> None:
    chain = _chain(pki_dir)
    device = certs.load_certificates(chain)[0]
    assert identity.chain_lfdi(chain) == certs.lfdi(device)
    assert certs.sfdi(device) == identity.sfdi_from_lfdi(identity.chain_lfdi(chain))


def test_every_certificate_of_a_chain_is_read_in_order(pki_dir: Path) -> None:
    chain = _chain(pki_dir)
    from cryptography.hazmat.primitives.serialization import Encoding

    expected = [c.public_bytes(Encoding.DER) for c in certs.load_certificates(chain)]
    assert identity.certificate_ders(chain) == expected
    assert len(expected) == 2  # device and MICA


def test_a_der_certificate_and_a_pem_with_a_key_beside_it_are_read(pki_dir: Path) -> None:
    chain = _chain(pki_dir)
    first = chain[: chain.index(b"-----END CERTIFICATE-----") + 25].decode()
    der = ssl.PEM_cert_to_DER_cert(first)
    assert identity.chain_lfdi(der) == identity.chain_lfdi(chain)
    key = (pki_dir / certs.TEST_PKI_FILES["device_key"]).read_bytes()
    assert identity.chain_lfdi(key + chain) == identity.chain_lfdi(chain)


def test_the_service_reads_its_lfdi_from_the_configured_file(pki_dir: Path) -> None:
    path = pki_dir / certs.TEST_PKI_FILES["device_chain"]
    assert device_lfdi(path) == certs.lfdi(certs.load_certificates(path.read_bytes())[0])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello", "not valid PEM (no BEGIN CERTIFICATE block) nor DER"),
        (b"", "not valid PEM (no BEGIN CERTIFICATE block) nor DER"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not valid PEM:"),
        (b"-----BEGIN CERTIFICATE-----\nab!c\n-----END CERTIFICATE-----\n", "not valid PEM:"),
        (b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "not valid PEM:"),
    ],
    ids=["text", "empty", "key only", "bad base64", "empty sequence"],
)
def test_unreadable_files_give_the_messages_certs_gives(data: bytes, message: str) -> None:
    with pytest.raises(certs.CertError, match=message.replace("(", r"\(").replace(")", r"\)")):
        certs.load_certificates(data)
    with pytest.raises(certs.CertError, match=message.replace("(", r"\(").replace(")", r"\)")):
        identity.chain_lfdi(data)


def test_certs_and_identity_share_one_error_class() -> None:
    assert certs.CertError is identity.CertError
    assert certs.sfdi_from_lfdi is identity.sfdi_from_lfdi


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_damaged_chain_gives_a_cert_error_or_the_lfdi_cryptography_agrees_with(
    pki_dir: Path, data: st.DataObject
) -> None:
    chain = bytearray(_chain(pki_dir))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(chain) - 1))
        chain[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(chain)))
    damaged = bytes(chain[:cut])
    try:
        ours = identity.chain_lfdi(damaged)
    except certs.CertError:
        return
    try:
        theirs = certs.lfdi(certs.load_certificates(damaged)[0])
    except certs.CertError:
        return  # OpenSSL reads some encodings cryptography's stricter parser refuses
    assert ours == theirs
