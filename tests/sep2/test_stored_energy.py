"""The DER's stored energy for the CSIP-AUS storage procedures (STO-01, 03, 04, 06 check
``readings-der-stored-energy``: a DER mirror series of uom 72 Wh, kind 12 energy, dataQualifier
0), from the pure mirror code through the client to the simulator, which checks it the way the
harness counts it (docs/sep2.md "Telemetry")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sep2 import flow, schema
from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.resources import ReadingType, to_xml
from dynexport.sep2.telemetry import IntervalAverager, IntervalReading, Sample
from dynexport.sim.utility_core import READING_TYPE, is_stored_energy, reading_type_problem
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock, utility_config

LFDI = "3E4F45AB31EDFE5B67E343E5E4562E31984E23E5"
DER_FLAGS = flow.DER_ROLE_FLAGS
SITE_FLAGS = flow.SITE_ROLE_FLAGS


def test_stored_energy_is_one_instantaneous_energy_series_in_wh_on_the_der_mirror() -> None:
    reading = IntervalReading("der", "Wh", 300, 300, 5000.4, 4990.0, 5010.0, 60)
    mmrs = flow.meter_readings(LFDI, "der", [reading])
    assert len(mmrs) == 1, "stored energy has no min/max series"
    rt = mmrs[0].reading_type
    assert rt is not None
    assert (rt.uom, rt.kind, rt.data_qualifier, rt.phase) == (72, 12, 0, 0)
    assert rt.flow_direction is None  # a level, not a flow
    assert mmrs[0].mirror_reading_sets[0].readings[0].value == 5000
    assert is_stored_energy(rt, DER_FLAGS)
    if schema.schema_available():
        schema.validate(to_xml(flow.meter_reading_list(mmrs)))


def test_stored_energy_is_never_mirrored_on_the_site_mirror() -> None:
    reading = IntervalReading("site", "Wh", 300, 300, 5000.0, 5000.0, 5000.0, 60)
    assert flow.meter_readings(LFDI, "site", [reading]) == []


def test_power_readings_keep_their_power_reading_types() -> None:
    reading = IntervalReading("der", "W", 300, 300, 3000.0, 2900.0, 3100.0, 60)
    types = [m.reading_type for m in flow.meter_readings(LFDI, "der", [reading])]
    assert [(t.uom, t.kind, t.data_qualifier, t.flow_direction) for t in types if t] == [
        (38, 37, 2, 1), (38, 37, 9, 1), (38, 37, 8, 1),
    ]  # fmt: skip


def test_the_averager_carries_stored_energy_like_any_quantity() -> None:
    avg = IntervalAverager(60)
    avg.add(Sample(0.0, {("der", "Wh"): 4000.0}))
    avg.add(Sample(30.0, {("der", "Wh"): 4100.0}))
    (closed,) = avg.add(Sample(60.0, {("der", "Wh"): 4200.0}))
    assert (closed.role, closed.quantity, closed.mean) == ("der", "Wh", 4050.0)


@pytest.mark.parametrize(
    ("rt", "flags", "problem"),
    [
        (ReadingType(uom=72, kind=12, data_qualifier=0), DER_FLAGS, None),
        (ReadingType(uom=72, kind=12, data_qualifier=0), SITE_FLAGS, "not a DER"),
        (ReadingType(uom=72, kind=37, data_qualifier=0), DER_FLAGS, "kind 37"),
        (ReadingType(uom=72, kind=12, data_qualifier=2), DER_FLAGS, "dataQualifier 2"),
        (ReadingType(uom=38, kind=37, data_qualifier=2), SITE_FLAGS, None),
        (ReadingType(uom=38, kind=12, data_qualifier=2), SITE_FLAGS, "kind 12"),
        (ReadingType(uom=38, kind=37, data_qualifier=0), SITE_FLAGS, "dataQualifier 0"),
        (ReadingType(uom=106, kind=37, data_qualifier=2), DER_FLAGS, "uom 106"),
        (None, DER_FLAGS, "no ReadingType"),
    ],
)
def test_the_simulator_accepts_only_reading_types_the_harness_reads(
    rt: ReadingType | None, flags: int, problem: str | None
) -> None:
    found = reading_type_problem(rt, flags)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@settings(max_examples=200, deadline=None)
@given(
    quantity=st.sampled_from(list(flow.UOM)),
    role=st.sampled_from(["site", "der"]),
    phase=st.sampled_from(["", "A", "B", "C"]),
    min_max=st.booleans(),
    mean=st.floats(min_value=0.0, max_value=1e6),
)
def test_every_series_the_client_makes_passes_the_simulator(
    quantity: str, role: str, phase: str, min_max: bool, mean: float
) -> None:
    """Whatever the client mirrors, the simulator's reading-type check accepts."""
    reading = IntervalReading(role, quantity, 300, 300, mean, mean, mean, 3, phase)
    flags = DER_FLAGS if role == "der" else SITE_FLAGS
    for mmr in flow.meter_readings(LFDI, role, [reading], min_max=min_max):
        assert reading_type_problem(mmr.reading_type, flags) is None


# --- through the client ---------------------------------------------------------------------


@pytest.fixture
async def server(pki_dir: Path, clock: FakeClock) -> AsyncIterator[UtilityServer]:
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    async with srv.running():
        yield srv


async def test_stored_energy_samples_reach_the_der_mirror_as_the_harness_counts_them(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    client = Sep2Client(
        utility_config(server),
        tmp_path,
        der=DerInfo(rated_w=5000, rated_wh=10_000, state_of_charge_pct=50.0),
        clock=clock,
        options=ClientOptions(http_timeout=5.0, http_retries=0),
    )
    try:
        await client.step()  # walk, mirrors created; post rate 60 s
        for i in range(4 * 6 + 1):  # four 60 s intervals of 10 s samples, then one to close
            values = {("site", "W"): -1000.0, ("der", "W"): 3000.0, ("der", "Wh"): 5000.0 + i}
            client.add_sample(Sample(clock(), values))
            clock.advance(10)
            await client.step()
        clock.advance(60)
        await client.step()
    finally:
        await client.http.aclose()
    stored = server.stored_energy_values()
    assert len(stored) >= 4, "STO-01 wants at least 4 stored-energy readings"
    assert all(5000 <= v <= 5024 for v in stored)
    assert [v for v in server.violations if v.check == READING_TYPE] == []
    assert all(r.role_flags == DER_FLAGS for r in server.readings if r.stored_energy)
    assert int(T0) % 60 == 0
