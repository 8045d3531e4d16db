"""CSIP-AUS client procedure LOA-10, "Primacy for loads", link side (docs/csip-aus-procedures.md).

The procedure: 5 DERPrograms at primacy 1 and 10 at primacy 2, defaults on DERP 1 and DERP 6,
then import and load limit events on both and updated defaults, each created when the client
next polls a DERProgramList. It checks that the better program's event wins per control type
(DERC1 superseded by DERC2, DERC5 by its own program's newer DERC6), that a worse program's event
beats any default, that a load-limit event runs beside a worse program's import limit, that the
responses are 2/3/7 as each control starts, completes or is superseded, and that the better
program's default comes back when the events are cancelled.

Mirrored with the 15 programs in one FunctionSetAssignments (the simulator serves one; primacy,
not the FSA, decides, as in test_gen_10): DERP 1 is the default program, DERP 6 the first at
primacy 2, as the harness numbers them. Each ``GET-DERP-n`` step fires on the client's next GET
of the DERProgramList, as the harness's event does. What the procedure leaves to the device
(ramping to each value at setGradW, holding the site's import: its ``instructions``) is the
controller's, proved by the app's closed-loop battery tests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dynexport.sep2.controls import ControlType
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.procedures.conftest import (
    MAX_IMPORT_W,
    Harness,
    needs_schema,
    on_request,
    procedure,
    statuses,
)

pytestmark = needs_schema

IMP = ControlType.IMPORT_LIMIT_W
LOAD = ControlType.LOAD_LIMIT_W

STEPS = (
    "GET-DEFAULT-DERC",
    "WAIT-OBSERVE-DEFAULT-DERC",
    "GET-DERP-1",
    "POST-DERC-1-RESPONSE-STARTED",
    "WAIT-DERC-1",
    "GET-DERP-2",
    "POST-DERC-2-RESPONSE-STARTED",
    "POST-DERC-1-RESPONSE-SUPERSEDED",
    "POST-DERC-2-RESPONSE-COMPLETED",
    "GET-DERP-3",
    "POST-DERC-3-RESPONSE-COMPLETED",
    "WAIT-OBSERVE-DEFAULT-AFTER-DERC-3",
    "GET-DERP-4",
    "GET-DERP-5",
    "POST-DERC-4-RESPONSE-STARTED",
    "POST-DERC-5-RESPONSE-STARTED",
    "POST-DERC-4-RESPONSE-COMPLETED",
    "WAIT-OBSERVE-DERC-5",
    "GET-DERP-6",
    "POST-DERC-6-RESPONSE-STARTED",
    "POST-DERC-5-RESPONSE-SUPERSEDED",
    "WAIT-OBSERVE-DERC-6",
    "GET-DERP-7",
    "GET-DERP-8",
    "POST-DERC-7-RESPONSE-STARTED",
    "POST-DERC-8-RESPONSE-STARTED",
    "POST-DERC-7-RESPONSE-COMPLETED",
    "GET-DERP-9",
    "GET-DERP-10",
    "POST-DERC-9-RESPONSE-STARTED",
    "POST-DERC-10-RESPONSE-STARTED",
    "WAIT-OBSERVE-DERC-9-10",
    "GET-UPDATED-DEFAULT-DERP-1",
    "GET-UPDATED-DEFAULT-DERP-6",
    "WAIT-OBSERVE-DERP-1-6-DEFAULTS",
)
DERP_LIST = "/edev/1/fsa/1/derp"
"""The harness's /edev/1/fsa/{1,2}/derp: our simulator's one DERProgramList."""


def programs(srv: UtilityServer) -> tuple[str, str]:
    """The procedure's preconditions: DERP 1..5 at primacy 1, DERP 6..15 at primacy 2, and the
    defaults of DERP 1 and DERP 6 (import and export 0 W, setGradW 167)."""
    p1 = srv.default_program
    made = [srv.add_program(1) for _ in range(4)] + [srv.add_program(2) for _ in range(10)]
    p6 = made[4]
    assert (p1, p6) == ("1", "6"), "the simulator numbers programs as the harness does"
    for p in (p1, p6):
        srv.set_default(program=p, export_limit_w=0, import_limit_w=0, set_grad_w=167)
    return p1, p6


async def on_next_derp_poll(link: Harness, step: str, *actions: Callable[[], object]) -> None:
    """Runs ``actions`` as the client's next DERProgramList GET is answered (``GET-DERP-n``;
    the harness's pairs, GET-DERP-4 and -5 say, fire on the GETs of its two FSAs' lists, which
    the client polls together: here on the one list's GET)."""
    fired = on_request(link.server, "GET", DERP_LIST, lambda: [a() for a in actions])
    await link.run_until(lambda: bool(fired), 61, step)


def started(srv: UtilityServer, *mrids: str) -> bool:
    return all(statuses(srv, m)[:2] == [1, 2] for m in mrids)


async def test_loa_10_primacy_decides_import_and_load_limits_per_type(
    battery_link: Harness,
) -> None:
    procedure("LOA-10", *STEPS)
    link = battery_link
    srv = link.server
    p1, p6 = programs(srv)
    quarter = MAX_IMPORT_W * 0.3

    # (a, b) GET-DEFAULT-DERC → DERP 1's default becomes 30 %; WAIT-OBSERVE-DEFAULT-DERC
    fired = on_request(
        srv,
        "GET",
        f"/derp/{p1}/dderc",
        lambda: srv.set_default(
            program=p1, export_limit_w=0, import_limit_w=quarter, set_grad_w=167
        ),
    )
    await link.run_until(lambda: bool(fired), 61, "GET-DEFAULT-DERC")
    await link.run_until(lambda: link.value(IMP) == quarter, 61, "DERP 1's 30 % default")
    assert link.client.active_controls().set_grad_w == 167  # type: ignore[union-attr]
    await link.run_for(180)
    assert link.value(IMP) == quarter

    # (c, d) GET-DERP-1: DERC1 on DERP 6 at 200 %: a worse program's event beats any default
    derc: dict[int, str] = {}

    def create(n: int, program: str, duration: int, **limits: object) -> Callable[[], None]:
        def act() -> None:
            derc[n] = srv.add_control(
                program=program,
                start=int(srv.now()),
                duration=duration,
                **limits,  # type: ignore[arg-type]
            )

        return act

    await on_next_derp_poll(link, "GET-DERP-1", create(1, p6, 600, import_limit_w=2 * MAX_IMPORT_W))
    await link.run_until(lambda: started(srv, derc[1]), 61, "POST-DERC-1-RESPONSE-STARTED")
    assert link.value(IMP) == 2 * MAX_IMPORT_W
    await link.run_for(60)  # WAIT-DERC-1

    # (e, f, g) GET-DERP-2: DERC2 on DERP 1 at 0 W supersedes DERC1 (7), starts (2)
    await on_next_derp_poll(link, "GET-DERP-2", create(2, p1, 840, import_limit_w=0))
    await link.run_until(lambda: started(srv, derc[2]), 61, "POST-DERC-2-RESPONSE-STARTED")
    await link.run_until(lambda: 7 in statuses(srv, derc[1]), 61, "DERC1 superseded")
    assert link.value(IMP) == 0
    assert statuses(srv, derc[1]) == [1, 2, 7]

    # (h) POST-DERC-2-RESPONSE-COMPLETED
    await link.run_until(lambda: 3 in statuses(srv, derc[2]), 900, "DERC2 completed")
    assert statuses(srv, derc[2]) == [1, 2, 3]

    # (i, j, k) GET-DERP-3: DERC3 on DERP 6 at 200 %, started and completed
    await on_next_derp_poll(link, "GET-DERP-3", create(3, p6, 300, import_limit_w=2 * MAX_IMPORT_W))
    await link.run_until(lambda: started(srv, derc[3]), 61, "DERC3 started")
    assert link.value(IMP) == 2 * MAX_IMPORT_W
    await link.run_until(lambda: 3 in statuses(srv, derc[3]), 361, "DERC3 completed")
    assert statuses(srv, derc[3]) == [1, 2, 3]

    # (l) WAIT-OBSERVE-DEFAULT-AFTER-DERC-3: DERP 1's 30 %, not DERP 6's 0 W
    assert link.value(IMP) == quarter
    await link.run_for(120)
    assert link.value(IMP) == quarter

    # (m, n, o) GET-DERP-4 and -5: DERC4 on DERP 1 (load 0 W, disconnect) and DERC5 on DERP 6
    # (import 200 %, 20 min): different types, so both run
    await on_next_derp_poll(
        link,
        "GET-DERP-4 and -5",
        create(4, p1, 300, load_limit_w=0, connect=False),
        create(5, p6, 1200, import_limit_w=2 * MAX_IMPORT_W),
    )
    await link.run_until(lambda: started(srv, derc[4], derc[5]), 61, "DERC4 and DERC5 started")
    assert link.value(LOAD) == 0 and link.value(ControlType.CONNECT) is False
    assert link.value(IMP) == 2 * MAX_IMPORT_W

    # (p, q, r) POST-DERC-4-RESPONSE-COMPLETED, then WAIT-OBSERVE-DERC-5: back to DERC5 alone
    await link.run_until(lambda: 3 in statuses(srv, derc[4]), 361, "DERC4 completed")
    assert statuses(srv, derc[4]) == [1, 2, 3]
    assert link.value(ControlType.CONNECT) is None and link.value(LOAD) is None
    await link.run_for(450)
    assert link.value(IMP) == 2 * MAX_IMPORT_W and statuses(srv, derc[5]) == [1, 2]

    # (s, t, u) GET-DERP-6: DERC6 on DERP 6 at 50 % supersedes its own program's DERC5
    half = MAX_IMPORT_W * 0.5
    await on_next_derp_poll(link, "GET-DERP-6", create(6, p6, 300, import_limit_w=half))
    await link.run_until(lambda: started(srv, derc[6]), 61, "POST-DERC-6-RESPONSE-STARTED")
    await link.run_until(lambda: 7 in statuses(srv, derc[5]), 61, "DERC5 superseded")
    assert statuses(srv, derc[5]) == [1, 2, 7]
    assert link.value(IMP) == half
    await link.run_for(120)  # WAIT-OBSERVE-DERC-6
    assert link.value(IMP) == half

    # (v, w, x) GET-DERP-7 and -8: DERC7 on DERP 1 (import 0 W) wins the import limit over
    # DERC8 on DERP 6 (import 50 %, load 30 %), whose load limit runs beside it
    await on_next_derp_poll(
        link,
        "GET-DERP-7 and -8",
        create(7, p1, 300, import_limit_w=0),
        create(8, p6, 300, import_limit_w=half, load_limit_w=quarter),
    )
    await link.run_until(lambda: started(srv, derc[7], derc[8]), 61, "DERC7 and DERC8 started")
    assert link.value(IMP) == 0 and link.value(LOAD) == quarter
    await link.run_until(lambda: 3 in statuses(srv, derc[7]), 361, "DERC7 completed")
    assert statuses(srv, derc[7]) == [1, 2, 3]

    # (y, z, aa) GET-DERP-9 and -10: DERC9 on DERP 1 (load 50 %), DERC10 on DERP 6 (import
    # 20 %): each type from the one event that sets it, over DERP 1's default
    await on_next_derp_poll(
        link,
        "GET-DERP-9 and -10",
        create(9, p1, 300, load_limit_w=half),
        create(10, p6, 300, import_limit_w=0.2 * MAX_IMPORT_W),
    )
    await link.run_until(lambda: started(srv, derc[9], derc[10]), 61, "DERC9 and DERC10 started")
    await link.run_for(120)  # WAIT-OBSERVE-DERC-9-10
    assert link.value(IMP) == pytest.approx(0.2 * MAX_IMPORT_W) and link.value(LOAD) == half

    # (bb, cc, dd) GET-UPDATED-DEFAULT-DERP-1 and -6: defaults 50 % and 20 %, and every active
    # control cancelled; (ee) DERP 1's default (the better program's) is the one in force
    on_request(
        srv,
        "GET",
        f"/derp/{p1}/dderc",
        lambda: srv.set_default(program=p1, export_limit_w=0, import_limit_w=half, set_grad_w=167),
    )

    def new_default_6_and_cancel() -> None:
        srv.set_default(
            program=p6, export_limit_w=0, import_limit_w=0.2 * MAX_IMPORT_W, set_grad_w=167
        )
        for n in (9, 10):
            srv.cancel_control(derc[n])

    cancelled = on_request(srv, "GET", f"/derp/{p6}/dderc", new_default_6_and_cancel)
    await link.run_until(lambda: bool(cancelled), 61, "GET-UPDATED-DEFAULT-DERP-6")
    await link.run_until(lambda: link.value(IMP) == half, 61, "DERP 1's 50 % default")
    assert link.value(LOAD) is None
    await link.run_for(300)  # WAIT-OBSERVE-DERP-1-6-DEFAULTS
    assert link.value(IMP) == half
    assert statuses(srv, derc[9]) == [1, 2, 6] and statuses(srv, derc[10]) == [1, 2, 6]
