"""The update URL installs only while the configuration in force still asks for it.

A check runs on the ``update`` section as it was when it began; its download takes up to 4
hours. An installer who switched ``install`` to ``notify``, removed the section or pointed it
at another URL meanwhile had the bundle installed and the device rebooted all the same
(docs/update.md: with ``notify`` "that is all"; without the section "nothing is ever checked
or fetched").
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dynexport.system.config import UpdateConfig
from dynexport.update import auto
from dynexport.update.auto import UpdateChecker
from dynexport.update.rauc import BundleInfo, Rauc, RaucStatus, SlotStatus
from dynexport.update.service import read_record
from dynexport.update.state import DOWNLOAD_FILE

BOARD = "dynexport-test"
BODY = b"bundle-bytes"
AUTO = UpdateConfig("https://u.example.com/m.json", install="auto")
DOWNLOAD_S = 3 * 3600.0
"""How long the stand-in download takes (trio's mock clock): a slow link."""


class FakeRauc(Rauc):
    """RAUC's answers on slot A; records the installs asked of it. ``on_status``: run when the
    install asks which slot runs (its last await before the record is written)."""

    def __init__(self, on_status: Callable[[], None] = lambda: None) -> None:
        super().__init__(program="/nonexistent/rauc")
        self.installed: list[str] = []
        self.on_status = on_status
        self.info_s = 0.0

    async def info(self, bundle: str) -> BundleInfo:
        await trio.sleep(self.info_s)
        return BundleInfo(BOARD, "1.5.0", "CN = release")

    async def status(self) -> RaucStatus:
        self.on_status()
        slots = (
            SlotStatus("rootfs.0", "A", "booted", "good"),
            SlotStatus("rootfs.1", "B", "", "good"),
        )
        return RaucStatus(BOARD, "A", "rootfs.0", slots)

    async def install(self, bundle: str, target: str, progress: Any, *, activate: bool = True):
        self.installed.append(target)


def write_bundle(path: Path) -> None:
    path.write_bytes(BODY)


@dataclass
class Url:
    """The update URL's server, stood in for: a manifest for 1.5.0 and a slow download."""

    downloads: list[str] = field(default_factory=list)
    started: trio.Event = field(default_factory=trio.Event)

    async def manifest(self, fetcher: Any, url: str) -> bytes:
        return json.dumps(
            {
                "version": "1.5.0",
                "compatible": BOARD,
                "url": "b.raucb",
                "size": len(BODY),
                "sha256": hashlib.sha256(BODY).hexdigest(),
            }
        ).encode()

    async def download(self, fetcher: Any, bundle: Any, path: Path, progress: Any = None) -> None:
        write_bundle(path)
        self.started.set()
        try:
            await trio.sleep(DOWNLOAD_S)
        except trio.Cancelled:
            self.downloads.append("cancelled")
            auto._remove(path)  # as auto.download removes a partial file
            raise
        self.downloads.append("done")


def stand_in_url(monkeypatch: pytest.MonkeyPatch) -> Url:
    """The update URL's server, stood in for (a manifest for 1.5.0, a slow download)."""
    server = Url()
    monkeypatch.setattr(auto, "fetch_manifest", server.manifest)
    monkeypatch.setattr(auto, "download", server.download)
    return server


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch) -> Url:
    return stand_in_url(monkeypatch)


def checker(tmp_path: Path, config: list[UpdateConfig | None], rauc: Rauc) -> UpdateChecker:
    conf = tmp_path / "system.conf"
    conf.write_text(f"[system]\ncompatible={BOARD}\n")
    data = tmp_path / "data"
    data.mkdir()
    return UpdateChecker(
        lambda: config[0],
        data,
        rauc=rauc,
        running_version="1.4.0",
        system_conf=conf,
        ssl_context=ssl.create_default_context(),
    )


CHANGES: dict[str, tuple[UpdateConfig | None, str]] = {
    "notify": (replace(AUTO, install="notify"), 'update.install is now "notify"'),
    "removed": (None, "the update section was removed from the configuration"),
    "another url": (
        replace(AUTO, url="https://other.example.com/m.json"),
        "update.url has changed",
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_a_change_during_the_download_abandons_it_and_installs_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, url: Url, change: str
) -> None:
    config: list[UpdateConfig | None] = [AUTO]
    rauc = FakeRauc()
    check = checker(tmp_path, config, rauc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check.check_once, AUTO)
        await url.started.wait()
        config[0], why = CHANGES[change]
    assert rauc.installed == [] and read_record(check.data_dir) is None, "nothing written"
    assert url.downloads == ["cancelled"], "abandoned, not waited out (up to 4 hours)"
    assert not (check.data_dir / DOWNLOAD_FILE).exists()
    assert check.state.message == f"1.5.0 was not installed: {why} (its download was deleted)"
    assert check.state.error is None and check.state.failures == 0, "no failure to back off"
    assert check.state.phase == "idle"


async def test_a_change_while_the_signature_is_checked_installs_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, url: Url
) -> None:
    config: list[UpdateConfig | None] = [AUTO]
    rauc = FakeRauc()
    rauc.info_s = 60.0  # a large bundle's rauc info
    check = checker(tmp_path, config, rauc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check.check_once, AUTO)
        await url.started.wait()
        await trio.sleep(DOWNLOAD_S + 1)  # downloaded; verifying
        assert check.state.phase == "verifying"
        config[0] = replace(AUTO, install="notify")
    assert rauc.installed == [] and read_record(check.data_dir) is None
    assert url.downloads == ["done"]
    assert not (check.data_dir / DOWNLOAD_FILE).exists()
    assert 'update.install is now "notify"' in (check.state.message or "")


async def test_the_configuration_is_read_again_right_before_the_install(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, url: Url
) -> None:
    """The last await before the record is written (RAUC asked which slot runs): a change
    landing there is still seen, and nothing is written."""
    config: list[UpdateConfig | None] = [AUTO]

    def installer_switches_to_notify() -> None:
        config[0] = replace(AUTO, install="notify")

    rauc = FakeRauc(on_status=installer_switches_to_notify)
    check = checker(tmp_path, config, rauc)
    assert await check.check_once(AUTO)
    assert rauc.installed == [] and read_record(check.data_dir) is None
    assert check.state.message == (
        '1.5.0 was not installed: update.install is now "notify" (nothing was written)'
    )
    assert not (check.data_dir / DOWNLOAD_FILE).exists()


@pytest.mark.parametrize(
    "kept",
    [AUTO, replace(AUTO, check_hours=6.0)],
    ids=["unchanged", "another interval"],
)
async def test_an_install_the_configuration_still_asks_for_goes_ahead(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, url: Url, kept: UpdateConfig
) -> None:
    config: list[UpdateConfig | None] = [AUTO]
    rauc = FakeRauc()
    check = checker(tmp_path, config, rauc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check.check_once, AUTO)
        await url.started.wait()
        config[0] = kept
    assert rauc.installed == ["B"]
    record = read_record(check.data_dir)
    assert record is not None and record.state == "trial" and record.version == "1.5.0"
    assert url.downloads == ["done"] and check.state.error is None
