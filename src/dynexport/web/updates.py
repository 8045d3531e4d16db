"""Installing a signed update from the web page (issue 15, docs/update.md "Install paths").

The page sends the bundle in pieces (each well under the web server's body bound, so no request
is ever large), appended in order to one file in the data folder and bounded in total. Before
anything is installed, ``rauc info`` checks the signature against this device's keyring and the
page shows the version and signer; a bundle signed by another key is deleted at once and never
reaches a slot. The install runs in the background (control goes on); its progress lines and
the outcome are read back by the page, and the upload is deleted when it ends. What the page shows
is in an installer's words (``refusal``); RAUC's own text goes to the log.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from dynexport.update import install as shared
from dynexport.update.install import (  # the texts the page shows, shared with the update URL
    FOREIGN_KEY,
    NO_KEYRING,
    NOT_A_BUNDLE,
    NOT_AB,
    refusal,
)
from dynexport.update.rauc import BundleInfo, Rauc, RaucError
from dynexport.update.service import boot_id
from dynexport.update.state import SPARE_BYTES, UPLOAD_FILE

log = logging.getLogger("dynexport.web")

MAX_BUNDLE_BYTES = 256 * 1024 * 1024
"""A bundle holds one root file system (the Pi image is kept under 60 MB compressed)."""
MAX_CHUNK_BYTES = 192 * 1024
"""Under the web server's 256 KiB body bound (web/server.py WEB_LIMITS)."""


class UpdateError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    phase: str = "idle"
    """idle, uploading, uploaded, checking, checked, installing, installed, failed."""
    size: int = 0
    received: int = 0
    info: BundleInfo | None = None
    lines: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        info = self.info
        return {
            "phase": self.phase,
            "size": self.size,
            "received": self.received,
            "bundle": None
            if info is None
            else {
                "version": info.version,
                "compatible": info.compatible,
                "signer": info.signer,
                "description": info.description,
                "build": info.build,
            },
            "progress": self.lines[-5:],
            "error": self.error,
        }


class Updates:
    """One upload at a time, into ``<data>/update-upload.raucb``."""

    def __init__(self, data_dir: Path, rauc: Rauc | None = None) -> None:
        self.data_dir = data_dir
        self.rauc = rauc or Rauc()
        self.state = Upload()
        self._file = trio.Lock()
        """Held while the upload file is emptied (``start``) or appended to (``chunk``): a piece
        landing while a new upload empties the file would be counted and then lost."""

    @property
    def path(self) -> Path:
        return self.data_dir / UPLOAD_FILE

    def _busy(self) -> None:
        if self.state.phase == "installing":
            raise UpdateError(409, "an update is being installed")
        if self.state.phase == "checking":
            # a new upload now would empty the file under the check, and the check's result
            # (this bundle's version and signer) would land on the new, empty upload
            raise UpdateError(409, "a bundle's signature is being checked")

    async def _no_update_under_way(self) -> None:
        """An update on trial, waiting for its reboot or being installed by another installer
        (the update URL's, in this process, included): refused before the upload rather than
        after it (the install would refuse it, ``install.update_under_way``, after minutes of
        uploading, and the two bundles' space checks would each count the same 16 MiB)."""
        try:
            status = await self.rauc.status()
        except RaucError:
            status = None  # no A/B update service here: the check and the install say so
        self._busy()  # this page's own install, begun during that await, says so itself
        if status is not None:
            why = shared.update_under_way(self.data_dir, status, boot_id())
        else:
            why = shared.URL_INSTALLING if shared.installing(self.data_dir) else None
        if why is not None:
            raise UpdateError(409, f"not now: {why}")

    async def start(self, size: object) -> dict[str, Any]:
        self._busy()
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE_BYTES:
            raise UpdateError(
                413 if isinstance(size, int) and size > MAX_BUNDLE_BYTES else 400,
                f"size must be the bundle's size in bytes, 1 to {MAX_BUNDLE_BYTES}",
            )
        await self._no_update_under_way()
        self._busy()  # again: a check or an install may have begun during that await
        # The new upload's phase before the file is emptied (no await in between): an install
        # clicked meanwhile (another tab) is refused, "check the bundle first". It took the
        # emptied file to RAUC, its outcome was overwritten by this phase, and its cleanup
        # deleted the new upload's file.
        upload = self.state = Upload(phase="uploading", size=size)
        shared.upload_received(self.data_dir, trio.current_time())  # the update URL waits

        def create() -> int:
            """Free bytes beside the upload (any earlier upload's file is emptied first)."""
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            return shutil.disk_usage(self.data_dir).free

        try:
            async with self._file:
                free = await trio.to_thread.run_sync(create)
        except BaseException as exc:  # an I/O error, or cancelled: no upload under way
            if self.state is upload:
                detail = f": {exc}" if isinstance(exc, OSError) else ""
                self._discard(f"the upload could not be started{detail}")
            raise
        if free < size + SPARE_BYTES:
            why = (
                f"not enough space on the data partition: {free / 1e6:.1f} MB free, the bundle "
                f"needs {size / 1e6:.1f} MB and {SPARE_BYTES / 1e6:.1f} MB must stay free"
            )
            if self.state is upload:  # not another start's since
                self._discard(why)
            raise UpdateError(507, why)
        return upload.to_json()

    async def chunk(self, offset: str | None, data: bytes) -> dict[str, Any]:
        async with self._file:  # after a start's emptying of the file, never during it
            return await self._append(offset, data)

    async def _append(self, offset: str | None, data: bytes) -> dict[str, Any]:
        st = self.state
        if st.phase != "uploading":
            raise UpdateError(409, "no upload in progress: start one first")
        if shared.installing(self.data_dir):
            # idle for 10 minutes, the upload let the update URL's download begin: the two
            # would together fill /data (`upload_receiving`)
            self._discard(f"not now: {shared.URL_INSTALLING}")
            raise UpdateError(409, self.state.error or "not now")
        try:
            at = int(offset or "")
        except ValueError:
            raise UpdateError(400, "offset must be a whole number of bytes") from None
        if at != st.received:
            raise UpdateError(409, f"expected the piece at offset {st.received}, not {at}")
        if not data or len(data) > MAX_CHUNK_BYTES:
            raise UpdateError(400, f"each piece holds 1 to {MAX_CHUNK_BYTES} bytes")
        if st.received + len(data) > st.size:
            raise UpdateError(413, f"more bytes than the announced size {st.size}")

        def append() -> None:
            with open(self.path, "ab") as f:
                f.write(data)

        try:
            await trio.to_thread.run_sync(append)
        except OSError as exc:
            self._discard(f"the data partition cannot hold the bundle: {exc}")
            raise UpdateError(507, self.state.error or "write failed") from None
        st.received += len(data)
        if st.received == st.size:
            st.phase = "uploaded"
        shared.upload_received(
            self.data_dir, None if st.phase == "uploaded" else trio.current_time()
        )
        return st.to_json()

    async def check(self) -> dict[str, Any]:
        """Verifies the signature (``rauc info``); a refused bundle is deleted at once."""
        self._busy()
        st = self.state
        if st.phase not in ("uploaded", "checked"):
            raise UpdateError(409, "upload the whole bundle first")
        st.phase = "checking"
        try:
            info = await self.rauc.info(str(self.path))
        except RaucError as exc:
            log.warning("update upload refused: %s", exc)
            self._discard(f"refused, nothing was written: {refusal(str(exc))}")
            raise UpdateError(422, self.state.error or "refused") from None
        except BaseException:  # cancelled: the upload is as it was before the check
            st.phase = "uploaded"
            raise
        st.info = info
        st.phase = "checked"
        return st.to_json()

    def install(self, nursery: trio.Nursery) -> dict[str, Any]:
        """Starts the install of the checked bundle in the background."""
        if self.state.phase != "checked" or self.state.info is None:
            raise UpdateError(409, "check the bundle (its version and signer) before installing")
        if not shared.claim(self.data_dir):
            raise UpdateError(409, "an update is being installed (from the update URL)")
        self.state.phase = "installing"
        self.state.lines = []
        nursery.start_soon(self._install, self.state.info)
        return self.state.to_json()

    async def _install(self, info: BundleInfo) -> None:
        """Installs the checked bundle; whatever the outcome, the uploaded file is deleted."""
        try:
            await self._install_checked(info)
        finally:  # also when cancelled: one unlink, no await
            self.path.unlink(missing_ok=True)
            shared.release(self.data_dir)

    async def _install_checked(self, info: BundleInfo) -> None:
        st = self.state

        async def progress(line: str) -> None:
            st.lines.append(line)
            del st.lines[:-20]

        error = await shared.install_verified(
            self.data_dir, self.rauc, self.path, info, progress, origin="the web page"
        )
        if error is None:
            st.phase = "installed"
        else:
            st.phase, st.error = "failed", error

    def _discard(self, why: str) -> None:
        self.path.unlink(missing_ok=True)
        self.state = Upload(phase="failed", error=why)
        shared.upload_received(self.data_dir, None)


__all__ = [
    "FOREIGN_KEY",
    "MAX_BUNDLE_BYTES",
    "MAX_CHUNK_BYTES",
    "NOT_AB",
    "NOT_A_BUNDLE",
    "NO_KEYRING",
    "UPLOAD_FILE",
    "UpdateError",
    "Updates",
    "refusal",
]
