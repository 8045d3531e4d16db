"""The program listing read at a bad moment: one empty list from a server glitch, and an event
the server removes at its end while a walk is reading the lists (against the utility simulator
over mutual TLS)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from dynexport.sep2 import schema
from dynexport.sep2.client import EMPTY_LISTING_RECHECK_S, ClientOptions, Sep2Client
from dynexport.sep2.controls import ControlType
from dynexport.sep2.flow import DerInfo
from dynexport.sep2.resources import DERControlList, FunctionSetAssignmentsList, to_xml
from dynexport.sep2.schedule import _random_offset, effective_window
from dynexport.sim import utility_core
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock, utility_config

pytestmark = pytest.mark.skipif(not schema.schema_available(), reason="needs the XSD")


def statuses(srv: UtilityServer, mrid: str) -> list[int]:
    return [r.status for r in srv.responses if r.subject == mrid and r.status is not None]


def limit_of(client: Sep2Client) -> float | None:
    active = client.active_controls()
    assert active is not None
    return active.value(ControlType.EXPORT_LIMIT_W)


@asynccontextmanager
async def linked(srv: UtilityServer, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Sep2Client]:
    """The utility server running and a link to it, closed after the block."""
    async with srv.running():
        client = client_of(srv, tmp_path, clock)
        try:
            yield client
        finally:
            await client.http.aclose()


def client_of(srv: UtilityServer, tmp_path: Path, clock: FakeClock, **more: Any) -> Sep2Client:
    """A link to ``srv`` (``more``: further `ClientOptions`, e.g. ``page_size``)."""
    options = ClientOptions(http_timeout=5.0, http_retries=1, **more)
    return Sep2Client(
        utility_config(srv), tmp_path, der=DerInfo(rated_w=5000), clock=clock, options=options
    )


async def test_one_empty_program_listing_keeps_the_schedule_and_a_second_one_drops_it(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """One empty FunctionSetAssignmentsList lifted every utility limit (a 0 W event gave way
    to no limit at all) and cancelled every stored event for good, so once the server answered
    normally again the site followed the 1500 W default instead of the 0 W event it listed."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=1500)
    mrid = srv.add_control(start=int(T0), duration=3600, export_limit_w=0)
    empty = to_xml(FunctionSetAssignmentsList(all=0, results=0, href="/edev/1/fsa"))
    async with linked(srv, tmp_path, clock) as client:
        await client.step()
        assert limit_of(client) == 0
        srv.inject_fault(path_prefix="/edev/1/fsa", status=200, body=empty)
        clock.advance(61)
        await client.step()  # the glitch: the schedule is kept
        assert limit_of(client) == 0
        assert client.last_walk is not None
        assert any("lists no DER program" in w for w in client.last_walk.warnings)
        clock.advance(61)
        await client.step()  # the server answers normally again
        assert limit_of(client) == 0
        assert statuses(srv, mrid) == [1, 2]  # never reported cancelled
        srv.inject_fault(path_prefix="/edev/1/fsa", status=200, body=empty, count=2)
        for _ in range(2):  # the server lists nothing twice in a row: believed
            clock.advance(61)
            await client.step()
        assert client.active_controls() is None  # no schedule: the app's fallback applies


async def test_the_cached_glitch_is_not_taken_for_a_second_read_that_agrees(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """A walk runs whenever any resource is due, and the FSA list was served from the cache
    until its own pollRate (300 s here): the next walk, a minute later, found the cached glitch
    "agreeing" with itself, dropped the schedule and cancelled the event for good (6). The
    lists are now read again, fresh, before an empty listing is believed."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.poll_rates["fsa"] = 300
    srv.set_default(export_limit_w=1500)
    mrid = srv.add_control(start=int(T0), duration=3600, export_limit_w=0)
    empty = to_xml(FunctionSetAssignmentsList(all=0, results=0, href="/edev/1/fsa", poll_rate=300))
    fsa_gets: list[float] = []
    srv.on_request.append(
        lambda method, path: fsa_gets.append(clock.t) if path == "/edev/1/fsa" else None
    )
    async with linked(srv, tmp_path, clock) as client:
        await client.step()
        clock.advance(301)
        srv.inject_fault(path_prefix="/edev/1/fsa", status=200, body=empty)  # one glitch
        await client.step()
        glitch = len(fsa_gets)
        for _ in range(6):  # the server answers normally from here on
            clock.advance(61)
            await client.step()
        assert len(fsa_gets) > glitch  # read again, not taken from the cache
        assert limit_of(client) == 0
    assert statuses(srv, mrid) == [1, 2]


async def test_an_event_removed_at_its_end_while_a_walk_reads_the_lists_is_completed(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """The listing's time was taken when the walk began, before the lists were read: an event
    the server removed at its scheduled end, read just after it, was found gone before its end
    and reported cancelled (6) instead of completed (3)."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    end = int(T0) + 600
    mrid = srv.add_control(start=int(T0) + 60, duration=540, export_limit_w=1000)
    latency = {"on": False}

    def hook(method: str, path: str) -> None:
        # each GET takes 1 s of server time (a WAN round trip); the server removes an event
        # from its list at its scheduled end
        if latency["on"] and method == "GET":
            clock.advance(1)
        if path.endswith("/derc"):
            for program in srv._programs.values():
                for c in list(program.controls.values()):
                    if c.start + c.duration <= srv.now():
                        del program.controls[c.mrid]

    srv.on_request.append(hook)
    async with linked(srv, tmp_path, clock) as client:
        await client.step()
        clock.advance(100)
        await client.step()
        assert statuses(srv, mrid) == [1, 2]
        clock.t = end - 2 - 60  # polls on their 60 s cadence
        await client.step()
        clock.t = end - 2  # the walk begins 2 s before the end and reads the lists after it
        latency["on"] = True
        await client.step()
        latency["on"] = False
        clock.advance(5)
        await client.step()
    assert statuses(srv, mrid) == [1, 2, 3]


async def test_one_404_for_the_default_control_keeps_it_until_a_fresh_read_agrees(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """One 404 for the DefaultDERControl (a server glitch) lifted the site's default export
    limit until the next poll: exports unlimited for a minute. It is kept until a read 10 s
    later agrees; a default the server really removed goes then."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=1500)
    async with linked(srv, tmp_path, clock) as client:
        await client.step()
        assert limit_of(client) == 1500
        srv.inject_fault(path_prefix="/derp/1/dderc", status=404)  # one glitch
        clock.advance(61)
        await client.step()
        assert limit_of(client) == 1500  # kept
        clock.advance(EMPTY_LISTING_RECHECK_S)
        await client.step()  # read again: there after all
        assert limit_of(client) == 1500
        srv.inject_fault(path_prefix="/derp/1/dderc", status=404, count=2)  # really gone
        clock.advance(61)
        await client.step()
        assert limit_of(client) == 1500
        clock.advance(EMPTY_LISTING_RECHECK_S)
        await client.step()
        assert limit_of(client) is None


async def test_a_removed_default_of_a_program_listed_by_two_fsas_is_dropped_not_polled_for_ever(
    pki_dir: Path, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program listed by two FSAs has one DefaultDERControl URL read twice in a walk: the
    second read, from the cache, counted as a fresh one and cleared the first 404's mark, so a
    default the utility removed was kept for ever and read every 10 s."""

    def two_fsas(self: Any, device: Any) -> Any:  # the same FSA listed twice
        return self._page(
            FunctionSetAssignmentsList,
            [self._fsa(device), self._fsa(device)],
            f"{device.href}/fsa",
            subscribable=0,
            poll_rate=self.core.poll_rate_for("fsa"),
        )

    monkeypatch.setattr(utility_core._Context, "_fsa_list", two_fsas)
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=1500)
    async with linked(srv, tmp_path, clock) as client:
        await client.step()
        assert limit_of(client) == 1500
        srv.inject_fault(path_prefix="/derp/1/dderc", status=404, count=1000)  # removed
        clock.advance(61)
        await client.step()
        assert limit_of(client) == 1500  # one 404 is not believed
        for _ in range(20):  # 200 s of fresh 404s
            clock.advance(EMPTY_LISTING_RECHECK_S)
            await client.step()
        assert not srv.violations, srv.violations  # no polling faster than its pollRate
        assert limit_of(client) is None


def remove_ended_controls(srv: UtilityServer) -> None:
    """As envoy (the CSIP-AUS test server) lists DERControls: only those whose scheduled end is
    still to come."""

    def hook(method: str, path: str) -> None:
        if path.endswith("/derc"):
            for program in srv._programs.values():
                for c in list(program.controls.values()):
                    if c.start + c.duration <= srv.now():
                        del program.controls[c.mrid]

    srv.on_request.append(hook)


async def test_an_event_dropped_at_its_end_hands_over_to_its_randomized_successor_without_a_gap(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """CSIP-AUS ALL-22: back-to-back events with randomizeStart, the first dropped from the
    list at its scheduled end. It runs on until the second's randomized start (IEEE 2030.5
    §10.2.3); dropped at once, the site followed the default (5000 W here, 0 W in ALL-22) in
    between. Found by review."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=5000)
    t0 = int(T0)
    first = srv.add_control(start=t0, duration=300, export_limit_w=1000)
    remove_ended_controls(srv)
    async with linked(srv, tmp_path, clock) as client:
        while True:  # a second event this device starts more than a minute and a half late
            second = srv.add_control(
                start=t0 + 300, duration=300, export_limit_w=2000, randomize_start=600
            )
            if _random_offset(client.lfdi, second, "start", 600) > 90:
                break
            srv.remove_control(second)
        await client.step()
        event = next(e for p in client.programs() for e in p.events if e.mrid == second)
        handover = effective_window(event, client.lfdi)[0]
        assert handover > t0 + 390
        while clock.t < handover - 61:
            clock.advance(61)
            await client.step()
            assert limit_of(client) == 1000, f"a gap before the hand-over, at {clock.t - t0} s"
        clock.t = handover + 1
        await client.step()
        assert limit_of(client) == 2000
        clock.advance(61)
        await client.step()
    assert statuses(srv, first) == [1, 2, 3], "completed at the hand-over, never cancelled"


async def test_one_empty_control_list_keeps_the_programs_events_until_a_fresh_read_agrees(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """One empty DERControlList (a server glitch, one level below the guarded FSA list)
    cancelled the 0 W event in force for good (6): once the server answered normally again,
    the site followed the 1500 W default instead of the 0 W event it still listed. Found by
    review."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=1500)
    mrid = srv.add_control(start=int(T0), duration=3600, export_limit_w=0)
    empty = to_xml(DERControlList(all=0, results=0, href="/derp/1/derc"))
    async with linked(srv, tmp_path, clock) as client:
        await client.step()
        assert limit_of(client) == 0
        srv.inject_fault(path_prefix="/derp/1/derc", status=200, body=empty)  # one glitch
        clock.advance(61)
        await client.step()
        assert limit_of(client) == 0
        assert client.last_walk is not None
        assert any("no longer listed before their end" in w for w in client.last_walk.warnings)
        for _ in range(3):
            clock.advance(EMPTY_LISTING_RECHECK_S)
            await client.step()
            assert limit_of(client) == 0
        srv.inject_fault(path_prefix="/derp/1/derc", status=200, body=empty, count=2)
        clock.advance(61)
        await client.step()
        clock.advance(EMPTY_LISTING_RECHECK_S)
        await client.step()  # a fresh read agrees: the server removed it
        assert limit_of(client) == 1500
    assert statuses(srv, mrid) == [1, 2, 6]


async def test_a_list_that_changes_between_its_pages_loses_no_event(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """A DERControlList read in pages while the server removes the event that just ended and
    adds one at the end (``all`` stays the same): every item shifts one place, the one on the
    page boundary is never read, and it was taken as cancelled for good. Its 3000 W never
    applied; the 5000 W default did. Found by review."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=5000)
    t0 = int(T0)
    ended = srv.add_control(start=t0 - 10, duration=100, export_limit_w=1000)
    srv.add_control(start=t0 + 200, duration=300, export_limit_w=2000)
    boundary = srv.add_control(start=t0 + 500, duration=300, export_limit_w=3000)
    srv.add_control(start=t0 + 800, duration=300, export_limit_w=4000)
    plan = {"armed": False, "gets": 0}

    def shift_between_pages(method: str, path: str) -> None:
        if method == "GET" and path.endswith("/derc") and plan["armed"]:
            plan["gets"] += 1
            if plan["gets"] == 2:  # after the first page, before the second
                srv.remove_control(ended)
                srv.add_control(start=t0 + 1100, duration=300, export_limit_w=4500)
                plan["armed"] = False

    srv.on_request.append(shift_between_pages)
    async with srv.running():
        client = client_of(srv, tmp_path, clock, page_size=2)
        try:
            await client.step()
            clock.t = T0 + 100
            plan["armed"] = True
            await client.step()
            for _ in range(5):
                clock.advance(61)
                await client.step()
            clock.t = T0 + 600
            await client.step()
            assert limit_of(client) == 3000
        finally:
            await client.http.aclose()
    assert 6 not in statuses(srv, boundary)


async def test_a_list_whose_count_changes_between_its_pages_is_refused_and_read_again(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """``all`` differs between two pages of one read: items moved across the page boundary.
    The read is refused (the last schedule stays) rather than merged from two lists."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.set_default(export_limit_w=5000)
    t0 = int(T0)
    for n in range(3):
        srv.add_control(start=t0 + 200 + 300 * n, duration=300, export_limit_w=1000 + n)
    plan = {"armed": False, "gets": 0}

    def add_between_pages(method: str, path: str) -> None:
        if method == "GET" and path.endswith("/derc") and plan["armed"]:
            plan["gets"] += 1
            if plan["gets"] == 2:
                srv.add_control(start=t0 - 100, duration=3600, export_limit_w=0)
                plan["armed"] = False

    srv.on_request.append(add_between_pages)
    async with srv.running():
        client = client_of(srv, tmp_path, clock, page_size=2)
        try:
            await client.step()
            plan["armed"] = True
            clock.advance(61)
            await client.step()
            assert "changed while its pages were read (all=3, then 4)" in (
                client.state().last_error or ""
            )
            assert limit_of(client) == 5000, "the last schedule stays"
            clock.advance(61)
            await client.step()
            assert limit_of(client) == 0, "read again, whole"
        finally:
            await client.http.aclose()


async def test_a_walk_for_another_resource_seconds_after_a_glitch_is_not_the_read_that_agrees(
    pki_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """A walk runs whenever any resource is due: one for the EndDeviceList 2 s after the
    glitch re-read the dropped lists at once, and a glitch lasting a few seconds "agreed with
    itself": the 0 W event was cancelled for good (6). The lists are read again 10 s after
    the glitch, not before. Found by review."""
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    srv.poll_rates["edev"] = 63  # the EndDeviceList comes due 2 s after the program lists
    srv.set_default(export_limit_w=1500)
    mrid = srv.add_control(start=int(T0), duration=3600, export_limit_w=0)
    empty = to_xml(DERControlList(all=0, results=0, href="/derp/1/derc"))

    def derc_reads_after(t: float) -> list[float]:
        return [r.t for r in srv.received if r.path == "/derp/1/derc" and r.t > t]

    async with linked(srv, tmp_path, clock) as client:
        await client.step()
        clock.advance(61)
        srv.inject_fault(path_prefix="/derp/1/derc", status=200, body=empty, count=2)
        await client.step()  # the glitch
        glitch_at = clock.t
        clock.advance(2)
        await client.step()  # a walk for the EndDeviceList
        assert limit_of(client) == 0, "believed gone from a read 2 s after the glitch"
        assert derc_reads_after(glitch_at) == [], "read again before 10 s"
        clock.t = glitch_at + EMPTY_LISTING_RECHECK_S
        await client.step()  # the second glitch, 10 s later: the server means it
        assert derc_reads_after(glitch_at) == [glitch_at + EMPTY_LISTING_RECHECK_S]
        assert limit_of(client) == 1500
    assert statuses(srv, mrid) == [1, 2, 6]
