"""A web upload is refused at its start (409 "not now") while the update URL's install runs.

The URL's install runs in the service's own process: its ``installing`` record was exempted
(taken for one an earlier install of this process left), so up to 256 MB were uploaded and
then refused at the install, and the two bundles' space checks could each count the same
16 MiB kept free on /data.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dynexport.system.config import UpdateConfig
from dynexport.update import auto
from dynexport.update import install as shared
from dynexport.update.auto import UpdateChecker
from dynexport.update.rauc import BundleInfo, Rauc, RaucStatus, SlotStatus
from dynexport.update.service import install_record, write_record
from dynexport.web.updates import UPLOAD_FILE, UpdateError, Updates

BOARD = "dynexport-test"
BODY = b"bundle-bytes"
SIZE = 200 * 1024 * 1024


class SlotA(Rauc):
    """RAUC on slot A; ``install`` runs until ``finish`` is set."""

    def __init__(self) -> None:
        super().__init__(program="/nonexistent/rauc")
        self.writing = trio.Event()
        self.finish = trio.Event()

    async def info(self, bundle: str) -> BundleInfo:
        return BundleInfo(BOARD, "1.5.0", "CN = release")

    async def status(self) -> RaucStatus:
        slots = (
            SlotStatus("rootfs.0", "A", "booted", "good"),
            SlotStatus("rootfs.1", "B", "", "good"),
        )
        return RaucStatus(BOARD, "A", "rootfs.0", slots)

    async def install(self, bundle: str, target: str, progress: Any, *, activate: bool = True):
        self.writing.set()
        await self.finish.wait()


def write_bundle(path: Path) -> None:
    path.write_bytes(BODY)


async def refused_start(updates: Updates) -> str:
    with pytest.raises(UpdateError) as refused:
        await updates.start(SIZE)
    assert refused.value.status == 409
    assert not (updates.data_dir / UPLOAD_FILE).exists(), "nothing accepted"
    assert updates.state.phase == "idle"
    return refused.value.message


async def test_an_upload_is_refused_while_the_urls_install_writes_the_slot(tmp_path: Path) -> None:
    assert shared.claim(tmp_path)  # the URL's install, in this very process
    try:
        write_record(tmp_path, install_record("1.5.0", "B", "A", tmp_path))
        message = await refused_start(Updates(tmp_path, SlotA()))
        assert message == (
            "not now: 1.5.0 is being installed now by another installer; try again once it has "
            "finished"
        )
    finally:
        shared.release(tmp_path)


async def test_an_upload_is_refused_while_the_url_downloads_its_bundle(tmp_path: Path) -> None:
    """The install slot is taken before the download (up to 4 hours, no record yet)."""
    assert shared.claim(tmp_path)
    try:
        message = await refused_start(Updates(tmp_path, SlotA()))
        assert message == f"not now: {shared.URL_INSTALLING}"
    finally:
        shared.release(tmp_path)


async def test_an_installing_record_an_earlier_install_of_this_process_left_does_not_refuse(
    tmp_path: Path,
) -> None:
    """Its install ended without moving the record on (a write that failed): no install holds
    the slot, and the status says "interrupted"."""
    write_record(tmp_path, install_record("1.5.0", "B", "A", tmp_path))
    assert not shared.installing(tmp_path)
    got = await Updates(tmp_path, SlotA()).start(SIZE)
    assert got["phase"] == "uploading"


async def test_the_urls_whole_install_refuses_uploads_and_installs_then_waits_for_its_reboot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = {
        "version": "1.5.0",
        "compatible": BOARD,
        "url": "b.raucb",
        "size": len(BODY),
        "sha256": hashlib.sha256(BODY).hexdigest(),
    }
    downloading, downloaded = trio.Event(), trio.Event()

    async def fetch_manifest(fetcher: Any, url: str) -> bytes:
        return json.dumps(manifest).encode()

    async def download(fetcher: Any, bundle: Any, path: Path, progress: Any = None) -> None:
        write_bundle(path)
        downloading.set()
        await downloaded.wait()

    monkeypatch.setattr(auto, "fetch_manifest", fetch_manifest)
    monkeypatch.setattr(auto, "download", download)
    conf = tmp_path / "system.conf"
    conf.write_text(f"[system]\ncompatible={BOARD}\n")
    data = tmp_path / "data"
    data.mkdir()
    config = UpdateConfig("https://u.example.com/m.json", install="auto")
    rauc = SlotA()
    check = UpdateChecker(
        lambda: config,
        data,
        rauc=rauc,
        running_version="1.4.0",
        system_conf=conf,
        ssl_context=ssl.create_default_context(),
    )
    updates = Updates(data, rauc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check.check_once, config)
        await downloading.wait()
        assert "update URL" in await refused_start(updates)
        downloaded.set()
        await rauc.writing.wait()
        assert "being installed" in await refused_start(updates)
        updates.state.phase = "checked"  # a bundle checked before the URL's install began
        updates.state.info = BundleInfo(BOARD, "1.5.0", "CN = release")
        with pytest.raises(UpdateError) as refused:
            updates.install(nursery)
        assert refused.value.status == 409, "at once, not after the upload's install ran"
        assert "update URL" in refused.value.message
        rauc.finish.set()
    updates.state.phase = "idle"
    assert "waits for its reboot" in await refused_start(updates)
