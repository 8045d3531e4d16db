"""CSIP-AUS client procedures LOA-01..13 (import and load limits), link side: with a battery
configured the right limit is in force within one poll, defaults and responses follow, as for
GEN-* (docs/csip-aus-procedures.md). Without one the same events are answered 252 (not
applicable). LOA-05..08 need subscriptions (class S-L) and ALT-LOA-13 is the EVSE alternate
(class DER-L-ALT): not applicable to our polling PV-and-battery client. Holding the site's import
within the limit (the procedures' readings-site-active-power bounds) is the controller's job,
proved by the closed-loop battery tests of the app."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynexport.sep2.controls import ControlType
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock
from tests.sep2.procedures.conftest import (
    MAX_IMPORT_W,
    Harness,
    make_client,
    needs_schema,
    on_request,
    procedure,
    standard_preconditions,
    statuses,
)

pytestmark = needs_schema

IMP = ControlType.IMPORT_LIMIT_W
LOAD = ControlType.LOAD_LIMIT_W
FIELD = {IMP: "import_limit_w", LOAD: "load_limit_w"}


def now(link: Harness) -> int:
    return int(link.clock.t)


def limit(kind: ControlType, watts: float) -> dict[str, float]:
    return {FIELD[kind]: watts}


async def _active_control_to_zero(link: Harness, kind: ControlType) -> None:
    """LOA-01/02: 2 × maxImportW, then (on the next DERProgramList poll) a 0 W control."""
    srv = link.server
    if kind is IMP:
        srv.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=600)
    else:
        srv.set_default(export_limit_w=0, import_limit_w=MAX_IMPORT_W, set_grad_w=600)
    first = srv.add_control(start=int(T0), duration=300, **limit(kind, 2 * MAX_IMPORT_W))  # type: ignore[arg-type]
    await link.run_for(60)  # GET-DERC-INITIAL, WAIT-CONTROL
    assert link.value(kind) == 2 * MAX_IMPORT_W
    zero: list[str] = []

    def add_zero() -> None:
        zero.append(srv.add_control(start=int(srv.now()), duration=300, **limit(kind, 0)))  # type: ignore[arg-type]

    link.clock.advance(1)
    fired = on_request(srv, "GET", "/edev/1/fsa/1/derp", add_zero)  # GET-DERC-ZERO
    await link.run_until(lambda: bool(fired), 61, "GET-DERC-ZERO")
    await link.run_for(1)
    assert link.value(kind) == 0, "the 0 W control is not in force right after the poll"
    await link.run_for(120)  # WAIT-REACH-ZERO
    assert link.value(kind) == 0
    assert statuses(srv, first)[:2] == [1, 2] and statuses(srv, zero[0])[:2] == [1, 2]


async def test_loa_01_import_limit_control_drops_to_zero_within_a_poll(
    battery_link: Harness,
) -> None:
    procedure("LOA-01", "GET-DERC-INITIAL", "WAIT-CONTROL", "GET-DERC-ZERO", "WAIT-REACH-ZERO")
    await _active_control_to_zero(battery_link, IMP)


async def test_loa_02_load_limit_control_drops_to_zero_within_a_poll(
    battery_link: Harness,
) -> None:
    procedure("LOA-02", "GET-DERC-INITIAL", "WAIT-CONTROL", "GET-DERC-ZERO", "WAIT-REACH-ZERO")
    await _active_control_to_zero(battery_link, LOAD)


@pytest.mark.parametrize("kind", [IMP, LOAD])
async def test_loa_01_02_without_a_battery_the_control_is_not_applicable(
    server: UtilityServer, clock: FakeClock, tmp_path: Path, kind: ControlType
) -> None:
    """The same control at a PV-only site: answered 252, never in force as performed."""
    procedure("LOA-01" if kind is IMP else "LOA-02", "GET-DERC-INITIAL")
    standard_preconditions(server)
    mrid = server.add_control(start=int(T0), duration=300, **limit(kind, 2 * MAX_IMPORT_W))  # type: ignore[arg-type]
    link = Harness(server, make_client(server, clock, tmp_path), clock)
    try:
        await link.run_for(301)
    finally:
        await link.close()
    assert statuses(server, mrid) == [1, 252]


async def _default_control(link: Harness, kind: ControlType) -> None:
    """LOA-03/04: cancel → default 30 %; a new control; its end → default; 0 W at the end."""
    srv = link.server
    base = {"export_limit_w": 0.0, "import_limit_w": 0.0 if kind is IMP else MAX_IMPORT_W}
    srv.set_default(**base, set_grad_w=167)  # type: ignore[arg-type]
    ctl = srv.add_control(start=int(T0), duration=900, **limit(kind, 2 * MAX_IMPORT_W))  # type: ignore[arg-type]
    await link.run_for(1)
    assert link.value(kind) == 2 * MAX_IMPORT_W
    srv.set_default(**(base | limit(kind, 0.3 * MAX_IMPORT_W)), set_grad_w=167)  # type: ignore[arg-type]
    await link.run_for(60)  # GET-DEFAULT-DERC, then GET-DERC-1
    srv.cancel_control(ctl)
    await link.run_until(lambda: link.value(kind) == 0.3 * MAX_IMPORT_W, 61, "default 30 %")
    active = link.client.active_controls()
    assert active is not None and active.set_grad_w == 167  # ramp at setGradW
    assert statuses(srv, ctl) == [1, 2, 6]
    await link.run_for(120)  # WAIT-RAMP-DEFAULT-DERC
    second = srv.add_control(start=now(link), duration=600, **limit(kind, 2 * MAX_IMPORT_W))  # type: ignore[arg-type]
    await link.run_until(lambda: link.value(kind) == 2 * MAX_IMPORT_W, 61, "GET-DERC-2")
    await link.run_for(600)  # WAIT-CONTROL-END
    assert link.value(kind) == 0.3 * MAX_IMPORT_W, "not back to the default after the control"
    assert statuses(srv, second) == [1, 2, 3]
    srv.add_control(start=now(link), duration=600, **limit(kind, 0))  # type: ignore[arg-type]
    await link.run_until(lambda: link.value(kind) == 0, 61, "GET-DERC-3: 0 W control")


async def test_loa_03_default_import_limit_after_cancel_and_after_a_control_ends(
    battery_link: Harness,
) -> None:
    procedure("LOA-03", "GET-DEFAULT-DERC", "GET-DERC-1", "GET-DERC-2", "GET-DERC-3")
    await _default_control(battery_link, IMP)


async def test_loa_04_default_load_limit_after_cancel_and_after_a_control_ends(
    battery_link: Harness,
) -> None:
    procedure("LOA-04", "GET-DEFAULT-DERC", "GET-DERC-1", "GET-DERC-2", "GET-DERC-3")
    await _default_control(battery_link, LOAD)


async def test_loa_09_cancelled_import_control_falls_back_to_the_default(
    battery_link: Harness,
) -> None:
    procedure("LOA-09", "PRECONDITION-STARTUP", "GET-DERC", "WAIT-TILL-END")
    link = battery_link
    srv = link.server
    srv.set_default(export_limit_w=0, import_limit_w=0.3 * MAX_IMPORT_W, set_grad_w=600)
    ctl = srv.add_control(
        start=int(T0),
        duration=300,
        export_limit_w=2 * MAX_IMPORT_W,
        import_limit_w=2 * MAX_IMPORT_W,
    )
    await link.run_for(120)
    assert link.value(IMP) == 2 * MAX_IMPORT_W
    fired = on_request(srv, "GET", "/derp/1/derc", lambda: srv.cancel_control(ctl))
    await link.run_until(lambda: bool(fired), 61, "GET-DERC")
    await link.run_for(1)
    assert link.value(IMP) == 0.3 * MAX_IMPORT_W
    await link.run_for(60)  # WAIT-TILL-END
    assert statuses(srv, ctl) == [1, 2, 6]


async def _variable_limits(link: Harness, kind: ControlType) -> None:
    """LOA-11/12: five 120 s controls at 200, 100, 40, 25 and 0 % of maxImportW."""
    srv = link.server
    shares = [2, 1, 0.4, 0.25, 0]
    mrids: list[str] = []

    def schedule() -> None:
        start = int(srv.now())
        for i, share in enumerate(shares):
            mrids.append(
                srv.add_control(
                    start=start + 120 * i,
                    duration=120,
                    **limit(kind, share * MAX_IMPORT_W),  # type: ignore[arg-type]
                )
            )

    fired = on_request(srv, "GET", "/edev/1/fsa/1/derp", schedule)  # GET-DER-CONTROLS
    await link.run_for(1)
    assert fired
    start = fired[0]
    for i, share in enumerate(shares):
        await link.run_to(start + 120 * i + 60)
        assert link.value(kind) == pytest.approx(share * MAX_IMPORT_W), f"DERC{i + 1}"
    await link.run_to(start + 601)
    for i, mrid in enumerate(mrids):
        assert statuses(srv, mrid) == [1, 2, 3], f"DERC{i + 1}"


async def test_loa_11_variable_import_limit_each_control_1_2_3(battery_link: Harness) -> None:
    procedure("LOA-11", "GET-DER-CONTROLS")
    battery_link.server.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=600)
    await _variable_limits(battery_link, IMP)


async def test_loa_12_variable_load_limit_each_control_1_2_3(battery_link: Harness) -> None:
    procedure("LOA-12", "GET-DER-CONTROLS")
    srv = battery_link.server
    srv.set_default(export_limit_w=0, import_limit_w=MAX_IMPORT_W, set_grad_w=600)
    await _variable_limits(battery_link, LOAD)


async def test_loa_13_import_limit_20_percent_holds_for_seven_minutes(
    battery_link: Harness,
) -> None:
    procedure("LOA-13", "WAIT-TEST-END")
    link = battery_link
    srv = link.server
    srv.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=600)
    first = srv.add_control(start=int(T0), duration=60, import_limit_w=2 * MAX_IMPORT_W)
    second = srv.add_control(start=int(T0) + 60, duration=420, import_limit_w=0.2 * MAX_IMPORT_W)
    await link.run_for(1)
    assert link.value(IMP) == 2 * MAX_IMPORT_W
    for t in (61, 120, 240, 360, 479):  # the test load changes while the limit holds
        await link.run_to(T0 + t)
        assert link.value(IMP) == pytest.approx(0.2 * MAX_IMPORT_W), f"at {t} s"
    await link.run_to(T0 + 500)  # WAIT-TEST-END: back to the default 0 W
    assert link.value(IMP) == 0
    assert statuses(srv, first) == [1, 2, 3] and statuses(srv, second) == [1, 2, 3]


def test_loa_subscription_and_evse_variants_are_not_applicable() -> None:
    """LOA-05..08 are class S-L (subscriptions and notifications: our client polls) and
    ALT-LOA-13 is DER-L-ALT (an EVSE's raised import limit): the reasons they are not
    mirrored; this fails if the wheel reclassifies them."""
    for pid in ("LOA-05", "LOA-06", "LOA-07", "LOA-08"):
        assert "\n  - S-L\n" in procedure(pid), f"{pid} is no longer a subscription procedure"
    assert "\n  - DER-L-ALT\n" in procedure("ALT-LOA-13")
