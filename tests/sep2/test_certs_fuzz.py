"""A malformed certificate is a CertError naming the problem, wherever cryptography trips on it.

cryptography decodes lazily (extensions, names, dates, keys, signatures), so the exceptions a
corrupted certificate raises surface deep inside our checks; fuzzing once found 34 places where
something other than CertError escaped. Each entry point that reads an uploaded certificate must
turn all of them into CertError.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.sep2 import certs


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def _der_chain(pki_dir: Path) -> list[bytes]:
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = x509.load_pem_x509_certificates((pki_dir / "device-chain.pem").read_bytes())
    return [c.public_bytes(Encoding.DER) for c in chain]


@st.composite
def mutated(draw: st.DrawFn, der: bytes) -> bytes:
    """The DER with a few bytes changed, inserted or removed (lengths stay mostly plausible)."""
    data = bytearray(der)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "flip", "insert", "delete"]))
        if action == "set":
            data[pos] = draw(st.integers(0, 255))
        elif action == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif len(data) > 1:
            del data[pos]
    return bytes(data)


@pytest.fixture(scope="module")
def chain(pki_dir: Path) -> list[bytes]:
    return _der_chain(pki_dir)


def test_a_corrupted_device_certificate_only_ever_raises_cert_error(
    chain: list[bytes], pki_dir: Path
) -> None:
    key = (pki_dir / "device-key.pem").read_bytes()
    serca = (pki_dir / "serca.pem").read_bytes()

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(leaf=mutated(chain[0]), which=st.sampled_from(["describe", "check", "load"]))
    def run(leaf: bytes, which: str) -> None:
        pem = _pem(leaf) + b"".join(_pem(c) for c in chain[1:])
        try:
            if which == "describe":
                certs.describe(pem)
            elif which == "check":
                certs.check_chain(pem, key, serca)
            else:
                for cert in certs.load_certificates(pem):
                    certs.lfdi(cert)
        except certs.CertError as exc:
            assert str(exc)  # says what is wrong

    run()


def test_an_unparseable_extension_is_reported_not_raised(chain: list[bytes]) -> None:
    """A known escape: a duplicated extension is only noticed when extensions are read."""
    der = bytearray(chain[0])
    marker = bytes.fromhex("0603551d11")  # OID 2.5.29.17 (subjectAltName) inside the leaf
    at = der.find(marker)
    if at < 0:
        pytest.skip("the test device certificate has no subjectAltName")
    der[at + 4] = 0x0E  # now 2.5.29.14 (subjectKeyIdentifier), which it already has
    with pytest.raises(certs.CertError, match="malformed"):
        certs.describe(_pem(bytes(der)))
