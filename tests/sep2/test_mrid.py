"""mRIDs the client makes carry the PEN as CSIP-AUS and its test harness read it: the last 8
characters, in decimal (harness findings ALL-06, ALL-10, ALL-29: "group MRIDS do not match the
supplied PEN (Ensure decimal encoding)"), and readings sit on the harness's minute grid."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sep2 import flow
from dynexport.sep2.telemetry import IntervalReading

LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
PEN = 46273
T0 = 1_800_000_000  # a minute boundary


def harness_accepts(mrid: str, pen: int) -> bool:
    """The harness's rule, as cactus-client ``is_invalid_mrid`` and the runner's
    ``mrid_matches_pen`` state it (independent of the simulator's copy)."""
    if not mrid or re.search(r"[^A-Z0-9]", mrid) or len(mrid) > 32 or len(mrid) % 2:
        return False
    try:
        return int(mrid[-8:]) == pen
    except ValueError:
        return False


def reading(quantity: str = "W", start: int = T0, phase: str = "", duration: int = 300):
    return IntervalReading("site", quantity, start, duration, 10.0, 5.0, 15.0, 60, phase)


def every_mrid(lfdi: str, pen: int) -> list[str]:
    readings = [
        reading(q, T0 + 300 * i, p) for q in ("W", "var", "V") for p in ("", "A") for i in (0, 1)
    ]
    mrids: list[str] = []
    for role in ("site", "der"):
        mup = flow.mirror_usage_point(lfdi, role, 300, ("W", "var", "V", "Hz"), pen=pen)
        mrids.append(mup.mrid)
        mrids.extend(m.mrid for m in mup.mirror_meter_readings)
    for mmr in flow.meter_readings(lfdi, "site", readings, pen=pen):
        mrids.append(mmr.mrid)
        mrids.extend(s.mrid for s in mmr.mirror_reading_sets)
    return mrids


def test_an_mrid_ends_in_the_pen_as_eight_decimal_digits():
    mrid = flow.mrid_for(LFDI, "mup", "site", pen=PEN)
    assert mrid.endswith("00046273")
    assert len(mrid) == 32 and re.fullmatch(r"[0-9A-F]{32}", mrid)
    assert harness_accepts(mrid, PEN)
    assert not mrid.endswith(f"{PEN:08X}")  # not the PEN in hex (0000B4C1)


def test_every_mrid_of_mirrors_series_and_reading_sets_carries_the_pen():
    mrids = every_mrid(LFDI, PEN)
    assert len(set(mrids)) > 40  # a declared series and its posts share one mRID, as they must
    assert [m for m in mrids if not harness_accepts(m, PEN)] == []


def test_mrids_are_stable_across_restarts_and_name_what_they_are():
    assert every_mrid(LFDI, PEN) == every_mrid(LFDI.lower(), PEN)  # same mirrors after restart
    site = flow.mrid_for(LFDI, "mup", "site", pen=PEN)
    assert site != flow.mrid_for(LFDI, "mup", "der", pen=PEN)
    assert site != flow.mrid_for("0" * 40, "mup", "site", pen=PEN)
    other_pen = flow.mrid_for(LFDI, "mup", "site", pen=PEN + 1)
    assert other_pen[:24] == site[:24] and other_pen.endswith("00046274")


@pytest.mark.parametrize("pen", [0, 1, 46273, 99_999_999])
def test_every_pen_that_fits_eight_decimal_digits_is_written_in_full(pen):
    assert flow.mrid_for(LFDI, "x", pen=pen)[-8:] == f"{pen:08d}"
    assert flow.pen_problem(pen) is None


@pytest.mark.parametrize("pen", [100_000_000, 2**32 - 1, -1, True, "46273"])
def test_a_pen_eight_decimal_digits_cannot_hold_is_refused_with_the_reason(pen):
    problem = flow.pen_problem(pen)
    assert problem is not None
    with pytest.raises(ValueError) as caught:
        flow.mrid_for(LFDI, "mup", "site", pen=pen)
    assert str(caught.value) == problem
    if isinstance(pen, int) and not isinstance(pen, bool):
        assert "8 decimal digits" in problem and "0 to 99999999" in problem
    with pytest.raises(ValueError, match="PEN"):
        flow.mirror_usage_point(LFDI, "site", 300, pen=pen)


@settings(max_examples=200, deadline=None)
@given(
    lfdi=st.text("0123456789abcdefABCDEF", min_size=40, max_size=40),
    parts=st.lists(st.text(max_size=12), max_size=4),
    pen=st.integers(0, flow.MAX_PEN),
)
def test_property_every_mrid_passes_the_harness_rule(lfdi, parts, pen):
    mrid = flow.mrid_for(lfdi, *parts, pen=pen)
    assert harness_accepts(mrid, pen)
    assert re.fullmatch(r"[0-9A-F]{32}", mrid)  # HexBinary128, uppercase


@settings(max_examples=300, deadline=None)
@given(rate=st.integers(-10, 100_000))
def test_property_the_averaging_interval_is_always_whole_minutes(rate):
    interval = flow.interval_for(rate)
    assert interval % 60 == 0 and 86400 % interval == 0
    assert flow.on_minute_grid(T0 + 7 * interval, interval)


@pytest.mark.parametrize(("rate", "interval"), [(60, 60), (300, 300), (10, 300), (90, 300)])
def test_a_post_rate_that_is_not_whole_minutes_averages_over_five_minutes(rate, interval):
    assert flow.interval_for(rate) == interval


def test_readings_off_the_minute_grid_are_not_posted():
    readings = [reading(start=T0), reading(start=T0 + 10, duration=10), reading(start=T0 + 30)]
    [mmr, *_] = flow.meter_readings(LFDI, "site", readings, pen=PEN, min_max=False)
    assert [s.time_period.start for s in mmr.mirror_reading_sets] == [T0]
