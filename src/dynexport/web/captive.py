"""Which Host names this appliance answers to, and the captive-portal answers of first boot.

On the setup Wi-Fi every DNS name resolves to the appliance (dnsmasq ``address=/#/``), so a phone's
connectivity check reaches this server with a foreign Host header. Answering those (and the known
probe paths) with a redirect to the setup page makes the phone open it by itself.

After setup a foreign Host is refused (421) instead: a web page elsewhere could otherwise point a
name of its own at the appliance's address (DNS rebinding) and read the dashboard or drive the
API as if it were the page itself (docs/web.md, "Threat model"). Pure functions of the header.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

AP_ADDRESS = "192.168.4.1"
"""The appliance's address on its setup access point (docs/image.md)."""

DEFAULT_NAMES = frozenset({"dynexport", "localhost"})
"""Names the appliance always answers to (the image's hostname, and ``localhost`` for tests)."""

LOCAL_SUFFIXES = ("local", "lan", "home", "home.arpa", "localdomain", "internal", "fritz.box")
"""Domains that only a local resolver (mDNS, the home router) answers: ``<own name>.<suffix>`` is
accepted. A public domain never is: whoever owns it could point it at the appliance."""

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

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})(?:\.[a-z0-9](?:[a-z0-9-]{0,62}))*\.?$")


@dataclass(frozen=True)
class Host:
    """A Host header that parsed: a lowercase DNS name or an IP address, and an optional port."""

    name: str
    port: int | None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    def url_authority(self) -> str:
        """``name[:port]`` as it may appear in a URL (IPv6 in brackets); safe to echo."""
        host = f"[{self.name}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.name
        return host if self.port is None else f"{host}:{self.port}"


def parse_host(header: str | None) -> Host | None:
    """The Host header's name and port, or None when it is missing or not a valid host."""
    text = (header or "").strip().lower()
    if not text:
        return None
    port_text: str | None = None
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        name, port_text = inner, rest[1:] if rest else None
    elif text.count(":") == 1:
        name, port_text = text.split(":", 1)
    else:
        name = text
    port: int | None = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is None:
        if text.startswith("[") or not _NAME.match(name) or len(name) > 253:
            return None
        name = name.rstrip(".")
    elif isinstance(ip, ipaddress.IPv6Address) and not text.startswith("["):
        return None  # an IPv6 address in a Host header must be in brackets
    else:
        name = str(ip)
    return Host(name, port, ip)


def _plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class HostPolicy:
    """The names this appliance answers to; its addresses are those clients connect to."""

    names: frozenset[str] = DEFAULT_NAMES

    @classmethod
    def for_names(cls, *names: str) -> HostPolicy:
        """``names`` (e.g. the machine's hostname) plus the defaults, lowercase."""
        return cls(DEFAULT_NAMES | {n.strip().lower().rstrip(".") for n in names if n.strip()})

    def is_own(self, host: Host | None, local_address: str | None) -> bool:
        """True when ``host`` names this appliance: one of its names, ``<name>.<local suffix>``,
        a loopback address or the address the client connected to."""
        if host is None:
            return False
        if host.ip is not None:
            ip = _plain_ip(str(host.ip))
            local = _plain_ip(local_address) if local_address else None
            return ip is not None and (ip.is_loopback or ip == local)
        if host.name in self.names:
            return True
        first, _, rest = host.name.partition(".")
        return first in self.names and rest in LOCAL_SUFFIXES


def captive_redirect(
    path: str, host_header: str | None, policy: HostPolicy, local_address: str | None
) -> str | None:
    """Where to send this request while in setup mode, or None to serve it normally.

    The location is built from the parsed, accepted host only (never the raw header), so
    nothing a client sends is reflected into it."""
    if host_header is None:
        return None  # HTTP/1.0 without Host: nothing to redirect away from
    host = parse_host(host_header)
    own = policy.is_own(host, local_address) or (host is not None and host.name == AP_ADDRESS)
    if path in PROBE_PATHS:
        if own and host is not None:
            return f"http://{host.url_authority()}/setup"
        return f"http://{AP_ADDRESS}/setup"
    if not own:
        return f"http://{AP_ADDRESS}/setup"
    return None
