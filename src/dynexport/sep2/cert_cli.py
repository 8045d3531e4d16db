"""``dynexport cert ...``: make a key and CSR, sign device certificates, show identities.

A thin adapter over :mod:`dynexport.sep2.certs`; every decision lives there.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from dynexport.sep2 import certs
from dynexport.system.storage import atomic_write

_KEY_NAME = "device-key.pem"
_CSR_NAME = "device.csr"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "cert", help="IEEE 2030.5 device keys, CSRs and certificates"
    )
    csub = p.add_subparsers(dest="cert_command", metavar="ACTION", required=True)

    req = csub.add_parser("request", help="make the device key (0600) and a CSR to get it signed")
    req.add_argument(
        "--dir", required=True, type=Path, help="folder for device-key.pem, device.csr"
    )
    req.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key (the old one is kept as device-key.pem.<time>.bak)",
    )
    req.set_defaults(handler=_request)

    sign = csub.add_parser("sign", help="issue a device certificate from a CSR (MICA holders)")
    sign.add_argument("--csr", required=True, type=Path, help="the device's CSR (PEM or DER)")
    sign.add_argument("--mica-cert", required=True, type=Path, help="the MICA certificate (PEM)")
    sign.add_argument("--mica-key", required=True, type=Path, help="the MICA private key (PEM)")
    sign.add_argument("--out", required=True, type=Path, help="device certificate + MICA (PEM)")
    sign.add_argument("--hw-serial", help="hardwareModuleName serial number (text)")
    sign.add_argument(
        "--hw-type",
        default=certs.DEFAULT_HW_TYPE,
        help="hardwareModuleName hwType OID (the manufacturer's; default: dynexport's UUID OID)",
    )
    sign.add_argument(
        "--policy",
        action="append",
        metavar="OID",
        help=f"certificate policy OID, repeatable (default {certs.OID_DEVICE_GENERIC})",
    )
    sign.add_argument(
        "--test",
        action="store_true",
        help=f"also add the IEEE 2030.5 test policy {certs.OID_POLICY_TEST}",
    )
    sign.set_defaults(handler=_sign)

    show = csub.add_parser("show", help="print a certificate's LFDI, SFDI and profile")
    show.add_argument("cert", type=Path, help="certificate or chain file (PEM or DER)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)

    pki = csub.add_parser("test-pki", help="make a SERCA/MICA/device/server PKI for local tests")
    pki.add_argument("--dir", required=True, type=Path, help="folder to write the PKI into")
    pki.add_argument("--force", action="store_true", help="overwrite an earlier test PKI")
    pki.set_defaults(handler=_test_pki)


def _fail(message: str) -> int:
    print(f"dynexport: error: {message}", file=sys.stderr)
    return 2


def _os_problem(exc: OSError, path: Path | None = None) -> str:
    """``path: reason`` for a file that cannot be read or written (one line, no errno)."""
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where is not None else reason


def _request(args: argparse.Namespace) -> int:
    try:
        return _request_in(args.dir, force=args.force)
    except OSError as exc:
        return _fail(_os_problem(exc, args.dir))


def _request_in(folder: Path, *, force: bool) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    key_path = folder / _KEY_NAME
    backup: Path | None = None
    if key_path.exists():
        if not force:
            return _fail(
                f"{key_path} already exists; it is this device's identity. "
                "Use --force to replace it (the old key is kept as a .bak file)."
            )
        backup = certs.keep_copy(key_path)
    key = certs.generate_key()
    try:
        certs.write_private_key(key_path, key, overwrite=force)
    except FileExistsError:
        return _fail(f"{key_path} appeared while writing; not replaced")
    csr = certs.make_csr(key)
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    atomic_write(folder / _CSR_NAME, csr_pem, mode=0o644, overwrite=True)
    if backup is not None:
        print(f"previous key kept as {backup}")
    print(f"private key: {key_path} (mode 0600; keep it, never send it anywhere)")
    print(f"CSR:         {folder / _CSR_NAME} (send this to your certificate issuer)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    try:
        csr = certs.load_csr(args.csr.read_bytes())
        mica_cert = certs.load_certificates(args.mica_cert.read_bytes())[0]
        mica_key = certs.load_private_key(args.mica_key.read_bytes())
        policies = list(args.policy or certs.DEVICE_POLICIES)
        if args.test and certs.OID_POLICY_TEST not in policies:
            policies.append(certs.OID_POLICY_TEST)
        cert = certs.sign_device_cert(
            csr,
            mica_cert,
            mica_key,
            hardware_serial=args.hw_serial.encode() if args.hw_serial else None,
            hw_type=args.hw_type,
            policies=policies,
            now=datetime.now(UTC),
        )
    except (certs.CertError, ValueError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(_os_problem(exc))
    chain = certs.certificate_pem(cert, mica_cert)
    try:
        atomic_write(args.out, chain, mode=0o644, overwrite=True)
    except OSError as exc:
        return _fail(_os_problem(exc, args.out))
    lfdi = certs.lfdi(cert)
    print(f"wrote {args.out} (device certificate + MICA)")
    print(f"LFDI: {lfdi}")
    print(f"SFDI: {certs.sfdi_from_lfdi(lfdi)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        info = certs.describe(args.cert.read_bytes())
    except certs.CertError as exc:
        return _fail(f"{args.cert}: {exc}")
    except OSError as exc:
        return _fail(_os_problem(exc, args.cert))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(_readable(info))
    return 0


def _readable(info: dict[str, Any]) -> str:
    lines = [
        f"LFDI:      {info['lfdi']}",
        f"SFDI:      {info['sfdi']}",
        f"Subject:   {info['subject'] or '(empty)'}",
        f"Issuer:    {info['issuer'] or '(empty)'}",
        f"Valid:     {info['notBefore']} to {info['notAfter']}",
        f"Serial:    {info['serial']}",
    ]
    hmn = info["hardwareModuleName"]
    if hmn is None:
        lines.append("Hardware:  (no hardwareModuleName)")
    else:
        serial = hmn["hwSerialNumText"] or hmn["hwSerialNum"]
        lines.append(f"Hardware:  type {hmn['hwType']}, serial {serial}")
    policies = info["policies"] or ["(none)"]
    for i, oid in enumerate(policies):
        name = certs.POLICY_NAMES.get(oid)
        label = "Policies:  " if i == 0 else "           "
        lines.append(f"{label}{oid}" + (f" ({name})" if name else ""))
    lines.append(f"Chain:     {len(info['chain'])} certificate(s)")
    for i, c in enumerate(info["chain"]):
        kind = "CA" if c["ca"] else "end entity"
        lines.append(f"  [{i}] {c['subject'] or '(empty subject)'} ({kind}), issuer {c['issuer']}")
    return "\n".join(lines)


def _test_pki(args: argparse.Namespace) -> int:
    try:
        pki = certs.make_test_pki(args.dir, now=datetime.now(UTC), overwrite=args.force)
    except FileExistsError as exc:
        return _fail(f"{exc.filename}: {exc.strerror} (use --force for an earlier test PKI)")
    except OSError as exc:
        return _fail(_os_problem(exc, args.dir))
    print(f"test PKI written to {pki.directory} (for local testing only)")
    for name in certs.TEST_PKI_FILES.values():
        print(f"  {name}")
    print(f"device LFDI: {pki.device_lfdi}")
    print(f"device SFDI: {pki.device_sfdi}")
    return 0
