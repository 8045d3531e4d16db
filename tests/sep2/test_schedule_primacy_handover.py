"""Adjacent events hand over only to a successor at least as good: primacy bounds the hand-over.

IEEE 2030.5-2018 §10.2.3 (adjacent events): an event specified to end when the next starts runs
until the next effectively starts. A successor of worse primacy (higher number) must not take
over early: the better program's control stays in force over its whole window, and the worse
event runs after it (delayed, not superseded). See docs/sep2-scheduling.md.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sep2.controls import (
    ControlBase,
    ControlType,
    DERControlEvent,
    EventStatus,
    ProgramControls,
)
from dynexport.sep2.schedule import EventPlan, effective_window, resolve
from tests.sep2.test_schedule import EXP, GEN, SEED, T0, ev, origin_at, prog, value_at

HOUR = 3600


def _mrid(
    prefix: str, make: Callable[[str], DERControlEvent], ok: Callable[[int, int], bool]
) -> str:
    """The first mRID whose effective window for this SEED satisfies ``ok(start, end)``."""
    for i in range(2000):
        mrid = f"{prefix}{i:04d}"
        if ok(*effective_window(make(mrid), SEED)):
            return mrid
    raise AssertionError("no such mRID")


def _agg(mrid: str) -> DERControlEvent:
    """An aggregator's 10 kW event from T0 + 1 h, randomized to start up to 30 min early."""
    return ev(mrid, T0 + HOUR, HOUR, export=10_000.0, randomize_start=-1800)


def test_worse_primacy_successor_randomized_early_waits_for_the_better_event_to_end() -> None:
    worse = _mrid("W", _agg, lambda s, _: s <= T0 + HOUR - 600)
    p = [
        prog("/derp/dnsp", 1, ev("DNSP", T0, HOUR, export=0.0)),
        prog("/derp/agg", 5, _agg(worse)),
    ]
    early, end = effective_window(_agg(worse), SEED)
    for t in (early, early + 1, T0 + HOUR - 1):
        assert (value_at(p, t), origin_at(p, t)) == (0.0, "event DNSP"), t
    # then it runs (delayed, not superseded) until its own effective end
    assert (value_at(p, T0 + HOUR), origin_at(p, T0 + HOUR)) == (10_000.0, f"event {worse}")
    assert origin_at(p, end - 1) == f"event {worse}"
    plans = {pl.event.mrid: pl for pl in resolve(p, SEED).plans}
    assert (plans["DNSP"].start, plans["DNSP"].end) == (T0, T0 + HOUR)
    assert (plans[worse].start, plans[worse].end) == (T0 + HOUR, end)
    assert not plans["DNSP"].superseded and not plans[worse].superseded


def test_better_primacy_successor_randomized_early_still_takes_over_at_its_start() -> None:
    better = _mrid("B", _agg, lambda s, _: s <= T0 + HOUR - 600)
    p = [
        prog("/derp/agg", 5, ev("AGG", T0, HOUR, export=10_000.0)),
        prog("/derp/dnsp", 1, replace_export(_agg(better), 0.0)),
    ]
    early = effective_window(_agg(better), SEED)[0]
    assert origin_at(p, early - 1) == "event AGG"
    assert (value_at(p, early), origin_at(p, early)) == (0.0, f"event {better}")
    plans = {pl.event.mrid: pl for pl in resolve(p, SEED).plans}
    assert plans["AGG"].end == early and not plans["AGG"].superseded


def test_equal_primacy_successor_takes_over_early_whatever_its_creation_time() -> None:
    # Equal primacy is not "worse": an older successor from another program still hands over.
    older = _mrid("O", _agg, lambda s, _: s <= T0 + HOUR - 600)
    p = [
        prog("/derp/a", 3, ev("NEWER", T0, HOUR, export=0.0, created=T0)),
        prog(
            "/derp/b",
            3,
            ev(older, T0 + HOUR, HOUR, export=5.0, created=T0 - 100, randomize_start=-1800),
        ),
    ]
    early = effective_window(_agg(older), SEED)[0]
    assert origin_at(p, early - 1) == "event NEWER"
    assert origin_at(p, early) == f"event {older}"
    assert not any(pl.superseded for pl in resolve(p, SEED).plans)


def test_a_successor_that_never_runs_does_not_cut_its_predecessor_short() -> None:
    # Randomized to start 10+ min early and to last no time at all: it takes nothing over, so the
    # 0 W event keeps its window instead of leaving a gap to the 10 kW default.
    def empty(mrid: str) -> DERControlEvent:
        return ev(mrid, T0 + HOUR, 60, export=0.0, randomize_start=-1800, randomize_duration=-3600)

    never = _mrid("N", empty, lambda s, e: s <= T0 + HOUR - 600 and e == s)
    p = [
        prog(
            "/derp/dnsp",
            1,
            ev("DNSP", T0, HOUR, export=0.0),
            empty(never),
            default=ControlBase(export_limit_w=10_000.0),
        )
    ]
    early = effective_window(empty(never), SEED)[0]
    assert (value_at(p, early), origin_at(p, early)) == (0.0, "event DNSP")
    assert value_at(p, T0 + HOUR) == 10_000.0


def replace_export(event: DERControlEvent, watts: float) -> DERControlEvent:
    return DERControlEvent(**{**event.__dict__, "base": ControlBase(export_limit_w=watts)})


# --- property -----------------------------------------------------------------------------------

KINDS = (EXP, GEN, ControlType.CONNECT)
SLOT = 600
SLOTS = 8


@st.composite
def _events(draw: st.DrawFn, index: int) -> DERControlEvent:
    kinds = draw(st.sets(st.sampled_from(KINDS), min_size=1))
    values: dict[str, float | bool] = {
        k.value: (draw(st.booleans()) if k is ControlType.CONNECT else float(index * 100))
        for k in kinds
    }
    start_slot = draw(st.integers(0, SLOTS))
    return DERControlEvent(
        mrid=f"E{index:02d}",
        creation_time=draw(st.integers(0, 2)),
        start=T0 + SLOT * start_slot,
        duration=SLOT * draw(st.integers(1, 3)) - draw(st.sampled_from([0, 0, 0, 0, 60, SLOT])),
        base=ControlBase(**values),  # type: ignore[arg-type]
        primacy=0,
        status=draw(st.sampled_from([EventStatus.SCHEDULED] * 8 + [EventStatus.CANCELLED])),
        randomize_start=draw(st.sampled_from([0, 60, -60, 600, -600, -1800, -1800, -3600, 1800])),
        randomize_duration=draw(st.sampled_from([0, 0, 0, 300, -300, -3600])),
    )


@st.composite
def _programs(draw: st.DrawFn) -> list[ProgramControls]:
    evs = [draw(_events(i)) for i in range(draw(st.integers(2, 12)))]
    count = draw(st.integers(1, 4))
    owner = [draw(st.integers(0, count - 1)) for _ in evs]
    return [
        prog(
            f"/derp/{i}",
            draw(st.integers(0, 3)),  # programs may share a primacy
            *(e for e, o in zip(evs, owner, strict=True) if o == i),
            default=ControlBase(export_limit_w=20_000.0) if draw(st.booleans()) else None,
        )
        for i in range(count)
    ]


def _shares(a: DERControlEvent, b: DERControlEvent) -> bool:
    return not a.base.types().isdisjoint(b.base.types())


def _excused(b: EventPlan, kind: ControlType, t: int, plans: dict[str, EventPlan]) -> bool:
    """Why ``b`` (window holding ``t``) may be out of force at ``t``, by the documented rules."""
    cut = dict(b.cut_at).get(kind)
    if cut is not None and cut <= t:
        return True  # superseded: a better-ranked event terminated it, and it does not resume
    e = b.event
    for n in plans.values():
        if n.event.mrid == e.mrid or not _shares(e, n.event):
            continue
        if (
            e.duration > 0
            and n.event.start == e.start + e.duration
            and n.event.primacy <= e.primacy
            and n.start < n.end
            and n.start <= t
        ):
            return True  # handed over to an adjacent successor at least as good, which started
        if (
            n.event.duration > 0
            and e.start == n.event.start + n.event.duration
            and n.event.primacy < e.primacy
            and t < b.start <= n.end
        ):
            return True  # waits for an adjacent better predecessor (itself checked in turn)
    return False


@settings(max_examples=300, deadline=None)
@given(_programs(), st.data())
def test_a_worse_primacy_control_never_runs_inside_a_better_events_own_window(
    programs: list[ProgramControls], data: st.DataObject
) -> None:
    """At no instant is the control in force that of an event of worse primacy (higher number)
    while an event of better primacy setting that control is within its own randomized window
    (`effective_window`), unless that better event is over by a documented rule: terminated by a
    better-ranked event (superseded; it does not resume), handed over to an adjacent successor of
    equal or better primacy that has started, or waiting behind an adjacent better predecessor.

    Ties: "worse" means a strictly higher primacy number. The module ranks equal primacy by newer
    creationTime, then mRID, but that decides only genuine overlaps; between adjacent events of
    equal primacy the hand-over happens at the successor's effective start whatever their
    creationTime, so equal primacy is never "worse" here."""
    resolution = resolve(programs, SEED)
    plans = {pl.event.mrid: pl for pl in resolution.plans}
    windows = {m: effective_window(pl.event, SEED) for m, pl in plans.items()}
    instants = sorted({t + d for w in windows.values() for t in w for d in (-1, 0, 1)})
    instants.append(T0 + data.draw(st.integers(-HOUR, SLOT * (SLOTS + 4) + HOUR)))
    for t in instants:
        for kind in KINDS:
            g = resolution.event_at(kind, t)
            if g is None:
                continue
            for m, b in plans.items():
                s, end = windows[m]
                better = b.event.primacy < g.primacy and b.event.base.get(kind) is not None
                if better and s <= t < end:
                    assert _excused(b, kind, t, plans), (t, kind, g.mrid, m, plans)
