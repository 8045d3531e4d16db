"""In-band registration decides on what the server says after our POST, never on what it said
before it (CSIP-AUS ALL-24).

The bug: right after POSTing its EndDevice, the client reused the EndDeviceList it had read
before the POST (empty, ``all="0"``) until that list's own pollRate came round, found no device
on the next walk and POSTed again; the harness's server answered 409 "lFDI or sFDI conflict".
A 409 means "already registered": the list is read again and the existing EndDevice used.
"""

from __future__ import annotations

import pytest

from dynexport.sep2 import schema
from dynexport.sep2.resources import EndDeviceList
from dynexport.sim.utility_core import SEP_XML, Reply
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0
from tests.sep2.hostile import export_limit, make_client

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)


class HarnessLikeServer(UtilityServer):
    """The simulator with a real server's answer to a second registration (409), and an
    EndDeviceList that can lag behind registrations (``hidden_reads`` empty answers)."""

    hidden_reads = 0

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
        if path == "/edev" and method == "POST" and self._device_by_lfdi(lfdi or "") is not None:
            self.record(method, target, body, lfdi, 409)
            return Reply.error(409, "lFDI or sFDI conflict")
        if path == "/edev" and method == "GET" and self.hidden_reads > 0:
            self.hidden_reads -= 1
            self.record(method, target, body, lfdi, 200)
            empty = EndDeviceList(all=0, results=0, items=(), href="/edev", subscribable=0)
            return Reply.xml(empty)
        return super().handle(
            method, target, body=body, lfdi=lfdi, content_type=content_type, now=now
        )


def edev_posts(srv: UtilityServer) -> list[int]:
    return [r.status for r in srv.received if r.method == "POST" and r.path == "/edev"]


async def test_all_24_registers_once_although_the_list_is_polled_rarely(pki_dir, clock, tmp_path):
    srv = HarnessLikeServer(pki_dir=pki_dir, clock=clock, preregistered=False)
    srv.poll_rates["edev"] = 600  # the EndDeviceList is due far later than the dcap (60 s)
    srv.add_control(start=int(T0) - 10, duration=3600, export_limit_w=1500)
    async with srv.running():
        client = make_client(srv, clock, tmp_path)
        await client.step()
        assert edev_posts(srv) == [201]
        for _ in range(3):  # walks before the list's own pollRate comes round
            clock.advance(61)
            await client.step()
            assert client.state().connected, client.state().last_error
        assert edev_posts(srv) == [201]  # never a second POST (the harness would answer 409)
        assert export_limit(client) == 1500
        await client.http.aclose()


async def test_a_409_on_registering_means_registered_and_the_listed_end_device_is_used(
    pki_dir, clock, tmp_path
):
    srv = HarnessLikeServer(pki_dir=pki_dir, clock=clock)  # registered out of band
    srv.hidden_reads = 1  # ... but the first list read does not show it yet
    srv.add_control(start=int(T0) - 10, duration=3600, export_limit_w=1500)
    async with srv.running():
        client = make_client(srv, clock, tmp_path)
        await client.step()
        assert edev_posts(srv) == [409]
        state = client.state()
        assert state.connected and state.acting, state.last_error
        assert export_limit(client) == 1500
        clock.advance(61)
        await client.step()
        assert edev_posts(srv) == [409]
        await client.http.aclose()


async def test_a_409_for_an_end_device_the_list_never_shows_fails_the_walk_without_looping(
    pki_dir, clock, tmp_path
):
    srv = HarnessLikeServer(pki_dir=pki_dir, clock=clock)
    srv.hidden_reads = 10**6
    async with srv.running():
        client = make_client(srv, clock, tmp_path)
        wake = await client.step()
        assert edev_posts(srv) == [409]  # one POST per walk
        state = client.state()
        assert not state.connected
        assert state.last_error is not None and "exists (409)" in state.last_error
        await client.step()
        assert edev_posts(srv) == [409]  # backing off, not looping
        clock.t = wake
        await client.step()
        assert edev_posts(srv) == [409, 409]
        await client.http.aclose()
