"""A hostile or broken utility server, end to end over real mutual TLS against the simulator.

Each test first walks a healthy server so that an export limit of 1500 W is in force, then lets
the server answer the next DERControlList request with something hostile. In every case the
client must record a clear error naming the problem, neither crash nor hang (each step runs
under `trio.fail_after`), keep its memory bounded, and keep obeying the last valid schedule.
The client and the simulator share a fake wall clock, as in `test_client.py`.
"""

from __future__ import annotations

import resource
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from dynexport.sep2 import schema
from dynexport.sep2.client import Sep2Client
from dynexport.sep2.xml import DEFAULT_MAX_BYTES
from dynexport.sim.utility_server import UtilityServer

from . import hostile
from .fakes import T0, FakeClock
from .hostile import DERC, export_limit, make_client

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)

LIMIT_W = 1500
"""The export limit in force before the hostile answer."""
STEP_BOUND_S = 10
"""No step may take longer than this (real time): a hang fails the test instead of the run."""


@pytest.fixture
async def server(pki_dir: Path, clock: FakeClock) -> AsyncIterator[UtilityServer]:
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.add_control(start=int(T0) - 10, duration=3600, export_limit_w=LIMIT_W)
    srv.set_default(export_limit_w=5000)
    async with srv.running():
        yield srv


async def step(client: Sep2Client) -> None:
    with trio.fail_after(STEP_BOUND_S):
        await client.step()


async def healthy_client(server, clock, tmp_path, **kwargs) -> Sep2Client:
    """A client that has walked the healthy server: 1500 W in force."""
    client = make_client(server, clock, tmp_path / "data", **kwargs)
    await step(client)
    assert client.state().connected and client.state().last_error is None
    assert export_limit(client) == LIMIT_W
    return client


async def hostile_walk(client: Sep2Client, clock: FakeClock) -> str:
    """Lets the DERControlList poll come due, steps once, and returns the error recorded."""
    clock.advance(61)
    await step(client)
    state = client.state()
    assert not state.connected
    assert state.last_error is not None
    return state.last_error


def assert_schedule_kept(client: Sep2Client) -> None:
    assert export_limit(client) == LIMIT_W
    assert client.state().active is not None


async def assert_recovers(client: Sep2Client, server: UtilityServer, clock: FakeClock) -> None:
    """Once the server behaves again, the next walk after the backoff succeeds."""
    server.clear_faults()
    clock.advance(61)
    await step(client)
    assert client.state().connected
    assert export_limit(client) == LIMIT_W


# --- bodies that do not parse ----------------------------------------------------------------


async def test_malformed_xml_is_named_and_the_last_schedule_kept(server, clock, tmp_path):
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(path_prefix=DERC, status=200, body=hostile.malformed())
    error = await hostile_walk(client, clock)
    assert "DERControlList: malformed XML" in error
    assert_schedule_kept(client)
    await assert_recovers(client, server, clock)
    await client.http.aclose()


async def test_wrong_namespace_is_named_and_the_last_schedule_kept(server, clock, tmp_path):
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(path_prefix=DERC, status=200, body=hostile.wrong_namespace())
    error = await hostile_walk(client, clock)
    assert "root <DERControlList> is in namespace 'urn:wrong'" in error
    assert_schedule_kept(client)
    await assert_recovers(client, server, clock)
    await client.http.aclose()


async def test_wrong_root_element_is_named_and_the_last_schedule_kept(server, clock, tmp_path):
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(path_prefix=DERC, status=200, body=hostile.wrong_root())
    error = await hostile_walk(client, clock)
    assert "wrong root element <DERProgramList>, expected <DERControlList>" in error
    assert_schedule_kept(client)
    await client.http.aclose()


async def test_excessively_nested_body_is_refused(server, clock, tmp_path):
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(path_prefix=DERC, status=200, body=hostile.deeply_nested())
    error = await hostile_walk(client, clock)
    assert "DERControlList: malformed XML: Excessive depth" in error
    assert_schedule_kept(client)
    await client.http.aclose()


async def test_controls_in_a_foreign_namespace_do_not_erase_the_schedule(server, clock, tmp_path):
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(path_prefix=DERC, status=200, body=hostile.foreign_namespace_controls())
    clock.advance(61)
    await step(client)
    # what a fix must give: the page is refused, the error names it, the 1500 W limit stays
    assert export_limit(client) == LIMIT_W, "the active 1500 W event was dropped"
    error = client.state().last_error
    assert error is not None and "DERControlList" in error
    await client.http.aclose()


# --- entity expansion and external entities --------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
async def test_billion_laughs_is_refused_without_expansion(server, clock, tmp_path, encoding):
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(path_prefix=DERC, status=200, body=hostile.billion_laughs(encoding))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error = await hostile_walk(client, clock)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    # refused at the DOCTYPE (UTF-8), or by libxml2's amplification limit (UTF-16, where the
    # DOCTYPE bytes are hidden from the byte-level check)
    assert "DOCTYPE" in error or "entity amplification" in error, error
    assert "lollol" not in error
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"
    assert_schedule_kept(client)
    await assert_recovers(client, server, clock)
    await client.http.aclose()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
async def test_external_entity_is_refused_and_the_file_never_read(
    server, clock, tmp_path, encoding
):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(
        path_prefix=DERC, status=200, body=hostile.external_entity(secret, encoding)
    )
    error = await hostile_walk(client, clock)
    assert "a DOCTYPE/DTD is not accepted" in error
    state = client.state()
    assert "TOPSECRET" not in repr(state)
    assert all("TOPSECRET" not in repr(p) for p in client.programs())
    assert_schedule_kept(client)
    await client.http.aclose()


# --- huge bodies -----------------------------------------------------------------------------


async def _peak_during_hostile_walk(client: Sep2Client, clock: FakeClock) -> tuple[str, int]:
    tracemalloc.start()
    try:
        error = await hostile_walk(client, clock)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return error, peak


async def test_a_5_mib_body_is_refused_from_its_content_length(server, clock, tmp_path):
    body = hostile.huge()  # allocated before measuring: the server holds it, not the client
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(path_prefix=DERC, status=200, body=body)
    received = client.http.stats.bytes_received
    error, peak = await _peak_during_hostile_walk(client, clock)
    assert f"body of {len(body)} bytes exceeds the {DEFAULT_MAX_BYTES}-byte bound" in error
    read = client.http.stats.bytes_received - received
    assert read < DEFAULT_MAX_BYTES, f"read {read} bytes of a body refused from its headers"
    # the peak includes the simulator's own copies of the body (same process)
    assert peak < 10 * DEFAULT_MAX_BYTES, f"peak {peak} bytes for a {DEFAULT_MAX_BYTES}-byte cap"
    assert_schedule_kept(client)
    await assert_recovers(client, server, clock)
    await client.http.aclose()


async def test_a_5_mib_chunked_body_is_cut_off_at_the_cap(server, clock, tmp_path):
    body = hostile.huge()
    client = await healthy_client(server, clock, tmp_path)
    server.inject_fault(path_prefix=DERC, status=200, body=body, chunk_size=64 * 1024)
    error, peak = await _peak_during_hostile_walk(client, clock)
    assert f"body exceeds the {DEFAULT_MAX_BYTES}-byte bound" in error
    # at most the cap is buffered (about 1.4 MiB peak, the simulator's chunks included); a
    # client that read the whole body first would pass 5 MiB
    assert peak < 3 * DEFAULT_MAX_BYTES, f"peak {peak} bytes for a {DEFAULT_MAX_BYTES}-byte cap"
    assert_schedule_kept(client)
    await assert_recovers(client, server, clock)
    await client.http.aclose()


# --- slow and broken connections -------------------------------------------------------------


async def test_a_body_trickling_past_the_timeout_is_abandoned(server, clock, tmp_path):
    client = await healthy_client(server, clock, tmp_path, timeout=1.0)
    server.inject_fault(
        path_prefix=DERC, status=200, body=hostile.control_list(), chunk_size=16, chunk_delay_s=0.2
    )
    error = await hostile_walk(client, clock)
    assert "HttpTimeout" in error and "no complete response within 1.0 s" in error
    assert_schedule_kept(client)
    await assert_recovers(client, server, clock)
    await client.http.aclose()


async def test_a_server_that_never_answers_times_out(server, clock, tmp_path):
    client = await healthy_client(server, clock, tmp_path, timeout=1.0)
    server.inject_fault(path_prefix=DERC, status=None, delay_s=30)
    error = await hostile_walk(client, clock)
    assert "no complete response within 1.0 s" in error
    assert_schedule_kept(client)
    await client.http.aclose()


async def test_a_dropped_connection_is_a_clear_error(server, clock, tmp_path):
    client = await healthy_client(server, clock, tmp_path)
    # twice: a GET on a kept-alive connection is re-sent once on a fresh one by design
    server.inject_fault(path_prefix=DERC, drop=True, count=2)
    error = await hostile_walk(client, clock)
    assert "closed connection" in error and DERC in error
    assert_schedule_kept(client)
    await assert_recovers(client, server, clock)
    await client.http.aclose()


async def test_a_server_certificate_from_another_serca_is_refused(pki_dir, clock, tmp_path):
    genuine = UtilityServer(pki_dir=pki_dir, clock=clock)
    genuine.add_control(start=int(T0) - 10, duration=3600, export_limit_w=LIMIT_W)
    async with genuine.running():
        client = await healthy_client(genuine, clock, tmp_path)
        port = genuine.port
    assert port is not None
    # an impostor with a certificate from another SERCA answers on the same address
    impostor = UtilityServer(pki_dir=tmp_path / "impostor-pki", clock=clock)
    async with impostor.running(port=port):
        error = await hostile_walk(client, clock)
        assert "server certificate not signed by the configured SERCA" in error
        assert impostor.received == []  # nothing was sent to it
    assert_schedule_kept(client)
    await client.http.aclose()
