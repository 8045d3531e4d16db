"""History: batched writes, means per minute and quarter hour, retention, size bound, API, CSV."""

from __future__ import annotations

import csv
import io
import sqlite3
from functools import partial
from pathlib import Path

import pytest
import trio

from dynexport.update.state import UPLOAD_FILE
from dynexport.web.history import History, Row, choose_resolution
from dynexport.web.server import HISTORY_FILE, serve_web
from tests.web.conftest import Client, Web, logged_in, setup_app

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


async def assert_a_new_history_begins(path: Path) -> None:
    """The history at ``path`` opens, takes a row and holds only that one."""
    h = History(path)
    await h.open()
    h.add(row(T0, 5.0))
    await h.flush(T0 + 1)
    assert (await h.stats())["rows1"] == 1
    await h.close()


async def test_a_file_that_is_not_a_database_is_set_aside_and_a_new_history_begun(
    tmp_path: Path,
) -> None:
    """A damaged history.sqlite failed at every start of the web server, which then never
    answered: no dashboard, no settings page to fix anything with."""
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"not a database " * 100)
    await assert_a_new_history_begins(path)
    aside = await trio.Path(tmp_path).glob("h.sqlite.*.corrupt")
    assert [await p.read_bytes() for p in aside] == [b"not a database " * 100]


async def test_a_history_that_cannot_be_opened_is_not_mistaken_for_a_damaged_one(
    tmp_path: Path,
) -> None:
    """Only SQLite's "not a database" and "corrupt" set a history aside: a file it cannot open
    (here a folder in its place; on a card: locked, an I/O error, read-only) raised the same
    DatabaseError family and a good history was moved out of the way for a new, empty one."""
    path = tmp_path / "h.sqlite"
    path.mkdir()
    h = History(path)
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        await h.open()
    assert await trio.Path(path).is_dir()
    assert list(await trio.Path(tmp_path).glob("h.sqlite.*")) == []


@pytest.mark.parametrize(
    "tables",
    [
        "CREATE TABLE samples (when_ INTEGER, value REAL)",  # another program's
        "CREATE TABLE samples (res INTEGER, t INTEGER, PRIMARY KEY (res, t))",  # fewer columns
    ],
)
async def test_a_database_of_another_layout_is_set_aside_not_left_unwritable(
    tmp_path: Path, tables: str
) -> None:
    """A real SQLite file whose tables are not the history's (another release's layout after
    a rollback, or another program's) failed at every write, for good: it is set aside and a
    new history begun."""
    path = tmp_path / "h.sqlite"
    other = sqlite3.connect(path)
    other.execute(tables)
    other.commit()
    other.close()
    await assert_a_new_history_begins(path)
    assert len(list(await trio.Path(tmp_path).glob("h.sqlite.*.corrupt"))) == 1


async def test_only_the_newest_three_damaged_histories_are_kept(tmp_path: Path) -> None:
    """A card that damages the file again and again does not fill up with copies (the journal
    moving with its file: tests/system/test_storage.py)."""
    path = tmp_path / "h.sqlite"
    for i in range(5):
        path.write_bytes(b"not a database %d " % i * 100)
        h = History(path)
        await h.open()
        await h.close()
    aside = sorted(await trio.Path(tmp_path).glob("h.sqlite.*.corrupt"))
    assert [(await p.read_bytes())[:16] for p in aside] == [
        b"not a database %d" % i for i in (2, 3, 4)
    ]


async def test_a_full_card_keeps_the_rows_for_the_next_write_and_names_the_real_error(
    tmp_path: Path,
) -> None:
    """SQLite rolls a transaction back itself when the disk is full; the ROLLBACK after it
    then failed ("no transaction is active") and hid why, and the rows of that minute were
    lost. The real error is raised, and the rows are written once there is room."""
    h = History(tmp_path / "h.sqlite")
    await h.open()
    h.add(row(T0, 1.0))
    await h.flush(T0 + 1)
    db = h._db
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the card is full
    for i in range(1, 600):
        h.add(row(T0 + i, float(i)))
    with pytest.raises(sqlite3.OperationalError, match="full"):
        await h.flush(T0 + 600)
    db.execute("PRAGMA max_page_count = 1000000")  # room again
    await h.flush(T0 + 601)
    got = await h.query(T0, T0 + 600, 1, now=T0 + 601)
    assert len(got["t"]) == 600
    await h.close()


async def test_the_web_server_answers_beside_a_damaged_history(tmp_path: Path) -> None:
    app = setup_app(tmp_path)
    await trio.Path(app.options.data_dir).mkdir(parents=True)
    await trio.Path(app.options.data_dir / HISTORY_FILE).write_bytes(b"\x00garbage" * 64)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_web, app, host="127.0.0.1", port=0))
        status, doc = await Client(port).json("GET", "/api/status")
        assert status == 200 and "alerts" in doc
        nursery.cancel_scope.cancel()


async def test_an_upload_left_by_a_restart_is_removed_when_the_web_server_starts(
    tmp_path: Path,
) -> None:
    """A bundle upload cut short by a restart or a power cut stayed on /data (up to 256 MiB)
    until someone uploaded again. None can be under way before the server answers."""
    app = setup_app(tmp_path)
    data = trio.Path(app.options.data_dir)
    await data.mkdir(parents=True)
    await (data / UPLOAD_FILE).write_bytes(b"half a bundle" * 1000)
    await (data / "config.json").write_text("{}")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_web, app, host="127.0.0.1", port=0))
        status, _ = await Client(port).json("GET", "/api/status")
        assert status == 200
        nursery.cancel_scope.cancel()
    assert not await (data / UPLOAD_FILE).exists()
    assert await (data / "config.json").read_text() == "{}"
