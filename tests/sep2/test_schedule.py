"""The scheduler's rules, one behaviour per test (see docs/sep2-scheduling.md for sources)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dynexport.sep2 import schedule as schedule_module
from dynexport.sep2.controls import (
    ControlBase,
    ControlType,
    DefaultControl,
    DERControlEvent,
    EventStatus,
    ProgramControls,
)
from dynexport.sep2.schedule import (
    RANDOMIZE_LIMIT_S,
    UNVERIFIED_AHEAD_S,
    ScheduleSnapshot,
    Source,
    active_controls,
    diff,
    effective_window,
    next_change,
    resolve,
    schedule_between,
    time_verified,
)

EXP = ControlType.EXPORT_LIMIT_W
IMP = ControlType.IMPORT_LIMIT_W
GEN = ControlType.GENERATION_LIMIT_W
CONNECT = ControlType.CONNECT
SEED = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
T0 = 1_700_000_000


def ev(
    mrid: str,
    start: int,
    duration: int,
    *,
    primacy: int = 1,
    created: int = 0,
    program: str = "/derp/1",
    **kwargs: object,
) -> DERControlEvent:
    """An event; ``export=``/``import_=`` etc. set the control values, the rest go to the event."""
    base_fields = {
        "export": "export_limit_w",
        "import_": "import_limit_w",
        "gen": "generation_limit_w",
        "load": "load_limit_w",
        "connect": "connect",
        "energize": "energize",
        "ramp_tms": "ramp_tms",
        "max_pct": "max_limit_pct",
        "storage": "storage_target_w",
    }
    base = {base_fields[k]: kwargs.pop(k) for k in list(kwargs) if k in base_fields}
    return DERControlEvent(
        mrid=mrid,
        creation_time=created,
        start=start,
        duration=duration,
        base=ControlBase(**base),  # type: ignore[arg-type]
        primacy=primacy,
        program_href=program,
        **kwargs,  # type: ignore[arg-type]
    )


def prog(
    href: str,
    primacy: int,
    *events: DERControlEvent,
    default: ControlBase | None = None,
    set_grad_w: int | None = None,
) -> ProgramControls:
    events = tuple(replace(e, primacy=primacy, program_href=href) for e in events)
    dflt = None
    if default is not None:
        dflt = DefaultControl(
            base=default, primacy=primacy, program_href=href, mrid=f"D{href}", set_grad_w=set_grad_w
        )
    return ProgramControls(href=href, primacy=primacy, events=events, default=dflt)


def value_at(programs: list[ProgramControls], t: int, kind: ControlType = EXP) -> object:
    return active_controls(programs, t, SEED).value(kind)


def origin_at(programs: list[ProgramControls], t: int, kind: ControlType = EXP) -> str | None:
    return active_controls(programs, t, SEED).origin(kind)


# --- randomization ---------------------------------------------------------------------------


def test_event_without_randomization_keeps_its_specified_window() -> None:
    assert effective_window(ev("A", T0, 300, export=1.0), SEED) == (T0, T0 + 300)


def test_positive_randomize_start_delays_within_bound_and_keeps_duration() -> None:
    offsets = set()
    for i in range(200):
        start, end = effective_window(ev(f"E{i}", T0, 300, export=1.0, randomize_start=60), SEED)
        assert T0 <= start <= T0 + 60
        assert end - start == 300
        offsets.add(start - T0)
    assert len(offsets) > 20, "offsets should spread over the window"


def test_negative_randomize_start_moves_start_earlier() -> None:
    for i in range(100):
        start, _ = effective_window(ev(f"E{i}", T0, 300, export=1.0, randomize_start=-60), SEED)
        assert T0 - 60 <= start <= T0


def test_randomize_duration_changes_length_in_its_direction() -> None:
    for i in range(100):
        s, e = effective_window(ev(f"L{i}", T0, 300, export=1.0, randomize_duration=30), SEED)
        assert s == T0 and 300 <= e - s <= 330
        s, e = effective_window(ev(f"S{i}", T0, 300, export=1.0, randomize_duration=-30), SEED)
        assert s == T0 and 270 <= e - s <= 300


def test_randomization_is_the_same_after_a_restart_and_differs_between_devices() -> None:
    event = ev("ABCD", T0, 300, export=1.0, randomize_start=3600)
    assert effective_window(event, SEED) == effective_window(event, SEED)
    windows = {effective_window(event, f"device-{i}") for i in range(20)}
    assert len(windows) > 10


def test_randomize_bound_is_clamped_to_one_hour() -> None:
    for i in range(50):
        s, _ = effective_window(ev(f"X{i}", T0, 60, export=1.0, randomize_start=10**6), SEED)
        assert T0 <= s <= T0 + RANDOMIZE_LIMIT_S


def test_randomized_duration_never_makes_the_end_precede_the_start() -> None:
    for i in range(50):
        s, e = effective_window(ev(f"N{i}", T0, 10, export=1.0, randomize_duration=-3600), SEED)
        assert e >= s


# --- one event, defaults -----------------------------------------------------------------------


def test_default_applies_before_and_after_an_event_and_the_event_during_it() -> None:
    p = [prog("/derp/1", 1, ev("A", T0, 300, export=1500.0), default=ControlBase(export_limit_w=0))]
    assert value_at(p, T0 - 1) == 0
    assert origin_at(p, T0 - 1) == "default of program /derp/1"
    assert value_at(p, T0) == 1500.0
    assert origin_at(p, T0) == "event A"
    assert value_at(p, T0 + 299) == 1500.0
    assert value_at(p, T0 + 300) == 0


def test_nothing_in_force_without_events_or_defaults() -> None:
    controls = active_controls([prog("/derp/1", 1)], T0, SEED)
    assert controls.values == ()
    assert controls.value(EXP) is None and controls.origin(EXP) is None


def test_event_already_running_at_start_up_runs_for_the_rest_of_its_duration() -> None:
    p = [prog("/derp/1", 1, ev("A", T0 - 3000, 3600, export=2000.0))]
    assert value_at(p, T0) == 2000.0
    assert value_at(p, T0 + 599) == 2000.0
    assert value_at(p, T0 + 600) is None


def test_event_whose_end_is_past_is_ignored() -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("OLD", T0 - 600, 300, export=5.0),
            default=ControlBase(export_limit_w=7),
        )
    ]
    assert origin_at(p, T0) == "default of program /derp/1"


@pytest.mark.parametrize(
    "status",
    [EventStatus.CANCELLED, EventStatus.CANCELLED_WITH_RANDOMIZATION, EventStatus.SUPERSEDED],
)
def test_cancelled_and_superseded_events_never_run(status: EventStatus) -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("A", T0, 300, export=1.0, status=status),
            default=ControlBase(export_limit_w=9),
        )
    ]
    assert value_at(p, T0 + 10) == 9


def test_active_status_event_runs_like_a_scheduled_one() -> None:
    p = [prog("/derp/1", 1, ev("A", T0, 300, export=1.0, status=EventStatus.ACTIVE))]
    assert value_at(p, T0 + 10) == 1.0


def test_default_fills_only_types_the_event_does_not_set() -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("A", T0, 300, export=1500.0),
            default=ControlBase(export_limit_w=0, import_limit_w=0),
        )
    ]
    c = active_controls(p, T0 + 1, SEED)
    assert c.value(EXP) == 1500.0 and c.get(EXP) is not None and c.get(EXP).source is Source.EVENT  # type: ignore[union-attr]
    assert c.value(IMP) == 0 and c.origin(IMP) == "default of program /derp/1"


def test_default_of_best_primacy_program_wins_per_type() -> None:
    p = [
        prog("/derp/6", 2, default=ControlBase(export_limit_w=0, import_limit_w=0), set_grad_w=167),
        prog("/derp/1", 1, default=ControlBase(export_limit_w=3000), set_grad_w=27),
    ]
    c = active_controls(p, T0, SEED)
    assert c.value(EXP) == 3000 and c.origin(EXP) == "default of program /derp/1"
    # The best program's default says nothing about import: the next program's default applies
    # rather than no limit at all.
    assert c.value(IMP) == 0 and c.origin(IMP) == "default of program /derp/6"
    assert c.set_grad_w == 27


def test_set_grad_w_comes_from_best_default_that_has_one() -> None:
    p = [
        prog("/derp/1", 1, default=ControlBase(export_limit_w=1)),
        prog("/derp/2", 2, default=ControlBase(export_limit_w=2), set_grad_w=600),
    ]
    assert active_controls(p, T0, SEED).set_grad_w == 600


def test_ramp_tms_of_the_event_in_force_is_reported_per_type() -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("A", T0, 120, export=100.0, ramp_tms=6000),
            default=ControlBase(export_limit_w=0, import_limit_w=0),
        )
    ]
    c = active_controls(p, T0, SEED)
    assert c.ramp_tms(EXP) == 6000
    assert c.ramp_tms(IMP) is None  # from the default: setGradW applies
    assert active_controls(p, T0 + 120, SEED).ramp_tms(EXP) is None


def test_as_base_and_event_mrids_summarise_what_is_in_force() -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("A", T0, 60, export=5.0, connect=False),
            default=ControlBase(import_limit_w=0),
        )
    ]
    c = active_controls(p, T0, SEED)
    assert c.as_base() == ControlBase(export_limit_w=5.0, import_limit_w=0, connect=False)
    assert c.event_mrids() == frozenset({"A"})


# --- several events ----------------------------------------------------------------------------


def test_contiguous_events_hand_over_without_a_gap() -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("A", T0, 60, export=1.0),
            ev("B", T0 + 60, 60, export=2.0),
            default=ControlBase(export_limit_w=0),
        )
    ]
    assert value_at(p, T0 + 59) == 1.0
    assert value_at(p, T0 + 60) == 2.0
    segs = schedule_between(p, T0, T0 + 120, SEED)
    assert [(s.start, s.end, s.controls.value(EXP)) for s in segs] == [
        (T0, T0 + 60, 1.0),
        (T0 + 60, T0 + 120, 2.0),
    ]


def test_randomized_adjacent_events_hand_over_at_the_next_effective_start() -> None:
    events = [ev(f"R{i}", T0 + 120 * i, 120, export=float(i), randomize_start=60) for i in range(5)]
    p = [prog("/derp/1", 1, *events, default=ControlBase(export_limit_w=-1))]
    starts = [effective_window(e, SEED)[0] for e in events]
    segs = schedule_between(p, starts[0], starts[-1] + 60, SEED)
    assert [s.controls.value(EXP) for s in segs] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [s.start for s in segs] == starts
    plans = {pl.event.mrid: pl for pl in resolve(p, SEED).plans}
    assert not any(pl.superseded for pl in plans.values())


def test_lower_primacy_number_wins_across_programs() -> None:
    p = [
        prog("/derp/2", 2, ev("LOW", T0, 600, export=9000.0, created=T0 + 50)),
        prog("/derp/1", 1, ev("HIGH", T0, 600, export=100.0, created=T0)),
    ]
    assert value_at(p, T0 + 1) == 100.0 and origin_at(p, T0 + 1) == "event HIGH"


def test_newer_creation_time_wins_at_equal_primacy() -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("OLD", T0, 600, export=1.0, created=T0 - 10),
            ev("NEW", T0, 600, export=2.0, created=T0 - 5),
        )
    ]
    assert origin_at(p, T0 + 1) == "event NEW"


def test_equal_primacy_across_programs_falls_back_to_creation_time() -> None:
    p = [
        prog("/derp/a", 3, ev("A", T0, 600, export=1.0, created=5)),
        prog("/derp/b", 3, ev("B", T0, 600, export=2.0, created=6)),
    ]
    assert origin_at(p, T0) == "event B"


def test_overlapping_better_event_terminates_the_worse_one_which_does_not_resume() -> None:
    # GEN-10 (c-g): DERC1 (primacy 2) runs, DERC2 (primacy 1) starts later and outlasts it.
    # And ALL-18 (q-s): a long event cut by a short better one is superseded, not resumed.
    p = [
        prog("/derp/6", 2, ev("D1", T0, 600, export=9000.0)),
        prog("/derp/1", 1, ev("D2", T0 + 60, 120, export=0.0)),
        prog("/derp/9", 9, default=ControlBase(export_limit_w=3000)),
    ]
    assert origin_at(p, T0 + 59) == "event D1"
    assert origin_at(p, T0 + 60) == "event D2"
    assert origin_at(p, T0 + 180) == "default of program /derp/9"
    plans = {pl.event.mrid: pl for pl in resolve(p, SEED).plans}
    assert plans["D1"].superseded and plans["D1"].superseded_at == T0 + 60
    assert not plans["D2"].superseded


def test_worse_event_starting_inside_a_better_one_never_runs() -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("B", T0, 600, export=1.0, created=10),
            ev("W", T0 + 100, 100, export=2.0, created=5),
        )
    ]
    assert origin_at(p, T0 + 150) == "event B"
    plan = next(pl for pl in resolve(p, SEED).plans if pl.event.mrid == "W")
    assert plan.superseded and not plan.ran and plan.superseded_at == T0 + 100


def test_events_setting_different_types_do_not_supersede_each_other() -> None:
    # GEN-10 (o-q): a primacy-1 connect/generation event alongside a primacy-2 export event.
    p = [
        prog("/derp/1", 1, ev("D4", T0, 300, gen=0.0, connect=False)),
        prog("/derp/6", 2, ev("D5", T0, 1200, export=9000.0)),
    ]
    c = active_controls(p, T0 + 10, SEED)
    assert c.origin(GEN) == "event D4" and c.origin(CONNECT) == "event D4"
    assert c.origin(EXP) == "event D5"
    assert not any(pl.superseded for pl in resolve(p, SEED).plans)


def test_better_event_supersedes_only_the_types_it_sets() -> None:
    p = [
        prog("/derp/2", 2, ev("BOTH", T0, 600, export=5000.0, import_=5000.0)),
        prog("/derp/1", 1, ev("EXPONLY", T0 + 100, 100, export=0.0)),
    ]
    c = active_controls(p, T0 + 150, SEED)
    assert c.origin(EXP) == "event EXPONLY"
    assert c.origin(IMP) == "event BOTH"
    assert active_controls(p, T0 + 300, SEED).origin(EXP) is None  # export part terminated
    assert active_controls(p, T0 + 300, SEED).origin(IMP) == "event BOTH"
    plan = next(pl for pl in resolve(p, SEED).plans if pl.event.mrid == "BOTH")
    assert not plan.superseded  # it still runs import to its end


def test_a_superseded_event_that_never_ran_does_not_block_a_worse_one() -> None:
    p = [
        prog("/derp/1", 1, ev("BEST", T0, 100, export=1.0)),
        prog("/derp/2", 2, ev("MID", T0 + 50, 1000, export=2.0)),
        prog("/derp/3", 3, ev("WORST", T0 + 200, 100, export=3.0)),
    ]
    assert origin_at(p, T0 + 60) == "event BEST"
    assert origin_at(p, T0 + 150) is None  # MID was terminated when it would have started
    assert origin_at(p, T0 + 250) == "event WORST"


def test_duplicate_mrid_across_programs_is_scheduled_once() -> None:
    e = ev("SAME", T0, 60, export=1.0)
    p = [prog("/derp/1", 1, e), prog("/derp/2", 2, e)]
    assert len(resolve(p, SEED).plans) == 1
    assert active_controls(p, T0, SEED).get(EXP).primacy == 1  # type: ignore[union-attr]


def test_event_that_sets_nothing_is_not_scheduled() -> None:
    p = [prog("/derp/1", 1, ev("EMPTY", T0, 60), default=ControlBase(export_limit_w=3))]
    assert value_at(p, T0 + 1) == 3
    assert resolve(p, SEED).plans == ()


# --- schedule_between, next_change -------------------------------------------------------------


def test_schedule_between_covers_the_window_and_merges_equal_neighbours() -> None:
    p = [
        prog(
            "/derp/1",
            1,
            ev("A", T0 + 100, 100, export=1.0),
            ev("B", T0 + 400, 100, export=2.0),
            default=ControlBase(export_limit_w=0),
        )
    ]
    segs = schedule_between(p, T0, T0 + 1000, SEED)
    assert [(s.start, s.end, s.controls.origin(EXP)) for s in segs] == [
        (T0, T0 + 100, "default of program /derp/1"),
        (T0 + 100, T0 + 200, "event A"),
        (T0 + 200, T0 + 400, "default of program /derp/1"),
        (T0 + 400, T0 + 500, "event B"),
        (T0 + 500, T0 + 1000, "default of program /derp/1"),
    ]


def test_schedule_between_clips_events_to_the_window() -> None:
    p = [prog("/derp/1", 1, ev("A", T0 - 100, 300, export=1.0))]
    segs = schedule_between(p, T0, T0 + 100, SEED)
    assert [(s.start, s.end, s.controls.value(EXP)) for s in segs] == [(T0, T0 + 100, 1.0)]


def test_schedule_between_empty_window_is_empty() -> None:
    assert schedule_between([prog("/derp/1", 1)], T0, T0, SEED) == []


def test_events_with_equal_values_but_different_origin_stay_separate_segments() -> None:
    p = [prog("/derp/1", 1, ev("A", T0, 60, export=1.0), ev("B", T0 + 60, 60, export=1.0))]
    assert len(schedule_between(p, T0, T0 + 120, SEED)) == 2


def test_next_change_is_the_next_run_boundary() -> None:
    p = [prog("/derp/1", 1, ev("A", T0 + 100, 100, export=1.0))]
    assert next_change(p, T0, SEED) == T0 + 100
    assert next_change(p, T0 + 100, SEED) == T0 + 200
    assert next_change(p, T0 + 200, SEED) is None


# --- diff ----------------------------------------------------------------------------------------


def test_diff_reports_new_changed_vanished_and_cancelled_events() -> None:
    a = ev("A", T0, 60, export=1.0)
    b = ev("B", T0, 60, export=2.0)
    c = ev("C", T0, 60, export=3.0)
    before = [prog("/derp/1", 1, a, b, c)]
    after = [
        prog(
            "/derp/1",
            1,
            replace(a, duration=120),
            replace(b, status=EventStatus.CANCELLED),
            ev("D", T0, 60, export=4.0),
            ev("E", T0, 60, export=5.0, status=EventStatus.CANCELLED_WITH_RANDOMIZATION),
        )
    ]
    d = diff(before, after)
    assert [e.mrid for e in d.new] == ["D", "E"]
    assert [(e.mrid, e.duration) for e in d.changed] == [("A", 120)]
    assert [e.mrid for e in d.vanished] == ["C"]
    assert [e.mrid for e in d.cancelled] == ["B", "E"]
    assert not d.is_empty()


def test_diff_of_identical_polls_is_empty_and_a_still_cancelled_event_is_not_reported_again() -> (
    None
):
    p = [prog("/derp/1", 1, ev("A", T0, 60, export=1.0, status=EventStatus.CANCELLED))]
    assert diff(p, p).is_empty()


def test_vanished_event_no_longer_runs() -> None:
    before = [
        prog("/derp/1", 1, ev("A", T0, 600, export=1.0), default=ControlBase(export_limit_w=0))
    ]
    after = [prog("/derp/1", 1, default=ControlBase(export_limit_w=0))]
    assert [e.mrid for e in diff(before, after).vanished] == ["A"]
    assert value_at(after, T0 + 10) == 0


# --- snapshot ------------------------------------------------------------------------------------


def _all23_programs() -> list[ProgramControls]:
    """ALL-23: five back-to-back 2-minute controls and a 0 W default."""
    values = [20000.0, 2000.0, 4000.0, 3000.0, 4000.0]
    events = [
        ev(
            f"DERC{i + 1}",
            T0 + 120 * i,
            120,
            export=v,
            import_=v,
            created=T0 - 10,
            response_required=3,
        )
        for i, v in enumerate(values)
    ]
    default = ControlBase(export_limit_w=0, import_limit_w=0)
    return [prog("/edev/1/derp/1", 0, *events, default=default, set_grad_w=600)]


def test_snapshot_round_trips_through_json() -> None:
    programs = _all23_programs()
    programs[0] = replace(
        programs[0],
        extra={"k": "v"},
        mrid="P1",
        description="site",
        events=(
            *programs[0].events,
            ev(
                "X",
                T0,
                10,
                connect=False,
                energize=True,
                max_pct=50.5,
                load=1.5,
                gen=2.5,
                ramp_tms=100,
                reply_to="/rsp",
                href="/derc/9",
                randomize_start=-5,
                randomize_duration=7,
                description="x",
                status=EventStatus.ACTIVE,
                primacy=0,
                program="/edev/1/derp/1",
            ),
        ),
    )
    snap = ScheduleSnapshot(tuple(programs), fetched_at=T0, clock_offset=-42, extra={"fsa": "/fsa"})
    again = ScheduleSnapshot.from_json(snap.to_json())
    assert again == snap


def test_stored_snapshot_runs_out_into_the_stored_default_without_network() -> None:
    # ALL-23 / ALL-30: after a reboot with no network the stored schedule runs, then the default.
    text = ScheduleSnapshot(tuple(_all23_programs()), fetched_at=T0 - 30, clock_offset=5).to_json()
    snap = ScheduleSnapshot.from_json(text)
    local = T0 - 5  # local clock is 5 s behind the server
    assert snap.server_time(local) == T0
    assert snap.active_controls(local + 10, SEED).origin(EXP) == "event DERC1"
    assert snap.active_controls(local + 130, SEED).value(EXP) == 2000.0
    assert snap.active_controls(local + 599, SEED).origin(EXP) == "event DERC5"
    after = snap.active_controls(local + 600, SEED)
    assert after.value(EXP) == 0 and after.value(IMP) == 0
    assert after.origin(EXP) == "default of program /edev/1/derp/1"
    assert after.set_grad_w == 600
    assert snap.active_controls(local + 86_400 * 30, SEED).value(EXP) == 0


def _snapshot_with(program: dict[str, object]) -> str:
    return json.dumps({"version": 1, "programs": [program], "fetched_at": 0})


_EVENT = {"mrid": "A", "creation_time": 0, "start": 0, "duration": 1, "primacy": 1}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 99, "programs": [], "fetched_at": 0}',
        '{"version": 1, "programs": {}, "fetched_at": 0}',
        '{"version": 1, "programs": [], "fetched_at": "x"}',
        _snapshot_with({"href": "/p"}),
        _snapshot_with({"href": "/p", "primacy": 1, "events": [{"mrid": "A"}]}),
        _snapshot_with({"href": "/p", "primacy": 1, "events": [{**_EVENT, "status": 9}]}),
        _snapshot_with({"href": "/p", "primacy": 1, "events": [{**_EVENT, "start": True}]}),
        _snapshot_with(
            {"href": "/p", "primacy": 1, "default": {"primacy": 1, "base": {"connect": 1}}}
        ),
        _snapshot_with(
            {"href": "/p", "primacy": 1, "default": {"primacy": 1, "base": {"bogus": 1}}}
        ),
        _snapshot_with(
            {"href": "/p", "primacy": 1, "default": {"primacy": 1, "base": {"export_limit_w": "1"}}}
        ),
        _snapshot_with({"href": "/p", "primacy": 1, "extra": {"a": 1}}),
    ],
)
def test_malformed_snapshot_is_rejected_with_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        ScheduleSnapshot.from_json(text)


@pytest.mark.parametrize(
    ("anchored", "synchronised", "stored_offset", "known"),
    [
        (True, False, 7200, True),  # the server's Time read in this process: always known
        (False, True, 30, True),  # a set clock, and an offset such a clock measures
        (False, True, -60, True),
        (False, True, 61, False),  # an offset measured against a wrong clock (or server)
        (False, False, 0, False),  # a clock restarted from its last saved time
        (False, None, 0, False),  # cannot tell: not known
    ],
)
def test_time_is_known_once_the_server_said_it_or_a_time_server_set_the_clock(
    anchored: bool, synchronised: bool | None, stored_offset: int, known: bool
) -> None:
    assert time_verified(anchored, synchronised, stored_offset) is known


DEFAULT_5KW = ControlBase(export_limit_w=5000.0)


def test_the_strictest_schedule_ahead_is_worked_out_once_a_minute_not_at_every_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`strictest_ahead` is asked at every control decision while the clock is unverified; with
    thousands of stored events each answer cost about 15 ms. The stretches are worked out once
    a minute, over whole minutes; a new minute or another seed works them out again."""
    snap = ScheduleSnapshot(
        (prog("/p", 1, ev("A", T0 + 3600, 600, program="/p", export=0.0), default=DEFAULT_5KW),),
        fetched_at=T0 - 600,
    )
    spans: list[tuple[int, int, str]] = []
    real = schedule_module.schedule_between

    def counting(programs: object, start: int, end: int, seed: str, memory: object) -> object:
        spans.append((start, end, seed))
        return real(programs, start, end, seed, memory)  # type: ignore[arg-type]

    monkeypatch.setattr(schedule_module, "schedule_between", counting)
    minute = T0 - T0 % 60
    first = snap.strictest_ahead(minute + 5, SEED)
    assert first.value(ControlType.EXPORT_LIMIT_W) == 0.0  # the event an hour ahead
    assert snap.strictest_ahead(minute + 59, SEED) is first
    assert len(spans) == 1 and spans[0][0] == minute and spans[0][1] % 60 == 0
    assert spans[0][1] >= minute + 59 + UNVERIFIED_AHEAD_S  # widened, never narrowed
    snap.strictest_ahead(minute + 60, SEED)
    snap.strictest_ahead(minute + 60, "another seed")
    assert [s[0] for s in spans] == [minute, minute + 60, minute + 60]
    assert spans[2][2] == "another seed"


def test_within_the_minute_kept_what_has_ended_no_longer_counts() -> None:
    """The stretches are kept for the minute, but each answer starts at the clock's own time:
    a storage target (which has no safe direction) and a "disconnect" that ended at :30 are not
    obeyed at :45."""
    minute = T0 - T0 % 60 + 3600
    snap = ScheduleSnapshot(
        (
            prog(
                "/p",
                1,
                ev("A", minute - 600, 630, program="/p", connect=False),
                ev("B", minute - 600, 630, program="/p", storage=3000.0),
                default=ControlBase(storage_target_w=-2000.0),
            ),
        ),
        fetched_at=minute - 900,
    )
    before = snap.strictest_ahead(minute + 10, SEED)
    assert before.value(ControlType.CONNECT) is False
    assert before.value(ControlType.STORAGE_TARGET_W) == 3000.0
    after = snap.strictest_ahead(minute + 45, SEED)
    assert after.value(ControlType.CONNECT) is None
    assert after.value(ControlType.STORAGE_TARGET_W) == -2000.0


def test_a_clock_behind_the_fetch_obeys_the_events_of_the_week_after_the_fetch() -> None:
    """The saved time lost, systemd starts the clock at its build date, months before the fetch:
    the true time is at least the fetch, so the events after it are obeyed, not the defaults of
    the months before (the span once ended a week after the wrong clock)."""
    snap = ScheduleSnapshot(
        (prog("/p", 1, ev("A", T0 + 86400, 600, program="/p", export=0.0), default=DEFAULT_5KW),),
        fetched_at=T0,
    )
    assert snap.strictest_ahead(T0 - 90 * 86400, SEED).value(ControlType.EXPORT_LIMIT_W) == 0.0
