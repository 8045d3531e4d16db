"""Every body the client sends (and the server-side bodies the simulator writes) validates
against the official CSIP-AUS 1.2 XSD, element order included; and each one round-trips."""

from __future__ import annotations

import pytest
from lxml import etree

from dynexport.sep2 import resources as r
from dynexport.sep2 import schema
from dynexport.sep2.controls import ControlBase, EventStatus, ResponseStatus

pytestmark = pytest.mark.skipif(
    not schema.wheel_path().is_file(),
    reason=f"{schema.WHEEL_NAME} not in {schema.wheels_dir()}: run `make wheels`",
)

LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
MRID = "C7170E2F587E43EE98E51043FECDBA09"
NOW = 1700000000


def _reading_type(uom: int, qualifier: int = 2) -> r.ReadingType:
    return r.ReadingType(
        accumulation_behaviour=12,
        data_qualifier=qualifier,
        flow_direction=1,
        interval_length=300,
        kind=37,
        phase=0,
        power_of_ten_multiplier=0,
        uom=uom,
    )


def _mmr(uom: int, n: int) -> r.MirrorMeterReading:
    return r.MirrorMeterReading(
        mrid=f"{n:032X}",
        description=f"uom {uom}",
        mirror_reading_sets=(
            r.MirrorReadingSet(
                mrid=f"{n + 100:032X}",
                time_period=r.DateTimeInterval(start=NOW, duration=300),
                readings=(
                    r.Reading(
                        value=-4200,
                        time_period=r.DateTimeInterval(start=NOW, duration=300),
                        quality_flags=0x01,
                        local_id=0,
                    ),
                ),
            ),
        ),
        reading_type=_reading_type(uom),
    )


CLIENT_BODIES: dict[str, object] = {
    "EndDevice": r.EndDevice(
        sfdi=16726121139, changed_time=NOW, lfdi=LFDI, device_category=0x020000, enabled=True
    ),
    "ConnectionPoint": r.ConnectionPoint(connection_point_id="4312345678"),
    "DERCapability": r.DERCapability(
        modes_supported=0x0C,
        rtg_max_w=r.Scaled(5000, 0),
        der_type=4,
        doe_modes_supported=0x03,
        rtg_max_va=r.Scaled(5000, 0),
        rtg_max_var=r.Scaled(3000, 0),
        rtg_max_var_neg=r.Scaled(-3000, 0),
        rtg_min_pf_over_excited=r.PowerFactor(80, -2),
        rtg_v_nom=r.Scaled(230, 0),
    ),
    "DERSettings": r.DERSettings(
        set_grad_w=27,
        set_max_w=r.Scaled(5000, 0),
        updated_time=NOW,
        modes_enabled=0x0C,
        set_max_va=r.Scaled(5000, 0),
        set_soft_grad_w=27,
        doe_modes_enabled=0x03,
    ),
    "DERStatus": r.DERStatus(
        reading_time=NOW,
        gen_connect_status=r.StatusValue(0x07, NOW),
        inverter_status=r.StatusValue(4, NOW),
        operational_mode_status=r.StatusValue(2, NOW),
        state_of_charge_status=r.StatusValue(5000, NOW),
        stor_connect_status=r.StatusValue(0x01, NOW),
    ),
    "MirrorUsagePoint": r.MirrorUsagePoint(
        mrid=MRID,
        description="Site Measurement",
        role_flags=0x03,
        service_category_kind=0,
        status=1,
        device_lfdi=LFDI,
        mirror_meter_readings=(_mmr(38, 1), _mmr(63, 2)),
        post_rate=60,
    ),
    "MirrorMeterReading": _mmr(29, 3),
    "MirrorMeterReadingList": r.MirrorMeterReadingList.of([_mmr(38, 4), _mmr(33, 5)]),
    "DERControlResponse": r.DERControlResponse(
        end_device_lfdi=LFDI,
        subject=MRID,
        status=ResponseStatus.COMPLETED,
        created_date_time=NOW,
    ),
}

_CONTROL = r.DERControl(
    mrid=MRID,
    creation_time=NOW,
    event_status=r.EventStatusInfo(EventStatus.SCHEDULED, NOW, False, reason="x"),
    interval=r.DateTimeInterval(start=NOW + 60, duration=300),
    base=ControlBase(
        export_limit_w=1500.0,
        import_limit_w=1234.5,
        generation_limit_w=40000.0,
        load_limit_w=0.0,
        max_limit_pct=50.5,
        connect=True,
        energize=True,
        ramp_tms=250,
    ),
    href="/derp/1/derc/1",
    reply_to="/rsp",
    response_required=0x03,
    randomize_start=30,
)
_PROGRAM = r.DERProgram(
    mrid=MRID,
    primacy=1,
    href="/derp/1",
    default_der_control_link=r.Link("/derp/1/dderc"),
    der_control_list_link=r.ListLink("/derp/1/derc", 1),
)
SERVER_BODIES: dict[str, object] = {
    "DeviceCapability": r.DeviceCapability(
        href="/dcap",
        poll_rate=60,
        time_link=r.Link("/tm"),
        end_device_list_link=r.ListLink("/edev", 1),
        mirror_usage_point_list_link=r.ListLink("/mup", 0),
    ),
    "Time": r.Time(NOW, 0, 0, 0, 7, 36000, local_time=NOW + 36000, href="/tm"),
    "EndDeviceList": r.EndDeviceList.of(
        [
            r.EndDevice(
                sfdi=16726121139,
                changed_time=NOW,
                lfdi=LFDI,
                href="/edev/1",
                der_list_link=r.ListLink("/edev/1/der", 1),
                function_set_assignments_list_link=r.ListLink("/edev/1/fsa", 1),
                registration_link=r.Link("/edev/1/rg"),
                connection_point_link=r.Link("/edev/1/cp"),
            )
        ],
        href="/edev",
        poll_rate=60,
    ),
    "Registration": r.Registration(date_time_registered=NOW, pin=111115),
    "DERList": r.DERList.of(
        [r.DER(href="/edev/1/der/1", der_capability_link=r.Link("/dercap"))], poll_rate=60
    ),
    "FunctionSetAssignmentsList": r.FunctionSetAssignmentsList.of(
        [r.FunctionSetAssignments(mrid=MRID, der_program_list_link=r.ListLink("/derp", 1))]
    ),
    "DERProgramList": r.DERProgramList.of([_PROGRAM], poll_rate=60),
    "DERControlList": r.DERControlList.of([_CONTROL]),
    "DefaultDERControl": r.DefaultDERControl(
        mrid=MRID,
        base=ControlBase(export_limit_w=0.0, import_limit_w=0.0),
        set_grad_w=27,
        set_es_delay=300,
    ),
    "MirrorUsagePointList": r.MirrorUsagePointList.of([CLIENT_BODIES["MirrorUsagePoint"]]),  # type: ignore[list-item]
}


@pytest.mark.parametrize("name", sorted(CLIENT_BODIES))
def test_client_bodies_validate_against_the_xsd(name):
    body = r.to_xml(CLIENT_BODIES[name])
    schema.validate(body)
    assert etree.QName(etree.fromstring(body)).localname == name


@pytest.mark.parametrize("name", sorted(SERVER_BODIES))
def test_server_bodies_validate_against_the_xsd(name):
    schema.validate(r.to_xml(SERVER_BODIES[name]))


@pytest.mark.parametrize("name", sorted(CLIENT_BODIES) + sorted(SERVER_BODIES))
def test_every_body_round_trips(name):
    obj = CLIENT_BODIES.get(name) or SERVER_BODIES[name]
    assert r.parse_as(type(obj), r.to_xml(obj)) == obj


def test_control_base_written_in_xsd_order_with_csipaus_last():
    body = r.to_xml(_CONTROL)
    base = etree.fromstring(body).find("{urn:ieee:std:2030.5:ns}DERControlBase")
    assert base is not None
    assert [etree.QName(e).localname for e in base] == [
        "opModConnect",
        "opModEnergize",
        "opModMaxLimW",
        "rampTms",
        "opModImpLimW",
        "opModExpLimW",
        "opModGenLimW",
        "opModLoadLimW",
    ]
    assert b"<opModMaxLimW>5050</opModMaxLimW>" in body


def test_out_of_order_elements_fail_validation_with_line_numbers():
    good = r.to_xml(CLIENT_BODIES["DERSettings"])
    root = etree.fromstring(good)
    first = root[0]
    root.remove(first)
    root.append(first)  # modesEnabled moved to the end
    bad = etree.tostring(root, pretty_print=True)
    with pytest.raises(schema.SchemaError) as info:
        schema.validate(bad)
    assert info.value.errors and all(e.startswith("line ") for e in info.value.errors)
    assert "modesEnabled" in str(info.value)


def test_missing_required_doe_modes_fails_validation():
    body = r.to_xml(CLIENT_BODIES["DERCapability"]).replace(
        b"<csipaus:doeModesSupported>03</csipaus:doeModesSupported>", b""
    )
    with pytest.raises(schema.SchemaError, match="doeModesSupported"):
        schema.validate(body)


def test_not_well_formed_is_a_schema_error():
    with pytest.raises(schema.SchemaError, match="not well-formed"):
        schema.validate(b"<EndDevice")


def test_schema_is_compiled_once():
    assert schema.load_schema() is schema.load_schema()


def test_missing_wheel_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNEXPORT_WHEELS", str(tmp_path))
    with pytest.raises(schema.SchemaUnavailable, match="make wheels"):
        schema.load_schema(schema.wheel_path())
