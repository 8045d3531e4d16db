"""schedule.json is rewritten when the schedule changed, not after every poll: a complete read of
the program lists happens every minute or more often, and rewriting hundreds of KiB each time
wears the SD card for nothing (docs/sep2.md, "Stored state")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from dynexport.sep2.client import (
    SCHEDULE_RESAVE_S,
    ClientOptions,
    Sep2Client,
    schedule_needs_saving,
)
from dynexport.sep2.schedule import ScheduleSnapshot
from dynexport.sim.utility_server import UtilityServer
from tests.sep2.fakes import T0, FakeClock, utility_config

SNAP = ScheduleSnapshot((), fetched_at=1_000_000, clock_offset=3)


def test_a_poll_that_changed_nothing_is_not_written() -> None:
    assert schedule_needs_saving(None, SNAP)
    later = replace(SNAP, fetched_at=SNAP.fetched_at + 60)
    assert not schedule_needs_saving(SNAP, later)
    assert not schedule_needs_saving(SNAP, replace(later, clock_offset=5))  # jitter of 2 s


def test_a_change_or_fifteen_minutes_or_a_clock_step_is_written() -> None:
    stale = replace(SNAP, fetched_at=SNAP.fetched_at + SCHEDULE_RESAVE_S)
    assert schedule_needs_saving(SNAP, stale)
    assert schedule_needs_saving(SNAP, replace(SNAP, fetched_at=SNAP.fetched_at - 1))
    assert schedule_needs_saving(SNAP, replace(SNAP, clock_offset=6))
    assert schedule_needs_saving(SNAP, replace(SNAP, extra={"derp": "/derp/1"}))


@pytest.fixture
async def server(pki_dir: Path, clock: FakeClock) -> AsyncIterator[UtilityServer]:
    srv = UtilityServer(pki_dir=pki_dir, clock=clock)
    async with srv.running():
        yield srv


async def test_polls_of_an_unchanged_schedule_rewrite_the_file_only_every_15_minutes(
    server: UtilityServer, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Sep2Client(
        utility_config(server),
        tmp_path,
        clock=clock,
        options=ClientOptions(http_timeout=5.0, http_retries=0),
    )
    writes: list[float] = []
    save = client.store.save_schedule

    def counted(snapshot: ScheduleSnapshot) -> None:
        writes.append(clock())
        save(snapshot)

    monkeypatch.setattr(client.store, "save_schedule", counted)
    try:
        await client.step()
        assert len(writes) == 1  # the first complete read is stored at once
        for _ in range(20):  # 20 minutes of polls of the same lists
            clock.advance(60)
            await client.step()
        assert len(writes) == 2, writes  # once more, after 15 minutes
        # a new event changes the lists: stored at the next complete read
        server.add_control(start=int(T0) + 3600 * 5, duration=600, export_limit_w=1000)
        clock.advance(60)
        await client.step()
        assert len(writes) == 3, writes
        stored = ScheduleSnapshot.from_json((tmp_path / "schedule.json").read_bytes())
        assert stored == client.snapshot
    finally:
        await client.http.aclose()
