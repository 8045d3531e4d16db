"""The CSIP-AUS client end to end against the utility simulator, over real mutual TLS.

Both sides share a fake wall clock that the tests move by hand, and the tests drive the client
one `step()` at a time, so hour-long schedules take no time and nothing depends on timing.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from dynexport.sep2 import flow, schema
from dynexport.sep2.certs import make_test_pki
from dynexport.sep2.client import EMPTY_LISTING_RECHECK_S, ClientOptions, Sep2Client
from dynexport.sep2.controls import ControlType
from dynexport.sep2.flow import DerInfo, RegistrationOutcome
from dynexport.sep2.resources import (
    ConnectionPoint,
    DERCapability,
    DERSettings,
    DERStatus,
    EndDevice,
)
from dynexport.sep2.telemetry import Sample
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import NMI, T0, FakeClock, utility_config

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)


@pytest.fixture
async def server(pki_dir: Path, clock: FakeClock) -> AsyncIterator[UtilityServer]:
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    async with srv.running():
        yield srv


def make_client(
    srv: UtilityServer, clock: FakeClock, data_dir: Path | None, retries: int = 3, **config: object
) -> Sep2Client:
    return Sep2Client(
        utility_config(srv, **config),
        data_dir,
        der=DerInfo(rated_w=5000),
        clock=clock,
        options=ClientOptions(http_timeout=5.0, http_retries=retries),
    )


def statuses(srv: UtilityServer, mrid: str) -> list[int]:
    return [r.status for r in srv.responses if r.subject == mrid and r.status is not None]


def export_limit(client: Sep2Client) -> float | bool | None:
    active = client.active_controls()
    return None if active is None else active.value(ControlType.EXPORT_LIMIT_W)


async def test_walk_finds_the_scheduled_export_limit_and_reports_everything(
    server, clock, tmp_path
):
    mrid = server.add_control(start=int(T0) - 10, duration=600, export_limit_w=1500)
    server.set_default(export_limit_w=5000, set_grad_w=27)
    client = make_client(server, clock, tmp_path)
    await client.step()
    state = client.state()
    assert state.connected and state.acting
    assert state.registration is not None
    assert state.registration.outcome is RegistrationOutcome.OK
    assert state.active is not None
    assert state.active.value(ControlType.EXPORT_LIMIT_W) == 1500
    assert state.active.origin(ControlType.EXPORT_LIMIT_W) == f"event {mrid}"
    # the schedule runs out into the default within the next 24 h
    assert state.schedule[-1].controls.value(ControlType.EXPORT_LIMIT_W) == 5000
    # every body we sent validated against the XSD (the simulator answers 400 otherwise)
    writes = [r for r in server.received if r.method in ("PUT", "POST")]
    assert writes and all(200 <= r.status < 300 for r in writes), writes
    cp = server.der_reports["ConnectionPoint"]
    assert isinstance(cp, ConnectionPoint) and cp.connection_point_id == NMI
    cap = server.der_reports["DERCapability"]
    assert isinstance(cap, DERCapability) and cap.doe_modes_supported == 0x05
    settings = server.der_reports["DERSettings"]
    assert isinstance(settings, DERSettings) and settings.set_grad_w == 27
    assert "DERStatus" in server.der_reports
    assert statuses(server, mrid) == [1, 2]
    await client.http.aclose()


async def test_in_band_registration_posts_our_end_device(pki_dir, clock, tmp_path):
    srv = UtilityServer(pki_dir=pki_dir, clock=clock, preregistered=False)
    async with srv.running():
        client = make_client(srv, clock, tmp_path)
        await client.step()
        posts = [r for r in srv.requests_for("/edev") if r.method == "POST"]
        assert len(posts) == 1 and posts[0].status == 201
        sent = posts[0].resource
        assert isinstance(sent, EndDevice) and sent.lfdi == srv.pki.device_lfdi
        assert client.state().connected and client.state().acting
        await client.http.aclose()


async def test_each_resource_is_polled_at_its_poll_rate_not_more(server, clock, tmp_path):
    client = make_client(server, clock, tmp_path)
    await client.step()
    before = len(server.requests_for("/dcap"))
    clock.advance(30)
    await client.step()
    assert len(server.requests_for("/dcap")) == before  # 60 s poll rate not reached
    clock.advance(31)
    await client.step()
    assert len(server.requests_for("/dcap")) == before + 1
    assert len(server.requests_for("/derp/1/derc")) == 2
    await client.http.aclose()


async def test_responses_1_2_3_in_order_for_an_event_that_starts_and_ends(server, clock, tmp_path):
    mrid = server.add_control(start=int(T0) + 100, duration=100, export_limit_w=0)
    client = make_client(server, clock, tmp_path)
    await client.step()
    assert statuses(server, mrid) == [1]
    clock.advance(101)
    await client.step()
    assert statuses(server, mrid) == [1, 2]
    assert export_limit(client) == 0
    clock.advance(100)
    await client.step()
    assert statuses(server, mrid) == [1, 2, 3]
    assert export_limit(client) is None
    await client.http.aclose()


async def test_a_control_cancelled_on_the_server_gets_response_6(server, clock, tmp_path):
    mrid = server.add_control(start=int(T0) + 300, duration=300, export_limit_w=1000)
    client = make_client(server, clock, tmp_path)
    await client.step()
    server.cancel_control(mrid)
    clock.advance(61)
    await client.step()
    assert statuses(server, mrid) == [1, 6]
    clock.advance(300)
    await client.step()
    assert export_limit(client) is None
    await client.http.aclose()


async def test_a_control_that_vanishes_with_its_list_gets_response_6(server, clock, tmp_path):
    mrid = server.add_control(start=int(T0) + 300, duration=300, export_limit_w=1000)
    client = make_client(server, clock, tmp_path)
    await client.step()
    server.remove_control(mrid)
    clock.advance(61)
    await client.step()
    assert statuses(server, mrid) == [1], "one read is not believed (a glitch can lose it)"
    clock.advance(EMPTY_LISTING_RECHECK_S)
    await client.step()
    assert statuses(server, mrid) == [1, 6], "a fresh read agrees: cancelled"
    await client.http.aclose()


async def test_responses_survive_a_restart_without_duplicates(server, clock, tmp_path):
    mrid = server.add_control(start=int(T0) + 100, duration=100, export_limit_w=0)
    first = make_client(server, clock, tmp_path)
    await first.step()
    assert statuses(server, mrid) == [1]
    # "started" is due but the server refuses it, then the process dies
    server.inject_fault(path_prefix="/rsp", status=500, count=100)
    clock.advance(101)
    await first.step()
    assert statuses(server, mrid) == [1]
    assert first.state().pending_responses == 1
    await first.http.aclose()
    del first
    server.clear_faults()
    second = make_client(server, clock, tmp_path)
    assert second.state().pending_responses == 1  # loaded from disk
    await second.step()
    clock.advance(100)
    await second.step()
    await second.step()
    pairs = [(r.subject, r.status) for r in server.responses if r.subject == mrid]
    assert pairs == [(mrid, 1), (mrid, 2), (mrid, 3)]
    await second.http.aclose()


async def test_http_429_with_retry_after_is_honoured_without_blocking_the_step(
    server, clock, tmp_path
):
    server.inject_fault(path_prefix="/dcap", status=429, retry_after="40")
    client = make_client(server, clock, tmp_path)
    started = trio.current_time()
    wake = await client.step()
    assert trio.current_time() - started < 5  # not waited out inside the request
    assert [r.status for r in server.requests_for("/dcap")] == [429]
    assert not client.state().connected
    assert wake > clock()
    clock.advance(39)
    await client.step()
    assert [r.status for r in server.requests_for("/dcap")] == [429]  # not asked before then
    clock.advance(1)
    await client.step()
    assert [r.status for r in server.requests_for("/dcap")] == [429, 200]
    assert client.state().connected
    await client.http.aclose()


async def test_http_429_without_retry_after_backs_off_from_the_poll_rate(server, clock, tmp_path):
    client = make_client(server, clock, tmp_path)
    await client.step()  # a normal walk: the list's pollRate is known
    derc = "/derp/1/derc"
    asked = len(server.requests_for(derc))
    server.inject_fault(path_prefix=derc, status=429, count=10**6)
    rate = server.poll_rate_s
    times: list[float] = []
    for _ in range(int(8 * rate)):
        clock.advance(1)
        await client.step()
        times = [r.t for r in server.requests_for(derc)[asked:]]
    # the first 429 comes at the normal poll; then pollRate, 2 x, 4 x ... (not 1-4 s retries)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [rate, 2 * rate, 4 * rate], times
    server.clear_faults()
    clock.advance(8 * rate)
    await client.step()
    assert server.requests_for(derc)[-1].status == 200
    assert client.state().connected
    await client.http.aclose()


async def test_comms_loss_runs_the_stored_schedule_then_the_default(server, clock, tmp_path):
    server.add_control(start=int(T0) - 10, duration=300, export_limit_w=1500)
    server.set_default(export_limit_w=4000)
    online = make_client(server, clock, tmp_path)
    await online.step()
    assert export_limit(online) == 1500
    await online.http.aclose()
    # a reboot with the server unreachable: the stored schedule still applies
    offline = make_client(server, clock, tmp_path, retries=0, server="https://127.0.0.1:9")
    await offline.step()
    state = offline.state()
    assert not state.connected and state.last_error
    assert export_limit(offline) == 1500
    clock.advance(300)
    await offline.step()
    assert export_limit(offline) == 4000
    await offline.http.aclose()


async def test_wrong_serca_is_a_clear_tls_error_and_no_controls_apply(server, clock, tmp_path):
    server.add_control(start=int(T0) - 10, duration=300, export_limit_w=1500)
    other = make_test_pki(tmp_path / "other", now=datetime.now(UTC))
    client = make_client(server, clock, tmp_path / "data", ca=other.files["serca"])
    await client.step()
    state = client.state()
    assert not state.connected
    assert state.last_error is not None and "SERCA" in state.last_error
    assert client.active_controls() is None
    assert server.received == []  # the handshake failed: nothing reached the server
    await client.http.aclose()


async def test_pin_mismatch_stops_acting_and_sends_nothing(server, clock, tmp_path):
    server.add_control(start=int(T0) - 10, duration=300, export_limit_w=1500)
    client = make_client(server, clock, tmp_path, pin=222222)
    await client.step()
    state = client.state()
    assert not state.acting and state.active is None
    assert state.registration is not None
    assert state.registration.outcome is RegistrationOutcome.PIN_MISMATCH
    assert "mismatch" in state.registration.message
    assert [r for r in server.received if r.method != "GET"] == []
    await client.http.aclose()


async def test_a_configured_pin_without_a_registration_link_carries_on_with_a_warning(
    pki_dir, clock, tmp_path
):
    srv = UtilityServer(pki_dir=pki_dir, clock=clock, pin=None)  # no RegistrationLink
    srv.add_control(start=int(T0) - 10, duration=300, export_limit_w=1500)
    async with srv.running():
        client = make_client(srv, clock, tmp_path)  # PIN 111115 configured
        await client.step()
        await client.http.aclose()
    state = client.state()
    assert state.acting and export_limit(client) == 1500
    assert state.registration is not None
    assert state.registration.outcome is RegistrationOutcome.NOT_CHECKED
    assert state.registration.warning
    assert any("cannot be checked" in w for w in state.warnings), state.warnings
    assert [r for r in srv.received if r.method == "PUT" and r.path.endswith("/cp")]


async def test_telemetry_is_posted_at_the_post_rate_and_a_forgotten_mirror_recreated(
    server, clock, tmp_path
):
    client = make_client(server, clock, tmp_path)
    await client.step()

    def sample(t: float) -> Sample:
        values = {("site", "W"): -1500.0, ("site", "var"): 100.0, ("site", "V"): 240.1}
        values |= {("der", "W"): 3000.0, ("der", "var"): 0.0, ("der", "V"): 240.0}
        return Sample(t=t, values=values)

    for _ in range(13):  # two minutes of 10 s samples closes one 60 s interval at least
        client.add_sample(sample(clock()))
        clock.advance(10)
    await client.step()
    assert server.readings, "no readings posted"
    uoms = {r.reading.reading_type.uom for r in server.readings if r.reading.reading_type}
    assert uoms == {38, 63, 29}
    assert client.state().telemetry_backlog == 0
    # the server forgets the site mirror: the next post gets 404, then it is re-created
    site_url = client._telemetry.mup_urls["site"]
    server.inject_fault(path_prefix=site_url.split(server.url)[1], status=404, count=3)
    posted = len(server.readings)
    for _ in range(7):
        client.add_sample(sample(clock()))
        clock.advance(10)
    await client.step()
    assert client.state().telemetry_backlog > 0  # kept for later
    lookups = len([r for r in server.requests_for("/mup") if r.method == "GET"])
    server.clear_faults()
    clock.advance(120)
    await client.step()
    # the mirror was looked up again (and would have been POSTed had the list lost it)
    assert len([r for r in server.requests_for("/mup") if r.method == "GET"]) > lookups
    assert len(server.readings) > posted
    assert client.state().telemetry_backlog == 0
    await client.http.aclose()


def mirrored(srv: UtilityServer, role: str, lfdi: str) -> dict[tuple[int, int, int, int], int]:
    """What one of our mirrors received: (uom, dataQualifier, phase, interval start) → value."""
    mup_mrid = flow.mrid_for(lfdi, "mup", role)
    got: dict[tuple[int, int, int, int], int] = {}
    for received in srv.readings:
        rt = received.reading.reading_type
        if received.mup_mrid != mup_mrid or rt is None:
            continue
        for rs in received.reading.mirror_reading_sets:
            for reading in rs.readings:
                assert rt.uom is not None and rt.data_qualifier is not None
                assert rt.phase is not None and reading.value is not None
                got[(rt.uom, rt.data_qualifier, rt.phase, rs.time_period.start)] = reading.value
    return got


def site_and_der_sample(t: float, i: int) -> Sample:
    """Known values: site W -1000, -1100, ... (phases A/B/C a third each), DER W 3000 + 100 i."""
    w = -1000.0 - 100 * i
    values: dict[tuple[str, ...], float] = {
        ("site", "W"): w,
        ("site", "var"): 100.0 + i,
        ("site", "V"): 240.0 + i / 10,
        ("site", "Hz"): 50.0 + i / 100,
        ("der", "W"): 3000.0 + 100 * i,
        ("der", "var"): -50.0,
        ("der", "V"): 241.0,
        ("der", "Hz"): 50.0,
    }
    for phase, share in (("A", 0.5), ("B", 0.3), ("C", 0.2)):
        values[("site", "W", phase)] = w * share
    values[("site", "V", "B")] = 239.0
    return Sample(t=t, values=values)


async def test_mirrors_get_averages_min_max_hz_and_per_phase_in_one_post_each(
    server, clock, tmp_path
):
    client = make_client(server, clock, tmp_path)
    await client.step()  # walk, mirrors created; post rate 60 s, so 60 s intervals
    for i in range(6):  # one interval [T0, T0 + 60) of 10 s samples
        client.add_sample(site_and_der_sample(clock(), i))
        clock.advance(10)
    client.add_sample(site_and_der_sample(clock(), 0))  # closes it
    posts_before = len([r for r in server.requests_for("/mup/") if r.method == "POST"])
    await client.step()
    reading_posts = [r for r in server.requests_for("/mup/") if r.method == "POST"]
    assert len(reading_posts) - posts_before == 2  # one MirrorMeterReadingList per mirror
    posts = [r for r in server.requests_for("/mup") if r.method == "POST"]
    assert [(r.status, r.schema_error) for r in posts if r.status != 201] == []
    start = int(T0)
    site = mirrored(server, "site", client.lfdi)
    # W: samples -1000 ... -1500: mean -1250, min -1500, max -1000 (dataQualifier 2, 9, 8)
    assert [site[(38, q, 0, start)] for q in (2, 9, 8)] == [-1250, -1500, -1000]
    assert [site[(63, q, 0, start)] for q in (2, 9, 8)] == [102, 100, 105]  # 102.5 rounds even
    assert [site[(29, q, 0, start)] for q in (2, 9, 8)] == [2402, 2400, 2405]  # 0.1 V
    assert [site[(33, q, 0, start)] for q in (2, 9, 8)] == [5002, 5000, 5005]  # 0.01 Hz
    # per phase: PhaseCode A 128, B 64, C 32 for W; BN 65 for V
    assert [site[(38, 2, code, start)] for code in (128, 64, 32)] == [-625, -375, -250]
    assert [site[(38, q, 128, start)] for q in (9, 8)] == [-750, -500]
    assert [site[(29, q, 65, start)] for q in (2, 9, 8)] == [2390, 2390, 2390]
    der = mirrored(server, "der", client.lfdi)
    assert [der[(38, q, 0, start)] for q in (2, 9, 8)] == [3250, 3000, 3500]
    assert {(u, q) for u, q, ph, _ in der} == {(u, q) for u in (38, 63, 29, 33) for q in (2, 8, 9)}
    assert not any(ph for _, _, ph, _ in der)  # no per-phase DER values were sampled
    assert client.state().telemetry_backlog == 0
    await client.http.aclose()


async def test_a_server_without_reading_lists_gets_one_reading_per_post(server, clock, tmp_path):
    server.accept_reading_lists = False
    client = make_client(server, clock, tmp_path)
    await client.step()
    for i in range(7):
        client.add_sample(site_and_der_sample(clock(), i))
        clock.advance(10)
    await client.step()
    assert client.state().telemetry_backlog == 0
    assert client._telemetry.lists is False
    site = mirrored(server, "site", client.lfdi)
    assert [site[(38, q, 0, int(T0))] for q in (2, 9, 8)] == [-1250, -1500, -1000]
    refused = [r for r in server.requests_for("/mup/") if r.status == 400]
    assert len(refused) == 1  # asked once, then one MirrorMeterReading per POST
    await client.http.aclose()


async def test_a_forgotten_mirror_is_posted_again_and_no_buffered_reading_is_lost(
    server, clock, tmp_path
):
    client = make_client(server, clock, tmp_path)
    await client.step()
    for i in range(7):
        client.add_sample(site_and_der_sample(clock(), i))
        clock.advance(10)
    await client.step()  # [T0, T0 + 60) posted
    site_href = client._telemetry.mup_urls["site"].removeprefix(server.url)
    site_mrid = flow.mrid_for(client.lfdi, "mup", "site")
    assert server.mirror_hrefs(client.lfdi)[site_href] == site_mrid
    server.forget_mirror(site_href)
    for i in range(12):  # two more intervals, then the post that finds the mirror gone
        client.add_sample(site_and_der_sample(clock(), i))
        clock.advance(10)
    await client.step()
    assert [r.status for r in server.requests_for(site_href) if r.method == "POST"][-1] == 404
    assert client.state().telemetry_backlog > 0  # the site's readings are kept
    clock.advance(15)  # past the telemetry retry backoff
    await client.step()
    new_href = next(h for h, m in server.mirror_hrefs(client.lfdi).items() if m == site_mrid)
    assert new_href != site_href  # a new MirrorUsagePoint was POSTed ...
    posted = [r for r in server.requests_for("/mup") if r.method == "POST" and r.path == "/mup"]
    assert posted[-1].status == 201
    assert client.state().telemetry_backlog == 0  # ... and everything buffered delivered to it
    starts = {start for (uom, q, ph, start) in mirrored(server, "site", client.lfdi)}
    assert starts == {int(T0), int(T0) + 60, int(T0) + 120}
    after = [x for x in server.readings if x.mup == new_href and x.reading.mirror_reading_sets]
    assert {s.time_period.start for x in after for s in x.reading.mirror_reading_sets} == {
        int(T0) + 60,
        int(T0) + 120,
    }
    der_w = flow.mrid_for(client.lfdi, "mmr", "der", "W")  # the DER's average W series
    der_w_sets = [
        s.time_period.start
        for x in server.readings
        if x.reading.mrid == der_w
        for s in x.reading.mirror_reading_sets
    ]
    assert sorted(der_w_sets) == sorted(starts)  # the DER mirror: each interval exactly once
    await client.http.aclose()


async def test_readings_are_buffered_through_an_outage_bounded_and_sent_after(
    server, clock, tmp_path
):
    client = Sep2Client(
        utility_config(server),
        tmp_path,
        der=DerInfo(rated_w=5000),
        clock=clock,
        options=ClientOptions(http_timeout=5.0, http_retries=0, telemetry_capacity=12),
    )
    await client.step()
    server.inject_fault(path_prefix="", status=503, count=100_000)  # the utility is down
    for i in range(60):  # ten minutes: ten intervals of two readings (site W, DER W)
        client.add_sample(Sample(clock(), {("site", "W"): -100.0 * i, ("der", "W"): 10.0 * i}))
        clock.advance(10)
        if i % 6 == 5:
            await client.step()
    state = client.state()  # the last step closed the last interval (no sample needed)
    assert not state.connected
    assert state.telemetry_backlog == 12  # bounded: the oldest were dropped, and counted
    assert state.telemetry_dropped == 20 - 12
    assert client.store.load_outbox(12).pending == client.outbox.pending  # survives a restart
    server.clear_faults()
    for _ in range(5):
        clock.advance(300)
        await client.step()
        if not client.state().telemetry_backlog:
            break
    assert client.state().connected and client.state().telemetry_backlog == 0
    site = mirrored(server, "site", client.lfdi)
    sent_after = sorted(start for (_, q, _, start) in site if q == 2 and start > int(T0))
    assert sent_after == [int(T0) + 60 * k for k in range(4, 10)]  # the newest six intervals
    # interval k averaged samples 6k .. 6k + 5: site W -100 × (6k + 2.5)
    assert site[(38, 2, 0, int(T0) + 540)] == -5650
    await client.http.aclose()


async def test_a_failed_walk_is_retried_and_the_link_recovers(server, clock, tmp_path):
    server.inject_fault(path_prefix="/dcap", status=500)
    client = make_client(server, clock, tmp_path, retries=0)
    await client.step()
    assert not client.state().connected
    assert "HTTP 500" in (client.state().last_error or "")
    wake = await client.step()
    assert len(server.requests_for("/dcap")) == 1  # backing off, not hammering
    clock.t = wake
    await client.step()
    assert client.state().connected
    await client.http.aclose()


async def test_der_reports_are_put_again_when_the_der_changes(server, clock, tmp_path):
    client = make_client(server, clock, tmp_path)
    await client.step()
    puts = len([r for r in server.requests_for("/edev/1/der/1/ders") if r.method == "PUT"])
    await client.step()
    same = len([r for r in server.requests_for("/edev/1/der/1/ders") if r.method == "PUT"])
    assert same == puts  # nothing changed, poll rate not reached
    client.update_der(DerInfo(rated_w=5000, connected=False))
    await client.step()
    after = [r for r in server.requests_for("/edev/1/der/1/ders") if r.method == "PUT"]
    assert len(after) == puts + 1
    status = server.der_reports["DERStatus"]
    assert isinstance(status, DERStatus) and status.gen_connect_status is not None
    assert status.gen_connect_status.value & 1 == 0
    await client.http.aclose()
