"""The update URL's download waits while a web upload is being received.

Both check the data partition's free space when they begin (the bundle's size plus 16 MiB that
must stay free), and the upload's bytes still to come are not off that free space yet: a
download that began mid-upload counted the same space again, and the two together could fill
/data (where the configuration and the schedule live). An upload abandoned mid-way (a closed
tab) holds the URL back for ten minutes at most.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
import trio.testing

from dynexport.update.service import UPLOAD_IDLE_S, upload_receiving
from dynexport.web.updates import UpdateError, Updates
from tests.update.test_auto_install_follows_the_config import (
    AUTO,
    FakeRauc,
    Url,
    checker,
    stand_in_url,
)


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch) -> Url:
    return stand_in_url(monkeypatch)


async def test_the_url_waits_while_an_upload_is_received_then_installs(
    tmp_path: Path, url: Url, autojump_clock: trio.testing.MockClock
) -> None:
    rauc = FakeRauc()
    check = checker(tmp_path, [AUTO], rauc)
    web = Updates(check.data_dir, rauc)
    await web.start(2000)
    await web.chunk("0", b"x" * 1000)
    assert await check.check_once(AUTO)
    assert url.downloads == [] and not url.started.is_set(), "no download beside the upload"
    assert "waiting for the upload on the web page to end" in (check.state.message or "")
    await web.chunk("1000", b"x" * 1000)  # the upload is complete: its bytes are on the disk
    assert not upload_receiving(check.data_dir, trio.current_time())
    assert await check.check_once(AUTO)
    assert url.downloads == ["done"] and rauc.installed == ["B"]


async def test_an_upload_abandoned_mid_way_holds_the_url_back_ten_minutes_at_most(
    tmp_path: Path, url: Url, autojump_clock: trio.testing.MockClock
) -> None:
    rauc = FakeRauc()
    check = checker(tmp_path, [AUTO], rauc)
    web = Updates(check.data_dir, rauc)
    await web.start(2000)
    await web.chunk("0", b"x" * 1000)  # then the tab is closed
    await trio.sleep(UPLOAD_IDLE_S - 1)
    assert await check.check_once(AUTO)
    assert url.downloads == []
    await trio.sleep(1)
    assert await check.check_once(AUTO)
    assert url.downloads == ["done"] and rauc.installed == ["B"]


async def test_an_upload_refused_for_want_of_space_does_not_hold_the_url_back(
    tmp_path: Path,
    url: Url,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rauc = FakeRauc()
    check = checker(tmp_path, [AUTO], rauc)
    web = Updates(check.data_dir, rauc)
    full = shutil._ntuple_diskusage(total=1 << 30, used=1 << 30, free=0)
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda path: full)
        with pytest.raises(UpdateError, match="not enough space"):
            await web.start(2000)
    assert not upload_receiving(check.data_dir, trio.current_time())
    assert await check.check_once(AUTO)
    assert url.downloads == ["done"]


async def test_an_upload_idle_past_its_bound_takes_no_piece_while_the_url_downloads(
    tmp_path: Path, url: Url, autojump_clock: trio.testing.MockClock
) -> None:
    """Found by review: resumed after the URL's download had begun, the upload went on, and
    both together could fill /data again. It is given up, saying why."""
    rauc = FakeRauc()
    check = checker(tmp_path, [AUTO], rauc)
    web = Updates(check.data_dir, rauc)
    await web.start(2000)
    await web.chunk("0", b"x" * 1000)
    await trio.sleep(UPLOAD_IDLE_S + 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check.check_once, AUTO)
        await url.started.wait()
        with pytest.raises(UpdateError, match="update URL"):
            await web.chunk("1000", b"x" * 1000)
        assert web.state.phase == "failed" and not web.path.exists()
    assert rauc.installed == ["B"]
