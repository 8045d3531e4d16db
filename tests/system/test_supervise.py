"""A supervised task that raises is logged, recorded and restarted with backoff; the rest go on."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.system.supervise import (
    HEALTHY_AFTER_S,
    MAX_BACKOFF_S,
    FaultLog,
    backoff_s,
    supervised,
)


def test_backoff_doubles_from_one_second_up_to_a_minute() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 4, 5, 6, 7, 50)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_s(10_000) == MAX_BACKOFF_S


async def test_a_failing_task_is_restarted_with_backoff_and_its_fault_recorded(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    faults = FaultLog()
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(trio.current_time())
        if len(starts) <= 3:
            raise KeyError("boom")
        await trio.sleep(10)  # then runs properly and ends

    with caplog.at_level(logging.ERROR, logger="dynexport.system"):
        await supervised("flaky", flaky, faults)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([1.0, 2.0, 4.0])
    fault = faults.faults["flaky"]
    assert fault.count == 3
    assert fault.error == "KeyError: 'boom'"
    # each failure is logged with its traceback
    assert len([r for r in caplog.records if r.exc_info]) == 3


async def test_a_fault_stays_active_until_the_task_has_run_long_enough(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = FaultLog()
    runs = 0

    async def once_broken() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first run fails")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervised, "task", once_broken, faults)
        await trio.sleep(0.5)  # in its backoff
        assert [f.task for f in faults.active(trio.current_time())] == ["task"]
        await trio.sleep(1.0 + HEALTHY_AFTER_S / 2)  # restarted, not yet long enough
        assert faults.active(trio.current_time())
        await trio.sleep(HEALTHY_AFTER_S)
        assert faults.active(trio.current_time()) == []
        nursery.cancel_scope.cancel()
    assert runs == 2


async def test_the_fault_hook_runs_before_the_backoff_and_its_own_failure_is_contained(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = FaultLog()
    seen: list[tuple[str, float]] = []
    runs = 0

    async def task() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ValueError(f"run {runs}")

    async def hook(exc: BaseException) -> None:
        seen.append((str(exc), trio.current_time()))
        if len(seen) == 2:
            raise ZeroDivisionError("the hook itself fails")

    t0 = trio.current_time()
    await supervised("task", task, faults, on_fault=hook)
    assert [s for s, _ in seen] == ["run 1", "run 2"]
    assert seen[0][1] == t0  # at once, before waiting
    assert runs == 3


async def test_cancellation_is_never_taken_for_a_fault(
    autojump_clock: trio.testing.MockClock,
) -> None:
    faults = FaultLog()
    ended = False

    async def forever() -> None:
        nonlocal ended
        try:
            await trio.sleep_forever()
        finally:
            ended = True

    with trio.move_on_after(5):
        await supervised("forever", forever, faults)
    assert ended
    assert faults.faults == {}


async def test_a_failure_that_meets_a_cancellation_is_logged_and_only_the_cancellation_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Seen in CI: a web server that failed to bind while the app was being stopped. Its nursery
    # ended with the error and its other task's Cancelled (the outer scope's, so not absorbed
    # by the nursery's own scope): a BaseExceptionGroup, no Exception, which the supervisor let
    # escape as a crash of the whole service at shutdown.
    faults = FaultLog()

    with trio.CancelScope() as outer:

        async def fails_as_it_is_stopped() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await trio.lowlevel.checkpoint()
                outer.cancel()
                raise OSError(98, "Address already in use")

        with caplog.at_level(logging.ERROR, logger="dynexport.system"):
            await supervised("web server", fails_as_it_is_stopped, faults)
    assert outer.cancelled_caught  # the cancellation went on, and nothing else escaped
    # the error is in the log with its traceback; no fault is left waiting for a restart
    # that will never come
    (record,) = [r for r in caplog.records if r.exc_info]
    assert "web server" in record.getMessage() and "stopped" in record.getMessage()
    assert "Address already in use" in caplog.text
    assert faults.faults == {}


ACTIONS = st.one_of(
    st.tuples(st.just("raise"), st.integers(0, 3)),
    st.tuples(st.just("return"), st.integers(0, 3)),
    st.tuples(st.just("forever"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(
    children=st.lists(ACTIONS, max_size=3),
    body=ACTIONS,
    cancel_at=st.none() | st.integers(0, 8),
)
def test_no_exception_ever_escapes_a_supervised_task(
    children: list[tuple[str, int]], body: tuple[str, int], cancel_at: int | None
) -> None:
    """Whatever a task's nursery does (errors in its children or its body, at any point of a
    cancellation from outside, or none), the supervisor ends only by returning or by that
    cancellation: never with an exception that would take down the service's one nursery."""
    checkpoints = 0

    async def main() -> None:
        nonlocal checkpoints
        faults = FaultLog()
        with trio.CancelScope() as outer:
            outer.deadline = trio.current_time() + 30  # the backoff ends each run eventually

            async def act(action: tuple[str, int]) -> None:
                nonlocal checkpoints
                kind, steps = action
                if kind == "forever":
                    await trio.sleep_forever()
                for _ in range(steps):
                    checkpoints += 1
                    if checkpoints == cancel_at:
                        outer.cancel()
                    await trio.lowlevel.checkpoint()
                if kind == "raise":
                    raise ValueError("boom")

            async def task() -> None:
                async with trio.open_nursery() as nursery:
                    for child in children:
                        nursery.start_soon(act, child)
                    await act(body)

            await supervised("task", task, faults)

    logging.disable(logging.ERROR)  # hundreds of expected tracebacks
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logging.disable(logging.NOTSET)
