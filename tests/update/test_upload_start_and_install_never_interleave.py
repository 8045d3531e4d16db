"""A new upload's start and an install of the checked bundle (two tabs) never interleave.

``start`` emptied the upload file in a worker thread while the phase still said ``checked``:
an install clicked in that moment took the emptied file to RAUC, the new upload's phase then
overwrote its outcome, and its cleanup deleted the new upload's file.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from dynexport.update import install as shared
from dynexport.update.rauc import BundleInfo, Rauc, RaucStatus, SlotStatus
from dynexport.web.updates import UpdateError, Updates

BUNDLE = b"SIGNED-BUNDLE-1.5.0"


def read_bundle(bundle: str) -> bytes:
    return Path(bundle).read_bytes()


class RecordingRauc(Rauc):
    def __init__(self) -> None:
        super().__init__(program="/nonexistent/rauc")
        self.installed: list[bytes] = []

    async def status(self) -> RaucStatus:
        slots = (
            SlotStatus("rootfs.0", "A", "booted", "good"),
            SlotStatus("rootfs.1", "B", "", "good"),
        )
        return RaucStatus("dynexport-test", "A", "rootfs.0", slots)

    async def install(self, bundle: str, target: str, progress: Any, *, activate: bool = True):
        self.installed.append(read_bundle(bundle))


def checked_upload(tmp_path: Path, rauc: Rauc) -> Updates:
    updates = Updates(tmp_path, rauc)
    updates.path.write_bytes(BUNDLE)
    updates.state.phase = "checked"
    updates.state.info = BundleInfo("dynexport-test", "1.5.0", "CN = x")
    return updates


async def test_an_install_clicked_while_a_new_upload_empties_the_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rauc = RecordingRauc()
    updates = checked_upload(tmp_path, rauc)
    emptied, go_on = threading.Event(), threading.Event()
    real_usage = shutil.disk_usage

    def usage_after_emptying(path: Any) -> Any:  # start's worker thread, the file emptied
        emptied.set()
        go_on.wait(30)
        return real_usage(path)

    monkeypatch.setattr(shutil, "disk_usage", usage_after_emptying)
    started: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:

        async def start() -> None:
            started.append(await updates.start(1000))

        nursery.start_soon(start)
        await trio.to_thread.run_sync(emptied.wait, 30)
        assert updates.path.read_bytes() == b""
        try:
            with pytest.raises(UpdateError) as refused:
                updates.install(nursery)  # the second tab's "Install"
        finally:
            go_on.set()
        assert refused.value.status == 409 and "check the bundle" in refused.value.message
    assert rauc.installed == [], "RAUC never given the emptied file"
    assert started[0]["phase"] == "uploading" and updates.state.phase == "uploading"
    assert updates.path.exists(), "the new upload's file is kept"
    assert not shared.installing(tmp_path), "no install slot left taken"


async def test_an_install_before_the_new_upload_starts_runs_and_the_start_waits_for_it(
    tmp_path: Path,
) -> None:
    """The other order: the install began first; the new upload is refused while it runs
    (``installing``), and its outcome stays on the page."""
    rauc = RecordingRauc()
    updates = checked_upload(tmp_path, rauc)
    async with trio.open_nursery() as nursery:
        updates.install(nursery)
        with pytest.raises(UpdateError) as refused:
            await updates.start(1000)
        assert refused.value.status == 409
    assert rauc.installed == [BUNDLE]
    assert updates.state.phase == "installed"


async def test_a_start_that_finds_no_room_leaves_no_checked_phase_over_a_deleted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refused start has emptied and deleted the file: the page must not offer to install
    the bundle it held."""
    rauc = RecordingRauc()
    updates = checked_upload(tmp_path, rauc)
    usage = shutil.disk_usage(tmp_path)._replace(free=10 * 1024 * 1024)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
    with pytest.raises(UpdateError) as refused:
        await updates.start(1000)
    assert refused.value.status == 507
    assert updates.state.phase == "failed" and updates.state.error == refused.value.message
    assert not updates.path.exists()
    async with trio.open_nursery() as nursery:
        with pytest.raises(UpdateError):
            updates.install(nursery)
    assert rauc.installed == []
