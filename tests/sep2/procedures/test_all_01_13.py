"""CSIP-AUS client procedures ALL-01..ALL-13: discovery, registration, DER reports, telemetry,
energize/connect controls and the default ramp rate (see docs/csip-aus-procedures.md)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

from dynexport.sep2.controls import ControlType
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.resources import (
    ConnectionPoint,
    DERCapability,
    DERSettings,
    DERStatus,
    EndDevice,
)
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import NMI, T0, FakeClock
from tests.sep2.procedures.conftest import (
    MAX_EXPORT_W,
    RATED_W,
    Harness,
    first_time,
    make_client,
    mirrors,
    needs_schema,
    new_server,
    poll_problems,
    procedure,
    requests,
    standard_preconditions,
    statuses,
    typical_sample,
)

pytestmark = needs_schema

DERS = "/edev/1/der/1/ders"
DERG = "/edev/1/der/1/derg"


def methods_paths(srv: UtilityServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in srv.received]


async def fresh_server(
    pki_dir: Path, clock: FakeClock, *, preregistered: bool = True, pin: int | None = 111115
) -> UtilityServer:
    srv = new_server(pki_dir, clock, preregistered=preregistered, pin=pin)
    standard_preconditions(srv)
    return srv


async def test_all_01_discovery_with_out_of_band_registration(link: Harness) -> None:
    procedure("ALL-01", "GET-DCAP", "GET-EDEV-LIST", "GET-TM", "GET-DER")
    await link.run_for(1)
    srv = link.server
    dcap = first_time(srv, "GET", "/dcap")
    for path in ("/edev", "/tm", "/edev/1/der"):
        assert first_time(srv, "GET", path) >= dcap, f"{path} before /dcap"
    # already registered out of band: found by LFDI, not POSTed again
    assert requests(srv, "POST", "/edev") == []
    assert link.client.state().connected and link.client.state().acting


async def test_all_02_in_band_registration_posts_an_uppercase_end_device_and_reports_the_der(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-02", "GET-DCAP", "POST-EDEV", "GET-TM", "GET-DER")
    srv = await fresh_server(pki_dir, clock, preregistered=False)
    async with srv.running():
        link = Harness(srv, make_client(srv, clock, tmp_path), clock)
        await link.run_for(1)
        await link.close()
    order = methods_paths(srv)
    # the server has no /.well-known/csipaus (a v1.2 server need not): the configured /dcap
    assert order[:2] == [("GET", "/.well-known/csipaus"), ("GET", "/dcap")]
    post = order.index(("POST", "/edev"))
    assert ("GET", "/tm") in order
    assert ("GET", "/edev/1/der") in order[post:], "DER list not read after registering"
    sent = requests(srv, "POST", "/edev")[0].resource
    assert isinstance(sent, EndDevice)
    assert sent.lfdi == srv.pki.device_lfdi and sent.lfdi == sent.lfdi.upper()  # check_lfdi
    assert sent.sfdi == srv.pki.device_sfdi
    # der-capability-contents, der-settings-contents, der-status-contents
    assert isinstance(srv.der_reports.get("DERCapability"), DERCapability)
    assert isinstance(srv.der_reports.get("DERSettings"), DERSettings)
    assert isinstance(srv.der_reports.get("DERStatus"), DERStatus)


async def test_all_03_connection_point_is_put_with_the_nmi_after_in_band_registration(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-03", "GET-DCAP", "GET-TM", "POST-EDEV", "GET-DER", "PUT-CP")
    srv = await fresh_server(pki_dir, clock, preregistered=False)
    async with srv.running():
        link = Harness(srv, make_client(srv, clock, tmp_path), clock)
        await link.run_for(1)
        await link.close()
    order = methods_paths(srv)
    assert order.index(("PUT", "/edev/1/cp")) > order.index(("POST", "/edev"))
    cp = srv.der_reports.get("ConnectionPoint")
    assert isinstance(cp, ConnectionPoint) and cp.connection_point_id == NMI
    assert all(200 <= r.status < 300 for r in requests(srv, "PUT", "/edev/1/cp"))


async def test_all_03_rej_a_wrong_pin_stops_the_client_writing_and_acting(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-03-REJ", "GET-REGISTRATION", "WAIT-TEST-END")
    srv = await fresh_server(pki_dir, clock, pin=332211)
    srv.add_control(start=int(T0), duration=600, export_limit_w=100)
    async with srv.running():
        link = Harness(srv, make_client(srv, clock, tmp_path), clock)
        await link.run_for(1)
        assert requests(srv, "GET", "/edev/1/rg"), "Registration never read"
        await link.run_for(120)  # WAIT-TEST-END
        state = link.client.state()
        await link.close()
    assert not state.acting and link.client.active_controls() is None
    assert [r for r in srv.received if r.method != "GET"] == [], "wrote to a server with a bad PIN"
    # it goes no further than the Registration: no programs, no DER, no mirrors
    touched = {r.path for r in srv.received}
    assert touched <= {"/.well-known/csipaus", "/dcap", "/tm", "/edev", "/edev/1", "/edev/1/rg"}, (
        touched
    )


async def test_all_04_a_matching_pin_lets_the_client_carry_on(link: Harness) -> None:
    procedure("ALL-04", "GET-REGISTRATION", "WAIT-TEST-END")
    await link.run_for(1)
    assert requests(link.server, "GET", "/edev/1/rg")
    start = link.clock.t
    await link.run_for(120)
    srv = link.server
    assert link.client.state().acting
    # still communicating after the check: programs polled, reports written
    assert [r for r in requests(srv, "GET", "/derp/1/derc") if r.t > start]
    assert requests(srv, "PUT", DERS)


async def test_all_05_no_registration_link_still_registers_and_walks_on(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-05", "GET-DCAP", "GET-EDEV", "GET-TM", "POST-EDEV", "GET-FSA", "GET-DER")
    srv = await fresh_server(pki_dir, clock, preregistered=False, pin=None)  # no RegistrationLink
    async with srv.running():
        link = Harness(srv, make_client(srv, clock, tmp_path), clock)  # PIN 111115 configured
        await link.run_for(61)
        await link.close()
    order = methods_paths(srv)
    post = order.index(("POST", "/edev"))
    assert ("GET", "/edev/1/fsa") in order[post:], "FSA list never read: the client stopped"
    assert ("GET", "/edev/1/der") in order[post:], "DER list never read: the client stopped"


def count_readings(srv: UtilityServer, mrid: str, uom: int) -> int:
    """Readings (one per interval) of ``uom`` posted to the mirror ``mrid``."""
    total = 0
    for r in srv.readings:
        mmr = r.reading
        if r.mup_mrid != mrid or mmr.reading_type is None or mmr.reading_type.uom != uom:
            continue
        total += sum(len(s.readings) for s in mmr.mirror_reading_sets)
        total += mmr.reading is not None
    return total


async def test_all_06_individual_readings_at_least_six_of_each_in_eight_minutes(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-06", "POST-MUP", "GET-MUP-2", "SET-CONTROL", "WAIT-CONTROL")
    server.set_default(export_limit_w=200000, import_limit_w=200000, set_grad_w=27)
    link = Harness(server, make_client(server, clock, tmp_path), clock, sampler=typical_sample)
    await link.run_for(1)
    assert requests(server, "POST", "/mup"), "no MirrorUsagePoint created"
    start = clock.t
    control = server.add_control(start=int(clock.t), duration=300, export_limit_w=0)  # DERC1
    await link.run_for(300 + 180)
    await link.close()
    mups = mirrors(server)
    site, der = mups[0x03], mups[0x49]
    # readings-site-active-power, -reactive-power, readings-voltage, readings-der-active/reactive
    for mrid, uom, what in (
        (site, 38, "site W"),
        (site, 63, "site var"),
        (site, 29, "site V"),
        (der, 38, "DER W"),
        (der, 63, "DER var"),
    ):
        got = count_readings(server, mrid, uom)
        assert got >= 6, f"{what}: {got} readings in {clock.t - start:.0f} s, need 6"
    assert statuses(server, control) == [1, 2, 3]
    endpoints = ["/dcap", "/edev", "/edev/1/fsa", "/edev/1/der", "/edev/1/fsa/1/derp"]
    endpoints += ["/derp/1/dderc"]
    assert poll_problems(server, endpoints, 60, T0, clock.t) == []


async def test_all_06_mirror_usage_point_list_is_polled_at_its_poll_rate(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-06", "POST-MUP", "GET-MUP-2")
    server.set_default(export_limit_w=200000, import_limit_w=200000, set_grad_w=27)
    link = Harness(server, make_client(server, clock, tmp_path), clock, sampler=typical_sample)
    await link.run_for(480)
    await link.close()
    order = methods_paths(server)
    after_post = order[order.index(("POST", "/mup")) :]
    assert ("GET", "/mup") in after_post, "GET-MUP-2 (the list read again after the POST) never"
    assert poll_problems(server, ["/mup"], 60, T0, clock.t) == []


def last_status(srv: UtilityServer) -> DERStatus:
    status = requests(srv, "PUT", DERS)[-1].resource
    assert isinstance(status, DERStatus)
    return status


async def test_all_07_der_status_reports_disconnect_and_reconnect(link: Harness) -> None:
    procedure("ALL-07", "PUT-DERSTATUS-DISCONNECT", "PUT-DERSTATUS-CONNECT")
    await link.run_for(1)
    srv = link.server
    first = last_status(srv)
    assert first.gen_connect_status is not None and first.gen_connect_status.value & 1  # pre-check
    info = DerInfo(rated_w=RATED_W)
    for connected in (False, True):
        before = len(requests(srv, "PUT", DERS))
        link.client.update_der(replace(info, connected=connected))
        await link.run_for(1)
        assert len(requests(srv, "PUT", DERS)) == before + 1, "no DERStatus PUT on the change"
        status = last_status(srv)
        assert status.gen_connect_status is not None
        assert bool(status.gen_connect_status.value & 1) is connected


async def test_all_08_der_status_reports_the_operational_mode_changes(link: Harness) -> None:
    procedure("ALL-08", "PUT-DERSTATUS-DISCONNECT", "PUT-DERSTATUS-CONNECT")
    await link.run_for(1)
    srv = link.server
    first = last_status(srv)
    assert first.operational_mode_status is not None
    assert first.operational_mode_status.value == 2  # pre-check: operational
    info = DerInfo(rated_w=RATED_W)
    for operating in (False, True):
        before = len(requests(srv, "PUT", DERS))
        link.client.update_der(replace(info, operating=operating))
        await link.run_for(1)
        assert len(requests(srv, "PUT", DERS)) == before + 1
        status = last_status(srv)
        assert status.gen_connect_status is not None
        assert bool(status.gen_connect_status.value & 4) is operating  # bit 2: operating


async def test_all_09_capability_settings_and_status_are_put_after_the_der_list(
    link: Harness,
) -> None:
    procedure("ALL-09", "GET-DER", "PUT-DERSTATUS", "PUT-DERCAPABILITY", "PUT-DERSETTINGS")
    await link.run_for(1)
    srv = link.server
    der = first_time(srv, "GET", "/edev/1/der")
    for path in (DERS, "/edev/1/der/1/dercap", DERG):
        assert first_time(srv, "PUT", path) >= der
    cap = srv.der_reports["DERCapability"]
    assert isinstance(cap, DERCapability)
    assert cap.doe_modes_supported is not None and cap.rtg_max_w is not None
    assert cap.rtg_max_w.value * 10**cap.rtg_max_w.multiplier == RATED_W
    settings = srv.der_reports["DERSettings"]
    assert isinstance(settings, DERSettings)
    assert settings.set_max_w is not None and settings.doe_modes_enabled is not None


async def test_all_10_a_changed_post_rate_is_followed(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    procedure("ALL-10", "GET-MUP-INITIAL", "WAIT-TILL-UPDATE", "GET-MUP-UPDATED", "POST-MUP-1")
    standard_preconditions(server)
    link = Harness(server, make_client(server, clock, tmp_path), clock, sampler=typical_sample)
    await link.run_for(1)
    assert requests(server, "GET", "/mup")  # GET-MUP-INITIAL
    server.post_rate_s = 300
    changed = clock.t
    await link.run_for(600)  # WAIT-TILL-UPDATE
    assert [r for r in requests(server, "GET", "/mup") if r.t > changed], "GET-MUP-UPDATED"
    posts = [r.t for r in requests(server, "POST", "/mup/", prefix=True) if r.t > changed + 120]
    gaps = [b - a for a, b in itertools.pairwise(posts) if b - a > 1]
    assert gaps and min(gaps) >= 290, f"posting every {gaps} s, not every 300 s"
    await link.close()


async def test_all_11_energize_then_de_energize_controls_apply_in_turn(link: Harness) -> None:
    procedure("ALL-11", "WAIT-CONTROL-START", "PUT-DERSTATUS-DISCONNECT", "PUT-DERSTATUS-RECONNECT")
    srv = link.server
    on = srv.add_control(start=int(T0), duration=300, energize=True)
    off = srv.add_control(start=int(T0) + 300, duration=300, energize=False)
    await link.run_for(1)
    assert link.value(ControlType.ENERGIZE) is True
    await link.run_for(298)
    assert link.value(ControlType.ENERGIZE) is True
    await link.run_for(2)
    assert link.value(ControlType.ENERGIZE) is False, "de-energize not in force at its start"
    await link.run_for(300)
    assert link.value(ControlType.ENERGIZE) is None  # back to the default (no energize set)
    assert statuses(srv, on) == [1, 2, 3] and statuses(srv, off) == [1, 2, 3]


async def test_all_12_disconnect_control_created_on_derp_poll_applies_for_ten_minutes(
    link: Harness,
) -> None:
    procedure("ALL-12", "GET-DERC", "WAIT-CONTROL-START", "WAIT-CONTROL-END")
    await link.run_for(1)
    srv = link.server
    assert requests(srv, "GET", "/edev/1/fsa/1/derp")
    start = int(link.clock.t) + 300
    mrid = srv.add_control(start=start, duration=600, connect=False)
    await link.run_for(270)  # WAIT-CONTROL-START
    assert link.value(ControlType.CONNECT) is None
    assert statuses(srv, mrid) == [1]
    await link.run_for(start + 1 - link.clock.t)
    assert link.value(ControlType.CONNECT) is False
    await link.run_for(599)
    assert link.value(ControlType.CONNECT) is None
    assert statuses(srv, mrid) == [1, 2, 3]


async def test_all_13_derg_follows_the_default_set_grad_w_100_then_27(link: Harness) -> None:
    procedure(
        "ALL-13",
        "GET-DEFAULT-DERC-100",
        "PUT-DERSETTINGS-SET-GRAD-W-100",
        "GET-DEFAULT-DERC-27",
        "PUT-DERSETTINGS-SET-GRAD-W-27",
    )
    srv = link.server
    await link.run_for(1)
    for grad in (100, 27):
        seen = len(requests(srv, "GET", "/derp/1/dderc"))
        srv.set_default(export_limit_w=0, import_limit_w=0, set_grad_w=grad)

        def reread(seen: int = seen) -> bool:
            return len(requests(srv, "GET", "/derp/1/dderc")) > seen

        took = await link.run_until(reread, 90, "dderc re-read")
        assert took <= 61
        settings = requests(srv, "PUT", DERG)[-1].resource
        assert isinstance(settings, DERSettings) and settings.set_grad_w == grad
        assert requests(srv, "PUT", DERG)[-1].t >= requests(srv, "GET", "/derp/1/dderc")[-1].t


__all__ = ["MAX_EXPORT_W"]
