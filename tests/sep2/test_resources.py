"""Parsing of what the client reads, conversion to the scheduler's data, and the pure helpers."""

from __future__ import annotations

import pytest

from dynexport.sep2 import resources as r
from dynexport.sep2.controls import ControlBase, ControlType, EventStatus
from dynexport.sep2.xml import Sep2ParseError, next_page_start, page_query, resolve_href

IEEE = 'xmlns="urn:ieee:std:2030.5:ns"'
CSIP = 'xmlns:csipaus="https://csipaus.org/ns"'
CSIP13 = 'xmlns:c13="https://csipaus.org/ns/v1.3"'

DCAP = f"""<DeviceCapability {IEEE} href="/dcap" pollRate="300">
  <TimeLink href="/tm"/>
  <EndDeviceListLink all="1" href="/edev"/>
  <MirrorUsagePointListLink all="0" href="/mup"/>
</DeviceCapability>"""

DERC_LIST = f"""<DERControlList {IEEE} {CSIP} href="/derp/1/derc" all="7" results="2"
  subscribable="1">
  <DERControl href="/derp/1/derc/1" replyTo="/rsp" responseRequired="03">
    <mRID>a1b2c3d4e5f60718293a4b5c6d7e8f90</mRID>
    <description>evening cap</description>
    <creationTime>1700000000</creationTime>
    <EventStatus><currentStatus>1</currentStatus><dateTime>1700000001</dateTime>
      <potentiallySuperseded>false</potentiallySuperseded></EventStatus>
    <interval><duration>1800</duration><start>1700003600</start></interval>
    <randomizeStart>-30</randomizeStart>
    <randomizeDuration>60</randomizeDuration>
    <DERControlBase>
      <opModConnect>1</opModConnect>
      <opModMaxLimW>5050</opModMaxLimW>
      <rampTms>250</rampTms>
      <csipaus:opModExpLimW><multiplier>3</multiplier><value>5</value></csipaus:opModExpLimW>
      <csipaus:opModImpLimW><multiplier>-1</multiplier><value>12345</value></csipaus:opModImpLimW>
    </DERControlBase>
  </DERControl>
  <DERControl href="/derp/1/derc/2">
    <mRID>00000000000000000000000000000002</mRID>
    <creationTime>1700000005</creationTime>
    <EventStatus><currentStatus>4</currentStatus><dateTime>1700000006</dateTime>
      <potentiallySuperseded>true</potentiallySuperseded></EventStatus>
    <interval><duration>300</duration><start>1700007200</start></interval>
    <DERControlBase><opModEnergize>false</opModEnergize>
      <csipaus:opModGenLimW><multiplier>0</multiplier><value>-5</value></csipaus:opModGenLimW>
      <csipaus:opModLoadLimW><multiplier>0</multiplier><value>700</value></csipaus:opModLoadLimW>
    </DERControlBase>
  </DERControl>
</DERControlList>"""

DDERC = f"""<DefaultDERControl {IEEE} {CSIP} href="/derp/1/dderc">
  <mRID>0AEF</mRID>
  <DERControlBase>
    <csipaus:opModImpLimW><multiplier>0</multiplier><value>0</value></csipaus:opModImpLimW>
    <csipaus:opModExpLimW><multiplier>0</multiplier><value>0</value></csipaus:opModExpLimW>
  </DERControlBase>
  <setESDelay>300</setESDelay>
  <setESRandomDelay>120</setESRandomDelay>
  <setGradW>27</setGradW>
</DefaultDERControl>"""

DERP = f"""<DERProgram {IEEE} href="/derp/1">
  <mRID>C7170E2F587E43EE98E51043FECDBA09</mRID>
  <description>Program 1</description>
  <ActiveDERControlListLink all="1" href="/derp/1/actderc"/>
  <DefaultDERControlLink href="/derp/1/dderc"/>
  <DERControlListLink all="7" href="/derp/1/derc"/>
  <primacy>3</primacy>
</DERProgram>"""


def test_device_capability_links_and_poll_rate_are_read():
    dcap = r.parse_device_capability(DCAP.encode())
    assert dcap.poll_rate == 300
    assert dcap.time_link == r.Link("/tm")
    assert dcap.end_device_list_link == r.ListLink("/edev", 1)
    assert dcap.mirror_usage_point_list_link == r.ListLink("/mup", 0)
    assert dcap.self_device_link is None


def test_time_reads_signed_offsets():
    body = f"""<Time {IEEE} pollRate="900"><currentTime>1700000000</currentTime>
      <dstEndTime>1</dstEndTime><dstOffset>3600</dstOffset><dstStartTime>2</dstStartTime>
      <quality>7</quality><tzOffset>-25200</tzOffset></Time>"""
    tm = r.parse_time(body.encode())
    assert (tm.current_time, tm.tz_offset, tm.dst_offset, tm.quality) == (
        1700000000,
        -25200,
        3600,
        7,
    )
    assert tm.local_time is None
    assert tm.poll_rate == 900


def test_der_control_power_is_value_times_ten_to_the_multiplier():
    derc = r.parse_der_control_list(DERC_LIST.encode())
    base = derc.items[0].base
    assert base.export_limit_w == 5000.0
    assert base.import_limit_w == pytest.approx(1234.5)
    assert derc.items[1].base.generation_limit_w == -5.0
    assert derc.items[1].base.load_limit_w == 700.0


def test_der_control_percent_ramp_and_booleans():
    derc = r.parse_der_control_list(DERC_LIST.encode())
    base = derc.items[0].base
    # opModMaxLimW is a PerCent: hundredths of a percent on the wire (5050 = 50.5 %).
    assert base.max_limit_pct == pytest.approx(50.5)
    # rampTms stays in hundredths of a second, as the shared ControlBase documents.
    assert base.ramp_tms == 250
    assert base.connect is True
    assert derc.items[1].base.energize is False
    assert derc.items[1].base.types() == {
        ControlType.ENERGIZE,
        ControlType.GENERATION_LIMIT_W,
        ControlType.LOAD_LIMIT_W,
    }


def test_der_control_list_paging_attributes_and_event_fields():
    derc = r.parse_der_control_list(DERC_LIST.encode())
    assert (derc.all, derc.results, derc.subscribable, derc.href) == (7, 2, 1, "/derp/1/derc")
    first = derc.items[0]
    assert first.mrid == "A1B2C3D4E5F60718293A4B5C6D7E8F90"  # uppercased
    assert first.response_required == 0x03
    assert first.reply_to == "/rsp"
    assert first.interval == r.DateTimeInterval(start=1700003600, duration=1800)
    assert first.randomize_start == -30
    assert first.event_status.current_status is EventStatus.ACTIVE
    assert derc.items[1].event_status.current_status is EventStatus.SUPERSEDED
    assert derc.items[1].event_status.potentially_superseded is True
    assert derc.next_start(0) == 2


def test_der_control_becomes_scheduler_event_with_program_primacy():
    program = r.parse_der_program(DERP.encode())
    derc = r.parse_der_control_list(DERC_LIST.encode())
    event = r.der_control_event(derc.items[0], program, "https://u.example/derp/1")
    assert event.primacy == 3
    assert event.program_href == "https://u.example/derp/1"
    assert (event.start, event.duration, event.end) == (1700003600, 1800, 1700005400)
    assert event.creation_time == 1700000000
    assert event.status is EventStatus.ACTIVE
    assert (event.randomize_start, event.randomize_duration) == (-30, 60)
    assert event.response_required == 3
    assert event.reply_to == "/rsp"
    assert event.base.export_limit_w == 5000.0
    second = r.der_control_event(derc.items[1], program)
    assert second.program_href == "/derp/1"
    assert second.randomize_start == 0 and second.response_required == 0


def test_default_der_control_becomes_default_control():
    program = r.parse_der_program(DERP.encode())
    dderc = r.parse_default_der_control(DDERC.encode())
    assert dderc.mrid == "0AEF"
    default = r.default_control(dderc, program)
    assert default.base == ControlBase(export_limit_w=0.0, import_limit_w=0.0)
    assert (default.set_grad_w, default.es_delay, default.es_randomize) == (27, 300, 120)
    assert default.primacy == 3


def test_program_controls_collects_events_and_default():
    program = r.parse_der_program(DERP.encode())
    derc = r.parse_der_control_list(DERC_LIST.encode())
    dderc = r.parse_default_der_control(DDERC.encode())
    pc = r.program_controls(program, derc.items, dderc)
    assert pc.href == "/derp/1" and pc.primacy == 3
    assert [e.mrid for e in pc.events] == [c.mrid for c in derc.items]
    assert all(e.primacy == 3 for e in pc.events)
    assert pc.default is not None and pc.default.set_grad_w == 27
    assert program.active_der_control_list_link == r.ListLink("/derp/1/actderc", 1)
    assert program.default_der_control_link == r.Link("/derp/1/dderc")


def test_csipaus_v13_namespace_is_accepted_on_input():
    body = DDERC.replace(CSIP, CSIP13).replace("csipaus:", "c13:")
    dderc = r.parse_default_der_control(body.encode())
    assert dderc.base.export_limit_w == 0.0 and dderc.base.import_limit_w == 0.0
    # and written back in the 1.2 namespace
    assert b"https://csipaus.org/ns/v1.3" not in r.to_xml(dderc)
    assert b'xmlns:csipaus="https://csipaus.org/ns"' in r.to_xml(dderc)


def test_end_device_hex_fields_and_connection_point_link():
    body = f"""<EndDeviceList {IEEE} {CSIP} all="1" results="1" pollRate="60">
      <EndDevice href="/edev/3">
        <DERListLink all="1" href="/edev/3/der"/>
        <deviceCategory>0c</deviceCategory>
        <lFDI>3e4f45ab31edfe5b67e343e5e4562e31984e23e5</lFDI>
        <sFDI>016726121139</sFDI><changedTime>5</changedTime><enabled>true</enabled>
        <FunctionSetAssignmentsListLink all="2" href="fsa"/>
        <postRate>60</postRate>
        <RegistrationLink href="/edev/3/rg"/>
        <csipaus:ConnectionPointLink href="/edev/3/cp"/>
      </EndDevice></EndDeviceList>"""
    edevs = r.parse_end_device_list(body.encode())
    assert edevs.poll_rate == 60
    edev = edevs.items[0]
    assert edev.lfdi == "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
    assert edev.sfdi == 16726121139
    assert edev.device_category == 0x0C
    assert edev.enabled is True and edev.post_rate == 60
    assert edev.connection_point_link == r.Link("/edev/3/cp")
    assert edev.function_set_assignments_list_link == r.ListLink("fsa", 2)


def test_end_device_written_with_uppercase_lfdi_decimal_sfdi_and_hex_category():
    edev = r.EndDevice(
        sfdi=16726121139,
        changed_time=1700000000,
        lfdi="3e4f45ab31edfe5b67e343e5e4562e31984e23e5",
        device_category=0x20000,
    )
    out = r.to_xml(edev)
    assert b"<lFDI>3E4F45AB31EDFE5B67E343E5E4562E31984E23E5</lFDI>" in out
    assert b"<sFDI>16726121139</sFDI>" in out
    assert b"<deviceCategory>020000</deviceCategory>" in out


def test_writing_a_non_hex_lfdi_is_refused():
    with pytest.raises(ValueError, match="hexBinary"):
        r.to_xml(r.EndDevice(sfdi=1, changed_time=1, lfdi="not-hex"))


def test_mirror_usage_point_role_flags_are_hex():
    mup = r.MirrorUsagePoint(
        mrid="AB" * 16, role_flags=0x49, service_category_kind=0, status=1, device_lfdi="CD" * 20
    )
    out = r.to_xml(mup)
    assert b"<roleFlags>49</roleFlags>" in out
    assert r.parse_mirror_usage_point(out).role_flags == 73


def test_registration_and_connection_point():
    reg = r.parse_registration(
        f"<Registration {IEEE} pollRate='120'><dateTimeRegistered>9</dateTimeRegistered>"
        f"<pIN>111115</pIN></Registration>".encode()
    )
    assert (reg.pin, reg.date_time_registered, reg.poll_rate) == (111115, 9, 120)
    cp = r.parse_connection_point(
        b'<csipaus:ConnectionPoint xmlns:csipaus="https://csipaus.org/ns">'
        b"<csipaus:connectionPointId>4312345678</csipaus:connectionPointId></csipaus:ConnectionPoint>"
    )
    assert cp.connection_point_id == "4312345678"


def test_der_status_nested_status_values():
    body = f"""<DERStatus {IEEE}><genConnectStatus><dateTime>10</dateTime><value>07</value>
      </genConnectStatus><operationalModeStatus><dateTime>11</dateTime><value>2</value>
      </operationalModeStatus><readingTime>12</readingTime></DERStatus>"""
    status = r.parse_der_status(body.encode())
    assert status.gen_connect_status == r.StatusValue(value=7, date_time=10)
    assert status.operational_mode_status == r.StatusValue(value=2, date_time=11)
    assert status.reading_time == 12


@pytest.mark.parametrize(
    ("watts", "expected"),
    [
        (1500.0, r.Scaled(1500, 0)),
        (40000.0, r.Scaled(4000, 1)),
        (-32768.0, r.Scaled(-32768, 0)),
        (1234.5, r.Scaled(12345, -1)),
        (123456.0, r.Scaled(12346, 1)),  # not exact: nearest at the smallest fitting multiplier
        (0.0, r.Scaled(0, 0)),
    ],
)
def test_scaled_from_real_picks_a_fitting_exact_pair(watts, expected):
    assert r.Scaled.from_real(watts) == expected


def test_scaled_unsigned_refuses_negative():
    with pytest.raises(ValueError):
        r.Scaled.from_real(-1.0, signed=False)


def test_resolve_href_is_relative_to_the_resource_url():
    assert (
        resolve_href("https://u.example:8443/api/edev/3", "fsa")
        == "https://u.example:8443/api/edev/fsa"
    )
    assert (
        resolve_href("https://u.example:8443/api/edev/3/", "fsa")
        == "https://u.example:8443/api/edev/3/fsa"
    )
    assert resolve_href("https://u.example:8443/api/edev", "/tm") == "https://u.example:8443/tm"
    assert resolve_href("https://u.example/a", "https://v.example/b") == "https://v.example/b"


def test_page_query_replaces_paging_and_keeps_other_parameters():
    assert page_query("/derp/1/derc", 0, 10) == "/derp/1/derc?s=0&l=10"
    assert page_query("https://h/edev?s=0&l=5&x=1", 5, 5) == "https://h/edev?x=1&s=5&l=5"
    with pytest.raises(ValueError):
        page_query("/edev", 0, 0)


@pytest.mark.parametrize(
    ("start", "results", "all_", "expected"),
    [(0, 10, 25, 10), (20, 5, 25, None), (0, 0, 25, None), (0, 3, 3, None), (10, 10, 25, 20)],
)
def test_next_page_start(start, results, all_, expected):
    assert next_page_start(start, results, all_) == expected


def test_resource_list_of_counts_items():
    mmr = r.MirrorMeterReading(mrid="01" * 16)
    lst = r.MirrorMeterReadingList.of([mmr, mmr])
    assert (lst.all, lst.results, len(lst.items)) == (2, 2, 2)


def test_parse_resource_dispatches_on_root_element():
    assert isinstance(r.parse_resource(DCAP.encode()), r.DeviceCapability)
    assert isinstance(r.parse_resource(DERC_LIST.encode()), r.DERControlList)
    with pytest.raises(Sep2ParseError, match="unsupported root"):
        r.parse_resource(f"<LogEventList {IEEE} all='0' results='0'/>".encode())


def test_unknown_elements_and_foreign_namespaces_are_ignored():
    body = DERP.replace(
        "<primacy>", '<DERCurveListLink href="/c"/><x:ext xmlns:x="urn:other">1</x:ext><primacy>'
    )
    assert r.parse_der_program(body.encode()).primacy == 3
