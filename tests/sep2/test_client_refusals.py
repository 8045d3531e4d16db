"""The utility link when the server answers but refuses: a resource it removed (404), a write it
does not accept (HTTP 400 to a PUT), an event it named with an mRID no response can carry.

In each case the server is there and the limits must still be read, at the server's pollRates,
with the refusal recorded for the installer. The utility simulator answers in-process on trio's
mock clock (`tests/sep2/test_client_faults.py`), so minutes of polling take no real time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from dynexport.httpio import Response
from dynexport.sep2 import schema
from dynexport.sep2.client import LinkState, Sep2Client
from dynexport.sep2.controls import ControlType
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0
from tests.sep2.test_client_faults import InProcessHttp, export_limit, in_process_client, wall

pytestmark = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)


async def test_a_default_control_the_server_removed_never_comes_back_from_the_cache(
    pki_dir: Path, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A 404 for the DefaultDERControl is "no default" until it is due again: the old default
    was kept in the cache and came back at every walk made for another resource (the
    DeviceCapability at 30 s), so a removed 1500 W default applied 270 s of every 300."""
    srv = UtilityServer(pki_dir=pki_dir, clock=wall)
    srv.poll_rates.update(dcap=30, derp=300)
    srv.set_default(export_limit_w=1500)
    client, http = in_process_client(srv, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await trio.sleep(10)
        assert export_limit(client) == 1500
        http.hostile[("GET", "/derp/1/dderc")] = (404, [])
        for _ in range(400):  # the removal is read at the default's poll (300 s)
            if export_limit(client) is None:
                break
            await trio.sleep(1)
        assert export_limit(client) is None
        seen_from = len(http.hostile_answers)
        limits = []
        for _ in range(90):  # 15 minutes, a sample every 10 s
            await trio.sleep(10)
            limits.append(export_limit(client))
        assert limits == [None] * 90
        asked = http.hostile_answers[seen_from:].count(("GET", "/derp/1/dderc"))
        assert 2 <= asked <= 4, asked  # at its pollRate (300 s), not at every walk
        nursery.cancel_scope.cancel()


def refusing(
    pki_dir: Path, tmp_path: Path, put_path: str, poll_rate_s: int | None = None
) -> tuple[UtilityServer, Sep2Client, InProcessHttp]:
    """A server with a 1500 W export control in force that answers HTTP 400 to every PUT to
    ``put_path``, and the link to it (not running yet)."""
    srv = UtilityServer(pki_dir=pki_dir, clock=wall)
    if poll_rate_s is not None:
        srv.poll_rate_s = poll_rate_s
    srv.add_control(start=int(T0) - 10, duration=4 * 3600, export_limit_w=1500)
    client, http = in_process_client(srv, tmp_path)
    http.hostile[("PUT", put_path)] = (400, [])
    return srv, client, http


def still_reading(client: Sep2Client) -> LinkState:
    """The link's state, once it has shown that it reads the limits and counts as connected."""
    state = client.state()
    assert export_limit(client) == 1500
    assert state.connected, state.last_error
    return state


async def test_a_refused_connection_point_put_does_not_stop_the_limits_being_read(
    pki_dir: Path, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The NMI's PUT refused (HTTP 400) stopped every walk before the programs: a new site sat
    on its fallback limit for good, and a stored schedule never learnt of a cancellation."""
    srv, client, http = refusing(pki_dir, tmp_path, "/edev/1/cp")
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await trio.sleep(120)
        state = still_reading(client)
        assert any("PUT ConnectionPoint" in m and "HTTP 400" in m for _, m in state.errors)
        assert srv.readings  # telemetry flows too
        before = http.hostile_answers.count(("PUT", "/edev/1/cp"))
        await trio.sleep(1200)
        tried = http.hostile_answers.count(("PUT", "/edev/1/cp")) - before
        assert 1 <= tried <= 6, tried  # retried with the backoff (at most every 300 s)
        del http.hostile[("PUT", "/edev/1/cp")]
        await trio.sleep(330)  # the longest backoff
        assert [r for r in srv.requests_for("/edev/1/cp") if r.method == "PUT"]
        nursery.cancel_scope.cancel()


async def test_a_refused_der_report_still_lets_the_walk_make_the_mirrors_at_its_poll_rates(
    pki_dir: Path, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A DERSettings PUT refused for good: no MirrorUsagePoint was ever made (no telemetry),
    and each failed walk forgot every poll time, so the whole tree was read every minute
    whatever the server's pollRates."""
    srv, client, _ = refusing(pki_dir, tmp_path, "/edev/1/der/1/derg", poll_rate_s=300)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await trio.sleep(600)
        state = still_reading(client)
        assert srv.mirror_hrefs(), "no MirrorUsagePoint was made"
        assert srv.readings, "no telemetry reached the server"
        assert any("PUT DERSettings" in m and "HTTP 400" in m for _, m in state.errors)
        walks = len(srv.requests_for("/dcap"))
        assert walks <= 4, walks  # 600 s at a 300 s pollRate: not one walk a minute
        nursery.cancel_scope.cancel()


class RenamingHttp(InProcessHttp):
    """Serves the control list with one event's mRID changed (a server's typo)."""

    def __init__(self, *args: object, old: str, new: str) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.old, self.new = old.encode(), new.encode()

    async def _once(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> Response:
        response = await super()._once(method, url, body, headers)
        if method == "GET" and "/derc" in url:
            return Response(
                response.status,
                response.headers,
                response.body.replace(self.old, self.new),
                response.url,
            )
        return response


async def test_an_event_whose_mrid_is_not_hex_does_not_hold_up_the_other_events_responses(
    pki_dir: Path, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """mRIDs are read leniently (one bad identifier must not make a list unreadable) but
    written strictly: the first response for such an event raised, every response queued
    behind it waited for good, across restarts. It is dropped, with the reason recorded."""
    srv = UtilityServer(pki_dir=pki_dir, clock=wall)
    bad = srv.add_control(start=int(T0) - 10, duration=600, generation_limit_w=3000)
    good = srv.add_control(start=int(T0) + 100, duration=600, export_limit_w=1500)
    typo = "O" + bad[1:]  # the letter O for a zero
    client, _ = in_process_client(srv, tmp_path)
    client.http = RenamingHttp(srv, srv.pki.device_lfdi, old=bad, new=typo)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await trio.sleep(300)
        active = client.active_controls()
        assert active is not None and active.value(ControlType.EXPORT_LIMIT_W) == 1500
        statuses = [int(r.status or 0) for r in srv.responses if r.subject == good]
        assert statuses[:2] == [1, 2], statuses
        assert not [r for r in srv.responses if r.subject in (bad, typo)]
        state = client.state()
        assert any("not hexBinary" in m for _, m in state.errors), state.errors
        assert all(p.mrid != typo for p in client.tracker.pending)
        nursery.cancel_scope.cancel()
