"""Every URL the utility server hands the link (href, Location, replyTo) is untrusted.

A URL on another origin, or one urllib cannot parse (``http://[::1/rsp``), used to raise
``ValueError`` out of `Sep2Client.step`: the utility link died, and since the pending response
was stored, every restart died the same way. Now such a URL is refused with a warning: a
response is dropped (never retried), a Location is replaced by a lookup in the list, a walk link
fails the walk with a clear error while the stored schedule stays in force. End to end over
mutual TLS against the simulator (wrapped here to answer with the bad URLs); "other origins"
are loopback addresses, so nothing could leave the machine even if the client followed them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynexport.sep2 import schema
from dynexport.sep2.controls import ControlBase, EventStatus, ResponseStatus
from dynexport.sep2.resources import (
    DateTimeInterval,
    DERControl,
    DERControlList,
    EventStatusInfo,
    to_xml,
)
from dynexport.sep2.responses import PendingResponse, ResponseTracker
from dynexport.sep2.state import LinkStore
from dynexport.sim.utility_core import SEP_XML, Reply
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock
from tests.sep2.hostile import export_limit, make_client

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)

DERC = "/derp/1/derc"
BAD_URLS = ["https://127.0.0.2:1/rsp", "http://[::1/rsp", "https://127.0.0.1:99999/rsp"]


class RewritingServer(UtilityServer):
    """The simulator, but replies to chosen paths have bytes or their Location replaced."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.body_edits: dict[str, tuple[bytes, bytes]] = {}
        self.location_for: dict[tuple[str, str], str] = {}
        self.aliases: dict[str, str] = {}
        """A path the simulator does not serve, answered as the one it names (each use kept in
        ``aliased``)."""
        self.aliased: list[tuple[str, str]] = []

    def handle(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        lfdi: str | None,
        content_type: str | None = SEP_XML,
        now: float | None = None,
    ) -> Reply:
        path = target.split("?")[0]
        if path in self.aliases:
            self.aliased.append((method, path))
            target = self.aliases[path]
        reply = super().handle(
            method, target, body=body, lfdi=lfdi, content_type=content_type, now=now
        )
        if method == "GET" and path in self.body_edits:
            old, new = self.body_edits[path]
            reply.body = reply.body.replace(old, new)
        location = self.location_for.get((method, path))
        if location is not None:
            reply.headers = [(k, v) for k, v in reply.headers if k.lower() != "location"]
            reply.headers.append(("Location", location))
        return reply


@pytest.fixture
async def server(pki_dir: Path, clock: FakeClock) -> AsyncIterator[RewritingServer]:
    srv = RewritingServer(pki_dir=pki_dir, clock=clock)
    srv.add_control(start=int(T0) - 10, duration=3600, export_limit_w=1500)
    srv.set_default(export_limit_w=5000)
    async with srv.running():
        yield srv


def controls_replying_to(reply_to: str) -> bytes:
    """A DERControlList with one 800 W export limit asking for responses at ``reply_to``."""
    control = DERControl(
        mrid="EE" + "0" * 29 + "1",
        creation_time=int(T0) - 100,
        event_status=EventStatusInfo(EventStatus.ACTIVE, int(T0)),
        interval=DateTimeInterval(start=int(T0) - 10, duration=3600),
        base=ControlBase(export_limit_w=800),
        href=f"{DERC}/EE{'0' * 29}1",
        reply_to=reply_to,
        response_required=3,
    )
    return to_xml(DERControlList.of((control,), href=DERC, subscribable=0))


@pytest.mark.parametrize("reply_to", BAD_URLS)
async def test_a_bad_reply_to_is_refused_dropped_and_the_link_carries_on(
    server, clock, tmp_path, caplog, reply_to
):
    server.inject_fault(path_prefix=DERC, status=200, body=controls_replying_to(reply_to), count=99)
    client = make_client(server, clock, tmp_path)
    with caplog.at_level(logging.WARNING, logger="dynexport.sep2.client"):
        await client.step()  # used to raise ValueError here
    assert export_limit(client) == 800  # the control itself is obeyed
    state = client.state()
    assert state.connected and state.pending_responses == 0  # dropped, never retried
    assert client.store.load_responses().pending == ()  # and not left on disk
    assert any("replyTo" in r.getMessage() for r in caplog.records), caplog.text
    assert [r for r in server.received if "rsp" in r.path] == []
    clock.advance(61)
    await client.step()  # the next poll: nothing to retry, nothing raised
    assert client.state().connected and client.state().pending_responses == 0
    await client.http.aclose()


async def test_a_relative_reply_to_is_resolved_against_its_list_not_the_dcap(
    server, clock, tmp_path
):
    """``rsp`` in the list at /derp/1/derc names /derp/1/rsp (RFC 3986: a relative reference is
    relative to the document it is in); against the DeviceCapability's /dcap, where the pending
    response used to resolve it, it named /rsp."""
    server.inject_fault(path_prefix=DERC, status=200, body=controls_replying_to("rsp"), count=99)
    server.aliases["/derp/1/rsp"] = "/rsp"
    client = make_client(server, clock, tmp_path)
    await client.step()
    assert export_limit(client) == 800
    # Every response went there (the alias records it, then answers it as /rsp).
    posts = [r for r in server.received if r.method == "POST" and r.path == "/rsp"]
    assert posts and server.aliased == [("POST", "/derp/1/rsp")] * len(posts)
    assert client.state().pending_responses == 0  # accepted there
    assert server.responses  # and the simulator took it
    await client.http.aclose()


@pytest.mark.parametrize("reply_to", BAD_URLS)
async def test_a_stored_response_with_a_bad_reply_to_does_not_kill_the_restart(
    server, clock, tmp_path, reply_to
):
    """The restart loop: a response stored by an earlier run, with a replyTo that can never be
    sent, is dropped at the first step instead of failing every start."""
    stored = PendingResponse("AB" * 16, ResponseStatus.RECEIVED, reply_to, int(T0))
    LinkStore(tmp_path).save_responses(ResponseTracker(pending=(stored,)))
    client = make_client(server, clock, tmp_path)
    assert client.state().pending_responses == 1
    await client.step()
    assert client.state().pending_responses == 0
    assert client.state().connected and export_limit(client) == 1500
    await client.http.aclose()


async def test_a_mirror_location_on_another_origin_is_refused_and_looked_up_in_the_list(
    server, clock, tmp_path, caplog
):
    server.location_for[("POST", "/mup")] = "https://127.0.0.2:1/mup/1"
    client = make_client(server, clock, tmp_path)
    with caplog.at_level(logging.WARNING, logger="dynexport.sep2.client"):
        await client.step()  # used to raise ValueError when it read the "created" mirror
    assert client.state().connected
    urls = client._telemetry.mup_urls
    assert set(urls) == {"site", "der"}
    assert all(u.startswith(server.url + "/mup/") for u in urls.values()), urls
    assert any("another origin" in r.getMessage() for r in caplog.records), caplog.text
    await client.http.aclose()


@pytest.mark.parametrize("href", ["https://127.0.0.2:1/tm", "http://[::1/tm", "/t m"])
async def test_a_walk_link_on_another_origin_fails_the_walk_with_a_clear_error(
    server, clock, tmp_path, href
):
    client = make_client(server, clock, tmp_path)
    await client.step()
    assert export_limit(client) == 1500
    server.body_edits["/dcap"] = (b'href="/tm"', f'href="{href}"'.encode())
    clock.advance(61)
    await client.step()
    state = client.state()
    assert not state.connected
    assert state.last_error is not None and state.last_error.startswith("refused a URL")
    assert export_limit(client) == 1500  # the stored schedule stays in force
    server.body_edits.clear()
    clock.advance(61)
    await client.step()
    assert client.state().connected
    await client.http.aclose()
