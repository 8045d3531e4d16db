"""Service discovery (CSIP-AUS v1.3): the DeviceCapability is found through
``/.well-known/csipaus``, by our version's entry only; a server without the file, or with one
that is no such document, is read at the configured path, and one that cannot answer now is
asked again. The procedure itself (SDVN-01) is mirrored in tests/sep2/procedures/test_sdvn_01.py;
here its server layout meets the faults around it. The document's choice itself is pure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynexport.sep2 import schema
from dynexport.sep2.client import ClientOptions, Sep2Client
from dynexport.sep2.controls import ControlType
from dynexport.sep2.discovery import (
    CSIPAUS_NS_12,
    WELL_KNOWN_PATH,
    Discovered,
    DiscoveryError,
    choose_dcap,
    versions_for,
)
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.xml import CSIPAUS_NS, CSIPAUS_NS_13
from dynexport.sim import utility_core
from dynexport.sim.utility_core import Reply
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import FakeClock, utility_config

V99 = "https://csipaus.org/ns/v99.99"
HERE = ("https", "utility.example", 443)
"""The server's origin, for the document's choice."""


def document(entries: dict[str, list[str]]) -> bytes:
    return json.dumps(
        {"supportedSchemaVersions": {k: {"dcap": v} for k, v in entries.items()}}
    ).encode()


# --- the document (pure) ----------------------------------------------------------------------


def test_our_versions_entry_is_taken_and_no_other() -> None:
    body = document({V99: ["/r1"], "null": ["/r2"], CSIPAUS_NS_12: [], CSIPAUS_NS_13: ["/r3"]})
    assert choose_dcap(body, versions_for("auto"), HERE) == Discovered(CSIPAUS_NS_13, "/r3")
    assert choose_dcap(body, versions_for("1.2"), HERE) is None, "v1.2 lists no path here"
    assert (
        choose_dcap(document({V99: ["/r1"], "null": ["/r2"]}), versions_for("auto"), HERE) is None
    )


def test_a_url_on_another_origin_is_passed_over_for_the_next_path() -> None:
    """Found by review: a URL on another host listed first hid the usable path after it,
    and the link read the configured /dcap (SDVN-01's FAIL-DEFAULT-DCAP)."""
    body = document({CSIPAUS_NS_13: ["https://elsewhere.example/dcap", "/r3"]})
    assert choose_dcap(body, versions_for("auto"), HERE) == Discovered(CSIPAUS_NS_13, "/r3")
    same = document({CSIPAUS_NS_13: ["https://UTILITY.example:443/d"]})
    assert choose_dcap(same, versions_for("auto"), HERE) == Discovered(
        CSIPAUS_NS_13, "https://UTILITY.example:443/d"
    )
    for other in ("https://utility.example:8443/d", "http://utility.example/d"):
        assert choose_dcap(document({CSIPAUS_NS_13: [other]}), versions_for("auto"), HERE) is None


def test_the_best_version_with_a_path_wins_then_its_first_usable_path() -> None:
    body = document({CSIPAUS_NS: ["/old"], CSIPAUS_NS_13: ["relative", "//host/x", "/v13", "/b"]})
    assert choose_dcap(body, versions_for("auto"), HERE) == Discovered(CSIPAUS_NS_13, "/v13")
    assert choose_dcap(body, versions_for("1.2"), HERE) == Discovered(CSIPAUS_NS, "/old")
    assert choose_dcap(document({CSIPAUS_NS_13: []}), versions_for("1.3"), HERE) is None


@pytest.mark.parametrize(
    "body",
    [
        b"<xml/>",
        b"\xff\xfe",
        b"[]",
        b'{"supportedSchemaVersions": []}',
        json.dumps({"supportedSchemaVersions": {CSIPAUS_NS_13: {"dcap": "/dcap"}}}).encode(),
        json.dumps({"supportedSchemaVersions": {CSIPAUS_NS_13: ["/dcap"]}}).encode(),
        json.dumps({"supportedSchemaVersions": {CSIPAUS_NS_13: {"dcap": [1]}}}).encode(),
        b"[" * 100_000,
    ],
)
def test_a_body_that_is_not_the_csip_aus_document_is_a_discovery_error(body: bytes) -> None:
    with pytest.raises(DiscoveryError):
        choose_dcap(body, versions_for("auto"), HERE)


def test_a_malformed_entry_of_another_version_is_not_ours_to_judge() -> None:
    body = json.dumps(
        {"supportedSchemaVersions": {V99: "nonsense", CSIPAUS_NS_13: {"dcap": ["/d"]}}}
    ).encode()
    assert choose_dcap(body, versions_for("auto"), HERE) == Discovered(CSIPAUS_NS_13, "/d")


# --- against the simulator --------------------------------------------------------------------

pytestmark_xsd = pytest.mark.skipif(not schema.schema_available(), reason="needs the XSD")


def sdvn_01_server(pki_dir: Path, clock: FakeClock) -> UtilityServer:
    """The server as SDVN-01 sets it up: entries for an unsupported and a malformed version,
    none for v1.2, and v1.3's DeviceCapability at a random path."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock, csipaus_version="1.3")
    srv.set_default(export_limit_w=0)
    srv.well_known = {V99: ["/r1"], "null": ["/r2"], CSIPAUS_NS_12: [], CSIPAUS_NS_13: ["/r3"]}
    srv.dcap_aliases = {"/r3"}
    return srv


def client_of(
    srv: UtilityServer, tmp_path: Path, clock: FakeClock, **changes: object
) -> Sep2Client:
    return Sep2Client(
        utility_config(srv, **changes),
        tmp_path,
        der=DerInfo(rated_w=5000),
        clock=clock,
        options=ClientOptions(http_timeout=5.0, http_retries=1),
    )


def gets(srv: UtilityServer) -> list[str]:
    return [r.path for r in srv.received if r.method == "GET"]


@pytestmark_xsd
@pytest.mark.parametrize("status", [404, 410, 403])
async def test_a_server_without_the_file_is_read_at_the_configured_path(
    pki_dir: Path, clock: FakeClock, tmp_path: Path, status: int
) -> None:
    """v1.2 does not guarantee the file (the test server answers 410 for a v1.2 run)."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=1500)
    srv.inject_fault(path_prefix=WELL_KNOWN_PATH, status=status)
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            await client.step()
            active = client.active_controls()
            assert active is not None and active.value(ControlType.EXPORT_LIMIT_W) == 1500
        finally:
            await client.http.aclose()
    assert gets(srv)[:2] == [WELL_KNOWN_PATH, "/dcap"]


@pytestmark_xsd
async def test_a_server_that_cannot_answer_for_its_file_now_is_asked_again_never_skipped(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """A 503 (or a dropped connection) says nothing about the file: read /dcap then and a v1.3
    server's run fails SDVN-01."""
    srv = sdvn_01_server(pki_dir, clock)
    srv.inject_fault(path_prefix=WELL_KNOWN_PATH, status=503, count=2)  # a GET and its retry
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            await client.step()
            assert client.active_controls() is None
            clock.advance(61)
            await client.step()
            assert client.active_controls() is not None
        finally:
            await client.http.aclose()
    assert gets(srv)[:4] == [WELL_KNOWN_PATH, WELL_KNOWN_PATH, WELL_KNOWN_PATH, "/r3"]
    assert "/dcap" not in gets(srv)


@pytestmark_xsd
async def test_a_file_that_is_not_the_document_is_warned_about_and_the_configured_path_read(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.inject_fault(path_prefix=WELL_KNOWN_PATH, status=200, body=b"<html>hello</html>")
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            await client.step()
            assert client.last_walk is not None
            assert any(
                "not JSON" in w and "using the configured" in w for w in client.last_walk.warnings
            )
        finally:
            await client.http.aclose()
    assert gets(srv)[:2] == [WELL_KNOWN_PATH, "/dcap"]


@pytestmark_xsd
async def test_a_path_on_another_origin_is_refused_and_the_configured_path_read(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """The client certificate never follows the server's data to another host."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.well_known = {CSIPAUS_NS_13: ["https://127.0.0.1:1/dcap"]}
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            await client.step()
            assert client.last_walk is not None
            assert any("names no DeviceCapability" in w for w in client.last_walk.warnings)
        finally:
            await client.http.aclose()
    assert gets(srv)[:2] == [WELL_KNOWN_PATH, "/dcap"]


@pytestmark_xsd
async def test_a_device_capability_that_moved_is_looked_up_again(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    srv = sdvn_01_server(pki_dir, clock)
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            await client.step()
            srv.well_known = {CSIPAUS_NS_13: ["/moved"]}
            srv.dcap_aliases = {"/moved"}
            clock.advance(61)
            await client.step()  # /r3 answers 404 now
            clock.advance(61)
            await client.step()
            assert client.dcap_url.endswith("/moved") and client.active_controls() is not None
        finally:
            await client.http.aclose()
    assert gets(srv).count(WELL_KNOWN_PATH) == 2


@pytestmark_xsd
async def test_a_redirected_well_known_file_is_followed_on_the_servers_origin(
    pki_dir: Path, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A well-known URI may redirect (RFC 8615). Found by review: a 308 read as "no file",
    and the link read /dcap."""
    doc = document({CSIPAUS_NS_13: ["/r3"]})
    route = utility_core._Context.route

    def redirecting(self: utility_core._Context) -> Reply:
        if self.path == WELL_KNOWN_PATH:
            return Reply(308, b"", [("Location", "/wk/csipaus")])
        if self.path == "/wk/csipaus":
            return Reply(200, doc, content_type="application/json")
        return route(self)

    monkeypatch.setattr(utility_core._Context, "route", redirecting)
    srv = sdvn_01_server(pki_dir, clock)
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            await client.step()
        finally:
            await client.http.aclose()
    assert gets(srv)[:3] == [WELL_KNOWN_PATH, "/wk/csipaus", "/r3"]
    assert "/dcap" not in gets(srv)


@pytestmark_xsd
async def test_a_throttled_well_known_file_is_not_asked_again_before_its_retry_after(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """Found by review: a 429 with Retry-After 300 was asked again at every walk retry."""
    srv = sdvn_01_server(pki_dir, clock)
    srv.inject_fault(path_prefix=WELL_KNOWN_PATH, status=429, retry_after="300", count=50)
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            await client.step()
            for _ in range(4):
                clock.advance(60)
                await client.step()
        finally:
            await client.http.aclose()
    assert gets(srv).count(WELL_KNOWN_PATH) == 1
    assert "/dcap" not in gets(srv)


@pytestmark_xsd
@pytest.mark.parametrize(
    "headers", [[("Location", "https://portal.example/login")], []], ids=["elsewhere", "none"]
)
async def test_a_well_known_file_redirected_elsewhere_leaves_the_configured_path(
    pki_dir: Path,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    headers: list[tuple[str, str]],
) -> None:
    """Found by review: such an answer failed every walk, and the link never came up (the
    fallback limit for good). It never changes; the configured path is read, with a warning."""
    route = utility_core._Context.route

    def redirecting(self: utility_core._Context) -> Reply:
        if self.path == WELL_KNOWN_PATH:
            return Reply(302, b"", headers)
        return route(self)

    monkeypatch.setattr(utility_core._Context, "route", redirecting)
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=1500)
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            await client.step()
            assert client.active_controls() is not None, "the link never came up"
            assert client.last_walk is not None
            assert any("redirect the link does not follow" in w for w in client.last_walk.warnings)
        finally:
            await client.http.aclose()
    assert gets(srv)[:2] == [WELL_KNOWN_PATH, "/dcap"]
