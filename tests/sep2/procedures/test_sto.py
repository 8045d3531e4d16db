"""CSIP-AUS client procedures STO-01..06 (storage), link side (docs/csip-aus-procedures.md).

STO-01 and STO-04 (stored-energy readings) apply to a site with a battery and are mirrored here,
with the storage ratings a CSIP-AUS 1.2 server gets. STO-02/03/05/06 are written for CSIP-AUS
v1.3 (``TargetVersions: v1.3-beta/storage, v1.3``: ``vppModesSupported``/``vppModesEnabled``,
``setMinWh``, ``opModStorageTargetW``); they are mirrored against the simulator speaking v1.3 in
`test_sto_v13`."""

from __future__ import annotations

import zipfile
from pathlib import Path

from dynexport.sep2 import schema
from dynexport.sep2.resources import DERCapability, DERSettings, DERStatus
from dynexport.sim import schema13
from dynexport.sim.utility_core import is_stored_energy
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock
from tests.sep2.procedures.conftest import (
    BATTERY_DER,
    CAPACITY_WH,
    MAX_IMPORT_W,
    Harness,
    make_client,
    needs_schema,
    procedure,
    requests,
    statuses,
)

pytestmark = needs_schema


async def _stored_energy_readings(link: Harness, pid: str) -> None:
    """POST-MUP, GET-MUP-2, WAIT-READINGS (300 s): at least 4 DER stored-energy readings."""
    procedure(pid, "POST-MUP", "GET-MUP-2", "WAIT-READINGS")
    srv = link.server
    await link.run_for(1)
    assert requests(srv, "POST", "/mup"), "POST-MUP: no MirrorUsagePoint created"
    posted = requests(srv, "POST", "/mup")[0].t
    await link.run_for(61)
    assert [r for r in requests(srv, "GET", "/mup") if r.t > posted], "GET-MUP-2 never"
    await link.run_for(300)  # WAIT-READINGS
    stored = srv.stored_energy_values()
    assert len(stored) >= 4, f"readings-der-stored-energy: {len(stored)} readings, need 4"
    assert set(stored) == {round(0.5 * CAPACITY_WH)}  # 50 % of 10 kWh, in Wh
    der_mirror = [r for r in srv.readings if r.stored_energy]
    assert all(is_stored_energy(r.reading_type, r.role_flags) for r in der_mirror)
    assert all(r.role_flags == 0x49 for r in der_mirror)


async def test_sto_01_individual_storage_readings_at_least_four_stored_energy(
    battery_link: Harness,
) -> None:
    await _stored_energy_readings(battery_link, "STO-01")


async def test_sto_04_individual_storage_readings_der_class(battery_link: Harness) -> None:
    await _stored_energy_readings(battery_link, "STO-04")


async def test_sto_01_a_site_without_a_battery_posts_no_stored_energy(link: Harness) -> None:
    """The other side of STO-01: stored energy comes from a battery, never invented."""
    procedure("STO-01", "WAIT-READINGS")
    link.sampler = None
    await link.run_for(361)
    assert link.server.stored_energy_values() == []


async def test_sto_02_05_storage_ratings_in_capability_and_settings(
    battery_link: Harness,
) -> None:
    """GET-DER, PUT-DERCAPABILITY, PUT-DERSETTINGS with the storage fields the 1.2 schema has:
    rtgMaxChargeRateW, rtgMaxDischargeRateW, rtgMaxWh (> 0, STO-05) and their set* twins;
    DERStatus carries stateOfChargeStatus. The v1.3 fields (vppModes*, setMinWh) are not sent
    to a 1.2 server (`test_sto_v13.test_v1_3_fields_never_go_to_a_1_2_server`)."""
    procedure("STO-02", "GET-DER", "PUT-DERCAPABILITY", "PUT-DERSETTINGS")
    procedure("STO-05", "GET-DER", "PUT-DERCAPABILITY", "PUT-DERSETTINGS")
    srv = battery_link.server
    await battery_link.run_for(1)
    cap = requests(srv, "PUT", "/edev/1/der/1/dercap")[-1].resource
    settings = requests(srv, "PUT", "/edev/1/der/1/derg")[-1].resource
    status = requests(srv, "PUT", "/edev/1/der/1/ders")[-1].resource
    assert isinstance(cap, DERCapability) and isinstance(settings, DERSettings)
    assert isinstance(status, DERStatus)

    def watts(v: object) -> float:
        assert v is not None
        return float(v.real)  # type: ignore[attr-defined]

    assert watts(cap.rtg_max_charge_rate_w) == MAX_IMPORT_W
    assert watts(cap.rtg_max_discharge_rate_w) == MAX_IMPORT_W
    assert watts(cap.rtg_max_wh) == CAPACITY_WH
    assert watts(settings.set_max_charge_rate_w) == MAX_IMPORT_W
    assert watts(settings.set_max_discharge_rate_w) == MAX_IMPORT_W
    assert watts(settings.set_max_wh) <= watts(cap.rtg_max_wh)
    assert cap.doe_modes_supported & 0x0F == 0x0F  # ImpLim and LoadLim advertised (bits 1, 3)
    assert settings.doe_modes_enabled == cap.doe_modes_supported
    assert status.state_of_charge_status is not None
    assert status.state_of_charge_status.value == 5000  # 50.00 %, hundredths of a percent


def test_sto_v1_3_procedures_need_the_v1_3_elements_the_derived_schema_adds() -> None:
    """STO-02, 03, 05, 06 check vppModesSupported/Enabled (03, 06 also send
    opModStorageTargetW), elements of the CSIP-AUS v1.3 storage extension. The official 1.2
    schema lacks them, so the simulator checks v1.3 bodies against a schema derived from it
    (`dynexport.sim.schema13`); this test fails once the wheel's schema has them (then it should
    be used instead)."""
    for pid, needs in (
        ("STO-02", "vppModesSupported"),
        ("STO-03", "opModStorageTargetW"),
        ("STO-05", "vppModesSupported_set"),
        ("STO-06", "opModStorageTargetW"),
    ):
        text = procedure(pid)
        assert "v1.3" in text and needs in text, f"{pid} no longer needs {needs}"
    with zipfile.ZipFile(schema.wheel_path()) as zf:
        xsd = b"".join(zf.read(n) for n in zf.namelist() if n.endswith(".xsd"))
    assert b"stateOfChargeStatus" in xsd  # the schema was read
    assert b"vppModes" not in xsd and b"opModStorageTargetW" not in xsd
    derived = b"".join(schema13.schema_files_13().values())
    for name in (b"vppModesSupported", b"vppModesEnabled", b"setMinWh", b"opModStorageTargetW"):
        assert name in derived


async def test_sto_03_an_export_limit_beside_a_storage_target_is_still_performed(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    """STO-03's response steps (1, 2, 3) on a 1.2 server, which can say only the export limit
    of 2 × setMaxDischargeRateW (the v1.3 control with its storage target:
    `test_sto_v13.test_sto_03_storage_target_with_export_limit_responses_and_values`)."""
    procedure("STO-03", "POST-RESPONSE-RECEIVED", "POST-RESPONSE-STARTED")
    server.set_default(export_limit_w=0, import_limit_w=5000, set_grad_w=27)
    mrid = server.add_control(start=int(T0), duration=480, export_limit_w=2 * MAX_IMPORT_W)
    link = Harness(server, make_client(server, clock, tmp_path, der=BATTERY_DER), clock)
    try:
        await link.run_for(481)
    finally:
        await link.close()
    assert statuses(server, mrid) == [1, 2, 3]
