"""The utility simulator over real mutual TLS with the project's HTTP client and the test PKI:
what a client sees, injected faults, a foreign certificate refused, and the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dynexport.httpio import (
    HttpClient,
    HttpConnectionError,
    HttpError,
    client_context,
    parse_retry_after,
)
from dynexport.sep2 import resources as r
from dynexport.sep2 import schema
from dynexport.sep2.certs import TestPki, make_test_pki
from dynexport.sim.utility_server import DROPPED, UtilityServer

pytestmark = pytest.mark.skipif(
    not schema.wheel_path().is_file(),
    reason=f"{schema.WHEEL_NAME} not in {schema.wheels_dir()}: run `make wheels`",
)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One test PKI for the module; each server reuses it (which also tests reuse)."""
    folder = Path(tmp_path_factory.mktemp("utility-pki"))
    make_test_pki(folder, now=datetime.now(UTC))
    return folder


def client_for(server: UtilityServer, pki: TestPki | None = None, **kwargs) -> HttpClient:
    device = pki or server.pki
    ctx = client_context(
        ca_files=[server.pki.files["serca"]],
        cert_file=device.files["device_chain"],
        key_file=device.files["device_key"],
    )
    kwargs.setdefault("retries", 0)
    return HttpClient(server.url, ctx, **kwargs)


async def test_a_client_reads_the_device_capability_over_mutual_tls(pki_dir):
    server = UtilityServer(pki_dir=pki_dir)
    async with server.running(), client_for(server) as client:
        assert server.url.startswith("https://127.0.0.1:")
        response = await client.get("/dcap")
        assert response.status == 200
        assert response.header("content-type") == "application/sep+xml"
        dcap = r.parse_as(r.DeviceCapability, response.body)
        assert dcap.end_device_list_link == r.ListLink("/edev", 1)
        assert dcap.time_link is not None
        edev = r.parse_as(r.EndDeviceList, (await client.get("/edev?s=0&l=10")).body)
        assert [d.lfdi for d in edev.items] == [server.pki.device_lfdi]
    [recorded] = server.received[:1]
    assert (recorded.path, recorded.status) == ("/dcap", 200)
    assert recorded.lfdi == server.pki.device_lfdi  # identified by its certificate


async def test_a_der_control_response_posted_over_tls_is_kept(pki_dir):
    server = UtilityServer(pki_dir=pki_dir)
    mrid = server.add_control(start=int(server.now()), duration=300, export_limit_w=0)
    response = r.DERControlResponse(
        end_device_lfdi=server.pki.device_lfdi, subject=mrid, status=1, created_date_time=1
    )
    async with server.running(), client_for(server) as client:
        reply = await client.post("/rsp", r.to_xml(response))
        assert reply.status == 201
        assert reply.header("location") == "/rsp/1"
    assert server.responses == [response]
    assert server.requests_for("/rsp")[0].resource == response


async def test_a_429_with_retry_after_is_seen_by_the_client_and_then_cleared(pki_dir):
    server = UtilityServer(pki_dir=pki_dir)
    server.inject_fault(path_prefix="/tm", status=429, retry_after="120")
    async with server.running(), client_for(server) as client:
        throttled = await client.get("/tm")
        assert throttled.status == 429
        assert throttled.header("retry-after") == "120"
        assert parse_retry_after(throttled.header("retry-after"), 0.0) == 120
        assert (await client.get("/dcap")).status == 200  # other paths are not affected
        assert (await client.get("/tm")).status == 200  # count=1: the fault is used up
    assert [x.status for x in server.requests_for("/tm")] == [429, 200]


async def test_a_client_that_retries_gets_through_after_a_503_without_retry_after(pki_dir):
    server = UtilityServer(pki_dir=pki_dir)
    server.inject_fault(path_prefix="/edev", status=503, count=2)
    async with server.running(), client_for(server, retries=2, backoff_base=0.001) as client:
        assert (await client.get("/edev")).status == 200
    statuses = [(x.status, x.path) for x in server.received]
    assert statuses == [(503, "/edev"), (503, "/edev"), (200, "/edev")]


async def test_a_dropped_connection_fails_the_request_and_the_next_one_succeeds(pki_dir):
    server = UtilityServer(pki_dir=pki_dir)
    server.inject_fault(path_prefix="/dcap", drop=True)
    async with server.running(), client_for(server) as client:
        with pytest.raises(HttpError):
            await client.get("/dcap")
        assert (await client.get("/dcap")).status == 200
    assert [x.status for x in server.received] == [DROPPED, 200]


async def test_a_delay_fault_without_a_status_answers_normally(pki_dir):
    server = UtilityServer(pki_dir=pki_dir)
    server.inject_fault(path_prefix="/tm", status=None, delay_s=0.01)
    async with server.running(), client_for(server) as client:
        assert (await client.get("/tm")).status == 200


async def test_a_client_certificate_from_another_serca_fails_the_handshake(pki_dir, tmp_path):
    foreign = make_test_pki(tmp_path / "foreign", now=datetime.now(UTC))
    server = UtilityServer(pki_dir=pki_dir)
    async with server.running(), client_for(server, foreign) as client:
        with pytest.raises(HttpConnectionError):
            await client.get("/dcap")
    assert server.received == []


async def test_the_server_stops_at_the_end_of_the_block(pki_dir):
    server = UtilityServer(pki_dir=pki_dir)
    async with server.running(), client_for(server) as client:
        assert (await client.get("/dcap")).status == 200
    async with client_for(server, connect_timeout=5) as after:
        with pytest.raises(HttpConnectionError):
            await after.get("/dcap")


async def test_an_invalid_body_over_tls_is_a_400_and_recorded(pki_dir):
    server = UtilityServer(pki_dir=pki_dir)
    async with server.running(), client_for(server) as client:
        reply = await client.put("/edev/1/cp", b"<ConnectionPoint xmlns='urn:wrong'/>")
        assert reply.status == 400
    [recorded] = server.requests_for("/edev/1/cp")
    assert recorded.status == 400 and recorded.schema_error


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("stop", "inherited"),
    [
        (signal.SIGINT, None),
        (signal.SIGTERM, None),
        # A shell without job control starts background commands with SIGINT ignored, and an
        # ignored disposition is inherited: Ctrl-C from the demo must still stop it.
        (signal.SIGINT, _ignore_sigint),
    ],
    ids=["sigint", "sigterm", "sigint-from-a-background-shell"],
)
def test_the_command_line_serves_until_interrupted(tmp_path, stop, inherited):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynexport.sim.utility_server", "--pki", str(tmp_path / "pki"),
         "--port", "0", "--step", "5000,1500,0", "--every", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        preexec_fn=inherited,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("CSIP-AUS utility simulator at https://127.0.0.1:")
        pki = (tmp_path / "pki" / "pki.json").read_text()
        lfdi = lines[1].split()[2]
        assert len(lfdi) == 40 and lfdi in pki
        assert '"type": "csip-aus"' in lines[2]
        proc.send_signal(stop)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_without_a_pki_folder_the_server_makes_its_own_test_pki():
    server = UtilityServer()
    assert server.pki.files["serca"].is_file()
    async with server.running(), client_for(server) as client:
        assert (await client.get("/edev/1")).status == 200
    assert server.received[0].lfdi == server.pki.device_lfdi


async def test_a_mirror_without_the_expected_pen_over_tls_is_accepted_recorded_and_logged(
    pki_dir, caplog
):
    server = UtilityServer(pki_dir=pki_dir, expected_pen=46273)
    lfdi = server.pki.device_lfdi
    wrong = r.MirrorUsagePoint(
        mrid="AB" * 12 + "0000B4C1",  # 46273 in hex: the harness reads decimal
        role_flags=0x03,
        service_category_kind=0,
        status=1,
        device_lfdi=lfdi,
    )
    async with server.running(), client_for(server) as client:
        reply = await client.post("/mup", r.to_xml(wrong))
    assert reply.status == 201  # like the harness: accepted, then graded
    [violation] = server.violations
    assert violation.check == "mrid-pen" and violation.path == "/mup"
    assert any("mrid-pen" in m and "0000B4C1" in m for m in caplog.messages)
