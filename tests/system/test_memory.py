"""The service runs a full garbage collection every minute (system/memory.py): the cyclic garbage
and the free lists that would wait hours for the interpreter's own full collection are freed."""

from __future__ import annotations

import gc
import logging
import time
import weakref
from pathlib import Path

import pytest
import trio
import trio.testing

from dynexport import app as app_module
from dynexport.system.config import parse_config
from dynexport.system.memory import COLLECT_EVERY_S, collect_garbage
from tests.app.conftest import make_app, wait_for


async def test_a_full_collection_runs_every_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    at: list[float] = []

    def counting() -> int:
        at.append(trio.current_time())
        return 0

    with trio.move_on_after(3.5 * COLLECT_EVERY_S):
        await collect_garbage(collect=counting)
    assert COLLECT_EVERY_S == 60.0
    assert at == [60.0, 120.0, 180.0]


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


async def test_cyclic_garbage_is_freed_by_the_collection_not_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reference cycle nobody holds survives until the next collection, then is gone."""
    gc.disable()  # the interpreter's own collections: none during this test
    try:
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None  # reference counting alone never frees a cycle
        with trio.move_on_after(COLLECT_EVERY_S + 1):
            await collect_garbage()
        assert gone() is None
    finally:
        gc.enable()


async def test_a_slow_collection_is_logged_a_quick_one_is_not(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def slow() -> int:
        time.sleep(0.05)  # holds the event loop, as a long collection would
        return 7

    with caplog.at_level(logging.INFO, logger="dynexport.system"):
        with trio.move_on_after(1.5):
            await collect_garbage(1.0, collect=lambda: 0, slow_s=0.01)
        assert caplog.records == []
        with trio.move_on_after(1.5):
            await collect_garbage(1.0, collect=slow, slow_s=0.01)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "held the event loop" in record.getMessage()
    assert "(7 unreachable objects)" in record.getMessage()


async def test_the_service_runs_the_collections_for_its_whole_life(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`App.run` starts the task (supervised, with the others) and it runs until the end."""
    running: list[str] = []

    async def watched() -> None:
        running.append("started")
        try:
            await trio.sleep_forever()
        finally:
            running.append("stopped")

    monkeypatch.setattr(app_module, "collect_garbage", watched)
    app = make_app(parse_config({}), tmp_path / "data")
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        await wait_for(lambda: running == ["started"])
        nursery.cancel_scope.cancel()
    assert running == ["started", "stopped"]
