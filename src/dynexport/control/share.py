"""Sharing the controllable inverters' budget between them (water-filling).

The law decides one number, the budget: the most the controllable inverters may make together.
Giving each the same percentage of its rating wastes the share of an inverter that cannot use
it (shade on its array, an east/west split, a hybrid whose battery takes its PV before its AC
output) while the others are held at that percentage. Here an inverter that clearly makes less
than its read-back limit allows asks only for what it makes plus a headroom; what it does not
ask for goes to the inverters that are at their limit.

THE SAFETY INVARIANT, in every state: Σ pct_i / 100 × rated_i ≤ budget, each pct_i finite and
within 0..100. Export therefore stays within the limit exactly as with one common percentage:
the law's budget is unchanged, only its split moves. When every inverter asks for its full
share (all at their limit, none limited, just back online...) the result is the common
percentage, computed by the same expression as before.

Pure: plain data in, percentages out; no clock, no I/O. See docs/control.md ("Sharing").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

HEADROOM_PCT = 4.0
"""An inverter short of sun is allowed what it makes plus this much of its rating…"""
HEADROOM_MIN_W = 150.0
"""…and at least this many watts. It counts as at its limit (a full share) when its output is
within half the headroom of its read-back limit. Why these values: the limit it is given
(output + headroom) is written rounded down by up to one register step (1 % of its rating
with a scale factor of 0), so the read-back limit is at least 3 % above its output, and the
"at its limit" band (2 %, at least 75 W) must stay clear of that by more than its reading
noise (tens of W), or it would flip between the two every second. The floor keeps it above
the battery's "curtailed" tolerance (40 W) too, so a shaded inverter is never taken for a
curtailed one. When its sun comes back it rises by the headroom at once, and the next decision
sees it at its limit and gives its full share back; more headroom would lose more of the
others' share every second for little gain (the GEN24 of 10 kW holds 400 W back)."""
HYBRID_MARGIN_W = 150.0
"""A hybrid whose battery can take more is allowed its AC output plus this (or the part of
the headroom its battery cannot take, if more): enough to keep it clear of the battery's
"curtailed" tolerance (40 W) and reading noise, so that it is not taken for held while its
PV is free; as much as its battery is let charge past its PV (``hybrid_band_w``), so a hybrid
whose battery takes all its PV (AC output −150 W) is given 0 %."""
RISE_PCT = 2.0
"""An inverter whose output rose by more than this much of its rating since its previous
reading…"""
RISE_MIN_W = 50.0
"""…(and at least this many watts) is still climbing towards a limit that was raised: it is
lagging, not short of sun, and asks for its full share. The floor is above the reading noise of
two successive samples."""


@dataclass(frozen=True)
class ShareInput:
    """One controllable inverter as the split needs it.

    ``rated_w`` must be finite and > 0 (the law only commands such inverters). ``limit_pct`` is
    the limit read back from it (None: no limit in force). ``previous_w`` is its output at its
    previous reading (None: no previous reading, e.g. just back online).
    """

    id: str
    rated_w: float
    power_w: float
    limit_pct: float | None
    previous_w: float | None
    absorb_w: float = 0.0
    """A hybrid whose battery the law is charging: how much more that battery can take now
    (its charge rate, tapered near full, less what it takes). 0: a plain inverter, or its
    battery cannot take more (enough)."""
    recent_w: float | None = None
    """The most it made over the last few seconds (None: unknown): what a hybrid whose battery
    takes its spare sun is given, so that its battery's moves are not passed on at once."""


def headroom_w(rated_w: float) -> float:
    """What an inverter short of sun is allowed above what it makes (at most its rating)."""
    return min(max(rated_w * HEADROOM_PCT / 100.0, HEADROOM_MIN_W), rated_w)


def demand_w(inv: ShareInput) -> float:
    """The most this inverter can use now, in W (0..rated).

    Its rating (a full share) unless its output is clearly below its read-back limit (by more
    than half the headroom) and not climbing: then what it makes plus the headroom.

    A hybrid whose battery can take more (``absorb_w`` > 0: the law passes it from a headroom
    of spare charge on, with hysteresis) asks for its AC output now plus ``HYBRID_MARGIN_W``,
    whether at its limit or not: more sun on its array goes into its battery first (the
    battery decision pushes its charge while it is held), so AC budget given to it beyond its
    output would be lost to the others. When its battery can take no more (at its rate, nearly
    full, offline, released) the rules above apply, unchanged: the PV its battery cannot take
    is curtailed by the split like any other's.
    """
    rated = inv.rated_w
    pct, power, prev = inv.limit_pct, inv.power_w, inv.previous_w
    if not (_finite(pct) and pct < 100.0 and _finite(power) and _finite(prev)):
        return rated  # no limit, no usable reading, or just back online: a full share
    head = headroom_w(rated)
    made = min(max(power, 0.0), rated)
    absorb = inv.absorb_w if _finite(inv.absorb_w) else 0.0
    if absorb > 0.0 and power < rated * max(pct, 0.0) / 100.0 - HYBRID_MARGIN_W / 2.0:
        # Its AC output as it is (negative while its battery takes more than its PV), so a
        # hybrid whose battery takes all its PV gets 0 %, not the headroom; the most of the
        # last few seconds, so that the dips its battery's moves make are not passed on.
        recent = max(power, inv.recent_w) if _finite(inv.recent_w) else power
        return min(max(recent + HYBRID_MARGIN_W, 0.0), rated)
    if made >= rated * max(pct, 0.0) / 100.0 - head / 2.0:
        return rated  # at its limit: it may have more sun than it is allowed
    if power - prev > max(rated * RISE_PCT / 100.0, RISE_MIN_W):
        return rated  # still rising to a limit that was raised: lagging, not short of sun
    return min(made + head, rated)


def allocate_w(budget_w: float, rated_w: Sequence[float], demand: Sequence[float]) -> list[float]:
    """Water-filling: each inverter gets ``level × rated`` capped at its demand, the level
    chosen so the shares add up to the budget. If the demands add up to less than the budget,
    the surplus is spread in proportion to each one's unused room, so nobody is held below
    what it asked and nobody above its rating. Assumes 0 ≤ budget < Σ rated, 0 ≤ demand ≤ rated."""
    total_rated = math.fsum(rated_w)
    total_demand = math.fsum(demand)
    if total_demand <= budget_w:
        room = total_rated - total_demand
        if room <= 0.0:
            return [r * budget_w / total_rated for r in rated_w]
        surplus = budget_w - total_demand
        return [min(d + surplus * (r - d) / room, r) for r, d in zip(rated_w, demand, strict=True)]
    order = sorted(range(len(rated_w)), key=lambda k: demand[k] / rated_w[k])
    result = [0.0] * len(rated_w)
    left_w, left_rated = budget_w, total_rated
    for pos, k in enumerate(order):
        level = left_w / left_rated if left_rated > 0 else 0.0
        if demand[k] <= level * rated_w[k]:
            result[k] = demand[k]  # capped by what it can use
            left_w -= demand[k]
            left_rated -= rated_w[k]
            continue
        for j in order[pos:]:  # the rest are all at the common level
            result[j] = level * rated_w[j]
        break
    return result


def fund_rises_w(budget_w: float, shares: Sequence[float], made_w: Sequence[float]) -> list[float]:
    """Let an inverter rise above what it makes only into room the others have already left.

    A new split can raise one inverter while lowering another; each follows its new limit with
    its own lag, so a fast one rising while a slow one is still coming down would make more
    than the budget for a few seconds. So the rises (share above what each makes now) are cut,
    in proportion, to the budget less what every inverter makes now (the ones coming down are
    counted at what they make, not at their new limit). Only rises are cut: the shares still add
    up to at most the budget, and nobody is held below what it makes. When all rise (a higher
    budget) or all come down (a lower one) nothing is cut.
    """
    rises = [max(a - m, 0.0) for a, m in zip(shares, made_w, strict=True)]
    wanted = math.fsum(rises)
    room = budget_w - math.fsum(made_w)
    if wanted <= room + 1e-9 * max(abs(budget_w), 1.0) or wanted <= 0.0:
        return list(shares)  # (rounding alone never cuts a rise)
    keep = max(room, 0.0) / wanted
    return [
        a if rise <= 0.0 else m + rise * keep
        for a, m, rise in zip(shares, made_w, rises, strict=True)
    ]


def _made_w(inv: ShareInput) -> float:
    """What it makes now, for ``fund_rises_w`` (0..rated); its rating if unknown."""
    if not _finite(inv.power_w):
        return inv.rated_w
    return min(max(inv.power_w, 0.0), inv.rated_w)


def share_budget(budget_w: float, inverters: Sequence[ShareInput]) -> tuple[float, ...]:
    """Each inverter's limit (%, in the order given) so that together they make at most
    ``budget_w``. Assumes 0 ≤ budget < Σ rated (the law writes no limit otherwise)."""
    if not inverters:
        return ()
    rated = [inv.rated_w for inv in inverters]
    total_rated = math.fsum(rated)
    budget = min(max(budget_w, 0.0), total_rated) if _finite(budget_w) else 0.0
    common = min(max(100.0 * budget / total_rated, 0.0), 100.0)
    demand = [demand_w(inv) for inv in inverters]
    if all(d >= r for d, r in zip(demand, rated, strict=True)):
        shares = [common / 100.0 * r for r in rated]  # everyone wants a full share: as before
        pcts = [common for _ in inverters]
    else:
        shares = allocate_w(budget, rated, demand)
        pcts = [_clamp_pct(100.0 * a / r) for a, r in zip(shares, rated, strict=True)]
    funded = fund_rises_w(budget, shares, [_made_w(inv) for inv in inverters])
    if funded != shares:
        pcts = [_clamp_pct(100.0 * a / r) for a, r in zip(funded, rated, strict=True)]
    # Rounding must never give away a watt the budget does not have, however a reader adds
    # the shares up: they are kept a part in 10¹² below it (far below any register step).
    aim = budget * (1.0 - 1e-12)
    for k in range(6):
        given = math.fsum(p / 100.0 * r for p, r in zip(pcts, rated, strict=True))
        if given <= aim:
            return tuple(pcts)
        scale = aim / given * (1.0 - 1e-13 * 10**k) if given > 0 else 0.0
        pcts = [_clamp_pct(p * scale) for p in pcts]
    return tuple(0.0 for _ in inverters)  # never reached (a property test checks); always safe


def _clamp_pct(p: float) -> float:
    return min(max(p, 0.0), 100.0) if math.isfinite(p) else 0.0


def _finite(x: object) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
