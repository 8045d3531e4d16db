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
    add_limit,
    cancelled_on_the_next_derc_poll,
    default_after_cancel_and_after_end,
    drops_to_zero_within_a_poll,
    make_client,
    needs_schema,
    procedure,
    standard_preconditions,
    statuses,
    variable_limits,
)

pytestmark = needs_schema

IMP = ControlType.IMPORT_LIMIT_W
LOAD = ControlType.LOAD_LIMIT_W
PROCEDURE_KINDS = [pytest.param(IMP, id="import"), pytest.param(LOAD, id="load")]
"""The odd-numbered procedure of each pair (LOA-01, -03, -11) sets the import limit, the even one
(LOA-02, -04, -12) the load limit."""


def pid(first: int, kind: ControlType) -> str:
    """LOA-01 or LOA-02 (``first`` = 1) for ``kind``, likewise for the other pairs."""
    return f"LOA-{first if kind is IMP else first + 1:02d}"


@pytest.mark.parametrize("kind", PROCEDURE_KINDS)
async def test_loa_01_02_control_drops_to_zero_within_a_poll(
    battery_link: Harness, kind: ControlType
) -> None:
    """LOA-01 (import), LOA-02 (load): 2 × maxImportW, then a 0 W control on the next
    DERProgramList poll."""
    procedure(pid(1, kind), "GET-DERC-INITIAL", "WAIT-CONTROL", "GET-DERC-ZERO", "WAIT-REACH-ZERO")
    import_w = 0 if kind is IMP else MAX_IMPORT_W
    battery_link.server.set_default(export_limit_w=0, import_limit_w=import_w, set_grad_w=600)
    await drops_to_zero_within_a_poll(battery_link, kind, MAX_IMPORT_W)


@pytest.mark.parametrize("kind", [IMP, LOAD])
async def test_loa_01_02_without_a_battery_the_control_is_not_applicable(
    server: UtilityServer, clock: FakeClock, tmp_path: Path, kind: ControlType
) -> None:
    """The same control at a PV-only site: answered 252, never in force as performed."""
    procedure(pid(1, kind), "GET-DERC-INITIAL")
    standard_preconditions(server)
    mrid = add_limit(server, kind, 2 * MAX_IMPORT_W, start=int(T0), duration=300)
    link = Harness(server, make_client(server, clock, tmp_path), clock)
    try:
        await link.run_for(301)
    finally:
        await link.close()
    assert statuses(server, mrid) == [1, 252]


@pytest.mark.parametrize("kind", PROCEDURE_KINDS)
async def test_loa_03_04_default_limit_after_cancel_and_after_a_control_ends(
    battery_link: Harness, kind: ControlType
) -> None:
    """LOA-03 (import), LOA-04 (load): cancel → default 30 %; a new control; its end → default;
    0 W at the end."""
    procedure(pid(3, kind), "GET-DEFAULT-DERC", "GET-DERC-1", "GET-DERC-2", "GET-DERC-3")
    others = {"export_limit_w": 0.0, "import_limit_w": 0.0 if kind is IMP else MAX_IMPORT_W}
    await default_after_cancel_and_after_end(
        battery_link, kind, MAX_IMPORT_W, others, clear_default=False
    )


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
    await cancelled_on_the_next_derc_poll(
        link, IMP, ctl, control_w=2 * MAX_IMPORT_W, default_w=0.3 * MAX_IMPORT_W
    )
    await link.run_for(60)  # WAIT-TILL-END
    assert statuses(srv, ctl) == [1, 2, 6]


async def test_loa_11_variable_import_limit_each_control_1_2_3(battery_link: Harness) -> None:
    procedure("LOA-11", "GET-DER-CONTROLS")
    battery_link.server.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=600)
    await variable_limits(battery_link, IMP, MAX_IMPORT_W)


async def test_loa_12_variable_load_limit_each_control_1_2_3(battery_link: Harness) -> None:
    procedure("LOA-12", "GET-DER-CONTROLS")
    srv = battery_link.server
    srv.set_default(export_limit_w=0, import_limit_w=MAX_IMPORT_W, set_grad_w=600)
    await variable_limits(battery_link, LOAD, MAX_IMPORT_W)


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
