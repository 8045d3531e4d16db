"""CSIP-AUS v1.3 storage procedures STO-02, 03, 05, 06, link side (docs/csip-aus-procedures.md).

The simulator speaks v1.3 here (``csipaus_version="1.3"``: the namespace
``https://csipaus.org/ns/v1.3``, storage targets served, every body the client sends checked
against the v1.3 schema derived from the official 1.2 XSD in `dynexport.sim.schema13`). The
client learns the version from what the server serves and answers in it: DERCapability and
DERSettings carry ``vppModesSupported``/``vppModesEnabled`` 01 and ``setMinWh`` for a site with
a battery; ``opModStorageTargetW`` is read, scheduled and answered 1/2/3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynexport.app import utility_limits
from dynexport.control.limits import merge_limits
from dynexport.sep2.controls import ControlType, doe_modes_supported, enforced_controls
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.resources import DERCapability, DERSettings, Scaled
from dynexport.sep2.xml import CSIPAUS_NS, CSIPAUS_NS_13
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import FakeClock
from tests.sep2.procedures.conftest import (
    BATTERY_DER,
    CAPACITY_WH,
    MAX_IMPORT_W,
    RATED_W,
    Harness,
    allow_violations,
    battery_sample,
    make_client,
    needs_schema,
    new_server,
    now,
    on_request,
    procedure,
    requests,
    standard_preconditions,
    statuses,
)

pytestmark = needs_schema

RESERVE_WH = 0.2 * CAPACITY_WH
"""The owner's 20 % reserve of the 10 kWh battery: what setMinWh reports."""
STORAGE_DER = dataclasses.replace(
    BATTERY_DER, rated_va=MAX_IMPORT_W, rated_var=MAX_IMPORT_W, min_wh=RESERVE_WH
)
"""`BATTERY_DER` with setMaxVA = the charge/discharge ratings (STO-03/06 check
``setMaxChargeRateW == setMaxVA``) and the reserve as App._storage_der_fields reports it."""
DISCHARGE_W = MAX_IMPORT_W
"""$(setMaxDischargeRateW) and $(setMaxChargeRateW) of `STORAGE_DER`."""
DERCAP, DERG = "/edev/1/der/1/dercap", "/edev/1/der/1/derg"


@pytest.fixture
async def server13(pki_dir: Path, clock: FakeClock) -> AsyncIterator[UtilityServer]:
    srv = new_server(pki_dir, clock, csipaus_version="1.3")
    async with srv.running():
        yield srv


def _link(
    srv: UtilityServer, clock: FakeClock, tmp_path: Path, der: DerInfo, version: str = "auto"
) -> Harness:
    """A client for ``der`` with ``utility.csipAusVersion`` = ``version``."""
    client = make_client(srv, clock, tmp_path, der=der, csipaus_version=version)
    return Harness(srv, client, clock, sampler=battery_sample)


def _w(value: Scaled | None) -> float:
    assert value is not None
    return value.real


def _reports(srv: UtilityServer) -> tuple[DERCapability, DERSettings]:
    cap = requests(srv, "PUT", DERCAP)[-1]
    settings = requests(srv, "PUT", DERG)[-1]
    assert cap.status == 204 and settings.status == 204, (cap.schema_error, settings.schema_error)
    assert isinstance(cap.resource, DERCapability) and isinstance(settings.resource, DERSettings)
    return cap.resource, settings.resource


async def test_sto_02_05_v1_3_storage_fields_in_capability_and_settings(
    server13: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    """STO-02/05 GET-DER, PUT-DERCAPABILITY, PUT-DERSETTINGS on a v1.3 server: the bodies are
    in the v1.3 namespace (they validate against the v1.3 schema; the 1.2 namespace would be
    refused) and carry vppModesSupported 01 (STO-05 ``vppModesSupported_set: 01``),
    vppModesEnabled 01, setMinWh (the reserve) beside the storage ratings (> 0) and
    doeModes 0x0F."""
    procedure("STO-02", "GET-DER", "PUT-DERCAPABILITY", "PUT-DERSETTINGS")
    text = procedure("STO-05", "GET-DER", "PUT-DERCAPABILITY", "PUT-DERSETTINGS")
    assert "vppModesSupported_set" in text and "setMinWh" in text
    standard_preconditions(server13)
    link = _link(server13, clock, tmp_path, STORAGE_DER)
    try:
        await link.run_for(1)
        assert link.client.csipaus_version == "1.3"
    finally:
        await link.close()
    for path in (DERCAP, DERG, "/edev/1/cp"):
        body = requests(server13, "PUT", path)[-1].body
        assert CSIPAUS_NS_13.encode() in body and f'"{CSIPAUS_NS}"'.encode() not in body
    cap, settings = _reports(server13)
    assert cap.vpp_modes_supported == 0x01 and settings.vpp_modes_enabled == 0x01
    assert cap.doe_modes_supported == 0x0F and settings.doe_modes_enabled == 0x0F
    assert _w(settings.set_min_wh) == RESERVE_WH
    for rating in (cap.rtg_max_charge_rate_w, cap.rtg_max_discharge_rate_w, cap.rtg_max_wh):
        assert _w(rating) > 0
    assert _w(settings.set_max_charge_rate_w) == _w(settings.set_max_va) == DISCHARGE_W
    assert _w(settings.set_max_wh) == CAPACITY_WH >= _w(settings.set_min_wh)
    assert b"<csipaus:vppModesEnabled>01</csipaus:vppModesEnabled><csipaus:setMinWh>" in (
        requests(server13, "PUT", DERG)[-1].body
    )


async def test_v1_3_fields_never_go_to_a_1_2_server(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    """The same battery site on a 1.2 server: 1.2 namespace, no vppModes*, no setMinWh (its XSD
    would refuse them; the simulator validates every body against it)."""
    standard_preconditions(server)
    link = _link(server, clock, tmp_path, STORAGE_DER)
    try:
        await link.run_for(1)
        assert link.client.csipaus_version == "1.2"
    finally:
        await link.close()
    cap, settings = _reports(server)
    assert cap.vpp_modes_supported is None and settings.vpp_modes_enabled is None
    assert settings.set_min_wh is None
    assert CSIPAUS_NS_13.encode() not in requests(server, "PUT", DERG)[-1].body


async def test_v1_3_fields_never_without_a_battery(
    server13: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    """A v1.3 server and a PV-only site: the v1.3 namespace, but no VPP modes nor setMinWh
    (nothing would perform a storage target)."""
    standard_preconditions(server13)
    link = _link(server13, clock, tmp_path, DerInfo(rated_w=RATED_W))
    link.sampler = None
    try:
        await link.run_for(1)
    finally:
        await link.close()
    cap, settings = _reports(server13)
    assert cap.vpp_modes_supported is None and settings.vpp_modes_enabled is None
    assert settings.set_min_wh is None


async def test_the_installer_override_forces_the_version(
    server13: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    """``utility.csipAusVersion: "1.2"`` against a v1.3 server: the client writes 1.2 whatever
        the server declares, and the v1.3 server refuses those bodies (400, schema): the
    ConnectionPoint PUT, so the walk fails there and is retried."""
    allow_violations(server13, "schema")
    standard_preconditions(server13)
    link = _link(server13, clock, tmp_path, STORAGE_DER, version="1.2")
    try:
        await link.run_for(1)
        assert link.client.csipaus_version == "1.2"
    finally:
        await link.close()
    refused = requests(server13, "PUT", "/edev/1/cp")[-1]  # the first csipaus body it sends
    assert refused.status == 400 and refused.schema_error is not None
    assert f'"{CSIPAUS_NS}"'.encode() in refused.body


async def test_sto_03_storage_target_with_export_limit_responses_and_values(
    server13: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    """STO-03: default (export 0, import setMaxW, setGradW 27), then a control at $(now) for
    480 s with opModStorageTargetW = setMaxDischargeRateW and opModExpLimW = 2 × it: both in
    force in its window, merged into the limits (the storage target with its source),
    answered 1, 2, 3 (POST-RESPONSE-RECEIVED/STARTED/COMPLETED); the pre-checks' capability
    fields and at least one stored-energy reading."""
    text = procedure(
        "STO-03",
        "GET-DERC-1",
        "POST-RESPONSE-RECEIVED",
        "POST-RESPONSE-STARTED",
        "POST-RESPONSE-COMPLETED",
    )
    assert "opModStorageTargetW: $(setMaxDischargeRateW)" in text
    server13.set_default(export_limit_w=0, import_limit_w=RATED_W, set_grad_w=27)
    mrid = server13.add_control(
        start=int(clock.t),
        duration=480,
        storage_target_w=DISCHARGE_W,
        export_limit_w=2 * DISCHARGE_W,
    )
    link = _link(server13, clock, tmp_path, STORAGE_DER)
    try:
        await link.run_for(2)
        assert link.value(ControlType.STORAGE_TARGET_W) == DISCHARGE_W
        assert link.value(ControlType.EXPORT_LIMIT_W) == 2 * DISCHARGE_W
        active = link.client.active_controls()
        assert active is not None
        limits = merge_limits(utility_limits(active, RATED_W), None)
        assert limits.storage_target_w == DISCHARGE_W
        assert limits.sources["storage_target_w"] == "utility"
        assert limits.export_w == 2 * DISCHARGE_W
        await link.run_for(480)
        assert link.value(ControlType.STORAGE_TARGET_W) is None  # the default sets none
        assert link.value(ControlType.EXPORT_LIMIT_W) == 0
    finally:
        await link.close()
    assert statuses(server13, mrid) == [1, 2, 3]
    cap, settings = _reports(server13)
    assert cap.vpp_modes_supported == 0x01 and cap.doe_modes_supported & 0x01
    assert settings.vpp_modes_enabled == 0x01 and settings.doe_modes_enabled is not None
    assert settings.doe_modes_enabled & 0x01
    assert _w(cap.rtg_max_charge_rate_w) <= _w(cap.rtg_max_va)
    assert server13.stored_energy_values(), "readings-der-stored-energy: none"


STO_06_CONTROLS: tuple[tuple[int, float, float | None], ...] = (
    (300, DISCHARGE_W, 2 * DISCHARGE_W),
    (1200, DISCHARGE_W, 0.5 * DISCHARGE_W),
    (2100, -MAX_IMPORT_W, 0.5 * DISCHARGE_W),
    (3000, 0.0, 0.0),
    (3900, 0.3 * DISCHARGE_W, DISCHARGE_W),
    (4800, DISCHARGE_W, None),
)
"""STO-06's GET-DERC-1 actions: (start after now, opModStorageTargetW, opModExpLimW), 900 s
each, back to back."""


async def test_sto_06_six_storage_targets_each_in_force_and_answered(
    server13: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    """STO-06: the six controls created as the DERProgramList is first read (GET-DERC-1), each
    in force in its 15 minutes (storage target, and export limit where it has one; the last
    sets a storage target only and is still performed), each answered 1/2/3, through the
    WAIT-CONTROL-END steps; the pre-checks' fields (vppModes 01, setMaxWh ≤ rtgMaxWh)."""
    text = procedure("STO-06", "GET-DERC-1", *(f"WAIT-CONTROL-END-{i}" for i in range(1, 7)))
    assert text.count("opModStorageTargetW") >= 6
    server13.set_default(export_limit_w=0, import_limit_w=RATED_W, set_grad_w=27)
    mrids: list[str] = []

    def create() -> None:
        t0 = int(server13.now())
        for offset, target, export in STO_06_CONTROLS:
            mrids.append(
                server13.add_control(
                    start=t0 + offset,
                    duration=900,
                    storage_target_w=target,
                    export_limit_w=export,
                )
            )

    fired = on_request(server13, "GET", "/edev/1/fsa/1/derp", create)
    link = _link(server13, clock, tmp_path, STORAGE_DER)
    try:
        await link.run_until(lambda: bool(fired), 61, "GET-DERC-1")
        t0 = int(fired[0])
        await link.run_for(2)
        for (offset, target, export), _ in zip(STO_06_CONTROLS, mrids, strict=True):
            await link.run_to(t0 + offset + 30)
            assert link.value(ControlType.STORAGE_TARGET_W) == target, offset
            assert link.value(ControlType.EXPORT_LIMIT_W) == (0 if export is None else export)
        await link.run_to(t0 + 4800 + 900 + 60)  # WAIT-CONTROL-END-6
        assert link.value(ControlType.STORAGE_TARGET_W) is None
        assert now(link) > t0 + 5700
    finally:
        await link.close()
    for mrid in mrids:
        assert statuses(server13, mrid) == [1, 2, 3], mrid
    cap, settings = _reports(server13)
    assert cap.vpp_modes_supported == 0x01 and settings.vpp_modes_enabled == 0x01
    assert _w(settings.set_max_wh) <= _w(cap.rtg_max_wh)


async def test_a_storage_target_without_a_battery_is_not_applicable(
    server13: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    """STO-06's last control (a storage target alone) at a PV-only site: nothing can perform
    it, so it is answered 1 then 252, never 2/3."""
    standard_preconditions(server13)
    mrid = server13.add_control(start=int(clock.t), duration=300, storage_target_w=DISCHARGE_W)
    pv_only = DerInfo(
        rated_w=RATED_W,
        enforced=enforced_controls(False),
        doe_modes_supported=doe_modes_supported(enforced_controls(False)),
    )
    link = _link(server13, clock, tmp_path, pv_only)
    link.sampler = None
    try:
        await link.run_for(120)
    finally:
        await link.close()
    assert statuses(server13, mrid) == [1, 252]
