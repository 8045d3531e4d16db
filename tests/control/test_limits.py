"""Limit sources: the config shape, its errors by key path, and the most-restrictive merge."""

from __future__ import annotations

from datetime import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.control.limits import (
    FALLBACK_LABEL,
    LimitsConfig,
    LimitsConfigError,
    TimeWindow,
    UtilityLimits,
    is_fallback_source,
    is_utility_source,
    merge_limits,
    parse_limits,
)

ISSUE_EXAMPLE = {
    "exportW": 5000,
    "generationW": None,
    "importW": None,
    "loadW": None,
    "connect": True,
    "windows": [{"from": "10:00", "to": "16:00", "exportW": 0}],
}


def problems_of(raw: object) -> list[str]:
    with pytest.raises(LimitsConfigError) as info:
        parse_limits(raw)
    assert isinstance(info.value, ValueError)
    return info.value.problems


def test_the_issue_example_parses_to_fixed_limits_and_one_window():
    cfg = parse_limits(ISSUE_EXAMPLE)
    assert cfg == LimitsConfig(
        export_w=5000.0,
        connect=True,
        windows=(TimeWindow(start_min=600, end_min=960, export_w=0.0),),
    )
    assert cfg.windows[0].name == "window 10:00-16:00"


def test_missing_limits_key_means_no_installer_limits():
    assert parse_limits(None) == LimitsConfig()
    assert parse_limits({}) == LimitsConfig()


def test_bad_window_time_names_its_key_path():
    raw = {"windows": [{"from": "10am", "to": "16:00", "exportW": 0}]}
    assert problems_of(raw) == ["limits.windows[0].from: must be HH:MM (00:00..23:59), not '10am'"]


def test_every_problem_is_reported_at_once_with_its_path():
    raw = {
        "exportW": -1,
        "generationW": "5kW",
        "connect": "yes",
        "exportw": 100,
        "windows": [
            {"from": "22:00", "to": "24:00", "exportW": 0},
            {"from": "08:00", "to": "08:00", "exportW": 0},
            {"from": "01:00", "to": "02:00"},
            "10:00-16:00",
        ],
    }
    problems = problems_of(raw)
    assert "limits.exportW: must be 0 or more" in problems
    assert "limits.generationW: must be a number of watts or null, not '5kW'" in problems
    assert "limits.connect: must be true or false, not 'yes'" in problems
    assert any(p.startswith("limits.exportw: unknown key") for p in problems)
    assert any(p.startswith("limits.windows[0].to: must be HH:MM") for p in problems)
    assert any(p.startswith("limits.windows[1].to: must differ from from") for p in problems)
    assert "limits.windows[2]: must set at least one of exportW, generationW, importW, loadW" in (
        problems
    )
    assert "limits.windows[3]: must be an object, not '10:00-16:00'" in problems
    assert len(problems) == 8


def test_booleans_are_not_watts():
    assert problems_of({"exportW": True}) == [
        "limits.exportW: must be a number of watts or null, not true"
    ]


def test_the_most_restrictive_source_wins_and_is_named():
    cfg = LimitsConfig(export_w=5000.0, generation_w=8000.0)
    eff = merge_limits(UtilityLimits(export_w=1500.0, generation_w=9000.0), cfg)
    assert eff.export_w == 1500.0
    assert eff.sources["export_w"] == "utility"
    assert eff.generation_w == 8000.0
    assert eff.sources["generation_w"] == "config"


def test_none_means_unlimited_and_has_no_source():
    eff = merge_limits(UtilityLimits(), LimitsConfig())
    assert (eff.export_w, eff.generation_w, eff.import_w, eff.load_w) == (None,) * 4
    assert eff.sources == {}
    assert eff.connect and eff.energize


def test_a_window_applies_only_inside_its_hours():
    cfg = parse_limits(ISSUE_EXAMPLE)
    inside = merge_limits(UtilityLimits(export_w=3000.0), cfg, time(12, 30))
    assert inside.export_w == 0.0
    assert inside.sources["export_w"] == "window 10:00-16:00"
    at_end = merge_limits(UtilityLimits(export_w=3000.0), cfg, time(16, 0))
    assert at_end.export_w == 3000.0
    assert at_end.sources["export_w"] == "utility"
    assert merge_limits(None, cfg, 9 * 60 + 59).export_w == 5000.0
    assert merge_limits(None, cfg, 10 * 60).export_w == 0.0


def test_a_window_may_cross_midnight():
    cfg = parse_limits({"windows": [{"from": "22:00", "to": "06:00", "generationW": 0}]})
    assert merge_limits(None, cfg, time(23, 0)).generation_w == 0.0
    assert merge_limits(None, cfg, time(2, 0)).generation_w == 0.0
    assert merge_limits(None, cfg, time(6, 0)).generation_w is None
    assert merge_limits(None, cfg, time(21, 59)).generation_w is None


def test_without_local_time_no_window_applies():
    cfg = parse_limits(ISSUE_EXAMPLE)
    assert merge_limits(None, cfg).export_w == 5000.0


WINDOWS = {
    "exportW": 5000,
    "windows": [
        {"from": "10:00", "to": "16:00", "exportW": 0},
        {"from": "22:00", "to": "06:00", "generationW": 2000, "exportW": 1500},
        {"from": "17:00", "to": "21:00", "importW": 3000},
    ],
}


def test_with_the_time_of_day_unknown_every_window_applies():
    """A clock that restarted behind after a power cut cannot say which window is in force:
    each quantity takes the lowest any window (or other source) sets."""
    cfg = parse_limits(WINDOWS)
    eff = merge_limits(UtilityLimits(export_w=3000.0), cfg, every_window=True)
    assert (eff.export_w, eff.generation_w, eff.import_w) == (0.0, 2000.0, 3000.0)
    assert eff.sources["export_w"] == "window 10:00-16:00"
    assert eff.sources["generation_w"] == "window 22:00-06:00"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 24 * 60 - 1), st.sampled_from([None, 0.0, 800.0, 4000.0]))
def test_every_window_is_at_least_as_strict_as_the_windows_at_any_minute(
    minute: int, utility_export: float | None
) -> None:
    cfg = parse_limits(WINDOWS)
    util = UtilityLimits(export_w=utility_export)
    strict = merge_limits(util, cfg, every_window=True)
    at = merge_limits(util, cfg, minute)
    for name in ("export_w", "generation_w", "import_w", "load_w"):
        held, actual = getattr(strict, name), getattr(at, name)
        if actual is not None:
            assert held is not None and held <= actual, name


def test_connect_false_from_either_source_wins():
    assert not merge_limits(None, LimitsConfig(connect=False)).connect
    eff = merge_limits(UtilityLimits(connect=False), LimitsConfig())
    assert not eff.connect
    assert eff.sources["connect"] == "utility"
    assert merge_limits(UtilityLimits(connect=True), LimitsConfig()).connect


def test_energize_and_ramps_come_from_the_utility_only():
    eff = merge_limits(
        UtilityLimits(energize=False, ramp_tms=3000, set_grad_w=27, label="utility event 1A"),
        LimitsConfig(),
    )
    assert not eff.energize
    assert eff.sources["energize"] == "utility event 1A"
    assert (eff.ramp_tms, eff.set_grad_w) == (3000, 27)


def test_zero_ramp_values_mean_no_ramp():
    """rampTms 0 is kept: a step, which setGradW must not slow (sep.xsd: only an absent
    rampTms means setGradW); setGradW 0 is no gradient."""
    eff = merge_limits(UtilityLimits(ramp_tms=0, set_grad_w=0), None)
    assert eff.ramp_tms == 0 and eff.set_grad_w is None


def test_import_and_load_limits_merge_like_the_others():
    eff = merge_limits(UtilityLimits(import_w=3000.0), LimitsConfig(import_w=2000.0, load_w=7000.0))
    assert (eff.import_w, eff.load_w) == (2000.0, 7000.0)
    assert eff.sources["import_w"] == "config"


def test_the_fallback_label_is_a_utility_side_source_but_not_the_utilitys_control():
    assert is_fallback_source(FALLBACK_LABEL) and not is_utility_source(FALLBACK_LABEL)
    assert is_utility_source("utility") and is_utility_source("utility event 1A")
    assert not is_fallback_source("utility event 1A")
    assert not is_utility_source("config") and not is_fallback_source("config")
    assert not is_utility_source("") and not is_utility_source("window 10:00-16:00")


def test_a_fallback_limit_merges_like_the_utilitys_and_keeps_its_label_but_no_ramp():
    fallback = UtilityLimits(export_w=1500.0, ramp_tms=3000, set_grad_w=27, label=FALLBACK_LABEL)
    eff = merge_limits(fallback, LimitsConfig(export_w=5000.0))
    assert eff.export_w == 1500.0
    assert eff.sources["export_w"] == FALLBACK_LABEL
    assert eff.ramp_tms is None and "ramp_tms" not in eff.sources  # never ramped
    assert eff.set_grad_w == 27  # still caps increases
    lower = merge_limits(fallback, LimitsConfig(export_w=1000.0))
    assert (lower.export_w, lower.sources["export_w"]) == (1000.0, "config")


def test_utility_values_that_are_not_numbers_fail_closed_in_the_merge():
    eff = merge_limits(UtilityLimits(export_w=float("nan"), generation_w=float("-inf")), None)
    assert (eff.export_w, eff.generation_w) == (0.0, 0.0)
    assert eff.sources["export_w"] == "utility"
    assert merge_limits(UtilityLimits(export_w=float("inf")), None).export_w is None


@pytest.mark.parametrize("huge", [10**400, 10**20, 1e300])
def test_an_absurdly_large_limit_is_a_problem_not_a_crash(huge: float) -> None:
    with pytest.raises(LimitsConfigError) as err:
        parse_limits(
            {"exportW": huge, "windows": [{"from": "10:00", "to": "11:00", "exportW": huge}]}
        )
    assert err.value.problems == [
        "limits.exportW: must be at most 1000000000 W",
        "limits.windows[0].exportW: must be at most 1000000000 W",
    ]
