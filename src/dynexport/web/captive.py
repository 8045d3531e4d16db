"""Captive-portal answers for the first-boot access point.

On the setup Wi-Fi every DNS name resolves to the appliance (dnsmasq ``address=/#/``), so a phone's
connectivity check reaches this server with a foreign Host header. Answering those (and the known
probe paths) with a redirect to the setup page makes the phone open it by itself.
"""

from __future__ import annotations

import ipaddress

AP_ADDRESS = "192.168.4.1"
"""The appliance's address on its setup access point (docs/image.md)."""

PROBE_PATHS = frozenset(
    {
        "/generate_204",  # Android
        "/gen_204",  # Android, Chrome
        "/hotspot-detect.html",  # Apple
        "/library/test/success.html",  # Apple, older
        "/connecttest.txt",  # Windows 10+
        "/ncsi.txt",  # Windows, older
        "/redirect",  # Windows
        "/canonical.html",  # Firefox
        "/success.txt",  # Firefox
    }
)


def host_name(host_header: str | None) -> str:
    """The host part of a Host header, lowercase, without the port or IPv6 brackets."""
    host = (host_header or "").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_own_host(host_header: str | None) -> bool:
    """True when the Host names this appliance: an IP address, ``localhost``, a bare name (no
    dot, e.g. ``dynexport``) or an mDNS ``.local`` name. Anything else is a name some phone or
    app wanted to reach on the internet."""
    host = host_name(host_header)
    if not host:
        return True  # HTTP/1.0 without Host: nothing to redirect away from
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return host == "localhost" or "." not in host or host.endswith(".local")


def captive_redirect(path: str, host_header: str | None) -> str | None:
    """Where to send this request while in setup mode, or None to serve it normally."""
    if path in PROBE_PATHS:
        if is_own_host(host_header) and host_header:
            return f"http://{host_header.strip()}/setup"
        return f"http://{AP_ADDRESS}/setup"
    if not is_own_host(host_header):
        return f"http://{AP_ADDRESS}/setup"
    return None
