"""CSIP-AUS client procedures GEN-01..GEN-13 (generation/export limits), link side: the right
limit is in force within one poll, defaults and responses follow (docs/csip-aus-procedures.md).
GEN-05..08 need subscriptions (class S-G) and are not applicable to our polling client."""

from __future__ import annotations

from dynexport.sep2.controls import ControlType
from tests.sep2.fakes import T0
from tests.sep2.procedures.conftest import (
    MAX_EXPORT_W,
    Harness,
    cancelled_on_the_next_derc_poll,
    default_after_cancel_and_after_end,
    drops_to_zero_within_a_poll,
    needs_schema,
    now,
    procedure,
    statuses,
    variable_limits,
)

pytestmark = needs_schema

EXP = ControlType.EXPORT_LIMIT_W
GEN = ControlType.GENERATION_LIMIT_W


async def _active_control_to_zero(link: Harness, kind: ControlType) -> None:
    """GEN-01/02: an unconstrained control, then (on the next DERProgramList poll) a 0 W one."""
    link.server.set_default(export_limit_w=0 if kind is EXP else MAX_EXPORT_W, import_limit_w=0,
                            set_grad_w=600)  # fmt: skip
    await drops_to_zero_within_a_poll(link, kind, MAX_EXPORT_W)


async def test_gen_01_export_limit_control_drops_to_zero_within_a_poll(link: Harness) -> None:
    procedure("GEN-01", "GET-DERC-INITIAL", "WAIT-CONTROL", "GET-DERC-ZERO", "WAIT-REACH-ZERO")
    await _active_control_to_zero(link, EXP)


async def test_gen_02_generation_limit_control_drops_to_zero_within_a_poll(link: Harness) -> None:
    procedure("GEN-02", "GET-DERC-INITIAL", "WAIT-CONTROL", "GET-DERC-ZERO", "WAIT-REACH-ZERO")
    await _active_control_to_zero(link, GEN)


async def _default_control(link: Harness, kind: ControlType) -> None:
    """GEN-03/04: cancel → default 30 %; a new control; its end → default; default removed."""
    others = {"import_limit_w": 0, "export_limit_w": 0 if kind is EXP else MAX_EXPORT_W}
    await default_after_cancel_and_after_end(link, kind, MAX_EXPORT_W, others, clear_default=True)


async def test_gen_03_default_export_limit_after_cancel_and_after_a_control_ends(
    link: Harness,
) -> None:
    procedure("GEN-03", "GET-DEFAULT-DERC", "GET-DERC-1", "GET-DERC-2", "GET-DERC-3")
    await _default_control(link, EXP)


async def test_gen_04_default_generation_limit_after_cancel_and_after_a_control_ends(
    link: Harness,
) -> None:
    procedure("GEN-04", "GET-DEFAULT-DERC", "GET-DERC-1", "GET-DERC-2", "GET-DERC-3")
    await _default_control(link, GEN)


async def test_gen_09_cancelled_export_control_falls_back_to_the_default(link: Harness) -> None:
    procedure("GEN-09", "PRECONDITION-STARTUP", "GET-DERC", "WAIT-TILL-END")
    srv = link.server
    srv.set_default(export_limit_w=0.3 * MAX_EXPORT_W, import_limit_w=0, set_grad_w=600)
    ctl = srv.add_control(
        start=int(T0), duration=300, export_limit_w=2 * MAX_EXPORT_W, import_limit_w=0
    )
    await cancelled_on_the_next_derc_poll(
        link, EXP, ctl, control_w=2 * MAX_EXPORT_W, default_w=0.3 * MAX_EXPORT_W
    )
    assert statuses(srv, ctl) == [1, 2, 6]


async def test_gen_10_primacy_across_programs_decides_events_and_defaults(link: Harness) -> None:
    """GEN-10 with the programs in one FSA (the simulator serves one): primacy 1 and 2."""
    procedure(
        "GEN-10",
        "GET-DEFAULT-DERC",
        "GET-DERP-1",
        "POST-DERC-1-RESPONSE-STARTED",
        "GET-DERP-2",
        "POST-DERC-1-RESPONSE-SUPERSEDED",
        "POST-DERC-2-RESPONSE-COMPLETED",
        "GET-DERP-3",
        "WAIT-OBSERVE-DEFAULT-AFTER-DERC-3",
    )
    srv = link.server
    p1 = srv.default_program  # primacy 1
    p2 = srv.add_program(2)
    srv.set_default(program=p1, export_limit_w=0, import_limit_w=0, set_grad_w=167)
    srv.set_default(program=p2, export_limit_w=0, import_limit_w=0, set_grad_w=167)
    await link.run_for(1)
    srv.set_default(program=p1, export_limit_w=0.3 * MAX_EXPORT_W, import_limit_w=0)
    await link.run_until(lambda: link.value(EXP) == 0.3 * MAX_EXPORT_W, 61, "DERP1 default")
    await link.run_for(180)
    derc1 = srv.add_control(program=p2, start=now(link), duration=600,
                            export_limit_w=2 * MAX_EXPORT_W)  # fmt: skip
    await link.run_until(lambda: statuses(srv, derc1)[:2] == [1, 2], 61, "DERC1 started")
    assert link.value(EXP) == 2 * MAX_EXPORT_W  # a worse program's event beats any default
    await link.run_for(60)
    derc2 = srv.add_control(program=p1, start=now(link), duration=840, export_limit_w=0)
    await link.run_until(lambda: 7 in statuses(srv, derc1), 61, "DERC1 superseded")
    assert link.value(EXP) == 0 and statuses(srv, derc2)[:2] == [1, 2]
    await link.run_for(840)
    assert statuses(srv, derc2) == [1, 2, 3]
    derc3 = srv.add_control(program=p2, start=now(link), duration=300,
                            export_limit_w=2 * MAX_EXPORT_W)  # fmt: skip
    await link.run_until(lambda: link.value(EXP) == 2 * MAX_EXPORT_W, 61, "DERC3")
    await link.run_for(300)
    assert statuses(srv, derc3) == [1, 2, 3]
    assert link.value(EXP) == 0.3 * MAX_EXPORT_W  # DERP1's default, not DERP2's 0 W
    link.clock.advance(1)
    derc4 = srv.add_control(program=p1, start=now(link), duration=300,
                            generation_limit_w=0, connect=False)  # fmt: skip
    derc5 = srv.add_control(program=p2, start=now(link), duration=300,
                            export_limit_w=2 * MAX_EXPORT_W)  # fmt: skip
    await link.run_until(lambda: link.value(ControlType.CONNECT) is False, 61, "DERC4")
    # per type: DERC4 sets generation and connect, DERC5's export limit runs beside it
    assert link.value(GEN) == 0 and link.value(EXP) == 2 * MAX_EXPORT_W
    assert statuses(srv, derc4)[:2] == [1, 2] and statuses(srv, derc5)[:2] == [1, 2]


async def test_gen_11_variable_export_limit_each_control_1_2_3(link: Harness) -> None:
    procedure("GEN-11", "GET-DER-CONTROLS")
    await variable_limits(link, EXP, MAX_EXPORT_W)


async def test_gen_12_variable_generation_limit_each_control_1_2_3(link: Harness) -> None:
    procedure("GEN-12", "GET-DER-CONTROLS")
    srv = link.server
    srv.set_default(export_limit_w=MAX_EXPORT_W, import_limit_w=MAX_EXPORT_W, set_grad_w=600)
    await variable_limits(link, GEN, MAX_EXPORT_W)


async def test_gen_13_export_limit_20_percent_holds_for_seven_minutes(link: Harness) -> None:
    procedure("GEN-13", "WAIT-TEST-END")
    srv = link.server
    srv.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=600)
    srv.add_control(start=int(T0), duration=60, export_limit_w=2 * MAX_EXPORT_W)
    srv.add_control(start=int(T0) + 60, duration=420, export_limit_w=0.2 * MAX_EXPORT_W)
    await link.run_for(1)
    assert link.value(EXP) == 2 * MAX_EXPORT_W
    for t in (61, 120, 240, 360, 479):  # the load changes at 120, 240 and 360 s
        await link.run_to(T0 + t)
        assert link.value(EXP) == 0.2 * MAX_EXPORT_W, f"t={t}"
    await link.run_to(T0 + 481)
    assert link.value(EXP) == 0
