"""The home Wi-Fi the setup page writes to ``<data>/wifi.json`` (docs/image.md), and the
networks in range it offers.

The image's ``wifi-config`` turns that file into wpa_supplicant's configuration and checks it
again; the same rules are applied here so the installer sees a mistake on the page, not later.

Networks in range: during setup wlan0 is the access point, which never scans by itself, so the
page asks for a fresh scan. Starting one needs CAP_NET_ADMIN, which the service does not have:
the image's root helper does it (``/usr/libexec/dynexport/wifi-scan``, one scan per connection
to ``/run/dynexport-wifi-scan.sock``). ``WifiScanner`` runs one scan at a time for every
request and reuses a fresh answer, so reloading the page does not keep taking the radio off
the access point's channel; ``read_scan_answer`` turns the helper's answer into the page's.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

HEX = frozenset(string.hexdigits)
SCAN_SOCKET = Path("/run/dynexport-wifi-scan.sock")
"""The image's scan helper (dynexport-wifi-scan.socket)."""
SCAN_BUDGET_S = 30.0
"""A request waits this long for a scan at most (the helper's own bound on iw is 20 s)."""
SCAN_REUSE_S = 20.0
"""A scan this recent is given again instead of scanning."""
MAX_ANSWER = 2 << 20
"""Bytes read from the helper at most (it passes on 1 MiB of iw's output)."""
IW_ERRORS = {
    "(-95)": "this Wi-Fi radio cannot scan while it is the setup access point",
    "(-16)": "the Wi-Fi radio is busy (a scan or a connection is under way): try again shortly",
    "(-100)": "the Wi-Fi interface is down (no setup access point, no home Wi-Fi)",
    "(-19)": "this device has no Wi-Fi interface wlan0",
    "(-1)": "the scan helper is not allowed to scan (it needs CAP_NET_ADMIN)",
}
"""iw's ``command failed: ... (-errno)`` in words: EOPNOTSUPP, EBUSY, ENETDOWN, ENODEV, EPERM."""


class WifiError(ValueError):
    """A network name or passphrase wpa_supplicant would not take."""


def check_wifi(data: dict[str, Any], saved: object = None) -> dict[str, str]:
    """``{"ssid", "psk"}`` ready to write, or WifiError naming the problem.

    ``data`` is the page's ``{ssid, psk?, open?}``; ``saved`` is what ``wifi.json`` holds now
    (anything read from it, None when there is none). The page never gets the passphrase back,
    so a passphrase left out (or empty) keeps the saved one when the network name is the saved
    one: walking through Settings must not turn the home Wi-Fi into an open network. An open
    network (``psk`` "") is only ever written for an explicit ``open: true``; a new name without
    a passphrase is refused."""
    unknown = set(data) - {"ssid", "psk", "open"}
    if unknown:
        raise WifiError(f"unknown keys: {', '.join(sorted(unknown))}")
    ssid = data.get("ssid")
    if not isinstance(ssid, str) or not 1 <= len(ssid.encode()) <= 32:
        raise WifiError("ssid: the network name must be 1 to 32 bytes")
    psk = data.get("psk")
    if psk is None:
        psk = ""
    if not isinstance(psk, str):
        raise WifiError("psk: must be a string")
    is_open = data.get("open", False)
    if not isinstance(is_open, bool):
        raise WifiError("open: must be true or false")
    if is_open:
        if psk:
            raise WifiError("psk: an open network (open: true) has no password")
        return {"ssid": ssid, "psk": ""}
    if not psk:
        kept = _saved_psk(saved, ssid)
        if kept is None:
            raise WifiError(
                f"psk: enter the password of {ssid!r} (the saved password is for another "
                "network, or none is saved), or send open: true for an open network"
            )
        return {"ssid": ssid, "psk": kept}
    hex_key = len(psk) == 64 and set(psk) <= HEX
    passphrase = 8 <= len(psk) <= 63 and all(" " <= c <= "~" for c in psk) and '"' not in psk
    if not (hex_key or passphrase):
        raise WifiError(
            'psk: the password must be 8 to 63 printable ASCII characters without ", '
            "or 64 hex digits (open: true for an open network)"
        )
    return {"ssid": ssid, "psk": psk}


def _saved_psk(saved: object, ssid: str) -> str | None:
    """The saved passphrase ("" for an open network) when ``saved`` is ``ssid``'s, else None."""
    if not isinstance(saved, dict) or saved.get("ssid") != ssid:
        return None
    psk = saved.get("psk") or ""  # as wifi-config reads it: none is an open network
    return psk if isinstance(psk, str) else None


def parse_scan(text: str) -> list[dict[str, Any]]:
    """Networks in range from ``iw dev IFACE scan [ap-force|dump]``: ``[{ssid, signal}]`` (dBm), the
    strongest first, each name once, hidden networks left out."""
    best: dict[str, float] = {}
    signal: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith("BSS "):
            signal = None
        elif line.startswith("signal:"):
            try:
                signal = float(line.split()[1])
            except (IndexError, ValueError):
                signal = None
        elif line.startswith("SSID:"):
            ssid = line[5:].strip()
            if ssid and "\\x00" not in ssid:
                level = signal if signal is not None else -100.0
                best[ssid] = max(level, best.get(ssid, -1000.0))
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    return [{"ssid": s, "signal": f"{level:.0f} dBm"} for s, level in ranked[:30]]


def read_scan_answer(raw: bytes) -> dict[str, Any]:
    """The page's ``{networks, error?}`` from the scan helper's one JSON line
    (rootfs-overlay/usr/libexec/dynexport/wifi-scan): networks when iw scanned, else an error
    that says why in words."""
    if not raw.strip():
        return scan_failed("the scan helper closed the connection without an answer (busy?)")
    try:
        answer = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        text = raw[:80].decode("utf-8", "replace").strip()
        return scan_failed(f"the scan helper answered something unexpected: {text!r}")
    if isinstance(answer.get("error"), str):
        return scan_failed(answer["error"])
    rc, stdout, stderr = answer.get("rc"), answer.get("stdout"), answer.get("stderr")
    if not (isinstance(rc, int) and isinstance(stdout, str) and isinstance(stderr, str)):
        return scan_failed("the scan helper's answer lacks rc, stdout or stderr")
    if rc != 0:
        why = stderr.strip() or f"iw ended with status {rc}"
        for code, words in IW_ERRORS.items():
            if why.endswith(code):
                why = f"{words} ({why})"
                break
        return scan_failed(why)
    return {"networks": parse_scan(stdout)}


def scan_failed(why: str) -> dict[str, Any]:
    return {"networks": [], "error": f"cannot list networks: {why}"}


async def ask_scan_helper(path: Path = SCAN_SOCKET) -> bytes:
    """Connect to the image's scan helper and read its answer until it closes (one scan)."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        chunks: list[bytes] = []
        size = 0
        while data := await stream.receive_some(65536):
            size += len(data)
            if size > MAX_ANSWER:
                raise OSError(f"the scan helper's answer is longer than {MAX_ANSWER} bytes")
            chunks.append(data)
    return b"".join(chunks)


class WifiScanner:
    """One Wi-Fi scan at a time for all the page's requests.

    A request while a scan runs waits for that scan's answer instead of starting another; a
    successful answer younger than ``reuse_s`` is given again (failures are not kept, so
    "busy" can be retried at once). A scan gets ``budget_s`` at most. Time is trio's clock.
    """

    def __init__(
        self,
        scan: Callable[[], Awaitable[bytes]] = ask_scan_helper,
        *,
        budget_s: float = SCAN_BUDGET_S,
        reuse_s: float = SCAN_REUSE_S,
    ) -> None:
        self._scan = scan
        self.budget_s, self.reuse_s = budget_s, reuse_s
        self._running: trio.Event | None = None
        self._last: dict[str, Any] | None = None
        self._last_at = -math.inf
        self._failed: tuple[trio.Event, dict[str, Any]] | None = None
        """The last failed scan's answer, for the requests that waited for that scan."""

    async def networks(self) -> dict[str, Any]:
        """``{networks, error?}``: the last answer if fresh, else a new scan's (shared)."""
        while True:
            if self._last is not None and trio.current_time() - self._last_at < self.reuse_s:
                return self._last
            if self._running is None:
                return await self._scan_now()
            started = self._running
            await started.wait()
            if self._last is not None and trio.current_time() - self._last_at < self.reuse_s:
                return self._last
            if self._failed is not None and self._failed[0] is started:
                return self._failed[1]
            # the scan this request waited for was cancelled: start one (loop)

    async def _scan_now(self) -> dict[str, Any]:
        done = self._running = trio.Event()
        try:
            with trio.move_on_after(self.budget_s) as budget:
                try:
                    raw = await self._scan()
                except FileNotFoundError:
                    result = scan_failed("no Wi-Fi scan helper on this system (not the image?)")
                except OSError as exc:
                    result = scan_failed(f"the Wi-Fi scan helper does not answer: {exc}")
                else:
                    result = read_scan_answer(raw)
            if budget.cancelled_caught:
                result = scan_failed(f"the scan took longer than {self.budget_s:.0f} s")
            if "error" in result:
                self._failed = (done, result)
            else:
                self._last, self._last_at = result, trio.current_time()
            return result
        finally:
            self._running = None
            done.set()
