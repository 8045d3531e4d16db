"""The home Wi-Fi the setup page writes to ``<data>/wifi.json`` (docs/image.md).

The image's ``wifi-config`` turns that file into wpa_supplicant's configuration and checks it
again; the same rules are applied here so the installer sees a mistake on the page, not later.
"""

from __future__ import annotations

import string
from typing import Any

HEX = frozenset(string.hexdigits)


class WifiError(ValueError):
    """A network name or passphrase wpa_supplicant would not take."""


def check_wifi(data: dict[str, Any]) -> dict[str, str]:
    """``{"ssid", "psk"}`` ready to write, or WifiError naming the problem."""
    unknown = set(data) - {"ssid", "psk"}
    if unknown:
        raise WifiError(f"unknown keys: {', '.join(sorted(unknown))}")
    ssid = data.get("ssid")
    if not isinstance(ssid, str) or not 1 <= len(ssid.encode()) <= 32:
        raise WifiError("ssid: the network name must be 1 to 32 bytes")
    psk = data.get("psk") or ""
    if not isinstance(psk, str):
        raise WifiError("psk: must be a string")
    hex_key = len(psk) == 64 and set(psk) <= HEX
    passphrase = 8 <= len(psk) <= 63 and all(" " <= c <= "~" for c in psk) and '"' not in psk
    if psk and not (hex_key or passphrase):
        raise WifiError(
            'psk: the password must be 8 to 63 printable ASCII characters without ", '
            "or 64 hex digits (or empty for an open network)"
        )
    return {"ssid": ssid, "psk": psk}


def parse_scan(text: str) -> list[dict[str, Any]]:
    """Networks in range from ``iw dev IFACE scan dump``: ``[{ssid, signal}]`` (dBm), the
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
