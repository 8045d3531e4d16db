"""The service's commit and the real update-deadline script at the 4-minute mark: exactly one of
them decides a trial, whichever comes first (update/state.py ``DECISION_LOCK``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.update import service as update_service
from dynexport.update.service import commit_when_healthy, read_record, write_record
from dynexport.update.state import DECISION_LOCK, FAILURE_FILE
from tests.image.helpers import LIBEXEC, deadline_env, deadline_outcome, waiting_on_lock
from tests.update.test_service import TRIAL, RecordedRauc, Site, decide_every_second


class PausedCommitRauc(RecordedRauc):
    """Its mark-good waits for ``go_on``: a commit caught in the middle."""

    def __init__(self, booted: str) -> None:
        super().__init__(booted)
        self.in_commit = trio.Event()
        self.go_on = trio.Event()

    async def mark_good(self) -> None:
        self.in_commit.set()
        await self.go_on.wait()
        await super().mark_good()


@pytest.mark.parametrize("when", ["before the commit", "during the commit", "after the commit"])
async def test_the_deadline_and_the_commit_never_both_decide_a_trial(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    when: str,
    monkeypatch: pytest.MonkeyPatch,
):
    # The commit is held in mark-good by the test (real time, while the script waits on the
    # lock); the mock clock jumps meanwhile, past the commit's own bound, which is not under test.
    monkeypatch.setattr(update_service, "COMMIT_WITHIN_LOCK_S", 1e9)
    env = deadline_env(tmp_path, "B")
    data = tmp_path / "data"
    write_record(data, TRIAL)
    site, rauc = Site(ready=True), PausedCommitRauc(booted="B")
    site.answer()

    async def deadline() -> None:
        proc = await trio.run_process(
            [str(LIBEXEC / "update-deadline")], env=env, capture_stderr=True, check=False
        )
        assert proc.returncode == 0, proc.stderr

    async def service() -> None:
        await commit_when_healthy(
            site, data, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot", booted="B"
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(decide_every_second, site)
        if when == "before the commit":
            await deadline()
            nursery.start_soon(service)
            rauc.go_on.set()
        else:
            nursery.start_soon(service)
            await rauc.in_commit.wait()  # the service holds the lock, mark-good under way
            if when == "during the commit":
                decided = trio.Event()

                async def deadline_to_its_end() -> None:
                    await deadline()
                    decided.set()

                nursery.start_soon(deadline_to_its_end)
                lock = data / DECISION_LOCK
                assert await trio.to_thread.run_sync(waiting_on_lock, lock)
                rauc.go_on.set()
                # The script must have decided (real time) before the clock, which jumps
                # whenever every task waits, runs the 300 s below and cancels it half-way.
                await decided.wait()
            else:
                rauc.go_on.set()
                await trio.sleep(10)
                record = read_record(data)
                assert record is not None and record.state == "committed"
                await deadline()
        await trio.sleep(300)
        nursery.cancel_scope.cancel()

    asked, failure = deadline_outcome(tmp_path)
    record = read_record(data)
    assert record is not None
    rolled_back = "mark-bad" in asked
    committed = record.state == "committed"
    assert rolled_back != committed, (asked, record.state, rauc.marked)
    if rolled_back:
        assert rauc.marked == [] and failure is not None and (data / FAILURE_FILE).exists()
        assert when == "before the commit"
    else:
        assert len(rauc.marked) == 1 and asked == "" and failure is None


class SlowCommitRauc(RecordedRauc):
    """Its mark-good takes ``takes_s`` (RAUC's D-Bus service busy, a slow boot partition)."""

    def __init__(self, booted: str, takes_s: float) -> None:
        super().__init__(booted)
        self.takes_s = takes_s

    async def mark_good(self) -> None:
        await trio.sleep(self.takes_s)
        await super().mark_good()


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    deadline_at_s=st.floats(min_value=0.0, max_value=300.0),
    commit_takes_s=st.floats(min_value=0.0, max_value=60.0),
)
async def test_whenever_the_deadline_runs_exactly_one_decides_the_trial(
    tmp_path_factory: pytest.TempPathFactory,
    autojump_clock: trio.testing.MockClock,
    deadline_at_s: float,
    commit_takes_s: float,
):
    """Safety, in every interleaving: the trial ends either committed (the record says so and
    the slot was never marked bad) or rolled back (marked bad, the reason written, never marked
    good), never both and never neither."""
    base = tmp_path_factory.mktemp("race")
    env = deadline_env(base, "B")
    data = base / "data"
    write_record(data, TRIAL)
    site, rauc = Site(ready=True), SlowCommitRauc("B", commit_takes_s)
    site.answer()

    async def deadline() -> None:
        await trio.sleep(deadline_at_s)
        proc = await trio.run_process(
            [str(LIBEXEC / "update-deadline")], env=env, capture_stderr=True, check=False
        )
        assert proc.returncode == 0, proc.stderr

    async with trio.open_nursery() as nursery:
        nursery.start_soon(decide_every_second, site)
        nursery.start_soon(
            lambda: commit_when_healthy(
                site, data, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot", booted="B"
            )
        )
        await deadline()
        await trio.sleep(120.0 + commit_takes_s + 60.0)  # the commit, had it still to come
        nursery.cancel_scope.cancel()

    asked, failure = deadline_outcome(base)
    record = read_record(data)
    assert record is not None
    committed = record.state == "committed" and rauc.marked != []
    rolled_back = "mark-bad" in asked and failure is not None
    assert committed != rolled_back, (deadline_at_s, commit_takes_s, asked, record.state)
    if committed:
        assert "mark-bad" not in asked and failure is None
    else:
        assert rauc.marked == [] and record.state == "trial"


def test_a_commit_under_the_lock_ends_before_the_deadline_stops_waiting_for_it() -> None:
    """update-deadline waits 60 s for the lock, then decides alone; the service's commit under
    the lock (mark-good, then the record's retries) is bounded below that. A commit that could
    take RAUC's 300 s let both decide: the record "committed", the old slot booted."""
    script = (LIBEXEC / "update-deadline").read_text()
    assert 'flock -w "${UPDATE_DEADLINE_LOCK_WAIT_S:-60}"' in script
    # trio gives a cancelled command 5 s after its SIGTERM before the SIGKILL
    held = update_service.COMMIT_WITHIN_LOCK_S + 5 + sum(update_service.RECORD_RETRY_S)
    assert held < 60 - 20  # with room for the record's fsyncs on a slow card


async def test_a_commit_that_hangs_is_given_up_within_the_lock_and_tried_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """mark-good that does not answer: the lock is let go after COMMIT_WITHIN_LOCK_S, the health
    file says so (update-deadline quotes it if it rolls back), and the commit is tried again."""

    class HangsOnceRauc(RecordedRauc):
        tries = 0

        async def mark_good(self) -> None:
            self.tries += 1
            if self.tries == 1:
                await trio.sleep_forever()
            await super().mark_good()

    data = tmp_path / "data"
    write_record(data, TRIAL)
    site, rauc = Site(ready=True), HangsOnceRauc(booted="B")
    site.answer()
    health_seen: list[str] = []

    async def watch_health() -> None:
        while True:
            path = data / "update-health"
            if path.exists():
                text = path.read_text()
                if not health_seen or health_seen[-1] != text:
                    health_seen.append(text)
            await trio.sleep(1)

    with trio.move_on_after(600):  # the commit task runs for the life of the process
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decide_every_second, site)
            nursery.start_soon(watch_health)
            await commit_when_healthy(
                site, data, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot", booted="B"
            )
    record = read_record(data)
    assert record is not None and record.state == "committed" and rauc.tries == 2
    assert any("healthy, but the commit failed: no answer in 20 s" in t for t in health_seen)
