"""Inverters that do not do what the law assumes: one making more than the limit it reads back
(firmware that ignores it in some mode, a percentage of another rating than the WMax read), and
an uncontrollable one making more than the whole command. Closed loop with the plant model.

Before: the first was given a share as if it obeyed, and the site exported its excess for good
(490 W over a 0 W limit in the review's example); the second held every increase back for as
long as its output stayed high (the site imported 1000 W it could have exported).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dynexport.control.law import ControlOutput, ControlSettings
from dynexport.control.limits import EffectiveLimits
from dynexport.control.plant import Plant, SimInverter, run_closed_loop, tolerance_w

S = ControlSettings()
SETTLE_S = 15.0


def export_limit(w: float) -> EffectiveLimits:
    return EffectiveLimits(export_w=w, sources={"export_w": "utility"})


def test_an_inverter_that_ignores_its_limit_is_made_room_for_and_named():
    plant = Plant(
        inverters=[
            SimInverter("ignores", rated_w=5000, pv_w=2000, limit_gain=math.inf),
            SimInverter("obeys", rated_w=5000, pv_w=5000),
        ],
        load_w=3000.0,
        seed=3,
    )
    named: list[tuple[float, tuple[str, ...]]] = []

    def observe(t: float, p: Plant, limits: EffectiveLimits, out: ControlOutput) -> None:
        named.append((t, out.not_following))

    trace = run_closed_loop(plant, lambda t: export_limit(0.0), 90.0, observe=observe)
    late = [pt for pt in trace if pt.t >= S.follow_s + SETTLE_S]
    assert late and all(pt.export_w <= tolerance_w(0.0) for pt in late), max(
        pt.export_w for pt in late
    )
    assert plant.inverters[0].output_w == pytest.approx(2000, abs=1)  # it never came down
    assert plant.inverters[1].output_w == pytest.approx(1000, abs=150)  # the other made room
    assert all(n == () for t, n in named if t < S.follow_s)  # a cut is given time to follow
    assert all(n == ("ignores",) for t, n in named if t >= S.follow_s + 2)


def test_an_inverter_that_follows_is_never_named():
    plant = Plant(
        inverters=[SimInverter("a", 5000, 4000), SimInverter("b", 5000, 5000)],
        load_w=3000.0,
        seed=4,
    )
    named: set[str] = set()

    def observe(t: float, p: Plant, limits: EffectiveLimits, out: ControlOutput) -> None:
        named.update(out.not_following)

    limits = [0.0, 5000.0, 1500.0, 0.0, 3000.0]
    run_closed_loop(plant, lambda t: export_limit(limits[int(t // 30)]), 149.0, observe=observe)
    assert named == set()


def test_uncontrollable_output_above_the_command_does_not_hold_increases_back():
    """An old 2 kW inverter (not controllable) beside a controllable 5 kW one; export limit
    1500 W at 300 W of load: the controllable one is at 0 %. The load rises to 3000 W: it must
    rise to export 1500 W again, not stay at 0 % while the old one makes more than the
    command (the site imported instead)."""
    plant = Plant(
        inverters=[
            SimInverter("old", rated_w=2000, pv_w=2000, controllable=False),
            SimInverter("new", rated_w=5000, pv_w=5000),
        ],
        load_w=300.0,
        seed=5,
    )

    seen: dict[str, float] = {}

    def world(t: float, p: Plant) -> None:
        if t >= 40.0:
            p.load_w = 3000.0
        elif t >= SETTLE_S:  # the old one alone exports 1700 W: the new one is held at 0
            seen["new before"] = max(seen.get("new before", 0.0), p.inverters[1].output_w)

    trace = run_closed_loop(plant, lambda t: export_limit(1500.0), 80.0, hook=world)
    assert seen["new before"] < 50.0
    assert plant.inverters[1].output_w == pytest.approx(3000 + 1500 - 50 - 2000, abs=150)
    after = [pt for pt in trace if pt.t >= 40.0 + SETTLE_S]
    assert all(abs(pt.export_w - 1500) <= tolerance_w(1500) for pt in after), [
        round(pt.export_w) for pt in after
    ]


@settings(max_examples=60, deadline=None)
@given(
    gain=st.sampled_from([1.25, 2.0, math.inf]),
    stubborn_pv=st.floats(500.0, 4000.0),
    load=st.floats(500.0, 6000.0),
    limit=st.sampled_from([0.0, 500.0, 1500.0, 3000.0]),
    seed=st.integers(0, 1000),
)
def test_with_one_inverter_not_following_export_settles_within_the_limit(
    gain: float, stubborn_pv: float, load: float, limit: float, seed: int
):
    """Property: whenever the inverters that follow can make room (what the one that does not
    follow makes at most is below load + limit, with a margin), export settles within the limit
    once its excess has been seen for ``follow_s``, and stays there. The household's load is
    steady here: its wander makes unseen falls that no controller can follow (a 0 W limit was
    exceeded by 64 W in one drawn case), which the closed-loop scenarios excuse by the amount
    (``control/scenario.py``); this is about the inverter that does not follow."""
    assume(stubborn_pv <= load + limit - 300.0)
    plant = Plant(
        inverters=[
            SimInverter("stubborn", rated_w=5000, pv_w=stubborn_pv, limit_gain=gain),
            SimInverter("obeys", rated_w=5000, pv_w=5000),
            SimInverter("obeys too", rated_w=3000, pv_w=2500),
        ],
        load_w=load,
        load_noise_w=0.0,
        seed=seed,
    )
    trace = run_closed_loop(plant, lambda t: export_limit(limit), 100.0)
    late = [pt for pt in trace if pt.t >= S.follow_s + 30.0]
    worst = max(pt.export_w for pt in late)
    assert worst <= limit * 1.04 + 50.0, (worst, [round(i.output_w) for i in plant.inverters])


def test_a_hybrid_whose_battery_discharges_past_its_limit_is_not_taken_for_one_not_following():
    """A hybrid's AC output includes its battery's discharge, which its limit (on its PV) does
    not cover: judged on its output, it was "not following", its discharge was taken out of the
    others' budget (a 3 kW generation limit curtailed the plain inverter's 1.4 kW of PV to 0) and
    the dashboard told the installer to check its settings. It is judged on its output less its
    battery's discharge."""
    from tests.control.mixed_site import Hybrid, MixedSite, Plain, run

    limits = EffectiveLimits(generation_w=3000.0, sources={"generation_w": "utility"})
    site = MixedSite(
        plains=[Plain("plain", 5000, 5000)],
        hybrids=[Hybrid("hybrid", 5000, 0.0, own_mode="self-consumption", soc_pct=80)],
        load_w=6000,
    )
    named: set[str] = set()
    run(site, limits, 120, check=lambda s, out: named.update(out.not_following))
    assert named == set()
    assert site.hybrids[0].battery_w > 4000  # it covers the load past the limit
    assert site.plains[0].output_w > 1000  # its share of the 3 kW, not curtailed to nothing


def test_a_hybrid_with_a_battery_that_is_not_controllable_is_still_judged():
    """Its battery online but not controllable (no SoC, a storage model without controls): its
    power is known, so its inverter is judged on its output less the discharge, as any other
    (it was skipped: a hybrid ignoring its limit exported its excess for good)."""
    from dynexport.control.average import RollingMean
    from dynexport.control.battery import BatteryState
    from dynexport.control.law import ControllerState, InverterState, control_step

    battery = BatteryState(
        "battery", online=True, controllable=False, capacity_wh=10_000, max_charge_w=5000,
        max_discharge_w=5000, soc_pct=None, power_w=500.0, ac_coupled=False,
        inverter_id="hybrid",
    )  # fmt: skip
    state, meter = ControllerState(), RollingMean(1.0)
    out = None
    for k in range(40):
        t = float(k)
        meter = meter.add(t - 0.01, -3000.0)
        # at 20 %, 1000 W allowed; it makes 3000 W, 500 W of which is its battery's
        hybrid = InverterState("hybrid", True, True, 5000.0, 3000.0, 20.0, t)
        out = control_step(meter, [hybrid], export_limit(0.0), state, t, batteries=[battery])
        state = out.state
    assert out is not None and out.not_following == ("hybrid",)
