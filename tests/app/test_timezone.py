"""Daily windows run in the site's time zone (site.timeZone), across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dynexport.app import App
from dynexport.system.config import ConfigError, parse_config
from dynexport.web.api import alerts
from tests.app.conftest import make_app

WINDOW = {"from": "10:00", "to": "16:00", "exportW": 0}


def _app(tmp_path: Path, now: datetime, zone: str | None) -> App:
    raw: dict[str, Any] = {"limits": {"exportW": 5000, "windows": [WINDOW]}}
    if zone is not None:
        raw["site"] = {"timeZone": zone}
    t = now.timestamp()
    app = make_app(parse_config(raw), tmp_path, wall_clock=lambda: t)
    app.progress.register("controller", 10.0, 0.0)
    return app


def _utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("utc_now", "zone", "in_window"),
    [
        # 00:30 UTC is 10:30 in Brisbane (UTC+10, no daylight saving): inside 10:00-16:00
        (_utc(2026, 12, 1, 0, 30), "Australia/Brisbane", True),
        # 20:30 UTC is 06:30 next morning in Brisbane: outside, though 10:00-16:00 UTC is not
        (_utc(2026, 12, 1, 10, 30), "Australia/Brisbane", False),
        # Adelaide in summer is UTC+10:30: 23:45 UTC is 10:15 local
        (_utc(2026, 12, 1, 23, 45), "Australia/Adelaide", True),
        (_utc(2026, 12, 1, 23, 15), "Australia/Adelaide", False),
    ],
)
async def test_a_window_applies_in_the_site_time_zone_not_utc(
    tmp_path: Path, utc_now: datetime, zone: str, in_window: bool
) -> None:
    app = _app(tmp_path, utc_now, zone)
    app.control_once(0.0)
    assert app.limits.export_w == (0 if in_window else 5000)
    assert app.limits.sources["export_w"] == ("window 10:00-16:00" if in_window else "config")


async def test_window_edges_follow_a_daylight_saving_change(tmp_path: Path) -> None:
    # Sydney moves from UTC+10 to UTC+11 at 02:00 local on Sunday 4 October 2026.
    app = _app(tmp_path, _utc(2026, 10, 2, 14, 0), "Australia/Sydney")  # Sat 00:00 local
    outlook = app.limits_outlook(hours=48)
    starts = [datetime.fromtimestamp(t, UTC) for t, lim in outlook if lim.export_w == 0]
    ends = [datetime.fromtimestamp(t, UTC) for t, lim in outlook[1:] if lim.export_w == 5000]
    # 10:00 local on Saturday is 00:00 UTC; on Sunday, after the change, 23:00 UTC Saturday
    assert starts == [_utc(2026, 10, 3, 0, 0), _utc(2026, 10, 3, 23, 0)]
    assert ends == [_utc(2026, 10, 3, 6, 0), _utc(2026, 10, 4, 5, 0)]


async def test_a_window_edge_in_the_skipped_hour_still_happens_once(tmp_path: Path) -> None:
    raw = {
        "limits": {"windows": [{"from": "02:30", "to": "04:00", "exportW": 100}]},
        "site": {"timeZone": "Australia/Sydney"},
    }
    t = _utc(2026, 10, 3, 12, 0).timestamp()  # Saturday 22:00 local
    app = make_app(parse_config(raw), tmp_path, wall_clock=lambda: t)
    outlook = app.limits_outlook(hours=12)
    changes = [(datetime.fromtimestamp(s, UTC), lim.export_w) for s, lim in outlook[1:]]
    # 02:30 does not exist that night: the window starts when the clocks jump, at 03:00 AEDT
    # (16:00 UTC), and ends at 04:00 AEDT (17:00 UTC).
    assert changes == [(_utc(2026, 10, 3, 16, 0), 100), (_utc(2026, 10, 3, 17, 0), None)]


def test_an_unknown_time_zone_is_refused_with_its_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"site": {"timeZone": "Australia/Atlantis"}})
    assert err.value.problems[0].startswith("site.timeZone: must be an IANA time zone name")
    for hostile in ("../../etc/passwd", "/etc/localtime", "", 10):
        with pytest.raises(ConfigError):
            parse_config({"site": {"timeZone": hostile}})


@pytest.mark.parametrize("synchronised", [False, True], ids=["clock-not-set", "clock-set"])
async def test_a_clock_not_known_to_be_right_obeys_every_daily_window(
    tmp_path: Path, synchronised: bool
) -> None:
    """After a two-hour power cut a Pi's clock says 08:30 when it is 10:30: read at it, the 0 W
    window from 10:00 had not begun and 5 kW was exported into it. Until a time server has
    set the clock (or the utility's Time is read) every window applies; the status and an
    alert say so. A set clock is read as before."""
    behind = _utc(2026, 12, 1, 0, 30).timestamp() - 2 * 3600  # 08:30 in Brisbane
    raw: dict[str, Any] = {
        "limits": {"exportW": 5000, "windows": [WINDOW]},
        "site": {"timeZone": "Australia/Brisbane"},
    }
    app = make_app(
        parse_config(raw),
        tmp_path,
        wall_clock=lambda: behind,
        clock_synchronised=lambda: synchronised,
    )
    app.progress.register("controller", 10.0, 0.0)
    app.control_once(0.0)
    status = app.status()
    codes = {a["code"]: a["text"] for a in alerts(status, app.config, behind)}
    outlook = app.limits_outlook(hours=24)
    if synchronised:
        assert app.limits.export_w == 5000 and status["limits"]["windowTimeKnown"] is True
        assert "clock-unverified" not in codes
        assert [lim.export_w for _, lim in outlook] == [5000, 0, 5000]
    else:
        assert app.limits.export_w == 0 and app.limits.sources["export_w"] == "window 10:00-16:00"
        assert status["limits"]["windowTimeKnown"] is False
        assert "every daily window" in codes["clock-unverified"]
        assert [lim.export_w for _, lim in outlook] == [0]  # no edges: every window throughout
        failsafe = app._merged_limits(None)  # the fail-safe merges the same way
        assert failsafe.export_w == 0


class _AnchoredLink:
    """What the app reads of a utility link that has read the server's Time: it is verified,
    and the wall clock is ``clock_offset`` behind the server's."""

    time_verified = True
    clock_offset = 2 * 3600


async def test_once_the_utility_said_the_time_windows_are_read_at_the_clock_plus_its_offset(
    tmp_path: Path,
) -> None:
    behind = _utc(2026, 12, 1, 0, 30).timestamp() - 2 * 3600  # the clock: 08:30 in Brisbane
    raw: dict[str, Any] = {
        "limits": {"exportW": 5000, "windows": [WINDOW]},
        "site": {"timeZone": "Australia/Brisbane"},
    }
    app = make_app(
        parse_config(raw), tmp_path, wall_clock=lambda: behind, clock_synchronised=lambda: False
    )
    assert app._window_time() is None
    app.utility = _AnchoredLink()  # type: ignore[assignment]
    window_time = app._window_time()
    assert window_time is not None and (window_time.hour, window_time.minute) == (10, 30)
    assert app._merged_limits(None).export_w == 0  # inside the window, as it truly is
