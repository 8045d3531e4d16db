"""CSIP-AUS client procedures ALL-18..ALL-30: control responses, poll-rate changes, scheduling,
randomisation, communications loss, scaling factors, ramp rates, energize/connect and restarts
(see docs/csip-aus-procedures.md). DER-side observations (the inverter ramping) belong to the
controller's tests; here the link must put the right control in force at the right time."""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import pytest

from dynexport.sep2.controls import ControlType
from dynexport.sep2.resources import DERSettings, Scaled
from dynexport.sim.utility_core import POLL_MISS
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock
from tests.sep2.procedures.conftest import (
    MAX_EXPORT_W,
    Harness,
    allow_violations,
    make_client,
    mirrors,
    needs_schema,
    on_request,
    poll_problems,
    procedure,
    requests,
    response_times,
    statuses,
    typical_sample,
)

pytestmark = needs_schema

EXP = ControlType.EXPORT_LIMIT_W
IMP = ControlType.IMPORT_LIMIT_W
MAX_IMPORT_W = MAX_EXPORT_W
ENDPOINTS = ["/dcap", "/edev", "/edev/1/fsa", "/edev/1/der", "/edev/1/fsa/1/derp"]
ENDPOINTS += ["/derp/1/dderc"]


def now(link: Harness) -> int:
    return int(link.clock.t)


async def test_all_18_responses_received_started_completed_cancelled_superseded(
    link: Harness,
) -> None:
    procedure(
        "ALL-18",
        "POST-RESPONSE-RECEIVED",
        "POST-RESPONSE-STARTED",
        "POST-RESPONSE-COMPLETED",
        "POST-SECOND-RESPONSE-STARTED",
        "POST-SECOND-RESPONSE-CANCELLED",
        "POST-THIRD-RESPONSE-CANCELLED",
        "POST-FOURTH-RESPONSE-SUPERSEDED",
    )
    srv = link.server
    big = dict(export_limit_w=2 * MAX_EXPORT_W, import_limit_w=2 * MAX_IMPORT_W)
    derc1 = srv.add_control(start=now(link), duration=120, **big)  # type: ignore[arg-type]
    await link.run_until(lambda: statuses(srv, derc1) == [1, 2], 60, "DERC1 1, 2")
    await link.run_until(lambda: statuses(srv, derc1) == [1, 2, 3], 130, "DERC1 3")
    derc2 = srv.add_control(start=now(link) + 300, duration=600, **big)  # type: ignore[arg-type]
    await link.run_until(lambda: statuses(srv, derc2) == [1], 61, "DERC2 received")
    await link.run_until(lambda: statuses(srv, derc2) == [1, 2], 310, "DERC2 started")
    srv.cancel_control(derc2)  # cancel-active-der-controls
    await link.run_until(lambda: statuses(srv, derc2) == [1, 2, 6], 61, "DERC2 cancelled")
    derc3 = srv.add_control(start=now(link) + 600, duration=120, export_limit_w=0, import_limit_w=0)
    await link.run_until(lambda: statuses(srv, derc3) == [1], 61, "DERC3 received")
    srv.cancel_control(derc3)
    await link.run_until(lambda: statuses(srv, derc3) == [1, 6], 61, "DERC3 cancelled")
    derc4 = srv.add_control(start=now(link) + 600, duration=600, **big)  # type: ignore[arg-type]
    await link.run_until(lambda: statuses(srv, derc4) == [1], 61, "DERC4 received")
    # created when DERC4's "received" arrives, so it starts (now + 10 min) inside DERC4
    link.clock.advance(1)
    newer = srv.add_control(start=now(link) + 600, duration=60, export_limit_w=0, import_limit_w=0)
    await link.run_until(lambda: 7 in statuses(srv, derc4), 700, "DERC4 superseded")
    if srv.envoy_listing:  # envoy marks it superseded (4) as the newer one is made: no start
        assert statuses(srv, derc4) == [1, 7]
        await link.run_until(lambda: statuses(srv, newer)[:2] == [1, 2], 700, "newer started")
    else:  # it ran for a second, then was cut for good
        assert statuses(srv, derc4) == [1, 2, 7]
    assert link.value(EXP) == 0  # the newer control runs
    await link.run_until(lambda: statuses(srv, newer) == [1, 2, 3], 121, "newer completed")
    # response-contents all=true status=1: every control was acknowledged first
    for mrid in (derc1, derc2, derc3, derc4, newer):
        assert statuses(srv, mrid)[0] == 1, mrid


async def test_all_19_fsa_list_poll_rate_change_is_followed(link: Harness) -> None:
    procedure("ALL-19", "GET-FSA-LIST", "WAIT-TEST-END", "GET-FSA-LIST-AGAIN")
    srv = link.server
    srv.poll_rates["fsa"] = 300
    await link.run_for(1)
    await link.run_for(400)
    fsa = [r.t for r in requests(srv, "GET", "/edev/1/fsa")]
    assert len(fsa) == 2 and fsa[1] - fsa[0] == pytest.approx(300, abs=2)  # honours 300 s
    # GET-FSA-LIST: the harness changes the rate to 60 s as it answers the next poll
    fired = on_request(srv, "GET", "/edev/1/fsa", lambda: srv.poll_rates.update(fsa=60))
    await link.run_until(lambda: bool(fired), 301, "GET-FSA-LIST")
    await link.run_for(120)  # WAIT-TEST-END
    again = [r.t for r in requests(srv, "GET", "/edev/1/fsa") if r.t > fired[0]]
    assert again and again[0] - fired[0] <= 61, "GET-FSA-LIST-AGAIN not within 120 s"


async def test_all_20_derp_list_poll_rate_120_then_back_to_60(link: Harness) -> None:
    procedure("ALL-20", "WAIT-POLL-UPDATE", "GET-DERP-LIST-1", "WAIT-10-MINS", "GET-DERP-LIST-2")
    srv = link.server
    derp = "/edev/1/fsa/1/derp"
    await link.run_for(60)  # WAIT-POLL-UPDATE
    srv.poll_rates["derp"] = 120
    changed = link.clock.t
    await link.run_for(600)  # WAIT-10-MINS
    times = [r.t for r in requests(srv, "GET", derp) if r.t > changed]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and all(115 <= g <= 180 for g in gaps), f"DERProgramList polled at {gaps}"
    fired = on_request(srv, "GET", derp, lambda: srv.poll_rates.update(derp=60))
    await link.run_until(lambda: bool(fired), 121, "GET-DERP-LIST-2")
    await link.run_for(90)  # WAIT-TEST-END: back to 60 s
    again = [r.t for r in requests(srv, "GET", derp) if r.t > fired[0]]
    assert again and again[0] - fired[0] <= 61, "GET-DERP-LIST-3 not within 90 s"


async def test_all_21_twenty_four_back_to_back_controls_each_get_1_2_3(link: Harness) -> None:
    procedure("ALL-21", "WAIT-TEST-END")
    srv = link.server
    shares = [0.3, 0.6, 0.4, 0.5, 0.2, 0.1, 0.7, 0.2, 0.3, 0.3, 0.5, 0.9]
    shares += [0.1, 0.1, 0.5, 0.4, 0.1, 0.7, 0.9, 0.1, 0.4, 0.3, 0.7, 1.0]
    mrids = [
        srv.add_control(
            start=int(T0) + 60 * i,
            duration=60,
            export_limit_w=MAX_EXPORT_W * share,
            import_limit_w=MAX_IMPORT_W * share,
        )
        for i, share in enumerate(shares)
    ]
    await link.run_for(1)
    for i, share in enumerate(shares):
        link.clock.t = T0 + 60 * i + 30
        await link.run_for(0)
        assert link.value(EXP) == pytest.approx(MAX_EXPORT_W * share), f"DERC{i + 1}"
        assert link.value(IMP) == pytest.approx(MAX_IMPORT_W * share), f"DERC{i + 1}"
    link.clock.t = T0 + 1500 - 60
    await link.run_for(60)
    for i, mrid in enumerate(mrids):
        assert statuses(srv, mrid) == [1, 2, 3], f"DERC{i + 1}"
    assert link.value(EXP) == 0  # then the default


async def test_all_21_polls_stay_at_60_s_through_the_schedule(link: Harness) -> None:
    procedure("ALL-21", "WAIT-TEST-END")
    srv = link.server
    for i in range(24):
        srv.add_control(start=int(T0) + 60 * i, duration=60, export_limit_w=100.0 * i)
    await link.run_for(1500)
    assert poll_problems(srv, ENDPOINTS, 60, T0, link.clock.t) == []


async def test_all_22_randomized_starts_fall_inside_their_window(link: Harness) -> None:
    procedure("ALL-22", "WAIT-TEST-END")
    srv = link.server
    mrids = [
        srv.add_control(
            start=int(T0) + 120 * i,
            duration=120,
            randomize_start=60,
            export_limit_w=2 * MAX_EXPORT_W,
        )
        for i in range(5)
    ]
    # back to back: from the latest first start to the last event's start the site never
    # falls to the default (0 W here) between two events, also when the server drops each at
    # its scheduled end while the next one's randomized start is still to come (envoy)
    gaps = []
    while link.clock.t < int(T0) + 660:
        await link.run_for(5)
        if int(T0) + 60 < link.clock.t < int(T0) + 480 and link.value(EXP) != 2 * MAX_EXPORT_W:
            gaps.append((link.clock.t - int(T0), link.value(EXP)))
    assert gaps == [], f"the default between back-to-back events at (s, W): {gaps[:5]}"
    offsets = []
    for i, mrid in enumerate(mrids):
        assert statuses(srv, mrid) == [1, 2, 3], f"DERC{i + 1}"
        started = next(r for r in srv.responses if r.subject == mrid and r.status == 2)
        assert started.created_date_time is not None
        offset = started.created_date_time - (int(T0) + 120 * i)
        assert 0 <= offset <= 60, f"DERC{i + 1} started {offset} s after its start"
        offsets.append(offset)
    assert len(set(offsets)) > 1, f"starts not randomized: offsets {offsets}"


async def test_all_23_comms_loss_follows_the_stored_schedule_then_the_default(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    procedure(
        "ALL-23",
        "GET-DEFAULT-DERC",
        "WAIT-SHORT-PERIOD",
        "WAIT-SCHEDULE-END",
        "GET-DERC-AFTER-COMMS-RESTORE",
    )
    server.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=600)
    shares = [2, 0.2, 0.4, 0.3, 0.4]
    for i, share in enumerate(shares):
        server.add_control(
            start=int(T0) + 120 * i,
            duration=120,
            export_limit_w=MAX_EXPORT_W * share,
            import_limit_w=MAX_IMPORT_W * share,
        )
    link = Harness(server, make_client(server, clock, tmp_path), clock)
    await link.run_for(10)
    assert requests(server, "GET", "/derp/1/dderc")
    server.inject_fault(drop=True, count=10**6)  # communications-status enabled=false
    allow_violations(server, POLL_MISS)  # the outage is the point (ALL-23 times no polls)
    for i, share in enumerate(shares):
        link.clock.t = T0 + 120 * i + 60
        await link.run_for(0)
        assert link.value(EXP) == pytest.approx(MAX_EXPORT_W * share), f"DERC{i + 1} offline"
    link.clock.t = T0 + 10 + 720
    await link.run_for(0)
    assert not link.client.state().connected
    assert link.value(EXP) == 0 and link.value(IMP) == 0  # the default, after the schedule
    server.clear_faults()  # communications-status enabled=true
    restored = server.add_control(
        start=now(link), duration=300, export_limit_w=2 * MAX_EXPORT_W, import_limit_w=0
    )
    took = await link.run_until(
        lambda: link.value(EXP) == 2 * MAX_EXPORT_W, 120, "the new control after comms restore"
    )
    assert took <= 90
    assert [r for r in requests(server, "GET", "/derp/1/derc") if r.status == 200][-1].t > T0 + 730
    assert 1 in statuses(server, restored)
    await link.close()


async def test_all_24_power_of_ten_multipliers_are_applied(link: Harness) -> None:
    procedure("ALL-24", "GET-DERC-1", "GET-DERC-2", "GET-DERC-3", "WAIT-TEST-END")
    srv = link.server
    srv.poll_rate_s = 120
    srv.poll_rates["mup"] = 60
    # values the simulator can only write with multiplier 2, then 1 (as pow_10_multipliers asks)
    limit_m2, limit_m1 = 1_500_000.0, 300_000.0
    assert Scaled.from_real(limit_m2).multiplier == 2
    assert Scaled.from_real(limit_m1).multiplier == 1
    mrids: list[str] = []
    derp = "/edev/1/fsa/1/derp"

    def add(limit: float) -> None:
        mrids.append(
            srv.add_control(
                start=int(srv.now()), duration=120, export_limit_w=limit, import_limit_w=limit
            )
        )

    for limit in (2 * MAX_EXPORT_W, limit_m2, limit_m1):
        fired = on_request(srv, "GET", derp, partial(add, limit))
        await link.run_until(partial(bool, fired), 130, f"GET-DERC ({limit} W)")
        await link.run_for(1)
        assert link.value(EXP) == limit and link.value(IMP) == limit
    await link.run_for(180)
    for mrid in mrids:
        assert statuses(srv, mrid)[:2] == [1, 2]
    assert poll_problems(srv, ENDPOINTS, 120, T0, link.clock.t) == []


async def test_all_25_ramp_time_then_default_set_grad_w(link: Harness) -> None:
    procedure("ALL-25", "GET-DERP-LIST-1", "WAIT-CONTROL-1-FINISH", "GET-DERP-LIST-2")
    srv = link.server
    srv.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=100)
    first = srv.add_control(
        start=int(T0), duration=120, export_limit_w=0.3 * MAX_EXPORT_W, ramp_tms=6000
    )
    await link.run_for(1)
    active = link.client.active_controls()
    assert active is not None and active.value(EXP) == 0.3 * MAX_EXPORT_W
    assert active.ramp_tms(EXP) == 6000  # 60 s, in 1/100 s
    await link.run_for(130)
    second = srv.add_control(start=now(link), duration=120, export_limit_w=0.5 * MAX_EXPORT_W)
    await link.run_until(lambda: link.value(EXP) == 0.5 * MAX_EXPORT_W, 61, "control 2")
    active = link.client.active_controls()
    assert active is not None and active.ramp_tms(EXP) is None and active.set_grad_w == 100
    settings = link.server.der_reports["DERSettings"]
    assert isinstance(settings, DERSettings) and settings.set_grad_w == 100  # 1 %/s
    assert statuses(srv, first) == [1, 2, 3] and statuses(srv, second)[:2] == [1, 2]


async def _switch_procedure(link: Harness, kind: ControlType, field: str) -> None:
    """ALL-26/27: a precondition control, then off for 300 s, then a newer on control."""
    srv = link.server
    srv.set_default(export_limit_w=MAX_EXPORT_W, import_limit_w=MAX_IMPORT_W, set_grad_w=27)
    srv.add_control(start=int(T0), duration=240, export_limit_w=2 * MAX_EXPORT_W, import_limit_w=0)
    await link.run_for(120)  # PRECONDITION-STARTUP-WAIT
    off = srv.add_control(start=now(link), duration=300, **{field: False})  # type: ignore[arg-type]
    took = await link.run_until(lambda: link.value(kind) is False, 61, f"{field} false")
    assert took <= 61
    link.clock.advance(1)
    on = srv.add_control(start=now(link), duration=300, **{field: True})  # type: ignore[arg-type]
    took = await link.run_until(lambda: link.value(kind) is True, 61, f"{field} true")
    assert took <= 61
    assert statuses(srv, off) == [1, 2, 7] and statuses(srv, on)[:2] == [1, 2]


async def test_all_26_de_energize_then_energize_controls_take_effect_within_a_poll(
    link: Harness,
) -> None:
    procedure("ALL-26", "GET-DERC-DEENERGIZE", "PUT-DERSTATUS-DEENERGIZE", "PROCEED-OBSERVE-DER")
    await _switch_procedure(link, ControlType.ENERGIZE, "energize")


async def test_all_27_disconnect_then_connect_controls_take_effect_within_a_poll(
    link: Harness,
) -> None:
    procedure("ALL-27", "GET-DERC-DISCONNECT", "PUT-DERSTATUS-DISCONNECT", "PROCEED-OBSERVE-DER")
    await _switch_procedure(link, ControlType.CONNECT, "connect")


async def test_all_28_ramp_rates_ramp_tms_and_a_changed_set_grad_w(link: Harness) -> None:
    procedure(
        "ALL-28",
        "GET-DERC-1",
        "GET-DERC-2",
        "GET-DERC-3",
        "GET-DEFAULT-DERC",
        "PUT-DERSETTINGS-SET-GRAD-W",
        "POST-RESPONSE-CANCELLED",
        "GET-DERC-4",
        "POST-RESPONSE-STARTED",
    )
    srv = link.server
    srv.set_default(export_limit_w=0, import_limit_w=0)
    srv.add_control(start=int(T0), duration=240, export_limit_w=2 * MAX_EXPORT_W)
    await link.run_for(120)

    async def control(share: float, duration: int, ramp: int | None = None) -> str:
        link.clock.advance(1)
        mrid = srv.add_control(
            start=now(link), duration=duration, export_limit_w=share * MAX_EXPORT_W, ramp_tms=ramp
        )
        await link.run_until(lambda: link.value(EXP) == share * MAX_EXPORT_W, 61, f"{share}")
        return mrid

    derc1 = await control(0.3, 900)
    await link.run_for(120)
    derc2 = await control(0.1, 300)
    await link.run_for(120)
    derc3 = await control(0.5, 900, ramp=6000)
    active = link.client.active_controls()
    assert active is not None and active.ramp_tms(EXP) == 6000
    await link.run_for(180)
    srv.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=100)
    await link.run_until(
        lambda: getattr(srv.der_reports.get("DERSettings"), "set_grad_w", None) == 100,
        61,
        "PUT-DERSETTINGS-SET-GRAD-W",
    )
    srv.cancel_control(derc3)  # cancel-active-der-controls
    await link.run_until(lambda: 6 in statuses(srv, derc3), 61, "POST-RESPONSE-CANCELLED")
    assert link.value(EXP) == 0  # the default, at the new 1 %/s
    active = link.client.active_controls()
    assert active is not None and active.set_grad_w == 100
    await link.run_for(180)
    derc4 = await control(0.3, 300)
    await link.run_for(1)
    assert statuses(srv, derc4)[:2] == [1, 2]
    assert 7 in statuses(srv, derc1) and statuses(srv, derc2)[:2] == [1, 2]


async def test_all_29_site_and_der_power_readings_during_changing_controls(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-29", "WAIT-TEST-END")
    server.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=600)
    for i, share in enumerate([2, 0.3, 0.2, 0.1, 0.0]):
        server.add_control(
            start=int(T0) + 120 * i, duration=120, export_limit_w=share * MAX_EXPORT_W
        )
    link = Harness(server, make_client(server, clock, tmp_path), clock, sampler=typical_sample)
    await link.run_for(600)
    await link.close()
    for role, what in ((0x03, "site"), (0x49, "DER")):
        mrid = mirrors(server)[role]
        count = sum(
            len(s.readings)
            for r in server.readings
            if r.mup_mrid == mrid
            and r.reading.reading_type is not None
            and r.reading.reading_type.uom == 38
            for s in r.reading.mirror_reading_sets
        )
        assert count >= 8, f"{what} active power: {count} readings in 600 s, need 8"


async def _all_30(
    server: UtilityServer, clock: FakeClock, tmp_path: Path, *, cut_mid_walk: bool
) -> tuple[Harness, str]:
    """ALL-30 up to the power cycle; returns the restarted client (no network) and the
    cancelled precondition control."""
    server.set_default(
        export_limit_w=0.3 * MAX_EXPORT_W, import_limit_w=0.3 * MAX_IMPORT_W, set_grad_w=600
    )
    pre = server.add_control(
        start=int(T0), duration=240, export_limit_w=2 * MAX_EXPORT_W, import_limit_w=0
    )
    first = Harness(server, make_client(server, clock, tmp_path), clock)
    await first.run_for(120)  # PRECONDITION-STARTUP-WAIT
    server.cancel_control(pre)  # cancel-active-der-controls

    def cut() -> None:
        server.inject_fault(drop=True, count=10**6)  # communications-status enabled=false
        allow_violations(server, POLL_MISS)  # the outage is the point (ALL-30 times no polls)

    fired = on_request(server, "GET", "/derp/1/dderc", cut if cut_mid_walk else lambda: None)
    await first.run_until(lambda: bool(fired), 61, "GET-DEFAULT-DERC")
    if not cut_mid_walk:
        cut()  # right after the walk that read the default
    await first.run_for(5)
    await first.close()  # power off
    clock.advance(30)  # CLIENT-POWER-CYCLE
    second = Harness(server, make_client(server, clock, tmp_path), clock)  # on, no network
    await second.run_for(1)
    assert not second.client.state().connected
    return second, pre


async def test_all_30_default_persists_through_a_power_cycle_without_network(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    procedure(
        "ALL-30",
        "PRECONDITION-STARTUP-WAIT",
        "GET-DEFAULT-DERC",
        "CLIENT-POWER-CYCLE",
        "REESTABLISH-COMMUNICATION",
        "POLL-DERC-1",
        "POST-RESPONSE-STARTED",
    )
    second, _ = await _all_30(server, clock, tmp_path, cut_mid_walk=False)
    assert clock.t < T0 + 240  # the cancelled control's window has not ended
    assert second.value(EXP) == 0.3 * MAX_EXPORT_W, "the stored default is not in force"
    derc1 = server.add_control(
        start=int(clock.t) - 60,
        duration=900,
        export_limit_w=0.5 * MAX_EXPORT_W,
        import_limit_w=0.5 * MAX_IMPORT_W,
    )
    server.clear_faults()  # REESTABLISH-COMMUNICATION
    await second.run_until(lambda: 2 in statuses(server, derc1), 90, "POST-RESPONSE-STARTED")
    assert requests(server, "GET", "/derp/1/derc")[-1].t > clock.t - 90  # POLL-DERC-1
    assert second.value(EXP) == 0.5 * MAX_EXPORT_W
    assert set(response_times(server, derc1)) >= {1, 2}
    await second.close()


async def test_all_30_a_cancellation_read_before_comms_drop_mid_walk_survives_a_power_cycle(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-30", "GET-DEFAULT-DERC", "CLIENT-POWER-CYCLE")
    second, pre = await _all_30(server, clock, tmp_path, cut_mid_walk=True)
    assert clock.t < T0 + 240
    assert requests(server, "GET", "/derp/1/derc")[-1].status == 200  # the cancel was read
    value = second.value(EXP)
    await second.close()
    assert value == 0.3 * MAX_EXPORT_W, f"obeying {value} W from cancelled control {pre}"
