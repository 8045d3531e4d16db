"""The utility link with a battery configured: import and load limit events are performed
(responses 1, 2, 3) only when the site enforces them, and the DER mirror carries the stored
energy the CSIP-AUS storage procedures check (docs/sep2.md "Telemetry")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.controls import ENFORCED_CONTROLS, enforced_controls
from dynexport.sep2.flow import DerInfo
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock, utility_config

WITH_BATTERY = DerInfo(
    rated_w=5000,
    rated_charge_w=5000,
    rated_discharge_w=5000,
    rated_wh=10_000,
    state_of_charge_pct=50.0,
    enforced=enforced_controls(True),
)
PV_ONLY = DerInfo(rated_w=5000)


@pytest.fixture
async def server(pki_dir: Path, clock: FakeClock) -> AsyncIterator[UtilityServer]:
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    async with srv.running():
        yield srv


def make_client(
    srv: UtilityServer, clock: FakeClock, data_dir: Path | None, der: DerInfo | None
) -> Sep2Client:
    return Sep2Client(
        utility_config(srv),
        data_dir,
        der=der,
        clock=clock,
        options=ClientOptions(http_timeout=5.0, http_retries=0),
    )


def statuses(srv: UtilityServer, mrid: str) -> list[int]:
    return [r.status for r in srv.responses if r.subject == mrid and r.status is not None]


async def _run_event(
    server: UtilityServer, clock: FakeClock, tmp_path: Path, der: DerInfo | None, **limit: float
) -> list[int]:
    mrid = server.add_control(start=int(T0) + 100, duration=100, **limit)  # type: ignore[arg-type]
    client = make_client(server, clock, tmp_path, der)
    try:
        await client.step()
        clock.advance(101)
        await client.step()
        clock.advance(100)
        await client.step()
    finally:
        await client.http.aclose()
    return statuses(server, mrid)


@pytest.mark.parametrize("field", ["import_limit_w", "load_limit_w"])
async def test_an_import_or_load_limit_event_is_performed_when_a_battery_is_configured(
    server: UtilityServer, clock: FakeClock, tmp_path: Path, field: str
) -> None:
    assert await _run_event(server, clock, tmp_path, WITH_BATTERY, **{field: 1500.0}) == [1, 2, 3]


@pytest.mark.parametrize("der", [PV_ONLY, None], ids=["pv-only", "no-der-yet"])
@pytest.mark.parametrize("field", ["import_limit_w", "load_limit_w"])
async def test_an_import_or_load_limit_event_is_not_applicable_without_a_battery(
    server: UtilityServer, clock: FakeClock, tmp_path: Path, field: str, der: DerInfo | None
) -> None:
    assert PV_ONLY.enforced == ENFORCED_CONTROLS
    assert await _run_event(server, clock, tmp_path, der, **{field: 1500.0}) == [1, 252]


async def test_an_export_limit_event_is_performed_either_way(
    server: UtilityServer, clock: FakeClock, tmp_path: Path
) -> None:
    assert await _run_event(server, clock, tmp_path, PV_ONLY, export_limit_w=0.0) == [1, 2, 3]
