"""VA, var and PF ratings read from models 120/121/702 (what the utility gets as DERCapability
and DERSettings): decoded from register images pysunspec2 encodes, then through the views."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sunspec.decode import decode_model
from dynexport.sunspec.models import model_def
from dynexport.sunspec.views import (
    NO_RATINGS,
    DerCapacity,
    DerRatings,
    Nameplate,
    Settings,
    der_ratings,
    der_set_limits,
    site_ratings,
)
from tests.sunspec.images import model_registers


def _points(mid: int, raw: dict[str, Any]) -> dict[str, Any]:
    mdef = model_def(mid)
    assert mdef is not None
    m = decode_model(mdef, 40000, model_registers(mid, raw))
    assert not m.errors, m.errors
    return dict(m.points)


def nameplate(**raw: Any) -> Nameplate:
    return Nameplate.from_points(_points(120, raw))


def capacity(**raw: Any) -> DerCapacity:
    return DerCapacity.from_points(_points(702, raw))


def settings_121(**raw: Any) -> Settings:
    return Settings.from_points(_points(121, raw))


# A 5 kW inverter as a Fronius-style model 120 carries it: Q4 var and PF signed negative.
NP_5K = {
    "DERTyp": 4,
    "WRtg": 5000, "WRtg_SF": 0,
    "VARtg": 5000, "VARtg_SF": 0,
    "VArRtgQ1": 3000, "VArRtgQ2": 0, "VArRtgQ3": 0, "VArRtgQ4": -3000, "VArRtg_SF": 0,
    "PFRtgQ1": 800, "PFRtgQ2": 1000, "PFRtgQ3": 1000, "PFRtgQ4": -850, "PFRtg_SF": -3,
}  # fmt: skip

CAP_6K = {
    "W_SF": 0, "VA_SF": 0, "Var_SF": 0, "PF_SF": -2,
    "WMaxRtg": 6000, "VAMaxRtg": 6000, "VarMaxInjRtg": 3600, "VarMaxAbsRtg": 3500,
    "WOvrExtRtgPF": 90, "WUndExtRtgPF": 92,
}  # fmt: skip


def test_model_120_gives_va_var_both_ways_and_pf_as_positive_magnitudes() -> None:
    r = der_ratings(nameplate(**NP_5K), None)
    assert r == DerRatings(va=5000.0, var_inj=3000.0, var_abs=3000.0, pf_over=0.8, pf_under=0.85)


def test_model_702_alone_gives_the_ratings_from_its_wxxxpf_points() -> None:
    r = der_ratings(None, capacity(**CAP_6K))
    assert r == DerRatings(va=6000.0, var_inj=3600.0, var_abs=3500.0, pf_over=0.9, pf_under=0.92)


def test_702_unused_pf_points_are_the_fallback_when_wxxxpf_is_not_implemented() -> None:
    raw = {k: v for k, v in CAP_6K.items() if not k.endswith("ExtRtgPF")}
    r = der_ratings(None, capacity(**raw, PFOvrExtRtg=95, PFUndExtRtg=97))
    assert (r.pf_over, r.pf_under) == (0.95, 0.97)


def test_120_wins_point_by_point_and_702_fills_what_120_leaves_out() -> None:
    np_raw = {k: v for k, v in NP_5K.items() if not k.startswith("PFRtg")}
    r = der_ratings(nameplate(**np_raw), capacity(**CAP_6K))
    assert (r.va, r.var_inj, r.var_abs) == (5000.0, 3000.0, 3000.0), "120 first"
    assert (r.pf_over, r.pf_under) == (0.9, 0.92), "PF only in 702"


def test_unusable_values_are_rejected_and_the_next_source_is_used() -> None:
    bad = dict(NP_5K, VARtg=0, VArRtgQ1=0, PFRtgQ1=1200, PFRtgQ4=0)
    r = der_ratings(nameplate(**bad), capacity(**CAP_6K))
    assert r == DerRatings(va=6000.0, var_inj=3600.0, var_abs=3000.0, pf_over=0.9, pf_under=0.92)
    alone = der_ratings(nameplate(**bad), None)
    assert (alone.va, alone.var_inj, alone.pf_over, alone.pf_under) == (None,) * 4


def test_non_finite_values_are_never_a_rating() -> None:
    np_ = Nameplate(4, 5000.0, math.nan, (math.inf, None, None, -math.inf), None, None, None, None)
    np_ = replace(np_, pf_rtg=(math.nan, None, None, math.inf))
    assert der_ratings(np_, None) == NO_RATINGS


def test_a_device_without_120_or_702_says_nothing() -> None:
    assert der_ratings(None, None) == NO_RATINGS
    assert der_ratings(nameplate(WRtg=5000, WRtg_SF=0), None) == NO_RATINGS


def test_settings_121_come_first_then_702_then_the_ratings() -> None:
    ratings = der_ratings(nameplate(**NP_5K), None)
    s = settings_121(
        VAMax=4000, VAMax_SF=0, VArMaxQ1=2000, VArMaxQ4=-2500, VArMax_SF=0,
        PFMinQ1=90, PFMinQ4=-95, PFMin_SF=-2,
    )  # fmt: skip
    limits = der_set_limits(s, capacity(**CAP_6K, VarMaxAbs=1000), ratings)
    assert limits == DerRatings(
        va=4000.0, var_inj=2000.0, var_abs=2500.0, pf_over=0.9, pf_under=0.95
    )
    only_702 = der_set_limits(None, capacity(**CAP_6K, VarMaxAbs=1000), ratings)
    assert only_702.var_abs == 1000.0
    assert der_set_limits(None, None, ratings) == ratings, "no settings: the ratings"


def test_a_setting_beyond_the_rating_is_reported_as_the_rating() -> None:
    ratings = der_ratings(nameplate(**NP_5K), None)
    s = settings_121(VAMax=9000, VAMax_SF=0, PFMinQ1=50, PFMinQ4=-60, PFMin_SF=-2)
    limits = der_set_limits(s, None, ratings)
    assert limits.va == 5000.0, "setMaxVA SHALL be <= rtgMaxVA"
    assert (limits.pf_over, limits.pf_under) == (0.8, 0.85), "setMinPF SHALL be >= rtgMinPF"


def test_site_totals_only_when_every_inverter_says_and_pf_of_the_least_capable() -> None:
    a = DerRatings(va=5000.0, var_inj=3000.0, var_abs=3000.0, pf_over=0.8, pf_under=0.85)
    b = DerRatings(va=6000.0, var_inj=3600.0, var_abs=None, pf_over=0.9, pf_under=0.8)
    site = site_ratings([a, b])
    assert site == DerRatings(va=11000.0, var_inj=6600.0, var_abs=None, pf_over=0.9, pf_under=0.85)
    assert site_ratings([a, NO_RATINGS]) == NO_RATINGS
    assert site_ratings([]) == NO_RATINGS


_maybe = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=2.0),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_maybe, min_size=12, max_size=12))
def test_ratings_are_always_usable_whatever_the_device_reads(vals: list[float | None]) -> None:
    """Safety: whatever a device reads back, a rating is None or a finite positive value, and a
    PF lies in (0, 1]; a setting never exceeds its rating (PF: never below it)."""
    np_ = Nameplate(4, 5000.0, vals[0], (vals[1], None, None, vals[2]), None, None, None, None)
    np_ = replace(np_, pf_rtg=(vals[3], None, None, vals[4]))
    cap = DerCapacity(None, vals[5], vals[6], None, None, None, vals[7], pf_ovr_ext_rtg=vals[8])
    s = Settings(
        None, None, None, None, vals[9], None, None, pf_min=(vals[10], None, None, vals[11])
    )
    r = der_ratings(np_, cap)
    lim = der_set_limits(s, cap, r)
    for x in (r, lim):
        for v in (x.va, x.var_inj, x.var_abs):
            assert v is None or (math.isfinite(v) and v > 0)
        for pf in (x.pf_over, x.pf_under):
            assert pf is None or 0 < pf <= 1
    for got, rating in ((lim.va, r.va), (lim.var_inj, r.var_inj), (lim.var_abs, r.var_abs)):
        assert rating is None or (got is not None and got <= rating)
    for got, rating in ((lim.pf_over, r.pf_over), (lim.pf_under, r.pf_under)):
        assert rating is None or (got is not None and got >= rating)


_rating = st.one_of(st.none(), st.floats(min_value=1.0, max_value=1e5))
_pfs = st.one_of(st.none(), st.floats(min_value=0.01, max_value=1.0))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            DerRatings, va=_rating, var_inj=_rating, var_abs=_rating, pf_over=_pfs, pf_under=_pfs
        ),
        max_size=5,
    )
)
def test_site_never_reports_a_partial_sum_or_a_pf_an_inverter_cannot_meet(
    rs: list[DerRatings],
) -> None:
    site = site_ratings(rs)
    for field in ("va", "var_inj", "var_abs"):
        vals = [getattr(r, field) for r in rs]
        got = getattr(site, field)
        if not rs or None in vals:
            assert got is None
        else:
            assert got is not None and math.isclose(got, sum(vals))
    for field in ("pf_over", "pf_under"):
        vals = [getattr(r, field) for r in rs]
        got = getattr(site, field)
        if not rs or None in vals:
            assert got is None
        else:
            assert got is not None and all(got >= v for v in vals)
