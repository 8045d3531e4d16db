"""Real utility server responses (kept outside the project) parse into the right models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynexport.sep2 import resources as r

TESTDATA = Path(os.environ.get("DYNEXPORT_SEP2_TESTDATA", "/work/shared/testdata/sep2"))
pytestmark = pytest.mark.skipif(
    not TESTDATA.is_dir(), reason=f"real server responses not present at {TESTDATA}"
)

EXPECTED: dict[str, type] = {
    "getDcap.xml": r.DeviceCapability,
    "getDerp_P-EQLDEV3_derc.xml": r.DERControlList,
    "getDerp_TESTPROG3_dderc.xml": r.DefaultDERControl,
    "getDerp_TESTPROG3_derc.xml": r.DERControlList,
    "getDerp_dderc_sapn.xml": r.DefaultDERControl,
    "getDerp_derc_sapn.xml": r.DERControlList,
    "getEdev.xml": r.EndDeviceList,
    "getEdev_E-AGGREQL.xml": r.EndDevice,
    "getEdev__EQLDEV3.xml": r.EndDevice,
    "getEdev__EQLDEV3_der.xml": r.DERList,
    "getEdev__EQLDEV3_fsa.xml": r.FunctionSetAssignmentsList,
    "getEdev__EQLDEV3_fsa_1_derp.xml": r.DERProgramList,
    "getEdev__EQLDEV3_fsa_2_derp.xml": r.DERProgramList,
    "getEdev__EQLDEV3_rg.xml": r.Registration,
    "getEdev_cp_csipaus.xml": r.ConnectionPoint,
    "getEdev_csipaus.xml": r.EndDeviceList,
    "getEdev_csipaus_edev1.xml": r.EndDevice,
    "getMup.xml": r.MirrorUsagePointList,
    "getTm.xml": r.Time,
}


def _files() -> list[str]:
    return sorted(p.name for p in TESTDATA.glob("*.xml")) if TESTDATA.is_dir() else []


@pytest.mark.parametrize("name", _files())
def test_every_file_parses_into_its_model(name):
    data = (TESTDATA / name).read_bytes()
    parsed = r.parse_resource(data)
    expected = EXPECTED.get(name)
    if expected is None:
        pytest.fail(f"new test file {name}: add its expected model to EXPECTED")
    assert type(parsed) is expected
    assert r.parse_as(expected, data) == parsed


def _load(name: str) -> bytes:
    path = TESTDATA / name
    if not path.is_file():
        pytest.skip(f"{name} absent")
    return path.read_bytes()


def test_real_derc_list_converts_multipliers_to_watts():
    derc = r.parse_der_control_list(_load("getDerp_TESTPROG3_derc.xml"))
    assert (derc.all, derc.results) == (5, 5)
    first = derc.items[0].base
    assert (first.import_limit_w, first.export_limit_w) == (3512.0, 2512.0)
    assert first.generation_limit_w == 30000.0  # 3 × 10^4
    assert derc.items[1].base.export_limit_w == 2500.0  # 25 × 10^2
    assert derc.items[0].response_required == 3
    assert derc.items[0].reply_to == "/api/v2/rsps/res-ms/rsp"


def test_real_sapn_default_control_has_set_grad_w():
    dderc = r.parse_default_der_control(_load("getDerp_dderc_sapn.xml"))
    assert dderc.base.export_limit_w == 1500.0
    assert dderc.set_grad_w == 27
    assert dderc.mrid == "03E42DBAC664C4E066E77A5D00054666"


def test_real_sapn_controls_keep_event_status():
    derc = r.parse_der_control_list(_load("getDerp_derc_sapn.xml"))
    statuses = [c.event_status.current_status for c in derc.items]
    assert [int(s) for s in statuses] == [2, 2, 1]
    assert derc.items[2].interval == r.DateTimeInterval(start=1726633063, duration=600)


def test_real_program_list_and_poll_rate():
    derp = r.parse_der_program_list(_load("getEdev__EQLDEV3_fsa_2_derp.xml"))
    assert derp.poll_rate == 301
    assert derp.items[0].primacy == 1
    assert derp.items[0].default_der_control_link == r.Link("/api/v2/derp/TESTPRG3/dderc")


def test_real_end_device_list_with_csipaus_link_and_LFDI_spelling():
    edevs = r.parse_end_device_list(_load("getEdev_csipaus.xml"))
    assert [e.connection_point_link for e in edevs.items][1:] == [
        r.Link("/edev/1/cp"),
        r.Link("/edev/2/cp"),
    ]
    assert edevs.items[1].lfdi == "12A4A4B406AD102E7421019135FFA2805235A21C"
    assert edevs.items[1].sfdi == 50044792964
    assert edevs.items[1].enabled is True


def test_real_mirror_usage_points_role_flags():
    mups = r.parse_mirror_usage_point_list(_load("getMup.xml"))
    assert [m.role_flags for m in mups.items] == [0x49, 0x03]
    assert mups.items[0].device_lfdi == "4075DE6031E562ACF4D9EAA765A5B2ED00057269"


def test_real_time():
    tm = r.parse_time(_load("getTm.xml"))
    assert (tm.current_time, tm.tz_offset, tm.quality) == (1682475024, -25200, 5)
