"""The image answers to ``dynexport.local`` (multicast DNS through systemd-resolved) on the home
network links, and not on the setup access point (issue 12: how to reach the device again)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from tests.image.helpers import OVERLAY, ROOT

NETWORK = OVERLAY / "etc/systemd/network"


def _ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def _mdns(network: str) -> str | None:
    """The MulticastDNS= of a .network file, drop-ins included (the last one wins)."""
    value = _ini(NETWORK / network).get("Network", "MulticastDNS", fallback=None)
    for dropin in sorted((NETWORK / f"{network}.d").glob("*.conf")):
        value = _ini(dropin).get("Network", "MulticastDNS", fallback=value)
    return value


def test_resolved_answers_multicast_dns_not_only_resolves() -> None:
    confs = sorted((OVERLAY / "etc/systemd/resolved.conf.d").glob("*.conf"))
    values = [_ini(c).get("Resolve", "MulticastDNS", fallback=None) for c in confs]
    assert values and values[-1] == "yes", "resolve-only would never answer dynexport.local"


@pytest.mark.parametrize("network", ["10-ethernet.network", "30-wlan0.network"])
def test_home_network_links_announce_the_name(network: str) -> None:
    assert _mdns(network) == "yes"


def test_the_setup_access_point_does_not_announce_it() -> None:
    assert _mdns("20-wlan0-ap.network") in (None, "no")


def test_every_board_is_named_dynexport_so_the_name_is_dynexport_local() -> None:
    configs = sorted((ROOT / "buildroot/configs").glob("*_defconfig"))
    assert configs
    for config in configs:
        m = re.search(r'^BR2_TARGET_GENERIC_HOSTNAME="([^"]*)"', config.read_text(), re.M)
        assert m is not None and m[1] == "dynexport", config.name
