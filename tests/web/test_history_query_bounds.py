"""History: a long fine query holds one sum a step, not every stored row; a query
during the minute's flush still sees that minute."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import trio
import trio.testing

from dynexport.web.history import FIELDS, History, Row

T0 = 1_750_000_500  # a multiple of 900 s
DAY = 86400


def sample(t: int) -> Row:
    values: dict[str, float | None] = dict.fromkeys(FIELDS)
    values.update(site=100.0 + t % 60, der=3000.0, export_limit=5000.0)
    return Row(t, values, {"inverter 1": 1500.0, "inverter 2": 1000.0 + t % 2})


async def a_day_of_one_second_rows(path: Path) -> History:
    h = History(path)
    await h.open()
    for s in range(DAY):
        h.add(sample(T0 + s))
    await h.flush(T0 + DAY)
    return h


async def test_a_day_at_step_9_loads_one_row_a_step_not_the_86400_stored_rows(
    tmp_path: Path,
) -> None:
    """GET /api/history over the last day at step=9 (9 600 points, under MAX_POINTS) must use
    the 1 s rows, but SQLite sums them: what reaches Python is one row a step (and one a step
    for each inverter), and the traced peak is a fraction of the ~85 MiB the 86 400 row
    objects took."""
    h = await a_day_of_one_second_rows(tmp_path / "h.sqlite")
    now = T0 + DAY
    tracemalloc.start()
    try:
        got = await h.query(now - DAY + 1, now, 9, now)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    points = len(got["t"])
    assert got["resolution"] == 1 and points == 9600
    assert peak < 30 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert h.rows_loaded <= points * 3  # the values and the two inverters, per step
    # the sums are the means they replace
    assert got["derW"][0] == 3000.0 and got["inverters"]["inverter 1"][0] == 1500.0
    first = [100.0 + t % 60 for t in range(now - DAY + 1, now - DAY + 10)]
    assert got["siteW"][0] == round(sum(first) / 9, 1)
    assert got["inverters"]["inverter 2"][1] == round(
        sum(1000.0 + t % 2 for t in range(now - DAY + 10, now - DAY + 19)) / 9, 1
    )
    assert got["generationLimitW"][0] is None and got["batteryW"][0] is None
    await h.close()


async def test_a_pending_row_replaces_the_stored_one_of_the_same_time(tmp_path: Path) -> None:
    """The 1 min mean written early at shutdown is replaced by the newer one in memory, not
    averaged with it, now that the stored rows are summed in SQL."""
    h = History(tmp_path / "h.sqlite")
    await h.open()
    for s in range(30):
        h.add(Row(T0 + s, {"site": 10.0}, {"inverter 1": None}))
    await h.flush(T0 + 30, partial=True)  # minute T0 written with its first 30 s
    for s in range(30, 60):
        h.add(Row(T0 + s, {"site": 40.0}, {"inverter 1": None}))
    got = await h.query(T0, T0 + 60, 60, now=T0 + 60)
    assert got["resolution"] == 60 and got["t"] == [T0]
    assert got["siteW"] == [25.0]  # the open mean of all 60 s, not (10 + 25) / 2
    assert got["inverters"] == {"inverter 1": [None]}  # known, never a number
    await h.close()


async def test_a_damaged_inverter_column_counts_as_no_inverters(tmp_path: Path) -> None:
    """A row whose inverter JSON is not an object still gives its other values."""
    h = History(tmp_path / "h.sqlite")
    await h.open()
    h.add(Row(T0, {"site": 5.0}, {}))
    await h.flush(T0 + 1)
    assert h._db is not None
    h._db.execute("UPDATE samples SET inverters = 'not json' WHERE t = ?", (T0,))
    got = await h.query(T0, T0 + 10, 1, now=T0 + 10)
    assert got["siteW"] == [5.0] and got["inverters"] == {}
    await h.close()


async def test_a_query_while_the_minute_is_being_written_still_sees_that_minute(
    tmp_path: Path,
) -> None:
    """The flush cleared the pending rows before its write, which waited for a query reading
    the database: the query then found the minute in neither place."""
    h = History(tmp_path / "h.sqlite")
    await h.open()
    for s in range(60):
        h.add(Row(T0 + s, {"site": 100.0}, {}))
    got: dict[str, dict[str, Any]] = {}

    async def query() -> None:
        got["doc"] = await h.query(T0, T0 + 60, 1, now=T0 + 60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(query)  # the page asks for the chart...
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(h.flush, T0 + 60)  # ...as the minute's flush starts
    assert len(got["doc"]["t"]) == 60
    assert h.pending_rows() == 0  # written, then no longer pending
    after = await h.query(T0, T0 + 60, 1, now=T0 + 60)
    assert after["t"] == got["doc"]["t"]
    await h.close()


async def test_a_query_waiting_for_the_flush_sees_the_rows_it_writes(tmp_path: Path) -> None:
    """The other order: the flush is writing when the query comes, and is done (the rows no
    longer pending) by the time the query reads the database."""
    h = History(tmp_path / "h.sqlite")
    await h.open()
    for s in range(60):
        h.add(Row(T0 + s, {"site": float(s)}, {"inverter 1": 1.0}))
    got: dict[str, dict[str, Any]] = {}

    async def query() -> None:
        got["doc"] = await h.query(T0, T0 + 60, 30, now=T0 + 60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.flush, T0 + 60)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(query)
    assert got["doc"]["resolution"] == 1 and got["doc"]["siteW"] == [14.5, 44.5]
    assert got["doc"]["inverters"] == {"inverter 1": [1.0, 1.0]}
    await h.close()
