"""`LatestWriter`: a slow or hung write never stalls the event loop, the latest state wins, at
most one write is in flight, a failure is retried until it works, and the writer's exit (or a
flush) leaves the last state on disk within a bound (system/latest_writer.py, used by the utility
link's store).

Everything runs on trio's mock clock; a write that "hangs" blocks its worker thread on a
`threading.Event` the test sets, so nothing depends on the machine's speed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.system.latest_writer import LatestWriter


@dataclass
class Sink:
    """A file stand-in: records every write; can block (``gate``) or fail (``failing``)."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    failing: bool = False
    holds: int | None = None
    writes: list[int] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()

    def write(self, state: int) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.entered.set()
            self.gate.wait()
            if self.failing:
                raise OSError(28, "No space left on device")
            self.writes.append(state)
            self.holds = state
        finally:
            with self.lock:
                self.in_flight -= 1


def holds(sink: Sink) -> int | None:
    """What the file holds (a function, so that type checkers do not carry narrowing over)."""
    return sink.holds


def unwritten(writer: LatestWriter[int]) -> bool:
    return writer.unwritten


async def ticker() -> None:
    """Keeps the autojumping mock clock from leaping to a far deadline while a thread works."""
    while True:  # noqa: ASYNC110 (a clock, not a wait for a condition)
        await trio.sleep(1)


async def test_a_hung_write_does_not_stop_other_tasks_and_the_latest_state_lands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = Sink()
    sink.gate.clear()  # the card hangs
    writer: LatestWriter[int] = LatestWriter("test.json", sink.write)
    ticks = 0

    async def control_loop() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(1)
            ticks += 1

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(control_loop)
        writer.submit(1)  # returns at once although the write will hang
        await trio.to_thread.run_sync(sink.entered.wait)  # the thread is in the write
        await trio.sleep(30)
        assert ticks >= 29  # the loop went on while the write hung
        assert sink.holds is None and writer.unwritten
        for state in (2, 3, 4):  # newer states replace the waiting one
            writer.submit(state)
        await trio.sleep(5)
        sink.gate.set()  # the card answers again
        await writer.wait_attempted(writer.version)
        assert holds(sink) == 4
        assert sink.writes == [1, 4]  # 2 and 3 were superseded before they were written
        assert sink.most_in_flight == 1
        assert not unwritten(writer)
        nursery.cancel_scope.cancel()


async def test_a_failed_write_is_kept_and_retried_after_a_backoff_until_it_works(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The clock moves only when the test moves it, so each retry is seen to wait for it."""
    sink = Sink(failing=True)
    errors: list[BaseException] = []
    oks: list[None] = []
    failed = trio.Event()

    def on_error(exc: BaseException) -> None:
        nonlocal failed
        errors.append(exc)
        failed.set()
        failed = trio.Event()

    writer: LatestWriter[int] = LatestWriter(
        "test.json", sink.write, on_error=on_error, on_ok=lambda: oks.append(None)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(7)
        for n in range(1, 4):
            await failed.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert len(errors) == n  # no retry before the backoff is over: no spinning
            assert holds(sink) is None and writer.unwritten and writer.failures == n
            if n < 3:
                mock_clock.jump(60)  # past any backoff
        sink.failing = False
        mock_clock.jump(60)
        await writer.wait_written(writer.version)
        assert holds(sink) == 7 and not writer.unwritten
        assert writer.failures == 0 and oks
        nursery.cancel_scope.cancel()


async def test_a_newer_state_is_tried_at_once_after_a_failure(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The clock stands still: only the new state, not the end of the backoff, can start the
    second attempt."""
    sink = Sink(failing=True)
    writer: LatestWriter[int] = LatestWriter("test.json", sink.write, on_error=lambda e: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(1)
        await writer.wait_attempted(1)  # failed; now in its backoff
        sink.failing = False
        writer.submit(2)
        await writer.wait_attempted(2)
        assert holds(sink) == 2 and sink.writes == [2]
        nursery.cancel_scope.cancel()


async def answer_once_blocked(sink: Sink) -> None:
    """The card answers once every task waits on it (the writer is in its exit flush)."""
    await trio.testing.wait_all_tasks_blocked()
    sink.gate.set()


async def test_a_cancelled_writer_writes_the_last_state_on_its_way_out() -> None:
    sink = Sink()
    writer: LatestWriter[int] = LatestWriter("test.json", sink.write, exit_flush_s=60)
    sink.gate.clear()
    async with trio.open_nursery() as outer, trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(1)
        await trio.to_thread.run_sync(sink.entered.wait)
        writer.submit(2)
        nursery.cancel_scope.cancel()  # shutdown while 1 is being written, 2 waiting
        outer.start_soon(answer_once_blocked, sink)
    # the task ended only once the latest state was on disk, after the one in flight
    assert not writer.unwritten
    assert sink.holds == 2 and sink.writes == [1, 2] and sink.most_in_flight == 1


async def test_a_cancelled_writer_on_a_hung_card_ends_within_its_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = Sink()
    sink.gate.clear()
    writer: LatestWriter[int] = LatestWriter("test.json", sink.write, exit_flush_s=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.submit(1)
        await trio.to_thread.run_sync(sink.entered.wait)
        nursery.cancel_scope.cancel()
        cancelled_at = trio.current_time()
    assert trio.current_time() - cancelled_at == pytest.approx(2)
    assert writer.unwritten  # left in memory; the hung thread is left behind
    # a flush by hand never returns on a hung card either: its caller bounds it
    start = trio.current_time()
    with trio.move_on_after(3) as scope:
        await writer.flush()
    assert scope.cancelled_caught and trio.current_time() - start == pytest.approx(3)
    sink.gate.set()  # let the abandoned threads finish


def test_without_a_running_task_a_submit_writes_at_once() -> None:
    sink = Sink()
    writer: LatestWriter[int] = LatestWriter("test.json", sink.write)
    writer.submit(5)
    assert sink.holds == 5 and not writer.unwritten


# -- the property: after any sequence of updates, failures and a final flush, the last state


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.none()),
        st.tuples(st.just("fail"), st.booleans()),
        st.tuples(st.just("wait"), st.floats(0, 90)),
        st.tuples(st.just("settle"), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_after_any_updates_and_a_final_flush_the_file_holds_the_last_state(
    ops: list[tuple[str, object]],
) -> None:
    sink = Sink()
    writer: LatestWriter[int] = LatestWriter("test.json", sink.write, on_error=lambda e: None)
    last: int | None = None

    async def scenario() -> None:
        nonlocal last
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for op, arg in ops:
                if op == "submit":  # the states are 1, 2, 3 ... in submission order
                    last = writer.version + 1
                    writer.submit(last)
                elif op == "fail":
                    sink.failing = bool(arg)
                elif op == "wait":
                    assert isinstance(arg, float)
                    await trio.sleep(arg)
                else:
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        sink.failing = False
        assert await writer.flush()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sink.holds == last
    assert sink.most_in_flight <= 1
    # never an older state written after a newer one, never one twice
    assert all(a < b for a, b in zip(sink.writes, sink.writes[1:], strict=False)), sink.writes
