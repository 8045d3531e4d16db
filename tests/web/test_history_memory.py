"""History's memory stays flat while its database grows (issue #15: RSS growth)."""

from __future__ import annotations

from pathlib import Path

from dynexport.web.history import CACHE_KIB, History, Row

T0 = 1_750_000_500


def _row(t: int) -> Row:
    return Row(
        t,
        {"site": 100.0 + t % 60, "der": 3000.0, "export_limit": 5000.0, "gen_limit": None},
        {"inverter 1": 1500.0, "inverter 2": 1500.0},
    )


async def test_sqlite_page_cache_is_bounded_so_memory_does_not_follow_the_file(
    tmp_path: Path,
) -> None:
    """The page cache of the connection History opens is CACHE_KIB, not SQLite's 2 MiB default
    (which filled as a day's 1 s rows accumulated: +2 MiB RSS after ten hours)."""
    h = History(tmp_path / "h.sqlite")
    await h.open()
    assert h._db is not None
    assert h._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    assert CACHE_KIB <= 256
    for minute in range(5):  # the setting survives writes, deletes and vacuum
        for s in range(60):
            h.add(_row(T0 + minute * 60 + s))
        await h.flush(T0 + minute * 60 + 60)
    got = await h.query(T0, T0 + 300, 60, now=T0 + 300)
    assert len(got["t"]) == 5
    assert h._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    await h.close()


async def test_a_reopened_history_bounds_its_cache_again(tmp_path: Path) -> None:
    """The bound is set on every connection (it is not stored in the file)."""
    path = tmp_path / "h.sqlite"
    first = History(path)
    await first.open()
    first.add(_row(T0))
    await first.flush(T0 + 1)
    await first.close()
    again = History(path)
    await again.open()
    assert again._db is not None
    assert again._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    await again.close()
