"""Extra export limit sources merge as the most restrictive, and lapse when they expire."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.control.limits import EffectiveLimits, LimitsConfig, merge_limits
from dynexport.integrations.limitsources import (
    COMMAND_SOURCE,
    PRICE_SOURCE,
    CommandError,
    ExtraLimit,
    apply_extra_limits,
    parse_command,
)


def base(export_w: float | None = 5000.0) -> EffectiveLimits:
    return merge_limits(None, LimitsConfig(export_w=export_w, generation_w=9000.0))


def test_a_lower_extra_limit_wins_and_names_its_source() -> None:
    out = apply_extra_limits(base(), [ExtraLimit(PRICE_SOURCE, 0.0)], now=0.0)
    assert out.export_w == 0.0
    assert out.sources["export_w"] == PRICE_SOURCE
    assert out.generation_w == 9000.0 and out.sources["generation_w"] == "config"


def test_a_higher_extra_limit_never_raises_the_export_limit() -> None:
    out = apply_extra_limits(base(), [ExtraLimit(COMMAND_SOURCE, 8000.0)], now=0.0)
    assert out == base()


def test_an_extra_limit_applies_where_nothing_else_limits_export() -> None:
    out = apply_extra_limits(base(None), [ExtraLimit(COMMAND_SOURCE, 2000.0, 10.0)], now=5.0)
    assert (out.export_w, out.sources["export_w"]) == (2000.0, COMMAND_SOURCE)


def test_an_expired_limit_lapses() -> None:
    extra = [ExtraLimit(COMMAND_SOURCE, 0.0, expires_at=10.0)]
    assert apply_extra_limits(base(), extra, now=9.9).export_w == 0.0
    assert apply_extra_limits(base(), extra, now=10.0) == base()


def test_a_tie_keeps_the_source_already_in_force() -> None:
    out = apply_extra_limits(base(), [ExtraLimit(PRICE_SOURCE, 5000.0)], now=0.0)
    assert out.sources["export_w"] == "config"


def test_unreadable_values_fail_closed_and_infinity_means_no_limit() -> None:
    assert apply_extra_limits(base(), [ExtraLimit("x", math.nan)], 0.0).export_w == 0.0
    assert apply_extra_limits(base(), [ExtraLimit("x", -1.0)], 0.0).export_w == 0.0
    assert apply_extra_limits(base(), [ExtraLimit("x", math.inf)], 0.0) == base()


def test_no_sources_changes_nothing() -> None:
    assert apply_extra_limits(base(), None, 0.0) == base()
    assert apply_extra_limits(base(), [None], 0.0) == base()


watts = st.one_of(st.none(), st.floats(min_value=0, max_value=1e7))
extra = st.builds(
    ExtraLimit,
    st.sampled_from([COMMAND_SOURCE, PRICE_SOURCE]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.one_of(st.none(), st.floats(min_value=-100, max_value=100)),
)


@settings(max_examples=300, deadline=None)
@given(watts, st.lists(extra, max_size=4), st.floats(min_value=-100, max_value=100))
def test_property_the_result_is_never_looser_than_any_active_source(
    export_w: float | None, extras: list[ExtraLimit], now: float
) -> None:
    start = base(export_w)
    out = apply_extra_limits(start, extras, now)
    if start.export_w is not None:
        assert out.export_w is not None and out.export_w <= start.export_w
    for e in extras:
        if e.active(now) and not (math.isinf(e.export_w) and e.export_w > 0):
            assert out.export_w is not None
            assert out.export_w <= max(e.export_w, 0.0) or math.isnan(e.export_w)
            assert out.export_w >= 0.0
    assert out.export_w is None or "export_w" in out.sources
    assert (out.generation_w, out.connect, out.energize) == (9000.0, True, True)


def test_commands_read_watts_json_and_clear() -> None:
    assert parse_command(b"2000", 100.0, 300.0) == ExtraLimit(COMMAND_SOURCE, 2000.0, 400.0)
    got = parse_command(b'{"exportW": 0, "durationS": 60}', 100.0, 300.0)
    assert got == ExtraLimit(COMMAND_SOURCE, 0.0, 160.0)
    capped = parse_command(b'{"exportW": 10, "durationS": 9000}', 0.0, 300.0)
    assert capped is not None and capped.expires_at == 300.0  # never longer than configured
    for clear in (b"", b"null", b"clear", b'{"exportW": null}'):
        assert parse_command(clear, 0.0, 300.0) is None


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"-1", "0..1e+07"),
        (b"NaN", "not a number of watts"),
        (b"1e400", "0..1e+07"),
        (b"true", "must be a number"),
        (b'"500"', "must be a number"),
        (b'{"exportw": 5}', "unknown key 'exportw'"),
        (b'{"durationS": 5}', "exportW is required"),
        (b"\xff", "not UTF-8"),
        (b"1" * 300, "at most 256"),
        (b"[[[[", "not a number of watts"),
    ],
)
def test_bad_commands_are_refused_with_the_reason(payload: bytes, words: str) -> None:
    with pytest.raises(CommandError, match=words.replace("+", r"\+").replace("(", r"\(")):
        parse_command(payload, 0.0, 300.0)
