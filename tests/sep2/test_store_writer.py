"""The utility link's files are written off the event loop (sep2/state.py, `LatestWriter`).

A hung SD card holds back nothing but the writes: the link keeps polling and obeying, other tasks
keep running, a DERControlResponse is not POSTed before the state that lists it is on disk (so a
restart can never send it twice), and once the card answers the latest state lands. A full card is
reported once, the state lives on in memory and is saved when space is back. Shutdown flushes
within a bound. All on trio's mock clock; the hung card is a `threading.Event`.
"""

from __future__ import annotations

import errno
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.sep2 import schema, state
from dynexport.sep2.controls import ResponseStatus
from dynexport.sep2.responses import PendingResponse, ResponseTracker
from dynexport.sep2.state import RESPONSES_FILE, SCHEDULE_FILE, STORE_FLUSH_S, LinkStore
from dynexport.sim.utility_server import UtilityServer
from dynexport.system.storage import atomic_write
from tests.sep2.fakes import T0
from tests.sep2.test_client_faults import export_limit, in_process_client, run_with_samples, wall


class Card:
    """`atomic_write` on a card that can hang (until ``answer``) and counts what it writes."""

    def __init__(self) -> None:
        self.working = threading.Event()
        self.working.set()
        self.writes: list[str] = []

    def hang(self) -> None:
        self.working.clear()

    def answer(self) -> None:
        self.working.set()

    def __call__(self, path: Any, data: bytes, **kwargs: Any) -> None:
        self.working.wait()
        self.writes.append(Path(path).name)
        atomic_write(path, data, **kwargs)


async def ticker() -> None:
    """Keeps the autojumping mock clock from leaping to a far deadline while a thread works."""
    while True:  # noqa: ASYNC110 (a clock, not a wait for a condition)
        await trio.sleep(1)


def error_of(store: LinkStore) -> str | None:
    return store.write_error


def tracker(n: int) -> ResponseTracker:
    return ResponseTracker(
        pending=tuple(
            PendingResponse(f"{i:032X}", ResponseStatus.RECEIVED, "/rsp", int(T0)) for i in range(n)
        )
    )


async def test_a_store_whose_write_hangs_stops_no_task_and_the_latest_state_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    card = Card()
    monkeypatch.setattr(state, "atomic_write", card)
    store = LinkStore(tmp_path)
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(1)
            ticks += 1

    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        nursery.start_soon(other_task)
        card.hang()
        for n in range(1, 6):
            store.save_responses(tracker(n))  # never blocks
        await trio.sleep(20)
        assert ticks >= 19  # the other task ran on while the write hung
        assert not store.settled() and not (tmp_path / RESPONSES_FILE).exists()
        card.answer()
        await store.written(RESPONSES_FILE)
        assert store.settled()
        assert store.load_responses() == tracker(5)  # the latest, not each one in turn
        assert card.writes.count(RESPONSES_FILE) <= 2
        nursery.cancel_scope.cancel()


async def test_a_full_card_is_reported_once_and_the_state_is_saved_when_space_is_back(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = True

    def write(path: Any, data: bytes, **kwargs: Any) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        atomic_write(path, data, **kwargs)

    monkeypatch.setattr(state, "atomic_write", write)
    store = LinkStore(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        with caplog.at_level(logging.INFO, logger="dynexport.sep2.state"):
            for n in range(1, 4):
                store.save_responses(tracker(n))
                await store.wait_settled()  # tried, and failed
            assert store.write_error is not None and "No space" in store.write_error
            assert [r.levelno for r in caplog.records].count(logging.ERROR) == 1
            full = False
            # the next retry comes after the backoff. The mock clock also runs while a write is
            # in its thread; the ticker makes it run 1 s at a time, so the bound is 10^6 ticks
            nursery.start_soon(ticker)
            with trio.fail_after(1_000_000):
                await store.written(RESPONSES_FILE)
            assert error_of(store) is None
            assert any("works again" in r.getMessage() for r in caplog.records)
        assert LinkStore(tmp_path).load_responses() == tracker(3)
        nursery.cancel_scope.cancel()


async def test_an_unchanged_state_is_not_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = Card()
    monkeypatch.setattr(state, "atomic_write", card)
    store = LinkStore(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for _ in range(3):
            store.save_responses(tracker(2))
            await store.written(RESPONSES_FILE)
        assert card.writes == [RESPONSES_FILE]
        nursery.cancel_scope.cancel()


pytestmark_schema = pytest.mark.skipif(
    not schema.schema_available(), reason="the simulator validates with the CSIP-AUS XSD"
)


@pytestmark_schema
async def test_a_hung_card_holds_back_responses_not_the_link_and_they_go_once_it_answers(
    pki_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    card = Card()
    monkeypatch.setattr(state, "atomic_write", card)
    srv = UtilityServer(pki_dir=pki_dir, clock=wall)
    srv.set_default(export_limit_w=5000)
    client, _http = in_process_client(srv, tmp_path, store_in_threads=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await run_with_samples(client, 60)
        card.hang()
        mrid = srv.add_control(start=int(wall()) + 30, duration=3600, export_limit_w=1200)
        await run_with_samples(client, 120)
        # polled and obeyed from memory; "received" held back until the tracker is on disk
        assert export_limit(client) == 1200
        assert client.state().pending_responses >= 1
        assert not [r for r in srv.responses if r.subject == mrid]
        card.answer()
        # the writes take real time on the mock clock's run: wait for the outcome, bounded
        with trio.fail_after(1_000_000):
            while client.state().pending_responses or client.store.unwritten():  # noqa: ASYNC110
                await trio.sleep(1)
        sent = [int(r.status or 0) for r in srv.responses if r.subject == mrid]
        assert sent[:2] == [1, 2], sent
        assert LinkStore(tmp_path).load_responses() == client.tracker
        assert LinkStore(tmp_path).load_schedule() is not None
        nursery.cancel_scope.cancel()


@pytestmark_schema
async def test_shutdown_flushes_the_latest_state_within_a_bound(
    pki_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    card = Card()
    monkeypatch.setattr(state, "atomic_write", card)
    srv = UtilityServer(pki_dir=pki_dir, clock=wall)
    srv.add_control(start=int(T0) + 30, duration=3600, export_limit_w=1500)
    client, _http = in_process_client(srv, tmp_path, store_in_threads=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await trio.sleep(60)
        card.hang()
        client.store.save_schedule(client.snapshot)  # type: ignore[arg-type]
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
        cancelled_at = trio.current_time()
    # the card never answered: the link ended within the bound anyway
    assert trio.current_time() - cancelled_at <= STORE_FLUSH_S + 0.5
    card.answer()


async def test_the_writers_write_what_they_had_not_written_yet_on_their_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = Card()
    monkeypatch.setattr(state, "atomic_write", card)
    monkeypatch.setattr(state, "STORE_FLUSH_S", 60.0)  # a bound no slow machine reaches

    async def answer_once_blocked() -> None:
        await trio.testing.wait_all_tasks_blocked()
        card.answer()

    store = LinkStore(tmp_path)
    async with trio.open_nursery() as outer, trio.open_nursery() as nursery:
        await nursery.start(store.run)
        card.hang()
        store.save_responses(tracker(1))
        store.save_responses(tracker(4))
        nursery.cancel_scope.cancel()  # shutdown while the card hangs
        outer.start_soon(answer_once_blocked)
    assert not store.unwritten() and store.settled()
    assert LinkStore(tmp_path).load_responses() == tracker(4)


def test_a_schedule_file_from_before_loads_and_is_written_in_the_compact_form(
    tmp_path: Path,
) -> None:
    """A version 2 schedule.json (memory as keyed objects) still loads; a new save is version 3."""
    old = (
        '{"clock_offset":0,"extra":{},"fetched_at":1800000000,"memory":[{"at":1799999990,'
        '"end":1799999990,"finished":"completed","mrid":"AB","nominal_end":1799999990,'
        '"stops":[]}],"programs":[],"version":2}'
    )
    (tmp_path / SCHEDULE_FILE).write_text(old)
    store = LinkStore(tmp_path)
    snapshot = store.load_schedule()
    assert snapshot is not None and snapshot.memory.finished("AB")
    store.save_schedule(snapshot)  # no writer task: written at once
    text = (tmp_path / SCHEDULE_FILE).read_text()
    assert '"version":3' in text and '["AB",1799999990,1799999990,"completed",1799999990]' in text
    again = LinkStore(tmp_path).load_schedule()
    assert again is not None and again.memory == snapshot.memory


STORE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("save"), st.integers(0, 4)),
        st.tuples(st.just("full"), st.booleans()),
        st.tuples(st.just("wait"), st.integers(0, 90)),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=STORE_OPS)
def test_after_any_saves_and_failures_and_a_final_flush_the_file_holds_the_last_tracker(
    ops: list[tuple[str, int | bool]],
) -> None:
    full = False

    def write(path: Any, data: bytes, **kwargs: Any) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        atomic_write(path, data, **kwargs)

    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(state, "atomic_write", write)
        store = LinkStore(folder)
        last: ResponseTracker | None = None

        async def scenario() -> None:
            nonlocal full, last
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run)
                for op, arg in ops:
                    if op == "save":
                        last = tracker(int(arg))
                        store.save_responses(last)
                    elif op == "full":
                        full = bool(arg)
                    else:
                        await trio.sleep(int(arg))
                nursery.cancel_scope.cancel()
            full = False
            assert await store.flush()

        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
        stored = LinkStore(folder).load_responses()
        assert stored == (ResponseTracker() if last is None else last)
