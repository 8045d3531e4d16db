"""Daily windows run in the site's time zone (site.timeZone), across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dynexport.app import App
from dynexport.system.config import ConfigError, parse_config
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
