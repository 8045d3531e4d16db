"""The client's pure decisions: poll timing, clock offset, registration, bodies, outcomes."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynexport.httpio.client import InvalidUrl, origin_of
from dynexport.sep2 import flow, schema
from dynexport.sep2.controls import ControlBase, DERControlEvent, ProgramControls, ResponseStatus
from dynexport.sep2.resources import (
    ConnectionPoint,
    EndDevice,
    MirrorMeterReading,
    Registration,
    parse_as,
    parse_end_device,
    to_xml,
)
from dynexport.sep2.responses import PendingResponse
from dynexport.sep2.schedule import ScheduleSnapshot
from dynexport.sep2.state import LinkStore
from dynexport.sep2.telemetry import IntervalReading, Outbox

LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
SFDI = 167261211391


def valid(body: bytes) -> None:
    if schema.schema_available():
        schema.validate(body)


# --- poll rates ------------------------------------------------------------------------------


def test_poll_rate_defaults_to_900_s_and_inherits_from_the_list():
    assert flow.poll_rate(None) == 900
    assert flow.poll_rate(None, 60) == 60
    assert flow.poll_rate(300, 60) == 300


def test_poll_rate_zero_is_floored_so_a_server_cannot_make_us_hammer_it():
    assert flow.poll_rate(0) == flow.MIN_POLL_S


def test_each_url_is_due_at_its_own_poll_rate():
    book = flow.PollBook()
    book.record("https://s/dcap", 1000.0, 900)
    book.record("https://s/edev/1/fsa", 1000.0, 60)
    assert not book.is_due("https://s/dcap", 1059.0)
    assert not book.is_due("https://s/edev/1/fsa", 1059.0)
    assert book.is_due("https://s/edev/1/fsa", 1060.0)
    assert not book.is_due("https://s/dcap", 1060.0)
    assert book.is_due("https://s/dcap", 1900.0)
    assert book.next_due() == 1060.0


def test_a_changed_href_is_due_at_once_and_the_old_one_is_forgotten():
    book = flow.PollBook()
    book.record("https://s/derp/1/derc", 1000.0, 300)
    assert book.is_due("https://s/derp/NEW/derc", 1001.0)  # never fetched: fetch now
    book.keep_only(["https://s/derp/NEW/derc"])
    assert "https://s/derp/1/derc" not in book.entries


# --- clock -----------------------------------------------------------------------------------


def test_clock_offset_is_server_minus_local_at_the_midpoint_of_the_exchange():
    assert flow.clock_offset(10_120, 10_000.0, 10_002.0) == 119
    assert flow.clock_offset(9_990, 10_000.0, 10_000.0) == -10


def test_clock_offset_beyond_60_s_warns_but_smaller_does_not():
    assert flow.clock_warning(60) is None
    warning = flow.clock_warning(-61)
    assert warning is not None and "-61 s" in warning


def test_a_server_time_before_2020_or_from_2100_is_refused():
    assert flow.server_time_problem(1_800_000_000) is None
    assert flow.server_time_problem(flow.SERVER_TIME_MIN) is None
    assert flow.server_time_problem(flow.SERVER_TIME_MAX - 1) is None
    for absurd in (2**63 - 1, -(2**63), 0, flow.SERVER_TIME_MIN - 1, flow.SERVER_TIME_MAX):
        problem = flow.server_time_problem(absurd)
        assert problem is not None and "keeping the last good clock offset" in problem


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**63), 2**63 - 1))
def test_only_a_server_time_within_2020_to_2100_is_ever_believed(server_time):
    believed = flow.server_time_problem(server_time) is None
    assert believed == (1_577_836_800 <= server_time < 4_102_444_800)


def test_server_time_anchored_on_the_monotonic_clock_is_the_midpoint():
    assert flow.server_anchor(1_800_000_100, 50.0, 52.0) == 1_800_000_049.0


def test_a_wall_clock_step_is_a_change_of_wall_minus_monotonic_beyond_5_s():
    assert flow.wall_clock_step(None, 1e9) is None  # the first look
    assert flow.wall_clock_step(1e9, 1e9 + 4.9) is None  # drift, slewing: not a step
    assert flow.wall_clock_step(1e9, 1e9 - 7200) == -7200
    assert flow.wall_clock_step(1e9, 1e9 + 6) == 6


# --- URLs ------------------------------------------------------------------------------------

SERVER = "https://10.0.0.5:8443/dcap"


def test_hrefs_resolve_against_their_resource_on_the_servers_origin():
    assert flow.resolve_url(SERVER, "/edev/1", SERVER) == "https://10.0.0.5:8443/edev/1"
    assert flow.resolve_url("https://10.0.0.5:8443/edev/1", "rg", SERVER).endswith("/edev/rg")
    assert flow.resolve_url(SERVER, "HTTPS://10.0.0.5:8443/x", SERVER).endswith(":8443/x")


@pytest.mark.parametrize(
    "href",
    [
        "https://10.0.0.6:8443/rsp",  # another host
        "https://10.0.0.5:443/rsp",  # another port
        "http://10.0.0.5:8443/rsp",  # another scheme
        "//evil.example/rsp",  # scheme-relative
        "http://[::1/rsp",  # urllib cannot parse it
        "https://10.0.0.5:99999/rsp",  # no such port
        "/rsp with spaces",
        "/r\u00e9ponse",
        "file:///etc/passwd",
    ],
)
def test_hrefs_on_another_origin_or_unparseable_are_refused(href):
    with pytest.raises(InvalidUrl):
        flow.resolve_url(SERVER, href, SERVER)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
@example("http://[::1/rsp")
@example("https://10.0.0.5:8443@evil.example/x")
def test_any_href_resolves_on_the_servers_origin_or_is_refused(href):
    """The safety rule: nothing the server writes makes the link talk to another origin, and
    nothing but `InvalidUrl` comes out of resolving it."""
    try:
        url = flow.resolve_url(SERVER, href, SERVER)
    except InvalidUrl:
        return
    assert origin_of(url) == ("https", "10.0.0.5", 8443)


def test_clock_offset_is_applied_to_schedule_decisions():
    event = DERControlEvent(
        mrid="AA", creation_time=0, start=2000, duration=100,
        base=ControlBase(export_limit_w=1500.0), primacy=1,
    )  # fmt: skip
    program = ProgramControls(href="/derp/1", primacy=1, events=(event,))
    snap = ScheduleSnapshot(programs=(program,), fetched_at=0, clock_offset=1000)
    # local 1050 s is server 2050 s: inside the event; local 2050 s is after it
    assert snap.active_controls(1050.0, "seed").as_base().export_limit_w == 1500.0
    assert snap.active_controls(2050.0, "seed").as_base().export_limit_w is None


# --- EndDevice and registration ----------------------------------------------------------------


def test_own_end_device_is_found_by_lfdi_whatever_its_case():
    other = EndDevice(sfdi=1, changed_time=0, lfdi="AB" * 20, href="/edev/1")
    ours = EndDevice(sfdi=SFDI, changed_time=0, lfdi=LFDI, href="/edev/2")
    assert flow.find_end_device([other, ours], LFDI.lower()) == ours
    assert flow.find_end_device([other], LFDI) is None


def test_own_end_device_is_found_by_sfdi_when_the_server_lists_no_lfdi():
    ours = EndDevice(sfdi=SFDI, changed_time=0, href="/edev/7")
    assert flow.find_end_device([ours], LFDI) == ours


def test_new_end_device_has_uppercase_lfdi_its_sfdi_and_hex_device_category():
    device = flow.new_end_device(LFDI.lower(), 1_700_000_000)
    body = to_xml(device)
    assert LFDI.encode() in body
    assert f"<sFDI>{SFDI}</sFDI>".encode() in body
    assert b"<deviceCategory>200000</deviceCategory>" in body
    assert parse_end_device(body).lfdi == LFDI
    valid(body)


def test_registration_with_matching_pin_acts():
    check = flow.check_registration(Registration(0, 111115), 111115)
    assert check.outcome is flow.RegistrationOutcome.OK and check.acting


def test_registration_pin_mismatch_is_a_clear_error_and_stops_acting():
    check = flow.check_registration(Registration(0, 123456), 111115)
    assert check.outcome is flow.RegistrationOutcome.PIN_MISMATCH
    assert not check.acting
    assert "123456" in check.message and "111115" in check.message


def test_configured_pin_without_a_registration_carries_on_with_a_warning():
    # CSIP-AUS ALL-05: no RegistrationLink is not a refusal; only a differing PIN is
    check = flow.check_registration(None, 111115)
    assert check.outcome is flow.RegistrationOutcome.NOT_CHECKED and check.acting
    assert check.warning and "111115" in check.message and "cannot be checked" in check.message
    assert not flow.check_registration(Registration(0, 111115), 111115).warning
    assert flow.check_registration(Registration(0, 123456), 111115).outcome is (
        flow.RegistrationOutcome.PIN_MISMATCH
    )


def test_without_a_configured_pin_the_registration_is_not_checked_and_controls_apply():
    assert flow.check_registration(Registration(0, 5), None).acting
    assert flow.check_registration(None, None).acting


def test_connection_point_is_put_once_per_start_then_only_when_it_differs():
    first = flow.connection_point_update(ConnectionPoint("4312345678"), "4312345678",
                                         already_put=False)  # fmt: skip
    assert first == ConnectionPoint("4312345678")
    same = ConnectionPoint("4312345678")
    assert flow.connection_point_update(same, "4312345678", already_put=True) is None
    changed = flow.connection_point_update(ConnectionPoint("999"), "4312345678", already_put=True)
    assert changed is not None and changed.connection_point_id == "4312345678"
    valid(to_xml(first))


# --- DER reports -------------------------------------------------------------------------------


def test_der_capability_advertises_export_and_generation_limits_only_by_default():
    body = to_xml(flow.der_capability(flow.DerInfo(rated_w=5000)))
    assert b"<csipaus:doeModesSupported>05</csipaus:doeModesSupported>" in body
    assert b"<rtgMaxW><multiplier>0</multiplier><value>5000</value></rtgMaxW>" in body
    valid(body)


def test_der_capability_advertises_what_the_caller_enforces():
    info = flow.DerInfo(
        rated_w=10000,
        doe_modes_supported=flow.DOE_EXPORT,
        modes_supported=flow.MODE_CONNECT | flow.MODE_ENERGIZE,
    )
    body = to_xml(flow.der_capability(info))
    assert b"<csipaus:doeModesSupported>01</csipaus:doeModesSupported>" in body
    assert b"<modesSupported>0C</modesSupported>" in body
    valid(body)


def test_der_settings_set_grad_w_reflects_the_servers_default_control():
    info = flow.DerInfo(rated_w=5000, set_grad_w=100)
    assert flow.der_settings(info, 27, 1).set_grad_w == 27
    assert flow.der_settings(info, None, 1).set_grad_w == 100
    valid(to_xml(flow.der_settings(info, 27, 1_700_000_000)))


def test_der_status_reports_connect_bits_and_operational_mode():
    status = flow.der_status(flow.DerInfo(rated_w=5000, operating=False), 1_700_000_000)
    assert status.gen_connect_status is not None and status.gen_connect_status.value == 0b011
    assert status.operational_mode_status is not None
    assert status.operational_mode_status.value == 2
    valid(to_xml(status))


def test_der_reports_are_due_at_start_on_change_and_at_the_der_list_poll_rate():
    info = flow.DerInfo(rated_w=5000)
    key = flow.der_report_key(info, 27)
    assert flow.der_reports_due(None, None, key, 0.0, 300)
    assert not flow.der_reports_due(key, 0.0, key, 299.0, 300)
    assert flow.der_reports_due(key, 0.0, key, 300.0, 300)
    changed = flow.der_report_key(flow.DerInfo(rated_w=5000, connected=False), 27)
    assert flow.der_reports_due(key, 0.0, changed, 1.0, 300)
    assert flow.der_reports_due(key, 0.0, flow.der_report_key(info, 50), 1.0, 300)


# --- telemetry -------------------------------------------------------------------------------


def test_site_and_der_mirror_usage_points_have_role_flags_03_and_49():
    site = to_xml(flow.mirror_usage_point(LFDI, "site", 300))
    der = to_xml(flow.mirror_usage_point(LFDI, "der", 300, ("W", "var", "V", "Hz")))
    assert b"<roleFlags>03</roleFlags>" in site
    assert b"<roleFlags>49</roleFlags>" in der
    for uom in (38, 63, 29):
        assert f"<uom>{uom}</uom>".encode() in site
    assert b"<uom>33</uom>" in der and b"<uom>33</uom>" not in site
    assert b"<kind>37</kind>" in site and b"<dataQualifier>2</dataQualifier>" in site
    valid(site)
    valid(der)


def test_mirror_mrids_are_stable_and_distinct_per_role():
    a = flow.mirror_usage_point(LFDI, "site", 300)
    assert a.mrid == flow.mirror_usage_point(LFDI, "site", 60).mrid
    assert a.mrid != flow.mirror_usage_point(LFDI, "der", 300).mrid


def _by_type(
    mmrs: Iterable[MirrorMeterReading],
) -> dict[tuple[int | None, int | None, int | None], MirrorMeterReading]:
    """(uom, dataQualifier, phase) → MirrorMeterReading."""
    out = {}
    for m in mmrs:
        rt = m.reading_type
        assert rt is not None
        key = (rt.uom, rt.data_qualifier, rt.phase)
        assert key not in out, key
        out[key] = m
    return out


def test_buffered_readings_go_in_one_reading_set_per_interval():
    readings = [
        IntervalReading("site", "W", 600, 300, -1520.4, -1600, -1400, 60),
        IntervalReading("site", "W", 300, 300, -1000.0, -1100, -900, 60),
        IntervalReading("site", "V", 300, 300, 241.27, 240, 242, 60),
        IntervalReading("der", "W", 300, 300, 3000.0, 2900, 3100, 60),
    ]
    mmrs = flow.meter_readings(LFDI, "site", readings)
    by_type = _by_type(mmrs)
    assert {uom for uom, _, _ in by_type} == {38, 29}
    w = by_type[(38, 2, 0)]
    assert [s.time_period.start for s in w.mirror_reading_sets] == [300, 600]
    assert [s.readings[0].value for s in w.mirror_reading_sets] == [-1000, -1520]
    assert by_type[(29, 2, 0)].mirror_reading_sets[0].readings[0].value == 2413  # 0.1 V
    for mmr in mmrs:
        valid(to_xml(mmr))


def test_min_and_max_are_their_own_mirror_meter_readings_with_qualifiers_9_and_8():
    readings = [
        IntervalReading("site", "W", 300, 300, -1000.0, -1100.4, -899.6, 60),
        IntervalReading("site", "Hz", 300, 300, 50.012, 49.95, 50.07, 60),
    ]
    mmrs = flow.meter_readings(LFDI, "site", readings)
    by_type = _by_type(mmrs)
    assert set(by_type) == {(38, q, 0) for q in (2, 8, 9)} | {(33, q, 0) for q in (2, 8, 9)}
    value = {k: m.mirror_reading_sets[0].readings[0].value for k, m in by_type.items()}
    assert (value[(38, 2, 0)], value[(38, 9, 0)], value[(38, 8, 0)]) == (-1000, -1100, -900)
    assert (value[(33, 2, 0)], value[(33, 9, 0)], value[(33, 8, 0)]) == (5001, 4995, 5007)
    assert len({m.mrid for m in mmrs}) == 6  # each series its own mRID
    sets = [s.mrid for m in mmrs for s in m.mirror_reading_sets]
    assert len(set(sets)) == len(sets)
    # the total's average keeps the mRID it always had (servers already know it)
    assert by_type[(38, 2, 0)].mrid == flow.mrid_for(LFDI, "mmr", "site", "W")
    averages_only = flow.meter_readings(LFDI, "site", readings, min_max=False)
    assert averages_only == [by_type[(33, 2, 0)], by_type[(38, 2, 0)]]
    body = to_xml(flow.meter_reading_list(mmrs))
    assert body.count(b"<MirrorMeterReading>") == 6
    valid(body)


def test_per_phase_readings_use_phase_codes_a_b_c_and_an_bn_cn_for_voltage():
    readings = [
        IntervalReading("site", q, 300, 300, v, v, v, 60, phase=ph)
        for q, v in (("W", 500.0), ("var", 10.0), ("V", 240.0))
        for ph in ("A", "B", "C")
    ] + [
        IntervalReading("site", "Hz", 300, 300, 50.0, 50.0, 50.0, 60, phase="A"),  # no per-phase Hz
        IntervalReading("site", "W", 300, 300, 500.0, 500.0, 500.0, 60, phase="N"),  # unknown
    ]
    by_type = _by_type(flow.meter_readings(LFDI, "site", readings, min_max=False))
    # sep.xsd PhaseCode: 128 Phase A, 64 Phase B, 32 Phase C; 129 AN, 65 BN, 33 CN
    assert set(by_type) == {
        (38, 2, 128),
        (38, 2, 64),
        (38, 2, 32),
        (63, 2, 128),
        (63, 2, 64),
        (63, 2, 32),
        (29, 2, 129),
        (29, 2, 65),
        (29, 2, 33),
    }
    assert by_type[(29, 2, 65)].mirror_reading_sets[0].readings[0].value == 2400
    assert len({m.mrid for m in by_type.values()}) == 9
    valid(to_xml(flow.meter_reading_list(list(by_type.values()))))


def test_mirror_usage_point_declares_average_min_and_max_of_each_quantity():
    mup = flow.mirror_usage_point(LFDI, "site", 60, ("W", "var", "V", "Hz"))
    by_type = _by_type(mup.mirror_meter_readings)
    assert set(by_type) == {(u, q, 0) for u in (38, 63, 29, 33) for q in (2, 8, 9)}
    # the same mRIDs the readings are posted under
    posted = flow.meter_readings(
        LFDI, "site", [IntervalReading("site", "Hz", 0, 60, 50.0, 49.9, 50.1, 12)]
    )
    assert {m.mrid for m in posted} == {by_type[(33, q, 0)].mrid for q in (2, 8, 9)}
    plain = flow.mirror_usage_point(LFDI, "site", 60, min_max=False)
    qualifiers = {
        m.reading_type.data_qualifier for m in plain.mirror_meter_readings if m.reading_type
    }
    assert qualifiers == {2}
    valid(to_xml(mup))


def test_interval_follows_the_post_rate_when_it_divides_a_day():
    assert flow.interval_for(60) == 60
    assert flow.interval_for(300) == 300
    assert flow.interval_for(7) == 300
    assert flow.post_rate(None, None) == 300
    assert flow.post_rate(60, 300) == 60


# --- responses -------------------------------------------------------------------------------


def test_response_body_names_our_lfdi_the_subject_and_the_status():
    body = to_xml(
        flow.response_body(PendingResponse("0A" * 16, ResponseStatus.STARTED, "/rsp", 100), LFDI)
    )
    assert b"<status>2</status>" in body and ("0A" * 16).encode() in body
    assert LFDI.encode() in body
    valid(body)


def test_response_status_outcomes():
    assert flow.send_outcome(201, 1) is flow.SendOutcome.SENT
    assert flow.send_outcome(204, 1) is flow.SendOutcome.SENT
    assert flow.send_outcome(429, 50) is flow.SendOutcome.RETRY
    assert flow.send_outcome(503, 50) is flow.SendOutcome.RETRY
    assert flow.send_outcome(404, 1) is flow.SendOutcome.RETRY
    assert flow.send_outcome(404, 3) is flow.SendOutcome.DROP


def test_response_retry_backs_off_up_to_a_cap():
    delays = [flow.retry_delay(n) for n in range(1, 10)]
    assert delays == sorted(delays) and delays[-1] == 300.0 and delays[0] == 5.0


def test_programs_listed_by_two_fsas_count_once():
    p = ProgramControls(href="https://s/derp/1", primacy=1)
    q = ProgramControls(href="https://s/derp/2", primacy=2)
    assert flow.merge_programs([p, q, p]) == (p, q)


# --- persistence -------------------------------------------------------------------------------


def test_store_round_trips_schedule_responses_and_outbox(tmp_path):
    store = LinkStore(tmp_path)
    snap = ScheduleSnapshot(programs=(ProgramControls(href="x", primacy=1),), fetched_at=5)
    store.save_schedule(snap)
    box = Outbox()
    box.extend(
        [
            IntervalReading("site", "W", 0, 60, 1.0, 1.0, 1.0, 1),
            IntervalReading("site", "V", 0, 60, 240.0, 239.0, 241.0, 1, phase="B"),
        ]
    )
    store.save_outbox(box)
    again = LinkStore(tmp_path)
    assert again.load_schedule() == snap
    assert list(again.load_outbox().pending) == list(box.pending)
    assert again.load_responses().pending == ()


def test_a_corrupt_state_file_is_set_aside_and_the_link_starts_empty(tmp_path):
    (tmp_path / "schedule.json").write_text("{not json")
    (tmp_path / "responses.json").write_text("[]")
    store = LinkStore(tmp_path)
    assert store.load_schedule() is None
    assert store.load_responses().pending == ()
    assert [p.read_text() for p in tmp_path.glob("schedule.json.*.corrupt")] == ["{not json"]


def test_parse_round_trip_of_a_built_body():
    device = flow.new_end_device(LFDI, 5)
    assert parse_as(EndDevice, to_xml(device)) == device


def test_throttle_delay_starts_at_the_poll_rate_and_doubles_up_to_a_cap():
    assert [flow.throttle_delay(60, n) for n in range(6)] == [60, 120, 240, 480, 900, 900]
    assert flow.throttle_delay(3600, 3) == 3600  # a pollRate above the cap is never shortened


@pytest.mark.parametrize(
    ("reply_to", "resolved"),
    [
        ("rsp", "/derp/1/rsp"),
        ("../rsp?x=1", "/derp/rsp?x=1"),
        ("./r/2", "/derp/1/r/2"),
        ("rsp?next=a:b", "/derp/1/rsp?next=a:b"),  # a colon that is no scheme's
        ("r;v=1:2", "/derp/1/r;v=1:2"),
        ("/rsp", "/rsp"),  # absolute paths and URLs are the sender's to check
        ("https://127.0.0.2:1/rsp", "https://127.0.0.2:1/rsp"),
        ("http://[::1/rsp", "http://[::1/rsp"),
        ("", ""),
        (None, None),
    ],
)
def test_anchored_reply_to(reply_to: str | None, resolved: str | None) -> None:
    assert flow.anchored_reply_to(reply_to, "https://127.0.0.1:8443/derp/1/derc") == resolved
