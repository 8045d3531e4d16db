"""CSIP-AUS v1.3 on the wire: the namespace is learnt from the server and written back, the
storage extension's elements (opModStorageTargetW, vppModesSupported/Enabled, setMinWh) are
read only in the v1.3 namespace and never written in 1.2, and their order follows the v1.3
schema (derived from the official 1.2 XSD in `dynexport.sim.schema13`)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from dynexport.control.limits import (
    FALLBACK_LABEL,
    LimitsConfig,
    UtilityLimits,
    merge_limits,
)
from dynexport.sep2 import flow, schema
from dynexport.sep2 import resources as r
from dynexport.sep2.controls import (
    ControlBase,
    ControlType,
    can_perform,
    enforced_controls,
    vpp_modes_supported,
)
from dynexport.sep2.xml import CSIPAUS_NS, CSIPAUS_NS_13, declared_csipaus_namespace
from dynexport.system.config import ConfigError, parse_config

needs_schema = pytest.mark.skipif(
    not schema.schema_available(), reason="the derived v1.3 schema starts from the 1.2 XSD"
)

BATTERY = flow.DerInfo(
    rated_w=5000.0,
    rated_charge_w=5000.0,
    rated_discharge_w=5000.0,
    rated_wh=10_000.0,
    min_wh=2000.0,
    enforced=enforced_controls(True),
    doe_modes_supported=0x0F,
)


def _control(ns: str, inner: str) -> bytes:
    return (
        f'<DERControl xmlns="urn:ieee:std:2030.5:ns" xmlns:csipaus="{ns}">'
        "<mRID>0123456789ABCDEF0123456789ABCDEF</mRID><creationTime>1</creationTime>"
        "<EventStatus><currentStatus>0</currentStatus><dateTime>1</dateTime>"
        "<potentiallySuperseded>false</potentiallySuperseded></EventStatus>"
        "<interval><duration>60</duration><start>100</start></interval>"
        f"<DERControlBase>{inner}</DERControlBase></DERControl>"
    ).encode()


TARGET = (
    "<csipaus:opModStorageTargetW><multiplier>1</multiplier><value>-250</value>"
    "</csipaus:opModStorageTargetW>"
)


def test_the_server_version_is_read_from_its_namespace_declarations() -> None:
    v13 = f'<EndDevice xmlns="urn:ieee:std:2030.5:ns" xmlns:csipaus="{CSIPAUS_NS_13}"/>'
    v12 = f"<EndDevice xmlns='urn:ieee:std:2030.5:ns' xmlns:c = '{CSIPAUS_NS}'/>"
    both = f'<a xmlns:x="{CSIPAUS_NS}"><b xmlns:y="{CSIPAUS_NS_13}"/></a>'
    assert declared_csipaus_namespace(v13.encode()) == CSIPAUS_NS_13
    assert declared_csipaus_namespace(v12.encode()) == CSIPAUS_NS
    assert declared_csipaus_namespace(both.encode()) == CSIPAUS_NS_13
    assert declared_csipaus_namespace(b'<Time xmlns="urn:ieee:std:2030.5:ns"/>') is None
    # a mention in text is no declaration
    assert declared_csipaus_namespace(f"<a>see {CSIPAUS_NS_13}</a>".encode()) is None


def test_a_v1_3_storage_target_is_read_in_watts_and_is_a_control_type() -> None:
    control = r.parse_der_control(_control(CSIPAUS_NS_13, TARGET))
    assert control.base.storage_target_w == -2500.0
    assert control.base.types() == frozenset({ControlType.STORAGE_TARGET_W})
    assert control.base.unsupported is None
    assert can_perform(control.base, enforced_controls(True))
    assert not can_perform(control.base, enforced_controls(False))


def test_a_storage_target_in_the_1_2_namespace_is_not_read_as_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same element in ``https://csipaus.org/ns`` is not v1.3's: kept by name as a control
    this site cannot perform (answered 252), logged with the reason."""
    r._WARNED.clear()  # logged once per process: make this the first time
    with caplog.at_level(logging.WARNING, logger="dynexport.sep2"):
        control = r.parse_der_control(_control(CSIPAUS_NS, TARGET))
        r.parse_der_control(_control(CSIPAUS_NS, TARGET))
    assert control.base.storage_target_w is None
    assert control.base.unsupported == ("csipaus:opModStorageTargetW",)
    assert not can_perform(control.base, enforced_controls(True))
    warned = [m for m in caplog.messages if "came in the 1.2 namespace" in m]
    assert len(warned) == 1, caplog.messages  # once, not on every poll


def test_v1_3_elements_are_never_written_in_the_1_2_namespace() -> None:
    default = r.DefaultDERControl(mrid="AB" * 16, base=ControlBase(storage_target_w=100.0))
    with pytest.raises(ValueError, match=r"v1\.3"):
        r.to_xml(default)
    with pytest.raises(ValueError, match=r"v1\.3"):
        r.to_xml(flow.der_capability(BATTERY, CSIPAUS_NS_13))
    out = r.to_xml(default, csipaus_ns=CSIPAUS_NS_13)
    assert f'xmlns:csipaus="{CSIPAUS_NS_13}"'.encode() in out
    assert r.parse_default_der_control(out).base.storage_target_w == 100.0


def test_v1_3_reports_round_trip_and_carry_the_vpp_modes_and_reserve() -> None:
    cap = flow.der_capability(BATTERY, CSIPAUS_NS_13)
    settings = flow.der_settings(BATTERY, 27, 1_700_000_000, CSIPAUS_NS_13)
    assert cap.vpp_modes_supported == vpp_modes_supported(enforced_controls(True)) == 0x01
    assert settings.vpp_modes_enabled == 0x01
    assert settings.set_min_wh is not None and settings.set_min_wh.real == 2000.0
    for obj in (cap, settings):
        assert r.parse_resource(r.to_xml(obj, csipaus_ns=CSIPAUS_NS_13)) == obj
    # 1.2: none of them, whatever the battery
    assert flow.der_capability(BATTERY).vpp_modes_supported is None
    plain = flow.der_settings(BATTERY, 27, 1)
    assert plain.vpp_modes_enabled is None and plain.set_min_wh is None
    # an unknown reserve is reported as 0 Wh (the procedures need the element)
    unknown = flow.der_settings(
        flow.DerInfo(**{**vars(BATTERY), "min_wh": None}), 27, 1, CSIPAUS_NS_13
    )
    assert unknown.set_min_wh is not None and unknown.set_min_wh.real == 0.0


def test_a_change_of_server_version_makes_the_reports_due_again() -> None:
    key12 = flow.der_report_key(BATTERY, 27, CSIPAUS_NS)
    key13 = flow.der_report_key(BATTERY, 27, CSIPAUS_NS_13)
    assert key12 != key13
    assert flow.der_reports_due(key12, 0.0, key13, 1.0, 300)


@needs_schema
def test_the_derived_v1_3_schema_checks_names_namespace_and_order() -> None:
    from dynexport.sim import schema13

    settings = r.to_xml(flow.der_settings(BATTERY, 27, 1, CSIPAUS_NS_13), csipaus_ns=CSIPAUS_NS_13)
    schema13.validate_13(settings)
    schema13.validate_13(
        r.to_xml(flow.der_capability(BATTERY, CSIPAUS_NS_13), csipaus_ns=CSIPAUS_NS_13)
    )
    schema13.validate_13(
        r.to_xml(
            r.DefaultDERControl(
                mrid="AB" * 16, base=ControlBase(load_limit_w=1.0, storage_target_w=-5.0)
            ),
            csipaus_ns=CSIPAUS_NS_13,
        )
    )
    # setMinWh before vppModesEnabled: out of order
    swapped = settings.replace(b"<csipaus:vppModesEnabled>01</csipaus:vppModesEnabled>", b"")
    swapped = swapped.replace(
        b"</DERSettings>", b"<csipaus:vppModesEnabled>01</csipaus:vppModesEnabled></DERSettings>"
    )
    with pytest.raises(schema.SchemaError):
        schema13.validate_13(swapped)
    # a 1.2 body is not a v1.3 one, and the official 1.2 schema refuses the v1.3 one
    with pytest.raises(schema.SchemaError):
        schema13.validate_13(r.to_xml(flow.der_settings(BATTERY, 27, 1)))
    with pytest.raises(schema.SchemaError):
        schema.validate(settings)


def test_the_installer_can_force_the_version_and_a_wrong_value_is_named() -> None:
    base = {"server": "https://u", "ca": "a", "cert": "b", "key": "c", "nmi": "4312345678"}
    assert parse_config({"utility": base}).utility.csipaus_version == "auto"  # type: ignore[union-attr]
    forced = parse_config({"utility": {**base, "csipAusVersion": "1.3"}}, base_dir=Path("/"))
    assert forced.utility is not None and forced.utility.csipaus_version == "1.3"
    with pytest.raises(ConfigError) as err:
        parse_config({"utility": {**base, "csipAusVersion": "1.4"}})
    assert err.value.problems == [
        "utility.csipAusVersion: must be one of 'auto', '1.2', '1.3', not '1.4'"
    ]


def test_the_storage_target_is_carried_beside_the_limits_with_its_source() -> None:
    """Not a limit: the utility's value with its source, untouched by installer limits; none
    from the fallback; an unreadable one is none."""
    merged = merge_limits(
        UtilityLimits(export_w=2000.0, storage_target_w=-3000.0), LimitsConfig(export_w=1000.0)
    )
    assert merged.storage_target_w == -3000.0
    assert merged.sources["storage_target_w"] == "utility"
    assert merged.export_w == 1000.0 and merged.sources["export_w"] == "config"
    fallback = UtilityLimits(export_w=1500.0, storage_target_w=500.0, label=FALLBACK_LABEL)
    assert merge_limits(fallback, None).storage_target_w is None
    for bad in (math.nan, math.inf, -math.inf):
        merged = merge_limits(UtilityLimits(storage_target_w=bad), None)
        assert merged.storage_target_w is None and "storage_target_w" not in merged.sources
    assert merge_limits(None, LimitsConfig()).storage_target_w is None


def test_get_api_limits_shows_the_storage_target_and_its_source() -> None:
    """GET /api/limits' ``current`` and ``outlook`` documents (web/api._limits_document)."""
    from dynexport.web.api import _limits_document

    doc = _limits_document(merge_limits(UtilityLimits(storage_target_w=-1200.0), None))
    assert doc["storageTargetW"] == -1200.0
    assert doc["source"]["storage_target_w"] == "utility"
    assert _limits_document(merge_limits(None, None))["storageTargetW"] is None
