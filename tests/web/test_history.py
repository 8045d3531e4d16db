"""History: batched writes, means per minute and quarter hour, retention, size bound, API, CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import trio

from dynexport.web.history import History, Row, choose_resolution
from tests.web.conftest import Web, logged_in

T0 = 1_750_000_500  # a multiple of 900 s


def row(t: int, site: float, der: float = 1000.0) -> Row:
    return Row(
        t,
        {"site": site, "der": der, "export_limit": 5000.0, "gen_limit": None},
        {"inverter 1": der},
    )


async def test_samples_stay_in_memory_until_a_flush_which_writes_one_transaction(
    tmp_path: Path,
) -> None:
    h = History(tmp_path / "h.sqlite")
    await h.open()
    for i in range(120):
        h.add(row(T0 + i, float(i)))
    assert h.writes == 0
    await h.flush(T0 + 120)
    assert h.writes == 1
    stats = await h.stats()
    assert stats["rows1"] == 120 and stats["rows60"] == 1  # the second minute is still open
    await h.flush(T0 + 121, partial=True)
    assert (await h.stats())["rows60"] == 2
    await h.close()


async def test_queries_average_over_the_step_and_include_unflushed_samples(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite")
    await h.open()
    for i in range(180):
        h.add(row(T0 + i, float(i)))
    await h.flush(T0 + 120)  # seconds 0..119 on disk, 120..179 still in memory
    got = await h.query(T0, T0 + 180, 60, now=T0 + 180)
    assert got["resolution"] == 60
    assert got["t"] == [T0, T0 + 60, T0 + 120]
    assert got["siteW"] == [29.5, 89.5, 149.5]
    assert got["exportLimitW"] == [5000.0] * 3 and got["generationLimitW"] == [None] * 3
    assert got["inverters"] == {"inverter 1": [1000.0] * 3}
    fine = await h.query(T0 + 110, T0 + 130, 10, now=T0 + 180)
    assert fine["resolution"] == 1 and fine["siteW"] == [114.5, 124.5]
    await h.close()


def test_the_resolution_is_the_coarsest_kept_one_not_coarser_than_the_step() -> None:
    now = T0 + 40 * 86400
    assert choose_resolution(now - 3600, 1, now) == 1
    assert choose_resolution(now - 3600, 120, now) == 60
    assert choose_resolution(now - 7 * 86400, 900, now) == 900
    assert choose_resolution(now - 3 * 86400, 10, now) == 60  # 1 s rows are gone after a day
    assert choose_resolution(now - 35 * 86400, 60, now) == 900


async def test_old_rows_are_dropped_by_their_retention(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite")
    await h.open()
    for i in range(0, 1800, 1):
        h.add(row(T0 + i, 1.0))
    await h.flush(T0 + 1800)
    await h.flush(T0 + 2 * 86400)  # two days later: the 1 s rows are gone, the means stay
    stats = await h.stats()
    assert stats["rows1"] == 0 and stats["rows60"] == 29 and stats["rows900"] == 1
    await h.close()


async def test_the_database_is_kept_under_its_size_bound(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite", max_bytes=200_000)
    await h.open()
    for i in range(20000):
        h.add(row(T0 + i, float(i)))
    await h.flush(T0 + 20000)
    stats = await h.stats()
    assert stats["bytes"] <= 200_000
    assert stats["rows900"] > 0  # the newest rows survive
    await h.close()


async def test_history_api_and_csv_export(web: Web) -> None:
    assert web.app.options.data_dir.is_dir()
    c = await logged_in(web)
    await c.request("PUT", "/api/config", {"limits": {"exportW": 2000}})
    await trio.sleep(2.5)  # the recorder samples once a second
    now = int(web.app.options.wall_clock())
    status, doc = await c.json("GET", f"/api/history?from={now - 60}&to={now + 2}&step=1")
    assert status == 200 and len(doc["t"]) >= 1
    resp = await c.request("GET", f"/api/history.csv?from={now - 60}&to={now + 2}&step=1")
    assert resp.header("content-type") == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(resp.body.decode())))
    assert rows[0][:5] == ["time", "siteW", "derW", "exportLimitW", "generationLimitW"]
    assert len(rows) == len(doc["t"]) + 1
    status, err = await c.json("GET", f"/api/history?from={now}&to={now - 10}")
    assert status == 400 and err["error"] == "to must be after from"
    status, err = await c.json("GET", f"/api/history?from=0&to={now}&step=1")
    assert status == 400 and "use a larger step" in err["error"]
    status, err = await c.json("GET", "/api/history?from=yesterday")
    assert status == 400
