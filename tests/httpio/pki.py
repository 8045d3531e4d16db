"""The test PKI for the HTTP tests: the product's own IEEE 2030.5 test PKI, made twice.

``certs.make_test_pki`` gives SERCA → MICA → device (empty subject, hardwareModuleName SAN) and a
server certificate for 127.0.0.1/localhost. A second, unrelated one lets tests prove that a
client trusting the wrong root refuses the server, and that a server refuses a foreign device.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from dynexport.sep2 import certs


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


def make_pki(folder: Path) -> Pki:
    """Writes both test PKIs under ``folder`` and returns the paths the tests use."""
    now = dt.datetime.now(dt.UTC)
    main = certs.make_test_pki(folder / "main", now=now).files
    other = certs.make_test_pki(folder / "other", now=now).files
    device = certs.load_certificates(main["device_chain"].read_bytes())[0]
    return Pki(
        serca=main["serca"],
        other_serca=other["serca"],
        server_cert=main["server_chain"],
        server_key=main["server_key"],
        device_chain=main["device_chain"],
        device_key=main["device_key"],
        device_cert_der=device.public_bytes(serialization.Encoding.DER),
        other_device_chain=other["device_chain"],
        other_device_key=other["device_key"],
    )
