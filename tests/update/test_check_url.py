"""The update URL against a real HTTPS server on 127.0.0.1 (the project's test PKI), with real
bundles signed by the build's recipe and the real ``rauc`` checking them.

The device's keyring is the one difference from an appliance: ``rauc`` is given ``--keyring``
with the test key (as tests/web/test_browser_update.py does). This host has no RAUC A/B service,
so an install that gets past every check ends as the web upload's does: "not installed, nothing
was written".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dynexport.app import App, AppOptions
from dynexport.httpio import Request, ServerResponse
from dynexport.sep2 import certs
from dynexport.system.config import Config, UpdateConfig
from dynexport.update import install as shared
from dynexport.update.auto import PIECE_BYTES, UpdateChecker
from dynexport.update.rauc import BundleInfo, Rauc, RaucError
from dynexport.update.state import DOWNLOAD_FILE, STATE_FILE, UpdateRecord
from dynexport.web.updates import UpdateError, Updates
from tests.httpio.conftest import raw_server, serving
from tests.update.bundles import make_bundle, make_key, needs_rauc

BOARD = "dynexport-test"


@dataclass(frozen=True)
class Pki:
    serca: Path
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    files = certs.make_test_pki(folder, now=dt.datetime.now(dt.UTC)).files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # server-authenticated only, as a web server
    ctx.load_cert_chain(files["server_chain"], files["server_key"])
    return Pki(files["serca"], ctx)


@dataclass(frozen=True)
class Keys:
    keyring: Path
    good: bytes
    """1.4.0+url, signed by the device's key, three range pieces long."""
    foreign: bytes
    """1.4.0+evil, signed by another key."""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    import shutil

    if shutil.which("rauc") is None or shutil.which("openssl") is None:
        pytest.skip("needs rauc and openssl (Debian: rauc)")
    folder = tmp_path_factory.mktemp("bundles")
    ours = make_key(folder / "ours")
    theirs = make_key(folder / "theirs", "someone else")
    good = make_bundle(folder, ours, "1.4.0+url", root_bytes=2 * PIECE_BYTES + 300 * 1024)
    foreign = make_bundle(folder, theirs, "1.4.0+evil")
    return Keys(ours / "keyring.pem", good.read_bytes(), foreign.read_bytes())


def entry(data: bytes, version: object = "1.4.0+url", **changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "version": version,
        "compatible": BOARD,
        "url": "/b/bundle.raucb",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    return {**doc, **changes}


@dataclass
class Site:
    """A static update server: the manifest, files, redirects; HTTP range requests answered."""

    manifest: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    ranges: bool = True
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    async def handle(self, req: Request) -> ServerResponse:
        self.seen.append((req.path, req.header("range")))
        if req.path in self.redirects:
            return ServerResponse(302, headers=[("Location", self.redirects[req.path])])
        if req.path == "/manifest.json":
            return ServerResponse(200, self.manifest, content_type="application/json")
        data = self.files.get(req.path)
        if data is None:
            return ServerResponse.text(404, "no such file")
        asked = req.header("range")
        if asked is None or not self.ranges:
            return ServerResponse(200, data, content_type="application/octet-stream")
        first, last = (int(x) for x in asked.removeprefix("bytes=").split("-"))
        if first >= len(data):
            return ServerResponse(416, headers=[("Content-Range", f"bytes */{len(data)}")])
        last = min(last, len(data) - 1)
        return ServerResponse(
            206,
            data[first : last + 1],
            headers=[("Content-Range", f"bytes {first}-{last}/{len(data)}")],
            content_type="application/octet-stream",
        )


@asynccontextmanager
async def running(site: Site, pki: Pki) -> AsyncIterator[int]:
    async with serving(site.handle, pki.server) as port:
        yield port


def checker(
    tmp: Path,
    pki: Pki,
    port: int,
    *,
    install: str = "auto",
    keyring: Path | None = None,
    version: str = "1.0.0",
) -> tuple[UpdateChecker, UpdateConfig]:
    conf = tmp / "system.conf"
    conf.write_text(f"[system]\ncompatible={BOARD}\nbootloader=custom\n")
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    config = UpdateConfig(
        url=f"https://127.0.0.1:{port}/manifest.json",
        ca=pki.serca,
        install=install,  # type: ignore[arg-type]
    )
    rauc = Rauc(extra=[f"--keyring={keyring}"] if keyring else [])
    got = UpdateChecker(lambda: config, data, rauc=rauc, running_version=version, system_conf=conf)
    got.http_retries = 0
    return got, config


def left_on_disk(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir())


async def test_a_download_left_by_a_power_cut_is_removed_at_the_start_even_unconfigured(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A power cut mid-download left up to 256 MiB on /data, removed only at the next check,
    which never comes once ``update`` is unset."""
    data = tmp_path / "data"
    data.mkdir()
    (data / DOWNLOAD_FILE).write_bytes(b"half a bundle" * 1000)
    (data / "config.json").write_text("{}")  # nothing else is touched
    check = UpdateChecker(lambda: None, data, rauc=Rauc(program="/nonexistent/rauc"))
    with trio.move_on_after(5):
        await check.run()
    assert left_on_disk(data) == ["config.json"]


# -- notify --------------------------------------------------------------------------------------


async def test_notify_shows_a_newer_version_for_this_board_and_downloads_nothing(
    tmp_path: Path, pki: Pki
):
    data = os.urandom(5000)
    site = Site(json.dumps(entry(data, notes="a fix")).encode(), {"/b/bundle.raucb": data})
    async with running(site, pki) as port:
        check, _ = checker(tmp_path, pki, port, install="notify")
        assert await check.check_once(check._get_config())  # type: ignore[arg-type]
    status = check.status()
    assert status["available"] == {
        "version": "1.4.0+url",
        "compatible": BOARD,
        "size": 5000,
        "notes": "a fix",
    }
    assert status["check"]["error"] is None and status["check"]["lastCheck"] is not None
    assert "install it from Installer tools" in status["check"]["message"]
    assert [path for path, _ in site.seen] == ["/manifest.json"]
    assert left_on_disk(check.data_dir) == []


async def test_the_running_version_or_an_older_one_is_not_offered(tmp_path: Path, pki: Pki):
    data = os.urandom(100)
    site = Site(json.dumps(entry(data, version="0.9.0")).encode(), {"/b/bundle.raucb": data})
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port)
        assert await check.check_once(config)
    assert check.status()["available"] is None
    assert check.status()["check"]["message"].startswith("up to date: 1.0.0 runs")
    assert left_on_disk(check.data_dir) == []


# -- auto: the whole path ----------------------------------------------------------------------


@needs_rauc
async def test_auto_downloads_in_pieces_verifies_and_installs_through_the_web_uploads_path(
    tmp_path: Path, pki: Pki, keys: Keys
):
    """Everything up to RAUC's A/B service: this host has none, so the install ends as the web
    upload's does, nothing written, the download removed and no update record made."""
    site = Site(json.dumps(entry(keys.good)).encode(), {"/b/bundle.raucb": keys.good})
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port, keyring=keys.keyring)
        assert not await check.check_once(config)
    err = check.status()["check"]["error"]
    assert err.startswith("not installed, nothing was written: this system cannot install updates")
    ranges = [r for path, r in site.seen if path == "/b/bundle.raucb"]
    assert ranges == [
        f"bytes=0-{PIECE_BYTES - 1}",
        f"bytes={PIECE_BYTES}-{2 * PIECE_BYTES - 1}",
        f"bytes={2 * PIECE_BYTES}-{len(keys.good) - 1}",
    ]
    assert left_on_disk(check.data_dir) == []  # no download, no update.json
    assert not shared.installing(check.data_dir)


@needs_rauc
async def test_a_bundle_signed_by_another_key_is_refused_and_deleted(
    tmp_path: Path, pki: Pki, keys: Keys
):
    site = Site(
        json.dumps(entry(keys.foreign, "1.4.0+evil")).encode(), {"/b/bundle.raucb": keys.foreign}
    )
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port, keyring=keys.keyring)
        assert not await check.check_once(config)
    assert check.status()["check"]["error"] == (
        "refused, nothing was written: this bundle is not signed by a key this device trusts "
        "(signature verification failed)"
    )
    assert left_on_disk(check.data_dir) == []


@needs_rauc
async def test_a_manifest_that_lies_about_the_version_cannot_bring_an_older_bundle(
    tmp_path: Path, pki: Pki, keys: Keys
):
    """The signed version is the truth: a manifest announcing 9.9.9 for a signed 1.4.0 on a
    device running 2.0.0 (a replayed old bundle) is refused after ``rauc info``."""
    site = Site(json.dumps(entry(keys.good, "9.9.9")).encode(), {"/b/bundle.raucb": keys.good})
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port, keyring=keys.keyring, version="2.0.0")
        assert not await check.check_once(config)
    assert check.status()["check"]["error"] == (
        "refused, nothing was written: the signed bundle is 1.4.0+url for dynexport-test; "
        "the manifest said 9.9.9 for dynexport-test"
    )
    assert left_on_disk(check.data_dir) == []


# -- downloads that go wrong: a clear error, nothing on disk, RAUC never asked ---------------------


def never_rauc(check: UpdateChecker) -> None:
    check.rauc = Rauc(program=str(Path("/nonexistent/rauc-must-not-run")))


async def test_a_sha256_mismatch_is_refused_and_the_download_removed(tmp_path: Path, pki: Pki):
    data = os.urandom(PIECE_BYTES + 10)
    doc = entry(data, sha256="0" * 64)
    site = Site(json.dumps(doc).encode(), {"/b/bundle.raucb": data})
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port)
        never_rauc(check)
        assert not await check.check_once(config)
    err = check.status()["check"]["error"]
    assert err == (
        f"the download's sha256 is {hashlib.sha256(data).hexdigest()}, the manifest says "
        f"{'0' * 64}: refused, nothing was written"
    )
    assert left_on_disk(check.data_dir) == []


@pytest.mark.parametrize(
    ("size_change", "says"),
    [
        (+PIECE_BYTES, "the bundle on the server is 1048586 bytes; the manifest says 2097162"),
        (+1, "the bundle on the server is 1048586 bytes; the manifest says 1048587"),
        (-1, "the bundle on the server is 1048586 bytes; the manifest says 1048585"),
    ],
)
async def test_a_bundle_of_another_size_than_the_manifests_is_refused(
    tmp_path: Path, pki: Pki, size_change: int, says: str
):
    data = os.urandom(PIECE_BYTES + 10)
    site = Site(
        json.dumps(entry(data, size=len(data) + size_change)).encode(), {"/b/bundle.raucb": data}
    )
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port)
        never_rauc(check)
        assert not await check.check_once(config)
    assert says in check.status()["check"]["error"]
    assert left_on_disk(check.data_dir) == []


async def test_a_server_without_range_requests_is_refused_unread(tmp_path: Path, pki: Pki):
    data = os.urandom(2 * PIECE_BYTES)
    site = Site(json.dumps(entry(data)).encode(), {"/b/bundle.raucb": data}, ranges=False)
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port)
        never_rauc(check)
        assert not await check.check_once(config)
    assert "it must answer HTTP range requests" in check.status()["check"]["error"]
    assert left_on_disk(check.data_dir) == []


async def test_a_truncated_download_is_refused_and_removed(tmp_path: Path, pki: Pki):
    data = os.urandom(PIECE_BYTES + 10)
    manifest = json.dumps(entry(data, url="/b/x.raucb")).encode()

    async def cut_short(stream: trio.abc.Stream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            got = await stream.receive_some(65536)
            if not got:
                return
            head += got
        if head.startswith(b"GET /manifest.json"):
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                % (len(manifest), manifest)
            )
            return
        await stream.send_all(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-%d/%d\r\n"
            b"Content-Length: %d\r\n\r\n" % (PIECE_BYTES - 1, len(data), PIECE_BYTES)
        )
        await stream.send_all(data[: PIECE_BYTES // 2])  # then the connection drops

    async with raw_server(cut_short, pki.server) as port:
        check, config = checker(tmp_path, pki, port)
        never_rauc(check)
        assert not await check.check_once(config)
    assert check.status()["check"]["error"] == (
        f"the download stopped at byte 0 of {len(data)}: GET https://127.0.0.1:{port}/b/x.raucb: "
        "connection lost ()"
    )
    assert left_on_disk(check.data_dir) == []


async def test_a_full_data_partition_is_a_clear_error_and_the_partial_file_is_removed(
    tmp_path: Path, pki: Pki
):
    """The download's file is a link to /dev/full: the kernel answers every write ENOSPC."""
    data = os.urandom(1000)
    site = Site(json.dumps(entry(data)).encode(), {"/b/bundle.raucb": data})
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port)
        never_rauc(check)
        (check.data_dir / DOWNLOAD_FILE).symlink_to("/dev/full")
        assert not await check.check_once(config)
    assert check.status()["check"]["error"] == (
        "the data partition is full: the bundle does not fit (nothing was written)"
    )
    assert left_on_disk(check.data_dir) == []


# -- hostile manifests and servers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("manifest", "says"),
    [
        (b"\x00\xff garbage", "is refused: the manifest is not UTF-8 text"),
        (b"{" * 70_000, "is larger than 65536 bytes: refused unread"),
        (
            json.dumps(entry(b"x", version=1.5)).encode(),
            "is refused: version: a version must be a string, not a number",
        ),
        (
            json.dumps(entry(b"x", compatible="dynexport-rpi5")).encode(),
            "the manifest offers no bundle for this board (dynexport-test); it offers "
            "dynexport-rpi5",
        ),
        (
            json.dumps(entry(b"x", url="http://127.0.0.1/b.raucb")).encode(),
            "url: must be an https:// URL (plain http is refused)",
        ),
    ],
)
async def test_a_hostile_manifest_is_refused_with_a_clear_message_and_nothing_on_disk(
    tmp_path: Path, pki: Pki, manifest: bytes, says: str
):
    site = Site(manifest, {"/b/bundle.raucb": b"x"})
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port)
        never_rauc(check)
        assert not await check.check_once(config)
    status = check.status()
    assert says in status["check"]["error"]
    assert status["available"] is None and status["check"]["failures"] == 1
    assert [path for path, _ in site.seen] == ["/manifest.json"]
    assert left_on_disk(check.data_dir) == []


async def test_redirects_are_followed_a_bounded_number_of_times_and_never_to_http(
    tmp_path: Path, pki: Pki
):
    data = os.urandom(300)
    site = Site(json.dumps(entry(data, version="0.1")).encode(), {"/b/bundle.raucb": data})
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port)
        site.redirects = {"/m": "/manifest.json"}
        moved = UpdateConfig(config.url.replace("/manifest.json", "/m"), config.ca)
        assert await check.check_once(moved), check.state.error
        site.redirects = {f"/r{i}": f"/r{i + 1}" for i in range(10)}
        assert not await check.check_once(
            UpdateConfig(config.url.replace("manifest.json", "r0"), config.ca)
        )
        assert (
            check.state.error
            == f"{config.url.replace('manifest.json', 'r0')}: more than 5 redirects"
        )
        site.redirects = {"/m": f"http://127.0.0.1:{port}/manifest.json"}
        assert not await check.check_once(moved)
        assert "redirects to an address refused: must be an https:// URL" in str(check.state.error)


async def test_an_untrusted_server_certificate_is_refused_in_plain_words(tmp_path: Path, pki: Pki):
    other = certs.make_test_pki(tmp_path / "other", now=dt.datetime.now(dt.UTC)).files
    site = Site(b"{}")
    async with running(site, pki) as port:
        check, config = checker(tmp_path, pki, port)
        wrong = UpdateConfig(config.url, ca=other["serca"])
        assert not await check.check_once(wrong)
    assert "server certificate not signed by a CA this device trusts" in str(check.state.error)
    assert site.seen == []


async def test_an_unreachable_server_is_an_error_shown_and_retried(tmp_path: Path, pki: Pki):
    with socket.socket() as sock:  # a port that was just free: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    check, config = checker(tmp_path, pki, port)
    assert not await check.check_once(config)
    status = check.status()["check"]
    assert status["error"].startswith(f"cannot connect to 127.0.0.1:{port}")
    assert status["failures"] == 1 and status["phase"] == "idle"


# -- the task: schedule on trio's clock, idle when not configured -----------------------------


async def test_failed_checks_back_off_from_five_minutes_and_a_removed_section_stops_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """No network: this host's missing system.conf fails each check before any request."""
    config: list[UpdateConfig | None] = [UpdateConfig("https://u.invalid/m.json")]
    times: list[float] = []

    class Timed(UpdateChecker):
        async def check_once(self, config: UpdateConfig) -> bool:
            times.append(trio.current_time())
            return await super().check_once(config)

    check = Timed(
        lambda: config[0],
        tmp_path,
        system_conf=tmp_path / "missing.conf",
        jitter=lambda: 0.0,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(check.run)
        await trio.sleep(5000)
        assert times == [120, 270, 570, 1170, 2370, 4770]
        assert "names no compatible" in check.status()["check"]["error"]
        assert check.status()["check"]["failures"] == 6
        config[0] = None
        await trio.sleep(86400)
        assert len(times) == 6
        after = check.status()["check"]
        assert (after["configured"], after["error"], after["failures"]) == (False, None, 0)
        nursery.cancel_scope.cancel()


# -- one install at a time, and the status the app shows -------------------------------------------


async def test_no_new_upload_starts_while_a_bundles_signature_is_checked(tmp_path: Path):
    """A second tab started an upload while ``rauc info`` checked the first: the file was
    emptied under the check, and the first bundle's version and signer landed on the new, empty
    upload, which became installable. A check under way refuses a new start."""

    class SlowInfo(Rauc):
        def __init__(self) -> None:
            super().__init__(program="/nonexistent/rauc")
            self.asked = trio.Event()
            self.go_on = trio.Event()

        async def status(self) -> Any:
            raise RaucError("no A/B system here")  # _no_update_under_way lets it through

        async def info(self, bundle: str) -> BundleInfo:
            self.asked.set()
            await self.go_on.wait()
            return BundleInfo(BOARD, "1.5.0", "CN = the vendor")

    rauc = SlowInfo()
    updates = Updates(tmp_path, rauc)
    await updates.start(5)
    await updates.chunk("0", b"12345")
    results: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(results, updates.check()))
        await rauc.asked.wait()
        assert updates.state.to_json()["phase"] == "checking"
        with pytest.raises(UpdateError) as refused:
            await updates.start(7)
        assert refused.value.status == 409 and "being checked" in refused.value.message
        rauc.go_on.set()
    assert results[0]["phase"] == "checked" and results[0]["bundle"]["version"] == "1.5.0"
    assert (tmp_path / "update-upload.raucb").read_bytes() == b"12345"


async def _append(into: list[Any], awaitable: Any) -> None:
    into.append(await awaitable)


async def test_a_web_upload_is_not_installed_while_the_update_url_installs(tmp_path: Path):
    updates = Updates(tmp_path)
    updates.state.phase = "checked"
    updates.state.info = BundleInfo(BOARD, "1.4.0", "CN = x")
    assert shared.claim(tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            with pytest.raises(UpdateError, match="an update is being installed"):
                updates.install(nursery)
    finally:
        shared.release(tmp_path)
    assert updates.state.phase == "checked"


async def test_the_status_api_carries_the_update_urls_state_beside_the_last_update(tmp_path: Path):
    config = Config(update=UpdateConfig("https://u.example.com/m.json"))
    app = App(config, AppOptions(data_dir=tmp_path))
    (tmp_path / STATE_FILE).write_bytes(UpdateRecord("committed", "1.3.0", "B", "A", "x").to_json())
    got = app.status()["update"]
    assert got["phase"] == "committed" and got["message"] == "updated to 1.3.0"
    assert got["available"] is None
    assert got["check"]["configured"] is True and got["check"]["install"] == "notify"
    assert (
        App(Config(), AppOptions(data_dir=tmp_path)).status()["update"]["check"]["configured"]
        is False
    )
