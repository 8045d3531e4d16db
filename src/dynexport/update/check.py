"""The update URL's pure core: the manifest, versions, and when to check (docs/update.md).

An installer may point the device at a small JSON manifest (``update.url``, off by default). This
module decides everything about it without I/O: what a manifest says (``parse_manifest``: any
bytes give a `Manifest` or a `ManifestError` naming the problem, never another exception), whether
its version is newer than the running one (``compare_versions``; never a downgrade), what to do
about it (``decide``), and when to look next (``next_check_delay``: jittered so a fleet does not
ask at once, backing off after failures). ``auto.py`` does the I/O.

The URL is not the trust anchor: a bundle is only installed when ``rauc info`` verifies its
signature against the device's keyring. The manifest's ``sha256`` and ``size`` only make a
download that went wrong fail early and plainly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

MAX_MANIFEST_BYTES = 64 * 1024
"""A manifest is a few hundred bytes; anything past this is refused unread."""
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
"""The same bound as a bundle uploaded on the web page (web/updates.py)."""
MAX_ENTRIES = 32
"""Bundles one manifest may list (one per board)."""
MAX_NOTES = 500
"""Characters of ``notes`` kept for the status (the rest is cut)."""

InstallMode = Literal["notify", "auto"]
INSTALL_MODES: tuple[InstallMode, ...] = ("notify", "auto")


class ManifestError(ValueError):
    """The manifest cannot be used; the message says why in an installer's words."""


class VersionError(ValueError):
    """A version string that cannot be compared."""


# -- versions ---------------------------------------------------------------------------------

_VERSION = re.compile(
    r"^v?(?P<release>[0-9]{1,9}(?:\.[0-9]{1,9}){0,3})"
    r"(?:[-.]?(?P<pre>a|alpha|b|beta|rc|dev)[-.]?(?P<pre_n>[0-9]{0,9}))?"
    r"(?:\+(?P<build>[A-Za-z0-9.\-_]{1,64}))?$"
)
_PRE_ORDER = {"dev": 0, "a": 1, "alpha": 1, "b": 2, "beta": 2, "rc": 3}


@dataclass(frozen=True, order=True)
class Version:
    """A release version, ordered: ``1.4.0`` < ``1.4.1``; ``1.5.0rc1`` < ``1.5.0``.

    The part after ``+`` (the bundle's git commit, ``1.4.0+ab12cd``) is build metadata, as in
    semantic versioning: kept for display, never compared.
    """

    release: tuple[int, ...]
    pre: tuple[int, int]
    """(kind, number) of a pre-release; (9, 0) for a final release, which sorts after them."""
    text: str = field(default="", compare=False)


def parse_version(text: object) -> Version:
    """``1.4``, ``1.4.0``, ``v1.4.0``, ``1.5.0-rc.1``, ``1.5.0rc1``, ``1.4.0+ab12cd``."""
    if not isinstance(text, str):
        raise VersionError(f"a version must be a string, not {_kind(text)}")
    m = _VERSION.match(text.strip())
    if m is None:
        raise VersionError(f"{text[:64]!r} is not a version such as 1.4.0 or 1.5.0-rc.1")
    release = tuple(int(p) for p in m["release"].split("."))
    release = release + (0,) * (4 - len(release))  # 1.4 == 1.4.0
    pre = (9, 0) if m["pre"] is None else (_PRE_ORDER[m["pre"]], int(m["pre_n"] or 0))
    return Version(release, pre, text.strip())


def compare_versions(offered: Version, running: Version) -> Literal["newer", "same", "older"]:
    """How the offered version stands to the running one (build metadata ignored)."""
    if offered > running:
        return "newer"
    return "same" if offered == running else "older"


# -- the manifest -----------------------------------------------------------------------------

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMPATIBLE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


@dataclass(frozen=True)
class Bundle:
    """One bundle the manifest offers."""

    version: Version
    compatible: str
    """RAUC's compatible of the board it is for (``dynexport-rpi4_64``)."""
    url: str
    """Where the bundle is: an https URL, resolved against the manifest's own URL."""
    size: int
    sha256: str
    """Lower-case hex."""
    notes: str = ""


@dataclass(frozen=True)
class Manifest:
    bundles: tuple[Bundle, ...]

    def for_board(self, compatible: str) -> Bundle:
        """The bundle for this board; a ManifestError naming what is offered when none is."""
        for bundle in self.bundles:
            if bundle.compatible == compatible:
                return bundle
        offered = ", ".join(sorted({b.compatible for b in self.bundles})) or "nothing"
        raise ManifestError(
            f"the manifest offers no bundle for this board ({compatible}); it offers {offered}"
        )


def https_url(text: str, base: str | None = None) -> str:
    """An absolute https URL (``text`` resolved against ``base``); ValueError says why not.

    Plain http is refused everywhere: a manifest or bundle that anyone on the path could swap
    would not get past the signature check, but it could still be used to hold updates back
    or to fill the data partition.
    """
    from urllib.parse import urljoin

    if len(text) > 2000 or not re.fullmatch(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", text):
        raise ValueError(f"{text[:100]!r} is not a URL (spaces or characters a URL may not hold)")
    try:
        url = urljoin(base, text) if base else text
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text[:100]!r} is not a usable URL: {exc}") from None
    if parts.scheme.lower() != "https":
        raise ValueError(f"must be an https:// URL (plain http is refused), not {url[:100]!r}")
    if not parts.hostname:
        raise ValueError(f"{url[:100]!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url[:100]!r} holds a user name or password: not supported")
    if port == 0:
        raise ValueError(f"{url[:100]!r} names port 0")
    return url.split("#", 1)[0]


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _entry(raw: Any, where: str, base_url: str) -> Bundle:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}must be a JSON object, not {_kind(raw)}")
    for key in ("version", "compatible", "url", "size", "sha256"):
        if key not in raw:
            raise ManifestError(f"{where}{key}: is missing")
    try:
        version = parse_version(raw["version"])
    except VersionError as exc:
        raise ManifestError(f"{where}version: {exc}") from None
    compatible = raw["compatible"]
    if not isinstance(compatible, str) or not _COMPATIBLE.match(compatible):
        raise ManifestError(
            f"{where}compatible: must be a board name such as dynexport-rpi4_64, "
            f"not {_kind(compatible)}"
        )
    url = raw["url"]
    if not isinstance(url, str):
        raise ManifestError(f"{where}url: must be a string, not {_kind(url)}")
    try:
        url = https_url(url, base_url)
    except ValueError as exc:
        raise ManifestError(f"{where}url: {exc}") from None
    size = raw["size"]
    if isinstance(size, bool) or not isinstance(size, int):
        raise ManifestError(f"{where}size: must be a whole number of bytes, not {_kind(size)}")
    if not 0 < size <= MAX_BUNDLE_BYTES:
        raise ManifestError(f"{where}size: must be 1 to {MAX_BUNDLE_BYTES} bytes, not {size}")
    sha = raw["sha256"]
    if not isinstance(sha, str) or not _SHA256.match(sha.lower()):
        raise ManifestError(f"{where}sha256: must be 64 hexadecimal digits")
    notes = raw.get("notes", "")
    if not isinstance(notes, str):
        raise ManifestError(f"{where}notes: must be a string, not {_kind(notes)}")
    return Bundle(version, compatible, url, size, sha.lower(), notes.strip()[:MAX_NOTES])


def parse_manifest(raw: bytes, base_url: str) -> Manifest:
    """The manifest at ``base_url`` (whose relative bundle URLs resolve against it).

    Either one bundle, ``{"version", "compatible", "url", "size", "sha256", "notes"?}``, or
    ``{"bundles": [...]}`` of those, one per board. Other keys are ignored (a later manifest
    format may add some). Raises only ManifestError.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"the manifest is {len(raw)} bytes; at most {MAX_MANIFEST_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"the manifest is not UTF-8 text (byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"the manifest is not JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"the manifest is not usable JSON ({str(exc)[:100]})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"the manifest must be a JSON object, not {_kind(doc)}")
    if "bundles" not in doc:
        return Manifest((_entry(doc, "", base_url),))
    entries = doc["bundles"]
    if not isinstance(entries, list) or not entries:
        raise ManifestError("bundles: must be a non-empty list")
    if len(entries) > MAX_ENTRIES:
        raise ManifestError(f"bundles: at most {MAX_ENTRIES} entries, not {len(entries)}")
    return Manifest(tuple(_entry(e, f"bundles[{i}].", base_url) for i, e in enumerate(entries)))


def parse_system_compatible(text: str) -> str | None:
    """RAUC's ``compatible=`` from /etc/rauc/system.conf's ``[system]`` (None: not there)."""
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "system" and "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            if key.strip() == "compatible":
                return value.strip() or None
    return None


# -- what to do -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What a check found: ``available`` (shown) and whether to ``install`` it now."""

    available: Bundle | None
    install: bool
    message: str


BUSY_PHASES = frozenset({"installing", "reboot-pending", "trial"})
"""An update in these phases (state.py) must finish first: installing another during a trial
would overwrite the slot the device falls back to."""


def decide(
    manifest: Manifest,
    compatible: str,
    running: Version,
    mode: InstallMode,
    last_phase: str,
    last_version: str | None,
) -> Decision:
    """What to do about ``manifest`` on this board (raises ManifestError for another board).

    Never a downgrade and never the same version again: an older signed bundle replayed by the
    server (or anyone able to answer for it) would bring back fixed bugs; a release that must be
    withdrawn is published again with a higher version. A version whose install failed or was
    rolled back is shown but not installed again automatically (it would fail the same way,
    over and over); it can still be installed from the web page.
    """
    bundle = manifest.for_board(compatible)
    how = compare_versions(bundle.version, running)
    if how != "newer":
        said = "the same as" if how == "same" else "older than"
        return Decision(
            None, False, f"up to date: {running.text} runs ({bundle.version.text} is {said} it)"
        )
    v = bundle.version.text
    if mode == "notify":
        return Decision(
            bundle, False, f"{v} is available: install it from Installer tools, Software update"
        )
    if last_phase in BUSY_PHASES:
        return Decision(bundle, False, f"{v} is available: waiting for the last update to finish")
    if last_phase in ("rolled-back", "failed") and last_version is not None:
        try:
            same = parse_version(last_version) == bundle.version
        except VersionError:
            same = False
        if same:
            return Decision(
                bundle,
                False,
                f"{v} is available but is not installed again automatically: its last install "
                "failed or was rolled back (it can be installed from the web page)",
            )
    return Decision(bundle, True, f"{v} is available: installing it")


# -- when to check ----------------------------------------------------------------------------

FIRST_CHECK_S = 120.0
"""The first check after start waits at least this long (the links come up first)."""
FIRST_SPREAD_S = 3600.0
"""... plus up to this much (or the interval, if shorter), at random: a fleet that restarts
together (a power cut over a suburb) does not ask the server at once."""
RETRY_FIRST_S = 300.0
"""The first retry after a failed check; each further failure doubles it, up to the interval."""


def _clamp01(x: float) -> float:
    return min(1.0, max(0.0, x))


def first_check_delay(interval_s: float, jitter: float) -> float:
    """Seconds from start to the first check; ``jitter`` is a random value in [0, 1]."""
    return FIRST_CHECK_S + min(FIRST_SPREAD_S, interval_s) * _clamp01(jitter)


def next_check_delay(interval_s: float, failures: int, jitter: float) -> float:
    """Seconds until the next check: the interval ±10 % after a success; after ``failures``
    failed checks in a row 5, 10, 20 ... minutes (never more than the interval), half of it at
    random. Monotonic seconds, never negative."""
    j = _clamp01(jitter)
    if failures <= 0:
        return interval_s * (0.9 + 0.2 * j)
    full = min(interval_s, RETRY_FIRST_S * 2.0 ** min(failures - 1, 30))
    return full / 2 + full / 2 * j
