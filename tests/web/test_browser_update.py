"""Headless Chromium walks the software-update upload (issue 15) on the real service, logged in, at
desktop and phone width, with real RAUC bundles checked by the real ``rauc`` program: a file that
is not a bundle and a bundle signed by a foreign key are refused in plain words before anything
is written; a bundle signed by the device's key shows the upload's progress, then its version and
signer before anything is installed; its install, on this host without a RAUC A/B system, says so
plainly and leaves nothing behind. Screenshots go to build/screenshots/<width>/3x-update-*.png.

The one difference from a device: the keyring. The appliance's ``rauc`` reads
``/etc/rauc/keyring.pem`` from its system.conf; here the service's RAUC adapter is the same
program given ``--keyring`` with a test key made by the build's own script (put in place with
monkeypatch: ``App`` has no option to choose the adapter its web server uses)."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.app import App, AppOptions
from dynexport.sim.modbus_server import serve_tcp
from dynexport.sim.profiles import fronius_gateway
from dynexport.system.config import parse_config
from dynexport.update.rauc import Rauc
from dynexport.web.auth import PasswordStore
from dynexport.web.updates import (
    FOREIGN_KEY,
    MAX_CHUNK_BYTES,
    NO_KEYRING,
    NOT_A_BUNDLE,
    UPLOAD_FILE,
    UpdateError,
    Updates,
    refusal,
)
from tests.update.bundles import make_bundle, make_key, needs_rauc
from tests.web.test_browser import PASSWORD, SCREENSHOTS, SIZES, Walk, needs_chromium
from tests.web.test_browser import _driver as driver_for

RECORD = """
window.uploadSeen = [];
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) window.uploadSeen.push(n.textContent);
}).observe(document.querySelector("#u-out"), { childList: true });
"""
"""Every text the page writes into the update message, in order (each assignment adds a new text
node, so none is lost however fast the upload runs: nothing here depends on timing)."""


def _no_rauc_service() -> bool:
    """A host that runs a RAUC service would really install: the walk refuses to run there."""
    return subprocess.run(["rauc", "status"], capture_output=True, check=False).returncode != 0


def _choose(w: Walk, bundle: Path) -> None:
    w.d.execute_script(RECORD)
    w.find("#u-file").send_keys(str(bundle))


def _shot(w: Walk, name: str) -> None:
    """The update section down to its message, whatever the width."""
    w.d.execute_script("arguments[0].scrollIntoView({block: 'end'})", w.find("#u-out"))
    w.shot(name)


def _nothing_written(data: Path) -> None:
    assert not (data / UPLOAD_FILE).exists(), "the refused upload is deleted"
    assert not (data / "update.json").exists(), "no update was begun"


def _walk(w: Walk, url: str, data: Path, files: dict[str, Path]) -> dict[str, Any]:
    tools = w.open_tools(url)
    w.d.execute_script("arguments[0].scrollIntoView()", w.find("#u-file"))
    assert tools.is_displayed()
    got: dict[str, Any] = {}

    # a file that is not a bundle: refused in plain words, nothing kept
    _choose(w, files["junk"])
    got["junk"] = w.text("#u-out", lambda t: t.startswith("Refused"))
    assert "not an update bundle" in got["junk"], got["junk"]
    assert not w.find("#u-install").is_displayed() and w.read("#u-info") == ""
    assert "bad" in w.attr("#u-out", "class").split()
    assert w.attr("#u-file", "value") == "", "cleared: the same file can be chosen again"
    _nothing_written(data)
    _shot(w, "31-update-not-a-bundle")

    # signed by another key: refused before anything is written, the reason named
    _choose(w, files["foreign"])
    got["foreign"] = w.text("#u-out", lambda t: t.startswith("Refused"))
    assert "not signed by a key this device trusts" in got["foreign"], got["foreign"]
    assert not w.find("#u-install").is_displayed() and w.read("#u-info") == ""
    _nothing_written(data)
    _shot(w, "32-update-foreign-key")

    # signed by the device's key: progress, then version and signer, before any install
    _choose(w, files["good"])
    w.text("#u-out", lambda t: t == "Ready to install.")
    got["seen"] = w.d.execute_script("return window.uploadSeen")
    got["info"] = w.read("#u-info")
    assert w.visible("#u-install").text == "Install this update"
    assert w.visible("#u-bar").get_attribute("value") == "1"
    assert (data / UPLOAD_FILE).read_bytes() == files["good"].read_bytes()
    assert not (data / "update.json").exists(), "nothing installed before the button"
    _shot(w, "33-update-checked")

    w.click("#u-install")
    from selenium.webdriver.support import expected_conditions

    confirm = w.wait.until(expected_conditions.alert_is_present())
    got["confirm"] = confirm.text
    confirm.accept()
    got["install"] = w.text("#u-out", lambda t: t.startswith("Not installed"))
    assert not w.find("#u-install").is_displayed()
    assert "bad" in w.attr("#u-out", "class").split()
    _shot(w, "34-update-not-an-ab-system")
    return got


# -- what RAUC says, in an installer's words ---------------------------------------------------

# What rauc 1.8 prints (its last line, as the adapter hands it on) for each kind of refusal.
RAUC_SAYS = {
    "rauc info: signature verification failed: Verify error: self-signed certificate": FOREIGN_KEY,
    "rauc info: signature verification failed: Verify error: certificate has expired": FOREIGN_KEY,
    "rauc info: Invalid bundle format: Signature size (2338899157922899210) exceeds bundle size": (
        NOT_A_BUNDLE
    ),
    "rauc info: Invalid bundle format: Failed to seek to end of bundle: Error seeking in file: "
    "Invalid argument": NOT_A_BUNDLE,
    "rauc info: Invalid bundle format: Signature data is no valid CMS": NOT_A_BUNDLE,
    "rauc info: No keyring file or directory provided": NO_KEYRING,
}


def test_each_rauc_refusal_reads_as_a_plain_reason_without_rauc_internals() -> None:
    for said, plain in RAUC_SAYS.items():
        assert refusal(said) == plain, said
    # something new is still shown (not swallowed), marked as a check that failed
    assert refusal("rauc info: Out of memory").startswith("the bundle could not be checked")


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The device's key (its keyring) and a bundle signed with it."""
    folder = tmp_path_factory.mktemp("keys")
    ours = make_key(folder / "ours")
    return ours / "keyring.pem", make_bundle(folder, ours, "1.4.0+prop")


def _refused(keyring: Path, data: bytes) -> tuple[str, bool, str]:
    """Uploads ``data`` in the page's pieces and checks it with real rauc: the refusal, whether
    anything is left in the data folder, and the upload's phase; installing it is refused too."""

    async def run(folder: Path) -> tuple[int, str, str]:
        updates = Updates(folder, Rauc(extra=[f"--keyring={keyring}"]))
        await updates.start(len(data))
        for at in range(0, len(data), MAX_CHUNK_BYTES):
            await updates.chunk(str(at), data[at : at + MAX_CHUNK_BYTES])
        with pytest.raises(UpdateError) as refused:
            await updates.check()
        async with trio.open_nursery() as nursery:
            with pytest.raises(UpdateError, match="check the bundle"):
                updates.install(nursery)
        return refused.value.status, refused.value.message, updates.state.phase

    with tempfile.TemporaryDirectory() as name:
        status, message, phase = trio.run(run, Path(name))
        assert status == 422
        return message, any(Path(name).iterdir()), phase


@needs_rauc
@settings(max_examples=30, deadline=None)
@given(
    data=st.one_of(
        st.binary(min_size=1, max_size=4096),
        # random bytes ending in a plausible signature size: RAUC then parses them as CMS
        st.tuples(st.binary(max_size=2048), st.integers(0, 4096)).map(
            lambda t: t[0] + t[1].to_bytes(8, "big")
        ),
    ),
)
def test_any_file_that_is_no_bundle_is_refused_plainly_and_nothing_is_kept(
    keyring: tuple[Path, Path], data: bytes
) -> None:
    message, kept, phase = _refused(keyring[0], data)
    assert message == f"refused, nothing was written: {NOT_A_BUNDLE}", message
    assert not kept and phase == "failed"


@needs_rauc
@settings(max_examples=15, deadline=None)
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_a_bundle_cut_short_anywhere_is_refused_plainly_and_nothing_is_kept(
    keyring: tuple[Path, Path], cut: float
) -> None:
    whole = keyring[1].read_bytes()
    message, kept, phase = _refused(keyring[0], whole[: max(1, int(cut * len(whole)))])
    assert message == f"refused, nothing was written: {NOT_A_BUNDLE}", message
    assert not kept and phase == "failed"


# -- the walk -----------------------------------------------------------------------------------


@pytest.mark.slow
@needs_chromium
@needs_rauc
@pytest.mark.parametrize("size", sorted(SIZES))
async def test_chromium_uploads_bundles_refusing_bad_ones_and_showing_version_before_install(
    tmp_path: Path, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _no_rauc_service():
        pytest.skip("this host runs a RAUC service: an install from the walk would be real")
    ours = make_key(tmp_path / "ours")
    theirs = make_key(tmp_path / "theirs", "someone else")
    files = {
        # four 192 KiB pieces and a bit: the progress moves several times
        "good": make_bundle(tmp_path, ours, "1.4.0+web", root_bytes=700 * 1024),
        "foreign": make_bundle(tmp_path, theirs, "6.6.6"),
        "junk": tmp_path / "notes.raucb",
    }
    files["junk"].write_text("these are the site notes, not an update\n" * 100)
    monkeypatch.setattr(
        "dynexport.web.updates.Rauc", partial(Rauc, extra=[f"--keyring={ours}/keyring.pem"])
    )

    data = tmp_path / "data"
    data.mkdir()
    PasswordStore(data).set(PASSWORD)
    with serve_tcp(fronius_gateway(tau_s=0.5)) as modbus, tempfile.TemporaryDirectory() as profile:
        document = {
            "inverters": [{"tcp": f"127.0.0.1:{modbus.port}", "unit": 1}],
            "meter": {"tcp": f"127.0.0.1:{modbus.port}", "unit": 240},
            "limits": {"exportW": 3000},
        }
        (data / "config.json").write_text(json.dumps(document))
        app = App(
            parse_config(document),
            AppOptions(
                data_dir=data, config_path=data / "config.json", web_host="127.0.0.1", web_port=0
            ),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            driver = await trio.to_thread.run_sync(driver_for, profile, SIZES[size])
            try:
                w = Walk(driver, SCREENSHOTS / size)
                url = f"http://127.0.0.1:{app.web_port}/"
                got = await trio.to_thread.run_sync(_walk, w, url, data, files)
            finally:
                await trio.to_thread.run_sync(driver.quit)
            status = app.status()
            nursery.cancel_scope.cancel()

    # no library internals in what the installer reads
    for key in ("junk", "foreign", "install"):
        for internal in ("rauc info", "rauc status", "D-Bus", "Verify error", "Signature size"):
            assert internal not in got[key], (key, got[key])
    assert "nothing was written" in got["junk"] and "nothing was written" in got["foreign"]

    # the upload's progress: several steps, rising to 100 %, then the signature check
    seen: list[str] = got["seen"]
    steps = [int(m[1]) for t in seen if (m := re.fullmatch(r"Uploading: (\d+) % .*", t))]
    assert len(steps) >= 4 and steps == sorted(steps) and steps[-1] == 100, seen
    assert seen.index("Checking the signature…") > seen.index(
        next(t for t in seen if t.startswith("Uploading: 100 %"))
    )
    assert seen[-1] == "Ready to install."

    # version and verified signer, shown before the install
    assert "1.4.0+web" in got["info"], got["info"]
    assert "NOT FOR FIELD USE" in got["info"] and "verified by this device" in got["info"]
    assert "dynexport-test" in got["info"] and "1.4.0+web.raucb (0.7 MB)" in got["info"]
    assert "fail-safe" in got["confirm"]

    # this host is no A/B appliance: said plainly, and nothing is left half-done
    assert "nothing was written" in got["install"] and "A/B" in got["install"], got["install"]
    _nothing_written(data)
    assert status["update"]["phase"] == "none"
