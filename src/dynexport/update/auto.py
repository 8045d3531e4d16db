"""The update URL's trio adapter: read the manifest, download a bundle, install it (docs/update.md).

``UpdateChecker.run`` is one supervised task of ``dynexport run``; it idles while ``update`` is
not configured. Each check reads the manifest over HTTPS (``check.py`` decides what it means);
with ``install: "auto"`` a newer bundle for this board is downloaded in 1 MiB HTTP range
requests to the data partition (never held in memory; its size bounded and its sha256 checked;
any failure removes the partial file), verified by ``rauc info`` against the keyring, and
installed through the same path as a bundle uploaded on the web page (``install.py``), so the
reboot waits for a quiet moment with every inverter at its fail-safe limit. Failures are shown
in the status and retried with backoff; nothing here can stop control (files are written in a
thread, RAUC runs in its own process).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from dynexport import __version__
from dynexport.httpio.client import (
    HttpClient,
    HttpError,
    Response,
    ResponseTooLarge,
    TlsError,
    origin_of,
)
from dynexport.system.config import UpdateConfig
from dynexport.update.rauc import BundleInfo, Rauc, RaucError
from dynexport.update.service import update_status
from dynexport.update.state import DOWNLOAD_FILE, SPARE_BYTES

if TYPE_CHECKING:
    # check.py (the manifest, versions, the decision) is imported by the functions that use it,
    # once ``update`` is configured: most sites never set an update URL (docs/decisions.md,
    # "Lazy imports on the service's path").
    from dynexport.update.check import Bundle, Version

log = logging.getLogger("dynexport.update")

SYSTEM_CONF = Path("/etc/rauc/system.conf")
PIECE_BYTES = 1024 * 1024
"""Each HTTP range request asks for this much: the most held in memory at once."""
MAX_REDIRECTS = 5
DOWNLOAD_MAX_S = 4 * 3600.0
"""A download taking longer is given up (each piece also has its own 60 s bound)."""
CONFIG_CHECK_S = 1.0
CHANGED_CHECK_S = 10.0
"""A check this soon after an installer changes ``update`` (one device: no fleet to spread)."""
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_T = TypeVar("_T")


class CheckError(Exception):
    """A check or an automatic install that did not work; the message is for the installer."""


class Abandoned(Exception):
    """An automatic install the installer called off (``update`` changed) before ``rauc
    install`` began: no failure, nothing written; the message is for the installer."""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Fetcher:
    """GETs over HTTPS with redirects followed by hand: at most ``MAX_REDIRECTS``, https only,
    to any host (a bundle may live on a CDN); one kept-alive client per origin."""

    def __init__(
        self, ssl_context: ssl.SSLContext, *, timeout: float = 60.0, retries: int = 2
    ) -> None:
        self._ssl = ssl_context
        self._timeout = timeout
        self._retries = retries
        self._clients: dict[tuple[str, str, int], HttpClient] = {}

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, url: str) -> HttpClient:
        origin = origin_of(url)
        client = self._clients.get(origin)
        if client is None:
            _, host, port = origin
            bracketed = f"[{host}]" if ":" in host else host
            client = HttpClient(
                f"https://{bracketed}:{port}/",
                self._ssl,
                timeout=self._timeout,
                connect_timeout=15.0,
                retries=self._retries,
                backoff_base=2.0,
                retry_after_cap=60.0,
                content_type="application/json",
                user_agent=f"dynexport/{__version__}",
            )
            self._clients[origin] = client
        return client

    async def get(
        self, url: str, *, max_body: int, accept: str, what: str = "", **headers: str
    ) -> Response:
        """The response at ``url`` after redirects; CheckError for what cannot be fetched
        (its message starts with ``what``, when given)."""
        first = url
        for _ in range(MAX_REDIRECTS + 1):
            client = self._client(url)
            client.max_body = max_body
            try:
                response = await client.get(url, headers={"Accept": accept, **headers})
            except TlsError as exc:
                reason = exc.reason.replace(
                    "the configured SERCA", "a CA this device trusts (update.ca or the system's)"
                )
                raise CheckError(f"{url}: {reason}") from None
            except ResponseTooLarge:
                raise
            except HttpError as exc:
                raise CheckError(f"{what}{exc}") from None
            location = response.header("location")
            if response.status not in _REDIRECT_STATUS or not location:
                return response
            from dynexport.update.check import https_url

            try:
                url = https_url(location, url)
            except ValueError as exc:
                raise CheckError(f"{url} redirects to an address refused: {exc}") from None
        raise CheckError(f"{first}: more than {MAX_REDIRECTS} redirects")


def _status_problem(what: str, response: Response) -> CheckError:
    excerpt = response.body[:120].decode("utf-8", "replace").strip()
    return CheckError(
        f"the update server answered HTTP {response.status} for the {what}"
        + (f" ({excerpt})" if excerpt else "")
    )


async def fetch_manifest(fetcher: Fetcher, url: str) -> bytes:
    """The manifest's bytes (at most MAX_MANIFEST_BYTES)."""
    from dynexport.update.check import MAX_MANIFEST_BYTES

    try:
        response = await fetcher.get(url, max_body=MAX_MANIFEST_BYTES, accept="application/json")
    except ResponseTooLarge:
        raise CheckError(
            f"the manifest at {url} is larger than {MAX_MANIFEST_BYTES} bytes: refused unread"
        ) from None
    if response.status != 200:
        raise _status_problem("manifest", response)
    return response.body


def _content_range(value: str | None) -> tuple[int, int, int] | None:
    """``bytes FIRST-LAST/TOTAL`` as numbers (None when absent or not that form)."""
    if value is None or not value.startswith("bytes "):
        return None
    try:
        span, total = value[6:].split("/", 1)
        first, last = span.split("-", 1)
        return int(first), int(last), int(total)
    except ValueError:
        return None


def _remove(path: Path) -> None:
    """Removes a download (sync on purpose: it must also run while being cancelled)."""
    path.unlink(missing_ok=True)


def _write(fd: int, hasher: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    hasher.update(data)


async def download(
    fetcher: Fetcher,
    bundle: Bundle,
    path: Path,
    progress: Callable[[int], None] = lambda n: None,
) -> None:
    """Downloads ``bundle`` to ``path`` in range requests, checking its size and sha256.

    On any failure (including cancellation) the partial file is removed before the error
    (a CheckError naming it) goes up; nothing of a refused download stays on the disk.
    """
    free = shutil.disk_usage(path.parent).free
    if free < bundle.size + SPARE_BYTES:
        raise CheckError(
            f"the data partition has {_mb(free)} free; the bundle needs {_mb(bundle.size)} "
            f"and {_mb(SPARE_BYTES)} to spare: not downloaded"
        )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    hasher = hashlib.sha256()
    done = False
    try:
        with trio.fail_after(DOWNLOAD_MAX_S):
            await _pieces(fetcher, bundle, fd, hasher, progress)
        await trio.to_thread.run_sync(os.fsync, fd)
        digest = hasher.hexdigest()
        if digest != bundle.sha256:
            raise CheckError(
                f"the download's sha256 is {digest}, the manifest says {bundle.sha256}: "
                "refused, nothing was written"
            )
        done = True
    except trio.TooSlowError:
        raise CheckError(f"the download took over {DOWNLOAD_MAX_S:.0f} s: given up") from None
    except OSError as exc:
        full = exc.errno == 28
        raise CheckError(
            "the data partition is full: the bundle does not fit (nothing was written)"
            if full
            else f"the bundle cannot be written to the data partition: {exc}"
        ) from None
    finally:
        os.close(fd)
        if not done:
            _remove(path)


async def _pieces(
    fetcher: Fetcher, bundle: Bundle, fd: int, hasher: Any, progress: Callable[[int], None]
) -> None:
    url, offset, size = bundle.url, 0, bundle.size
    while offset < size:
        last = min(size, offset + PIECE_BYTES) - 1
        try:
            response = await fetcher.get(
                url,
                max_body=PIECE_BYTES,
                accept="application/octet-stream",
                what=f"the download stopped at byte {offset} of {size}: ",
                Range=f"bytes={offset}-{last}",
            )
        except ResponseTooLarge:
            raise CheckError(
                "the bundle server sent more than the piece asked for: it must answer HTTP "
                "range requests (as RAUC's own streaming needs)"
            ) from None
        body = response.body
        if response.status == 206:
            got = _content_range(response.header("content-range"))
            if got is None or got[0] != offset:
                raise CheckError("the bundle server answered a range request with another range")
            if got[2] != size:
                raise CheckError(
                    f"the bundle on the server is {got[2]} bytes; the manifest says {size}"
                )
        elif response.status == 200 and offset == 0 and len(body) == size:
            pass  # a bundle of one piece, sent whole
        elif response.status == 200:
            raise CheckError(
                f"the bundle on the server is {len(body)} bytes, not the {size} the manifest "
                "says (or the server does not answer HTTP range requests)"
            )
        elif response.status == 416:
            raise CheckError(
                f"the bundle on the server is smaller than the manifest's {size} bytes"
            )
        else:
            raise _status_problem("bundle", response)
        if len(body) != last - offset + 1:
            raise CheckError(
                f"the bundle server sent {len(body)} bytes for bytes {offset}-{last}: "
                "the download was cut short"
            )
        await trio.to_thread.run_sync(_write, fd, hasher, body)
        offset += len(body)
        progress(offset)


@dataclass
class CheckState:
    """What the status shows of the update URL (docs/api.md, ``update.check``)."""

    phase: str = "idle"
    """idle, checking, downloading, verifying, installing."""
    last_check: float | None = None
    """Wall-clock time of the last check that read a usable manifest."""
    error: str | None = None
    """Why the last check or automatic install did not work (None after one that did)."""
    failures: int = 0
    message: str | None = None
    available: Bundle | None = None
    received: int | None = None
    progress: str | None = None


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


class UpdateChecker:
    """Checks ``update.url`` at its interval; see the module docstring."""

    def __init__(
        self,
        get_config: Callable[[], UpdateConfig | None],
        data_dir: Path,
        *,
        rauc: Rauc | None = None,
        running_version: str = __version__,
        system_conf: Path = SYSTEM_CONF,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._get_config = get_config
        self.data_dir = data_dir
        self.rauc = rauc or Rauc()
        self.running_version = running_version
        self.system_conf = system_conf
        self._wall_clock = wall_clock
        self._jitter = jitter
        self._ssl_context = ssl_context
        self.state = CheckState()
        self.checks = 0
        self.http_retries = 2
        """Connection failures of one request retried this often (2 s, then 4 s later)."""

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``available`` and ``check`` for the status's ``update`` (docs/api.md)."""
        config = self._get_config()
        st = self.state
        b = st.available if config is not None else None
        return {
            "available": None
            if b is None
            else {
                "version": b.version.text,
                "compatible": b.compatible,
                "size": b.size,
                "notes": b.notes,
            },
            "check": {
                "configured": config is not None,
                "install": None if config is None else config.install,
                "phase": st.phase,
                "lastCheck": _iso(st.last_check),
                "error": st.error,
                "failures": st.failures,
                "message": st.message,
                "receivedBytes": st.received,
                "progress": st.progress,
            },
        }

    # -- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs for the life of the service; idles while ``update`` is not configured.

        First removes a download a power cut or a restart left (up to 256 MiB of /data): it is
        removed at the next check otherwise, which never comes once ``update`` is unset."""
        try:  # one unlink, here rather than in a thread: nothing else runs in this task yet
            _remove(self.data_dir / DOWNLOAD_FILE)
        except OSError as exc:
            log.warning("update: cannot remove a download left behind: %s", exc)
        first = True
        while True:
            config = self._get_config()
            if config is None:
                self.state = CheckState()
                first = False
                await trio.sleep(CONFIG_CHECK_S)
                continue
            from dynexport.update.check import first_check_delay, next_check_delay

            interval = config.check_hours * 3600.0
            delay = first_check_delay(interval, self._jitter()) if first else CHANGED_CHECK_S
            first = False
            while await self._wait(config, delay):
                await self.check_once(config)
                delay = next_check_delay(interval, self.state.failures, self._jitter())

    async def _wait(self, config: UpdateConfig, delay: float) -> bool:
        """Sleeps ``delay`` s (trio's monotonic clock); False when the configuration changed."""
        with trio.move_on_after(delay):
            # the app replaces its configuration without telling its readers: look each second
            while self._get_config() == config:  # noqa: ASYNC110
                await trio.sleep(CONFIG_CHECK_S)
            return False
        return True

    def _context(self, config: UpdateConfig) -> ssl.SSLContext:
        if self._ssl_context is not None:
            return self._ssl_context
        try:
            return ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise CheckError(f"update.ca: {exc}") from None

    def _compatible(self) -> str:
        from dynexport.update.check import parse_system_compatible

        try:
            text = self.system_conf.read_text(errors="replace")
        except OSError:
            text = ""
        compatible = parse_system_compatible(text)
        if compatible is None:
            raise CheckError(
                f"this system cannot install updates: {self.system_conf} names no compatible "
                "(is it the dynexport appliance image?)"
            )
        return compatible

    async def check_once(self, config: UpdateConfig) -> bool:
        """One check (and, with ``install: "auto"``, the install it leads to); True when it
        worked. Never raises for the network, the manifest, the disk or RAUC."""
        from dynexport.update.check import (
            ManifestError,
            VersionError,
            decide,
            parse_manifest,
            parse_version,
        )

        self.checks += 1
        st = self.state
        st.phase = "checking"
        try:
            compatible = self._compatible()
            try:
                running = parse_version(self.running_version)
            except VersionError as exc:
                raise CheckError(f"this system's own version cannot be compared: {exc}") from None
            ctx = self._context(config)
            async with Fetcher(ctx, retries=self.http_retries) as fetcher:
                raw = await fetch_manifest(fetcher, config.url)
                try:
                    manifest = parse_manifest(raw, config.url)
                except ManifestError as exc:
                    raise CheckError(f"the manifest at {config.url} is refused: {exc}") from None
                last = update_status(self.data_dir)  # the last update's fate (state.py)
                try:
                    decision = decide(
                        manifest,
                        compatible,
                        running,
                        config.install,
                        str(last["phase"]),
                        last["version"],
                    )
                except ManifestError as exc:
                    raise CheckError(str(exc)) from None
                st.available, st.message = decision.available, decision.message
                st.last_check = self._wall_clock()
                if decision.install and decision.available is not None:
                    await self._install(fetcher, decision.available, compatible, running, config)
        except CheckError as exc:
            st.failures += 1
            st.error = str(exc)
            log.warning("update check: %s", exc)
            return False
        except Abandoned as exc:
            st.message = str(exc)
            log.warning("update check: %s", exc)
        finally:
            st.phase = "idle"
        st.failures = 0
        st.error = None
        return True

    def _called_off(self, config: UpdateConfig) -> str | None:
        """Why the install that ``config`` allowed is no longer wanted by the configuration in
        force now (None: it still is). The check ran on a copy taken when it began; a
        download takes up to 4 hours, and the installer may have changed ``update`` since."""
        now = self._get_config()
        if now is None:
            return "the update section was removed from the configuration"
        if now.install != "auto":
            return f'update.install is now "{now.install}"'
        if now.url != config.url:
            return "update.url has changed"
        return None

    async def _unless_called_off(
        self, config: UpdateConfig, v: str, step: Callable[[], Awaitable[_T]]
    ) -> _T:
        """``step``'s result (the download, the signature check); cancelled within
        ``CONFIG_CHECK_S`` of the configuration calling the install off: Abandoned then."""
        why: str | None = None
        result: list[_T] = []

        async def watch(scope: trio.CancelScope) -> None:
            nonlocal why
            # the app replaces its configuration without telling its readers: look each second
            while (why := self._called_off(config)) is None:  # noqa: ASYNC110
                await trio.sleep(CONFIG_CHECK_S)
            scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, nursery.cancel_scope)
                result.append(await step())
                nursery.cancel_scope.cancel()  # done: the watch ends (no checkpoint between)
        except BaseExceptionGroup as group:  # the step's own error (CheckError), as it was
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if why is not None:
            raise Abandoned(f"{v} was not installed: {why} (its download was deleted)")
        return result[0]

    async def _install(
        self,
        fetcher: Fetcher,
        bundle: Bundle,
        compatible: str,
        running: Version,
        config: UpdateConfig,
    ) -> None:
        """Downloads, verifies and installs ``bundle`` as ``config`` (the section the check
        ran on) allows, unless the configuration in force calls it off first: while the
        bundle downloads and is verified, and right before ``rauc install`` (once that has
        begun, the install runs to its end)."""
        from dynexport.update import install as shared  # only when a bundle is installed

        st = self.state
        v = bundle.version.text
        if (why := self._called_off(config)) is not None:
            raise Abandoned(f"{v} was not installed: {why}")
        if shared.upload_receiving(self.data_dir, trio.current_time()):
            st.message = f"{v} is available: waiting for the upload on the web page to end"
            return
        if not shared.claim(self.data_dir):
            st.message = f"{v} is available: waiting for the install from the web page to end"
            return
        path = self.data_dir / DOWNLOAD_FILE
        try:
            st.phase, st.received, st.progress = "downloading", 0, None
            log.info("update %s: downloading %s from %s", v, _mb(bundle.size), bundle.url)

            def received(n: int) -> None:
                st.received = n
                st.message = f"downloading {v}: {_mb(n)} of {_mb(bundle.size)}"

            async def fetch_and_verify() -> BundleInfo:
                await download(fetcher, bundle, path, received)
                st.phase = "verifying"
                try:
                    return await self.rauc.info(str(path))
                except RaucError as exc:
                    log.warning("update %s from the update URL refused: %s", v, exc)
                    raise CheckError(
                        f"refused, nothing was written: {shared.refusal(str(exc))}"
                    ) from None

            info = await self._unless_called_off(config, v, fetch_and_verify)
            signed = _signed_version(info.version)
            if (
                signed is None
                or info.compatible != compatible
                or signed != bundle.version
                or not signed > running
            ):
                raise CheckError(
                    f"refused, nothing was written: the signed bundle is {info.version} for "
                    f"{info.compatible or 'no board'}; the manifest said {v} for {compatible}"
                )
            st.phase = "installing"

            async def line(text: str) -> None:
                st.progress = text

            try:
                error = await shared.install_verified(
                    self.data_dir,
                    self.rauc,
                    path,
                    info,
                    line,
                    origin="the update URL",
                    called_off=lambda: self._called_off(config),
                )
            except shared.CalledOff as exc:
                raise Abandoned(f"{v} was not installed: {exc} (nothing was written)") from None
            if error is not None:
                raise CheckError(error)
            st.message = (
                f"{v} is installed: the device restarts into it once the meter and an inverter "
                "answer, at a quiet moment, with every inverter at its fail-safe limit first"
            )
        finally:  # also when cancelled: no await
            _remove(path)
            shared.release(self.data_dir)
            st.received = None


def _signed_version(text: str) -> Version | None:
    """The version RAUC verified (what is installed), not the one the manifest claims."""
    from dynexport.update.check import VersionError, parse_version

    try:
        return parse_version(text)
    except VersionError:
        return None
