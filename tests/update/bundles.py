"""Real RAUC bundles for tests: a signing key made by the build's own script, and a bundle signed
with it by the real ``rauc`` program (the recipe of ``make bundle``, on a small random root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIGNING_KEY = ROOT / "buildroot/scripts/signing-key.sh"
MANIFEST = ROOT / "buildroot/board/dynexport/rauc/manifest.raucm.in"

needs_rauc = pytest.mark.skipif(
    shutil.which("rauc") is None or shutil.which("openssl") is None,
    reason="needs rauc and openssl (Debian: rauc)",
)


def make_key(folder: Path, common_name: str | None = None) -> Path:
    """A development signing key in ``folder`` (key.pem, cert.pem, keyring.pem), as the build
    makes one; ``common_name`` names another signer (a foreign key)."""
    args = [str(SIGNING_KEY), str(folder)] + ([common_name] if common_name else [])
    subprocess.run(args, check=True, capture_output=True)
    return folder


def make_bundle(tmp: Path, key: Path, version: str, root_bytes: int = 65536) -> Path:
    """A verity bundle for board ``test`` holding ``root_bytes`` of random root file system
    (random data does not compress: the bundle is about that large), signed with ``key``."""
    content = tmp / f"content-{version}"
    content.mkdir()
    (content / "rootfs.img").write_bytes(os.urandom(root_bytes))
    manifest = MANIFEST.read_text().replace("@BOARD@", "test").replace("@VERSION@", version)
    (content / "manifest.raucm").write_text(manifest.replace("@BUILD@", "20260101T000000Z"))
    bundle = tmp / f"{version}.raucb"
    subprocess.run(
        ["rauc", "bundle", f"--cert={key}/cert.pem", f"--key={key}/key.pem", str(content),
         str(bundle)],
        check=True, capture_output=True,
    )  # fmt: skip
    return bundle
