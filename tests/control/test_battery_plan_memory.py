"""The planner remembers the previous days' sun: yesterday's measured / clear-sky ratio sets the
PV expectation before today's production has said anything, today's takes over as the morning
goes, and whatever the ratio the plan never spends the owner's evening reserve. All pure: the
memory comes in as data (the app keeps it on the data partition, tests/app/test_battery_app.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.control.battery import (
    DAY_MIN_WEIGHT,
    MEMORY_DAYS,
    PRIOR_WEIGHT,
    RATIO_MAX,
    BatteryMemory,
    BatterySettings,
    BatteryState,
    ChargePlan,
    ForecastStep,
    PvDay,
    PvMemory,
    SiteView,
    clear_sky_fraction,
    decide_batteries,
    forecast,
    plan_charge,
    pv_expectation,
)

LAT = -33.9
DOY = 335  # 1 December
TODAY = date(2026, 12, 1)
PEAK = 8000.0
NOW = 1_000_000.0


def clear(hour: float) -> float:
    return PEAK * clear_sky_fraction(DOY, hour, LAT)


def morning(ratio: float, start: float = 7.0, end: float = 10.0) -> list[tuple[float, float]]:
    """Samples every 5 minutes from ``start`` to ``end`` of a day at ``ratio`` of clear sky."""
    n = round((end - start) * 12)
    return [(start + k / 12, ratio * clear(start + k / 12)) for k in range(n)]


def outlook_from(hour: float) -> list[tuple[float, float | None]]:
    """The limits outlook at ``hour``: 1500 W from 10:00 to 15:00, none otherwise."""
    return [
        (NOW, None),
        (NOW + (10.0 - hour) * 3600.0, 1500.0),
        (NOW + (15.0 - hour) * 3600.0, None),
    ]


def battery(soc: float = 40.0) -> BatteryState:
    return BatteryState("site", True, True, 10000.0, 5000.0, 5000.0, soc, 0.0)


def plan_at(
    hour: float, yesterday: float | None, observed: Sequence[tuple[float, float]] = ()
) -> ChargePlan:
    steps = forecast(
        NOW, hour, DOY, LAT, PEAK, 400.0, outlook_from(hour), observed, yesterday_ratio=yesterday
    )
    return plan_charge(NOW, battery(), steps, BatterySettings())


# --- the expectation -----------------------------------------------------------------------


def test_before_today_has_said_anything_the_expectation_is_yesterdays() -> None:
    noon = pv_expectation(PEAK, DOY, [12.0], LAT, yesterday_ratio=0.3)[0]
    assert noon == pytest.approx(0.3 * clear(12.0))
    # no previous day either: a clear day, as before
    assert pv_expectation(PEAK, DOY, [12.0], LAT)[0] == pytest.approx(clear(12.0))


def test_today_takes_over_from_a_cloudy_yesterday_as_the_morning_goes() -> None:
    """Yesterday 0.3, today clear: a dawn sample barely moves it, a morning of samples makes it
    today's, and every sample moves it further towards today's."""
    ratios = []
    for end in (6.6, 7.5, 8.5, 10.0):
        noon = pv_expectation(PEAK, DOY, [12.0], LAT, morning(1.0, 6.5, end), 0.3)[0]
        ratios.append(noon / clear(12.0))
    assert ratios[0] < 0.4
    assert ratios[-1] > 0.85
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)


def test_the_blend_weighs_yesterday_as_prior_weight_samples_at_full_sun() -> None:
    obs = [(12.0, 0.5 * clear(12.0))]  # one sample at noon, half the clear sky
    frac = clear_sky_fraction(DOY, 12.0, LAT)
    want = (0.5 * frac + 1.0 * PRIOR_WEIGHT) / (frac + PRIOR_WEIGHT)
    got = pv_expectation(PEAK, DOY, [12.0], LAT, obs, yesterday_ratio=1.0)[0]
    assert got == pytest.approx(want * clear(12.0))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_yesterday_ratio_that_is_not_a_number_is_ignored(bad: float) -> None:
    assert pv_expectation(PEAK, DOY, [12.0], LAT, yesterday_ratio=bad)[0] == pytest.approx(
        clear(12.0)
    )


# --- the plan ------------------------------------------------------------------------------


def test_a_cloudy_yesterday_means_less_morning_hold_back() -> None:
    """07:00, nothing produced yet today, the limit 10:00-15:00: after a clear yesterday the
    planner keeps the room for the limited hours; after a cloudy one it expects little over the
    limit and lets the battery charge."""
    sunny = plan_at(7.0, 1.0)
    cloudy = plan_at(7.0, 0.3)
    assert sunny.max_charge_w == 0.0 and sunny.reason == "keep room for the limited hours"
    assert cloudy.need_wh < 0.5 * sunny.need_wh
    assert cloudy.max_charge_w is None and cloudy.reason == "room to spare"


def test_a_clear_morning_after_a_cloudy_yesterday_brings_the_hold_back_back() -> None:
    """By 10:00 today's clear production outweighs yesterday's clouds: hold back again."""
    assert plan_at(10.0, 0.3, morning(1.0)).max_charge_w == 0.0


def test_a_cloudy_morning_after_a_clear_yesterday_releases_the_hold_back() -> None:
    assert plan_at(7.0, 1.0).max_charge_w == 0.0
    assert plan_at(10.0, 1.0, morning(0.2)).max_charge_w is None


# --- the memory ----------------------------------------------------------------------------


def sunny_day(memory: PvMemory, day: date, ratio: float) -> PvMemory:
    for h, w in morning(ratio, 8.0, 16.0):
        memory = memory.record(day, h, w, PEAK, LAT)
    return memory


def test_a_days_samples_give_its_ratio_and_tomorrows_prior() -> None:
    mem = sunny_day(PvMemory(), TODAY, 0.4)
    [day] = mem.days
    assert day.day == "2026-12-01" and day.ratio() == pytest.approx(0.4, rel=0.02)
    assert mem.prior_ratio(TODAY) is None  # today is not yet a previous day
    assert mem.prior_ratio(TODAY + timedelta(days=1)) == pytest.approx(0.4, rel=0.02)


def test_yesterday_weighs_more_than_the_day_before_and_old_days_are_forgotten() -> None:
    mem = sunny_day(PvMemory(), TODAY - timedelta(days=2), 1.0)
    mem = sunny_day(mem, TODAY - timedelta(days=1), 0.4)
    assert mem.prior_ratio(TODAY) == pytest.approx((0.4 + 0.5 * 1.0) / 1.5, rel=0.02)
    later = TODAY + timedelta(days=MEMORY_DAYS)
    assert mem.prior_ratio(later) is None
    for k in range(1, 6):
        mem = sunny_day(mem, TODAY + timedelta(days=k), 0.5)
    assert len(mem.days) == MEMORY_DAYS + 1


def test_dawn_samples_and_a_day_without_sun_teach_nothing() -> None:
    dawn = PvMemory().record(TODAY, 5.5, 50.0, PEAK, LAT)
    assert dawn.days == ()
    short = PvMemory().record(TODAY, 12.0, 0.5 * clear(12.0), PEAK, LAT)
    assert short.days[0].clear < DAY_MIN_WEIGHT and short.days[0].ratio() is None
    assert short.prior_ratio(TODAY + timedelta(days=1)) is None


@pytest.mark.parametrize(
    ("w", "peak"), [(math.nan, PEAK), (math.inf, PEAK), (1000.0, 0.0), (1000.0, math.nan)]
)
def test_bad_samples_are_not_recorded(w: float, peak: float) -> None:
    assert PvMemory().record(TODAY, 12.0, w, peak, LAT) == PvMemory()


def test_a_clock_set_wrong_does_not_erase_the_real_days() -> None:
    mem = PvMemory()
    for k in range(1, MEMORY_DAYS + 1):
        mem = sunny_day(mem, TODAY - timedelta(days=k), 0.5)
    mem = sunny_day(mem, date(1970, 1, 1), 1.0)  # booted before the time was set
    assert mem.prior_ratio(TODAY) == pytest.approx(0.5, rel=0.02)


def test_the_memory_round_trips_through_json() -> None:
    mem = sunny_day(sunny_day(PvMemory(), TODAY, 0.7), TODAY - timedelta(days=1), 0.2)
    again = PvMemory.from_json(mem.to_json().encode())
    assert again == mem
    assert [d.day for d in again.days] == ["2026-11-30", "2026-12-01"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x00\xff garbage", "not JSON"),
        (b'{"version": 1, "days": [', "not JSON"),
        (b"[]", "version 1"),
        (b'{"version": 2, "days": []}', "version 1"),
        (b'{"version": 1, "days": {}}', "'days' is not a list"),
        (b'{"version": 1, "days": [3]}', "day 0 is not an object"),
        (b'{"version": 1, "days": [{"day": "yesterday", "measured": 1, "clear": 3}]}', "date"),
        (b'{"version": 1, "days": [{"day": "2026-12-01", "measured": -1, "clear": 3}]}', ">= 0"),
        (b'{"version": 1, "days": [{"day": "2026-12-01", "measured": NaN, "clear": 3}]}', "finite"),
        (b'{"version": 1, "days": [{"day": "2026-12-01", "measured": "1", "clear": 3}]}', "finite"),
    ],
)
def test_a_corrupt_memory_is_a_value_error_naming_the_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PvMemory.from_json(raw)


def test_a_ratio_stored_out_of_bounds_is_clamped() -> None:
    wild = PvDay("2026-11-30", measured=1000.0, clear=DAY_MIN_WEIGHT)
    assert wild.ratio() == RATIO_MAX
    assert PvMemory((wild,)).prior_ratio(TODAY) == RATIO_MAX


# --- property: the evening reserve is never spent, whatever the ratio ----------------------

ratios = st.floats(allow_nan=True, allow_infinity=True) | st.floats(0.0, 2.0)


@settings(max_examples=300, deadline=None)
@given(
    yesterday=st.none() | ratios,
    observed=st.lists(
        st.tuples(st.floats(0.0, 24.0), st.floats(-1000.0, 20000.0) | st.just(math.nan)),
        max_size=12,
    ),
    hour=st.sampled_from([6.0, 7.5, 9.0]) | st.floats(4.0, 20.0),
    soc=st.sampled_from([10.0, 40.0, 60.0]) | st.floats(0.0, 100.0),
    reserve=st.sampled_from([10.0, 20.0]) | st.floats(0.0, 60.0),
    evening=st.none() | st.sampled_from([50.0, 80.0, 95.0]) | st.floats(0.0, 100.0),
    limit=st.sampled_from([0.0, 1500.0, 5000.0]),
    surplus=st.floats(-3000.0, 9000.0),
    import_limit=st.none() | st.floats(0.0, 5000.0),
)
def test_whatever_the_ratio_the_plan_never_spends_the_evening_reserve(
    yesterday: float | None,
    observed: list[tuple[float, float]],
    hour: float,
    soc: float,
    reserve: float,
    evening: float | None,
    limit: float,
    surplus: float,
    import_limit: float | None,
) -> None:
    """The expectation stays within 1.2 × the clear sky whatever the memory says; the plan
    only ever holds charging back (never asks for a discharge), and only when the charging it
    expects in the limited hours alone, at its confidence, still brings the battery to the
    evening SoC; the battery told to follow it never discharges without an import limit, and
    never at or below the reserve with one."""
    s = BatterySettings(reserve_soc_pct=reserve)
    pv = pv_expectation(PEAK, DOY, [hour], LAT, observed, yesterday)[0]
    assert math.isfinite(pv) and 0.0 <= pv <= RATIO_MAX * clear(hour) + 1e-6
    outlook: list[tuple[float, float | None]] = [
        (NOW, None),
        (NOW + (10.0 - hour) * 3600.0, limit),
        (NOW + (15.0 - hour) * 3600.0, None),
    ]
    steps = forecast(NOW, hour, DOY, LAT, PEAK, 400.0, outlook, observed, yesterday_ratio=yesterday)
    bat = BatteryState("site", True, True, 10000.0, 5000.0, 5000.0, soc, 0.0)
    plan = plan_charge(NOW, bat, steps, s, evening)
    assert plan.max_charge_w in (None, 0.0)
    if plan.max_charge_w is not None:
        limited = _limited_charge_wh(steps, NOW, 5000.0, reserve)
        goal = reserve if evening is None else evening
        room = 10000.0 * max(100.0 - soc, 0.0) / 100.0
        assert soc + 0.7 * min(limited, room) / 10000.0 * 100.0 >= goal - 1e-6
    view = SiteView(
        load_w=400.0,
        inverters_w=400.0 + surplus,
        export_limit_w=5000.0,
        export_margin_w=50.0,
        import_limit_w=import_limit,
        load_limit_w=None,
        generation_limit_w=None,
        curtailed=False,
    )
    decision = decide_batteries([bat], view, BatteryMemory(), NOW, 1.0, plan, s)
    for cmd in decision.commands:
        if cmd.setpoint_w is not None and cmd.setpoint_w > 0:
            assert import_limit is not None, "discharged with no import limit"
            assert soc > reserve, "discharged at or below the reserve"


def _limited_charge_wh(
    steps: list[ForecastStep], now: float, rate_w: float, reserve: float
) -> float:
    """What the forecast says the battery can charge in the limited hours (independently of
    plan_charge): the surplus over the limit, at most the rate, over each limited step."""
    total = 0.0
    for k, f in enumerate(steps):
        end = steps[k + 1].t if k + 1 < len(steps) else f.t + 3600.0
        if f.export_limit_w is None or end <= max(f.t, now):
            continue
        over = max(f.pv_w - f.load_w - f.export_limit_w, 0.0)
        total += min(over, rate_w) * (end - max(f.t, now)) / 3600.0
    return min(total, 10000.0 * max(100.0 - reserve, 0.0) / 100.0)


def test_the_memory_file_is_plain_json() -> None:
    doc = json.loads(sunny_day(PvMemory(), TODAY, 0.5).to_json())
    assert doc["version"] == 1 and doc["days"][0]["day"] == "2026-12-01"
