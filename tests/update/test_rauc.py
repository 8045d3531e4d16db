"""The RAUC adapter: its parsers against RAUC's own output, and signatures checked by real rauc."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from dynexport.update.rauc import Rauc, RaucError, parse_info, parse_status
from tests.update.bundles import SIGNING_KEY, make_bundle, needs_rauc

STATUS = {
    "compatible": "dynexport-rpi4_64",
    "variant": "",
    "booted": "B",
    "boot_primary": "rootfs.1",
    "slots": [
        {"rootfs.0": {"class": "rootfs", "device": "/dev/disk/by-partuuid/64796e78-02",
                      "type": "raw", "bootname": "A", "state": "inactive", "parent": None,
                      "mountpoint": None, "boot_status": "good",
                      "slot_status": {"bundle": {"compatible": "dynexport-rpi4_64",
                                                 "version": "1.3.0"}, "status": "ok"}}},
        {"rootfs.1": {"class": "rootfs", "device": "/dev/disk/by-partuuid/64796e78-03",
                      "type": "raw", "bootname": "B", "state": "booted", "parent": None,
                      "mountpoint": "/", "boot_status": "good",
                      "slot_status": {"bundle": {"compatible": "dynexport-rpi4_64",
                                                 "version": "1.4.0"}, "status": "ok"}}},
    ],
}  # fmt: skip


def test_status_names_the_booted_slot_the_primary_and_each_slots_bundle():
    st = parse_status(json.dumps(STATUS))
    assert st.booted == "B"
    assert st.primary_bootname == "B"
    assert [(s.name, s.bootname, s.state, s.bundle_version) for s in st.slots] == [
        ("rootfs.0", "A", "inactive", "1.3.0"),
        ("rootfs.1", "B", "booted", "1.4.0"),
    ]


def test_status_that_is_not_json_is_a_rauc_error():
    with pytest.raises(RaucError, match="no JSON"):
        parse_status("Error retrieving slot status via D-Bus")


def test_info_without_a_signer_is_refused():
    with pytest.raises(RaucError, match="no version or signer"):
        parse_info("Compatible: \t'x'\nVersion: \t'1'\n")


@needs_rauc
async def test_info_shows_version_and_verified_signer_and_refuses_another_key(tmp_path: Path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    await trio.run_process([str(SIGNING_KEY), str(ours)], capture_stderr=True)
    await trio.run_process([str(SIGNING_KEY), str(theirs), "someone else"], capture_stderr=True)
    good = make_bundle(tmp_path, ours, "1.4.0+abc")
    foreign = make_bundle(tmp_path, theirs, "6.6.6")
    rauc = Rauc(extra=[f"--keyring={ours}/keyring.pem"])
    info = await rauc.info(str(good))
    assert info.version == "1.4.0+abc"
    assert info.compatible == "dynexport-test"
    assert "CN = dynexport development bundle signing key - NOT FOR FIELD USE" in info.signer
    with pytest.raises(RaucError, match="signature verification failed"):
        await rauc.info(str(foreign))


def test_the_development_key_warns_loudly(tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    proc = subprocess.run(
        [str(SIGNING_KEY), str(tmp_path / "k")], capture_output=True, text=True, check=True
    )
    assert "WARNING: made a DEVELOPMENT signing key" in proc.stderr
    assert (tmp_path / "k/keyring.pem").read_text() == (tmp_path / "k/cert.pem").read_text()
    assert (tmp_path / "k/key.pem").stat().st_mode & 0o077 == 0
    again = subprocess.run(
        [str(SIGNING_KEY), str(tmp_path / "k")], capture_output=True, text=True, check=True
    )
    assert again.stderr == "", "an existing key is kept, not replaced"
