"""SDVN-01, Service Discovery and Version Negotiation (class A, CSIP-AUS v1.3): the client finds
its DeviceCapability through ``/.well-known/csipaus``, takes the entry of the version it speaks
(v1.3 here; v1.2's lists no path), and never reads the paths of an unsupported (v99.99) or a
malformed ("null") version, nor the default ``/dcap``: each of those ends the harness's run as
failed. It then registers (POST-EDEV) and puts its ConnectionPoint (PUT-CP). The random paths
of the procedure (``$randuri_N``) are fixed names here; the simulator serves the DeviceCapability
at the v1.3 one, as the harness's add-proxy-route does."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynexport.sep2.discovery import WELL_KNOWN_PATH
from tests.sep2.fakes import FakeClock
from tests.sep2.procedures.conftest import (
    Harness,
    make_client,
    needs_schema,
    new_server,
    procedure,
    standard_preconditions,
)

pytestmark = needs_schema

VERSIONS = {
    "https://csipaus.org/ns/v99.99": ["/randuri_1"],  # FAIL-UNSUPPORTED-VERSION
    "null": ["/randuri_2"],  # FAIL-MALFORMED-DCAP
    "https://csipaus.org/ns/v1.2": [],
    "https://csipaus.org/ns/v1.3": ["/randuri_3"],  # GET-DCAP
}


@pytest.mark.parametrize("csipaus_version", ["auto", "1.3"])
async def test_sdvn_01_discovers_the_device_capability_of_its_version_only(
    pki_dir: Path, clock: FakeClock, tmp_path: Path, csipaus_version: str
) -> None:
    text = procedure(
        "SDVN-01",
        "GET-DCAP",
        "FAIL-DEFAULT-DCAP",
        "FAIL-UNSUPPORTED-VERSION",
        "FAIL-MALFORMED-DCAP",
        "POST-EDEV",
        "PUT-CP",
    )
    for version in VERSIONS:
        assert f'version: "{version}"' in text, f"SDVN-01 no longer lists {version}"
    srv = new_server(pki_dir, clock, csipaus_version="1.3", preregistered=False)
    standard_preconditions(srv)
    srv.well_known = dict(VERSIONS)
    srv.dcap_aliases = {"/randuri_3"}
    async with srv.running():
        link = Harness(
            srv, make_client(srv, clock, tmp_path, csipaus_version=csipaus_version), clock
        )
        await link.run_for(300)  # five DeviceCapability pollRates: polled where it was found
        await link.close()
    read = [r.path for r in srv.received if r.method == "GET"]
    assert read[:2] == [WELL_KNOWN_PATH, "/randuri_3"]
    assert read.count("/randuri_3") >= 5
    assert not {"/dcap", "/randuri_1", "/randuri_2"} & set(read)
    writes = [(r.method, r.path) for r in srv.received if r.method != "GET"]
    assert ("POST", "/edev") in writes and ("PUT", "/edev/1/cp") in writes
    assert link.client.state().connected
