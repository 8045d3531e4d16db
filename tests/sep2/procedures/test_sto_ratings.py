"""STO-02/05 (PUT-DERCAPABILITY, PUT-DERSETTINGS): the VA, var and PF ratings and settings the
official procedures check for (rtgMaxVA, rtgMaxVar, rtgMaxVarNeg, rtgMinPFOverExcited,
rtgMinPFUnderExcited and their set* twins) reach the simulated utility, which validates every
body against the CSIP-AUS XSD (a 204 means valid), on a 1.2 and a 1.3 server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dynexport.sep2.flow import DerInfo
from dynexport.sep2.resources import DERCapability, DERSettings, PowerFactor, Scaled
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import FakeClock
from tests.sep2.procedures.conftest import (
    BATTERY_DER,
    RATED_W,
    Harness,
    battery_sample,
    make_client,
    needs_schema,
    new_server,
    procedure,
    requests,
    standard_preconditions,
)

pytestmark = needs_schema

DERCAP, DERG = "/edev/1/der/1/dercap", "/edev/1/der/1/derg"
RATINGS = {
    "rated_va": 13200.0,
    "rated_var": 7920.0,
    "rated_var_neg": 7500.0,
    "rated_pf_over": 0.8,
    "rated_pf_under": 0.85,
}
"""Two inverters' totals as App.der_info reports them (VA/var summed, PF the least capable)."""
PV_DER = DerInfo(rated_w=RATED_W, **RATINGS, set_va=12000.0, set_pf_over=0.9)  # type: ignore[arg-type]
STORAGE_DER = dataclasses.replace(BATTERY_DER, **RATINGS)  # type: ignore[arg-type]

FIELDS = (
    "rtgMaxVA", "rtgMaxVar", "rtgMaxVarNeg", "rtgMaxW", "rtgMinPFOverExcited",
    "rtgMinPFUnderExcited", "setMaxVA", "setMaxVar", "setMaxVarNeg", "setMaxW",
    "setMinPFOverExcited", "setMinPFUnderExcited",
)  # fmt: skip


def _real(v: Scaled | PowerFactor | None) -> float:
    assert v is not None
    if isinstance(v, PowerFactor):
        return float(v.displacement / 10**-v.multiplier)  # exact for the negative multipliers sent
    return v.real


async def _reports(
    srv: UtilityServer, clock: FakeClock, tmp: Path, der: DerInfo
) -> tuple[DERCapability, DERSettings]:
    standard_preconditions(srv)
    link = Harness(srv, make_client(srv, clock, tmp, der=der), clock, sampler=battery_sample)
    try:
        await link.run_for(1)
    finally:
        await link.close()
    cap = requests(srv, "PUT", DERCAP)[-1]
    settings = requests(srv, "PUT", DERG)[-1]
    assert cap.status == 204 and settings.status == 204, (cap.schema_error, settings.schema_error)
    assert isinstance(cap.resource, DERCapability) and isinstance(settings.resource, DERSettings)
    for name in FIELDS:
        body = (cap if name.startswith("rtg") else settings).body
        assert f"<{name}>".encode() in body, name
    return cap.resource, settings.resource


async def test_sto_02_va_var_and_pf_ratings_and_settings_reach_the_utility(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    text = procedure("STO-02", "PUT-DERCAPABILITY", "PUT-DERSETTINGS")
    for name in FIELDS:
        assert f"{name}: true" in text, f"STO-02 no longer checks {name}"
    cap, settings = await _reports(server, clock, tmp_path, PV_DER)
    assert _real(cap.rtg_max_va) == 13200.0 and _real(cap.rtg_max_var) == 7920.0
    assert _real(cap.rtg_max_var_neg) == -7500.0, "var received is negative in IEEE 2030.5"
    assert _real(cap.rtg_min_pf_over_excited) == 0.8
    assert _real(cap.rtg_min_pf_under_excited) == 0.85
    assert _real(settings.set_max_va) == 12000.0, "the inverters' setting"
    assert _real(settings.set_max_var) == 7920.0, "no setting: the rating"
    assert _real(settings.set_max_var_neg) == -7500.0
    assert _real(settings.set_min_pf_over_excited) == 0.9
    assert _real(settings.set_min_pf_under_excited) == 0.85


async def test_sto_05_the_same_fields_validate_on_a_v1_3_server_with_a_battery(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    text = procedure("STO-05", "PUT-DERCAPABILITY", "PUT-DERSETTINGS")
    assert "rtgMinPFUnderExcited" in text
    srv = new_server(pki_dir, clock, csipaus_version="1.3")
    async with srv.running():
        cap, settings = await _reports(srv, clock, tmp_path, STORAGE_DER)
    assert cap.vpp_modes_supported == 0x01, "spoke v1.3"
    assert _real(cap.rtg_max_var_neg) == -7500.0
    assert _real(settings.set_min_pf_under_excited) == 0.85


async def test_a_device_that_gives_no_ratings_sends_none_and_stays_valid(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    standard_preconditions(server)
    link = Harness(
        server, make_client(server, clock, tmp_path, der=DerInfo(rated_w=RATED_W)), clock
    )
    try:
        await link.run_for(1)
    finally:
        await link.close()
    cap = requests(server, "PUT", DERCAP)[-1]
    assert cap.status == 204 and isinstance(cap.resource, DERCapability)
    assert cap.resource.rtg_max_var_neg is None and cap.resource.rtg_min_pf_over_excited is None
