"""Sharing the budget between the controllable inverters: examples and the safety invariant."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.control.share import (
    ShareInput,
    allocate_w,
    demand_w,
    headroom_w,
    share_budget,
)


def given_w(pcts: tuple[float, ...], invs: list[ShareInput]) -> float:
    return math.fsum(p / 100.0 * i.rated_w for p, i in zip(pcts, invs, strict=True))


def made(inv: ShareInput) -> float:
    """What it makes now, within 0..rated (its rating if unknown: the cautious reading)."""
    if not math.isfinite(inv.power_w):
        return inv.rated_w
    return min(max(inv.power_w, 0.0), inv.rated_w)


def steady(id: str, rated: float, power: float, limit_w: float | None) -> ShareInput:
    """An inverter reading ``power`` twice in a row under a read-back limit of ``limit_w``."""
    pct = None if limit_w is None else 100.0 * limit_w / rated
    return ShareInput(id, rated, power, pct, power)


def test_the_headroom_is_4_pct_of_the_rating_but_at_least_150_w_and_at_most_the_rating():
    assert headroom_w(10000.0) == 400.0
    assert headroom_w(3000.0) == 150.0
    assert headroom_w(100.0) == 100.0


def test_gen24_charging_from_its_pv_leaves_its_share_to_the_inverter_held_at_its_limit():
    """The issue's case: a GEN24 (10 kW) whose battery takes its 4 kW of sun and 1 kW more
    (AC -1000 W under a 1296 W limit) and an 8.2 kW inverter held at 974 W with 3 kW of sun.
    The GEN24 keeps what it makes (nothing) plus its headroom; the rest goes to the other."""
    gen24 = steady("gen24", 10000.0, -1000.0, 1296.0)
    other = steady("fronius", 8200.0, 974.0, 974.0)
    budget = 1296.0 + 974.0
    pcts = share_budget(budget, [gen24, other])
    assert pcts[0] == pytest.approx(4.0)  # 0 W made + 400 W headroom
    assert pcts[1] / 100 * 8200 == pytest.approx(budget - 400.0)  # 1870 W instead of 974 W
    assert given_w(pcts, [gen24, other]) <= budget


def test_a_shaded_array_gives_what_it_cannot_make_to_the_sunny_one():
    shaded = steady("east", 5000.0, 1000.0, 2000.0)  # 40 % allowed, 1 kW of sun
    sunny = steady("west", 5000.0, 2000.0, 2000.0)  # 40 % allowed and making it
    pcts = share_budget(4000.0, [shaded, sunny])
    assert pcts == pytest.approx((24.0, 56.0))  # 1000 + 200 W, and 2800 W
    assert given_w(pcts, [shaded, sunny]) <= 4000.0


def test_identical_inverters_get_the_common_percentage_whatever_they_make():
    for power, limit in [(2000.0, 2000.0), (500.0, 2000.0), (0.0, None), (2990.0, 3000.0)]:
        invs = [steady(n, 5000.0, power, limit) for n in "abc"]
        assert share_budget(6000.0, invs) == pytest.approx((40.0, 40.0, 40.0))


def test_all_at_their_limit_is_exactly_the_common_percentage_as_before():
    invs = [steady("a", 6000.0, 1800.0, 1800.0), steady("b", 3000.0, 900.0, 900.0)]
    budget = 2700.0
    assert share_budget(budget, invs) == pytest.approx((100.0 * budget / 9000.0,) * 2, rel=1e-11)


def test_no_limit_or_a_first_reading_asks_for_a_full_share():
    free = steady("free", 5000.0, 300.0, None)
    back = ShareInput("back", 5000.0, 300.0, 40.0, None)  # just back online: no earlier reading
    assert demand_w(free) == 5000.0
    assert demand_w(back) == 5000.0
    assert share_budget(4000.0, [free, back]) == pytest.approx((40.0, 40.0))


def test_an_inverter_still_rising_to_a_raised_limit_is_lagging_not_short_of_sun():
    rising = ShareInput("a", 5000.0, 1500.0, 60.0, 1000.0)  # +500 W since its last reading
    flat = ShareInput("a", 5000.0, 1500.0, 60.0, 1480.0)  # +20 W: noise, short of sun
    assert demand_w(rising) == 5000.0
    assert demand_w(flat) == 1700.0


def test_an_inverter_within_half_its_headroom_of_its_limit_is_at_its_limit():
    """When the sun comes back it climbs to its limit (what it made + the headroom) and asks
    for its full share again at the next decision."""
    assert demand_w(steady("a", 5000.0, 1910.0, 2000.0)) == 5000.0
    assert demand_w(steady("a", 5000.0, 1890.0, 2000.0)) == 2090.0


def test_a_rise_waits_for_the_room_an_inverter_coming_down_leaves():
    """The cloud leaves the east array: east is at its limit (1000 W) and asks for its full
    share; west still makes 2970 W. The common split (1985 W each) would let a fast east rise
    while a slow west is still coming down: east may only rise into what west has left."""
    east = steady("east", 5000.0, 1000.0, 1000.0)
    west = steady("west", 5000.0, 2970.0, 2970.0)
    pcts = share_budget(3970.0, [east, west])
    assert pcts[1] / 100 * 5000 == pytest.approx(1985.0)  # west comes down at once
    assert pcts[0] / 100 * 5000 == pytest.approx(1000.0)  # east waits: nothing is free yet
    west_lower = steady("west", 5000.0, 2500.0, 1985.0)  # a second later
    east_at = steady("east", 5000.0, 1000.0, 1000.0)
    pcts = share_budget(3970.0, [east_at, west_lower])
    assert pcts[0] / 100 * 5000 == pytest.approx(1470.0)  # the 470 W west has left


def test_when_nobody_can_use_its_share_the_surplus_is_spread_over_their_room():
    invs = [steady("a", 5000.0, 500.0, 3000.0), steady("b", 5000.0, 1000.0, 3000.0)]
    pcts = share_budget(6000.0, invs)
    assert given_w(pcts, invs) == pytest.approx(6000.0)
    assert pcts[0] / 100 * 5000 >= 700.0 and pcts[1] / 100 * 5000 >= 1200.0


def test_water_filling_caps_the_low_ones_and_levels_the_rest():
    assert allocate_w(9000.0, [5000.0, 5000.0, 5000.0], [1000.0, 5000.0, 5000.0]) == (
        pytest.approx([1000.0, 4000.0, 4000.0])
    )


def test_a_zero_budget_is_zero_for_everyone():
    invs = [steady("a", 5000.0, 0.0, 0.0), steady("b", 5000.0, 800.0, 2000.0)]
    assert share_budget(0.0, invs) == (0.0, 0.0)


# --- the safety invariant, over any inverters, outputs, limits and budgets -------------------

_any = st.floats(allow_nan=True, allow_infinity=True)
_watts = st.one_of(st.floats(-2000.0, 20000.0), _any)


@st.composite
def share_inputs(draw: st.DrawFn) -> list[ShareInput]:
    n = draw(st.integers(1, 6))
    out = []
    for k in range(n):
        rated = draw(st.floats(1.0, 20000.0))
        pct = draw(st.one_of(st.none(), st.floats(0.0, 100.0), _any))
        prev = draw(st.one_of(st.none(), _watts))
        out.append(ShareInput(f"i{k}", rated, draw(_watts), pct, prev))
    return out


PROPS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(share_inputs(), st.floats(0.0, 1.0))
def test_the_shares_never_add_up_to_more_than_the_budget(invs, frac):
    """THE invariant: Σ pct × rated ≤ budget, each pct finite and within 0..100; and the
    budget is handed out, but for what the inverters coming down still make above their new
    limit (that room is not theirs to give yet)."""
    total = math.fsum(i.rated_w for i in invs)
    budget = frac * total * (1 - 1e-9)
    pcts = share_budget(budget, invs)
    assert len(pcts) == len(invs)
    assert all(math.isfinite(p) and 0.0 <= p <= 100.0 for p in pcts), pcts
    assert given_w(pcts, invs) <= budget
    still = math.fsum(
        max(made(i) - p / 100 * i.rated_w, 0.0) for p, i in zip(pcts, invs, strict=True)
    )
    assert given_w(pcts, invs) >= budget - still - 1e-6 * max(1.0, budget)


@PROPS
@given(share_inputs(), st.floats(0.0, 1.0))
def test_no_inverter_rises_into_room_the_others_have_not_left_yet(invs, frac):
    """Whatever order the limits are written in and however slowly each follows its own, the
    inverters never make more than the budget: Σ max(what each makes now, its new limit) stays
    within the budget, unless they already make more than it (then nobody rises)."""
    total = math.fsum(i.rated_w for i in invs)
    budget = frac * total * (1 - 1e-9)
    pcts = share_budget(budget, invs)
    new_w = [p / 100 * i.rated_w for p, i in zip(pcts, invs, strict=True)]
    now_w = [made(i) for i in invs]
    worst = math.fsum(max(n, m) for n, m in zip(new_w, now_w, strict=True))
    if math.fsum(now_w) <= budget:
        assert worst <= budget + 1e-6 * max(1.0, budget)
    else:
        assert all(n <= m + 1e-6 for n, m in zip(new_w, now_w, strict=True))


@PROPS
@given(share_inputs(), st.floats(0.0, 1.0))
def test_nobody_that_can_use_its_common_share_gets_less_than_that(invs, frac):
    """Sharing only moves what an inverter cannot use: each gets at least the lesser of its
    common share and what it can use (its demand), or, while others are still coming down, at
    least what it makes now."""
    total = math.fsum(i.rated_w for i in invs)
    budget = frac * total * (1 - 1e-9)
    pcts = share_budget(budget, invs)
    for p, inv in zip(pcts, invs, strict=True):
        floor = min(budget * inv.rated_w / total, demand_w(inv), made(inv))
        assert p / 100 * inv.rated_w >= floor - 1e-6 * max(1.0, budget)


@PROPS
@given(
    st.lists(st.floats(1.0, 20000.0), min_size=1, max_size=6),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_inverters_all_at_their_limit_get_the_common_percentage(rated, frac, level):
    invs = [steady(f"i{k}", r, level * r, level * r) for k, r in enumerate(rated)]
    budget = frac * math.fsum(rated) * (1 - 1e-9)
    common = 100.0 * budget / math.fsum(rated)
    pcts = share_budget(budget, invs)
    assert pcts == pytest.approx((min(common, 100.0),) * len(invs), rel=1e-11, abs=1e-12)
    assert len(set(pcts)) == 1  # one percentage for all
    assert given_w(pcts, invs) <= budget
