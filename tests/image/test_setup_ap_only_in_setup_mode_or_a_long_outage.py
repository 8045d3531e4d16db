"""The setup access point appears only in setup mode and after a long loss of the home network
(docs/image.md "Network and the setup access point").

Two ways it did otherwise: a /data that is not mounted (a check that left errors, no data
partition) hid config.json, and the rule took a configured, online site for setup mode; and on a
configured site one connected phone kept the access point up for ever, the home Wi-Fi client
off. The rule's decide() is run over simulated hours; observe() against stand-ins for systemctl,
iw and /data."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.image.helpers import load_script

ap_rule = load_script("ap-rule")
AP, WIFI = "dynexport-ap.target", "dynexport-wifi.service"
STEP = 30.0  # dynexport-ap-rule.timer


def simulate(
    hours: float, *, configured: bool, online: bool, stations: int
) -> list[tuple[float, float]]:
    """Runs the rule every 30 s from boot; the spans (start, end) during which the AP was up.
    The home network is ``online`` only while the AP is down (one radio, home Wi-Fi only)."""
    state = ap_rule.State(last_online=0.0, ap_since=None)
    ap_active, wifi_active = False, True
    spans: list[tuple[float, float]] = []
    since: float | None = None
    t = 0.0
    while t < hours * 3600:
        seen = ap_rule.Seen(
            now=t,
            configured=configured,
            wifi_configured=True,
            ap_active=ap_active,
            wifi_active=wifi_active,
            online=online and not ap_active,
            stations=stations if ap_active else 0,
        )
        actions, state = ap_rule.decide(seen, state)
        for action in actions:
            verb, unit = action.split()
            if unit == AP:
                ap_active, wifi_active = verb == "start", wifi_active and verb != "start"
                if verb == "start":
                    since = t
                elif since is not None:
                    spans.append((since, t))
                    since = None
            elif unit == WIFI:
                wifi_active = verb == "start"
        t += STEP
    if since is not None:
        spans.append((since, t))
    return spans


def test_a_connected_phone_keeps_the_access_point_of_a_configured_site_up_30_minutes_at_most() -> (
    None
):
    spans = simulate(24, configured=True, online=False, stations=1)
    assert spans, "a long loss of the home network brings the access point up"
    assert max(end - start for start, end in spans) <= ap_rule.AP_MAX + STEP
    assert ap_rule.AP_MAX == 30 * 60
    # between the spans the home Wi-Fi client gets its OFFLINE_LIMIT to find the home network
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    assert gaps and min(gaps) >= ap_rule.OFFLINE_LIMIT


def test_the_ap_goes_down_at_its_bound_with_a_phone_still_connected() -> None:
    state = ap_rule.State(last_online=0.0, ap_since=0.0)
    for now in (1200.0, ap_rule.AP_MAX - 1):
        seen = ap_rule.Seen(now, True, True, True, False, False, 1)
        assert ap_rule.decide(seen, state)[0] == [], now
    seen = ap_rule.Seen(ap_rule.AP_MAX, True, True, True, False, False, 1)
    actions, after = ap_rule.decide(seen, state)
    assert actions == [f"stop {AP}", f"start {WIFI}"]
    assert after.ap_since is None and after.last_online == ap_rule.AP_MAX


def test_setup_mode_keeps_the_access_point_up_with_or_without_a_phone() -> None:
    for stations in (0, 1):
        spans = simulate(24, configured=False, online=False, stations=stations)
        assert spans == [(0.0, 24 * 3600)]


def test_a_configured_online_site_never_opens_the_access_point() -> None:
    assert simulate(24, configured=True, online=True, stations=0) == []


class Host:
    """observe()'s world: /data, its files, the units' states and the stations."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounted: bool) -> None:
        data = tmp_path / "data"
        (data / "dynexport").mkdir(parents=True)
        monkeypatch.setattr(ap_rule, "DATA", data)
        monkeypatch.setattr(ap_rule, "CONFIG", data / "dynexport/config.json")
        monkeypatch.setattr(ap_rule, "LAST_GOOD", data / "dynexport/config.last-good.json")
        monkeypatch.setattr(ap_rule, "WIFI", data / "dynexport/wifi.json")
        real_ismount = ap_rule.os.path.ismount

        def ismount(path: Any) -> bool:
            return mounted if Path(path) == data else bool(real_ismount(path))

        monkeypatch.setattr(ap_rule.os.path, "ismount", ismount)
        monkeypatch.setattr(ap_rule, "_active", lambda unit: False)
        monkeypatch.setattr(ap_rule, "_stations", lambda: 0)


@pytest.mark.parametrize("mounted", [True, False])
def test_an_unmounted_data_is_not_setup_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounted: bool
) -> None:
    """No config.json to be seen: setup mode only when /data is mounted (an empty data
    partition, the first boot); otherwise the site counts as configured, and while the home
    network works the access point stays down."""
    Host(tmp_path, monkeypatch, mounted)
    seen = ap_rule.observe(1000.0)
    assert seen.configured is (not mounted)
    actions, _ = ap_rule.decide(seen, ap_rule.State(last_online=1000.0, ap_since=None))
    assert (f"start {AP}" in actions) is mounted


def test_an_unmounted_data_still_gets_the_access_point_after_a_long_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Host(tmp_path, monkeypatch, mounted=False)
    seen = ap_rule.observe(1000.0 + ap_rule.OFFLINE_LIMIT)
    assert seen.configured is True
    offline = dataclasses.replace(seen, online=False)  # the host's own routes do not count
    actions, _ = ap_rule.decide(offline, ap_rule.State(last_online=1000.0, ap_since=None))
    assert actions == [f"start {AP}"]
