"""Telemetry and the clock, end to end against the simulator (three hand-moved clocks: the
server's, the local wall clock, the monotonic one).

A Pi has no real-time clock: after a power cut it runs hours behind until NTP or the utility
answers. Samples taken then were averaged at the wrong local time and posted, once the server's
Time was read, as readings of intervals two hours before they were taken. They are not averaged
now (counted in the status), since nothing later can say exactly how far off they were. And a
sample and the flush closing an interval map local to server time the same way (no rounding
of one against the other), and a closed interval never reopens, so none is posted twice.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynexport.sep2.telemetry import IntervalReading, Outbox, Sample
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock
from tests.sep2.test_client_clock import TWO_HOURS, Clocks, make_client


@pytest.fixture
def clocks(request: pytest.FixtureRequest) -> Clocks:
    """The server's clock at T0; the wall clock ``request.param`` s off it (0 unless a test
    says, with ``indirect``)."""
    wall_off = float(getattr(request, "param", 0.0))
    return Clocks(FakeClock(T0), FakeClock(T0 + wall_off), FakeClock(1000.0))


@pytest.fixture
async def server(pki_dir: Path, clocks: Clocks) -> AsyncIterator[UtilityServer]:
    srv = UtilityServer(pki_dir=pki_dir, clock=clocks.server)
    async with srv.running():
        yield srv


def posted_sets(srv: UtilityServer) -> list[tuple[int, str, int | None]]:
    """(start, mRID, value) of every site W average MirrorReadingSet the server accepted."""
    return [
        (rs.time_period.start, rs.mrid, rs.readings[0].value)
        for r in srv.readings
        if (r.reading.description or "") == "site W average"
        for rs in r.reading.mirror_reading_sets
    ]


@pytest.mark.parametrize("clocks", [-TWO_HOURS], indirect=True)
async def test_samples_taken_before_the_time_is_known_are_not_posted(
    server: UtilityServer, clocks: Clocks, tmp_path: Path
) -> None:
    client = make_client(server, clocks, tmp_path, clock_synchronised=lambda: False)
    assert not client.time_verified
    for _ in range(120):  # ten minutes after boot, the utility out of reach
        client.add_sample(Sample(clocks.wall(), {("site", "W"): 1000.0}))
        clocks.advance(5)
    assert not client.outbox.pending and client.averager.flush(T0 + 86400) == []
    assert client.state().telemetry_unverified_samples == 120
    await client.step()  # the utility answers: Time read
    assert client.state().time_verified
    for _ in range(60):
        client.add_sample(Sample(clocks.wall(), {("site", "W"): 2000.0}))
        clocks.advance(5)
        await client.step()
    starts = sorted({start for start, _, _ in posted_sets(server)})
    assert starts, "nothing posted once the time was known"
    # only intervals of the five minutes since the Time was read, never ~2 h ago
    assert all(T0 + 600 <= s < clocks.server() for s in starts), starts
    assert all(v == 2000 for _, _, v in posted_sets(server))
    await client.http.aclose()


# the local clock 0.6 s ahead of the server's (an NTP-synced Pi against the server: normal)
@pytest.mark.parametrize("clocks", [0.6], indirect=True)
async def test_a_flushed_interval_is_not_reopened_by_a_sample_just_after_it(
    server: UtilityServer, clocks: Clocks, tmp_path: Path
) -> None:
    client = make_client(server, clocks, tmp_path)
    await client.step()  # Time read, mirrors made (postRate 60 s: 60 s intervals)
    boundary = int(T0) + 600
    while clocks.server() < boundary - 5:
        client.add_sample(Sample(clocks.wall(), {("site", "W"): 1000.0}))
        clocks.advance(5)
    clocks.advance(boundary + 0.2 - clocks.server())
    await client._post_telemetry()  # flushes [boundary - 60, boundary)
    client.add_sample(Sample(clocks.wall(), {("site", "W"): 9999.0}))  # 0.2 s after it
    clocks.advance(5)
    client.add_sample(Sample(clocks.wall(), {("site", "W"): 1000.0}))
    await client._post_telemetry()
    clocks.advance(61)
    client.add_sample(Sample(clocks.wall(), {("site", "W"): 1000.0}))
    await client._post_telemetry()
    posted = posted_sets(server)
    twice = {start for start, n in Counter(start for start, _, _ in posted).items() if n > 1}
    assert not twice, [p for p in posted if p[0] in twice]
    await client.http.aclose()


async def test_a_restarted_link_averages_nothing_into_what_its_outbox_closed(
    server: UtilityServer, clocks: Clocks, tmp_path: Path
) -> None:
    box = Outbox()
    box.extend([IntervalReading("site", "W", int(T0), 300, 1.0, 1.0, 1.0, 60)])
    box.acknowledge(box.batch(1))  # accepted before the restart: only closedUntil remains
    (tmp_path / "telemetry.json").write_text(json.dumps(box.to_json()))
    clocks.advance(200)
    client = make_client(server, clocks, tmp_path)
    assert client.averager.floor == int(T0) + 300
    client.add_sample(Sample(clocks.wall(), {("site", "W"): 5.0}))
    assert client.state().telemetry_late_samples == 1
    await client.http.aclose()


async def test_a_mark_of_closed_intervals_a_day_ahead_is_damage_and_forgotten(
    server: UtilityServer, clocks: Clocks, tmp_path: Path
) -> None:
    box = Outbox()
    box.closed_until = int(T0) + 10 * 86400  # telemetry.json damaged: nothing was sent then
    (tmp_path / "telemetry.json").write_text(json.dumps(box.to_json()))
    client = make_client(server, clocks, tmp_path)
    client.add_sample(Sample(clocks.wall(), {("site", "W"): 5.0}))
    assert client.state().telemetry_late_samples == 0
    assert client.averager.flush(T0 + 300)  # averaged: telemetry is not held back 10 days
    await client.http.aclose()


async def test_a_server_without_a_time_resource_gets_telemetry_by_the_local_clock(
    pki_dir: Path, clocks: Clocks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No TimeLink and no time server to say the clock is set (only the utility's network, or
    a synchronisation that cannot be told): the time is never verified, and waiting for it
    dropped every sample for the life of the process. The walk uses the local clock there, and
    telemetry follows it."""
    from dataclasses import replace

    from dynexport.sim import utility_core

    dcap = utility_core._Context._dcap
    monkeypatch.setattr(
        utility_core._Context, "_dcap", lambda ctx: replace(dcap(ctx), time_link=None)
    )
    srv = UtilityServer(pki_dir=pki_dir, clock=clocks.server)
    async with srv.running():
        client = make_client(srv, clocks, tmp_path, clock_synchronised=lambda: None)
        for _ in range(24 * 12):  # 24 minutes of samples every 5 s
            client.add_sample(Sample(clocks.wall(), {("site", "W"): 1000.0}))
            clocks.advance(5)
            await client.step()
        assert not client.time_verified
        assert posted_sets(srv), "no telemetry ever posted"
        await client.http.aclose()
        # a clock the kernel says is not set (no RTC, no NTP yet) dates nothing: none posted
        (tmp_path / "unset").mkdir()
        unset = make_client(srv, clocks, tmp_path / "unset", clock_synchronised=lambda: False)
        for _ in range(24 * 12):
            unset.add_sample(Sample(clocks.wall(), {("site", "W"): 1000.0}))
            clocks.advance(5)
            await unset.step()
        assert unset.state().telemetry_unverified_samples == 24 * 12
        assert not unset.outbox.pending
        await unset.http.aclose()
