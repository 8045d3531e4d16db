"""Atomic state files: never torn, secrets never world-readable, keys never silently replaced."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from dynexport.system.storage import atomic_write, read_json, set_aside, write_json


def test_write_replaces_the_whole_file_and_leaves_no_temp_files(tmp_path: Path):
    target = tmp_path / "state.json"
    write_json(target, {"a": 1})
    write_json(target, {"b": [1, 2]})
    assert read_json(target) == {"b": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_secret_is_created_with_mode_0600(tmp_path: Path):
    key = tmp_path / "keys" / "device-key.pem"
    atomic_write(key, b"secret", mode=0o600)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes() == b"secret"


def test_no_overwrite_keeps_the_existing_file(tmp_path: Path):
    key = tmp_path / "device-key.pem"
    atomic_write(key, b"first", mode=0o600, overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write(key, b"second", mode=0o600, overwrite=False)
    assert key.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device-key.pem"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "config.json"
    write_json(target, {"old": True})

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_json(target, {"new": True})
    monkeypatch.undo()
    assert read_json(target) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_corrupt_json_is_reported_with_the_path(tmp_path: Path):
    target = tmp_path / "s.json"
    target.write_text("{oops")
    with pytest.raises(ValueError, match=r"s\.json: not valid JSON at line 1"):
        read_json(target)


def test_an_owner_is_set_before_the_file_takes_its_name(tmp_path: Path, monkeypatch):
    """A file root writes for the service (the update record) must never appear root-owned, not
    even after a power cut: the owner is set on the temporary file, before the rename that the
    folder fsync makes durable (a chown after it is a metadata change nothing makes durable)."""
    uid, gid = (4242, 4343) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    seen: list[tuple[int, int, int]] = []
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        st = os.stat(src)
        seen.append((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
        real_replace(src, dst)

    monkeypatch.setattr("dynexport.system.storage.os.replace", replace)
    target = tmp_path / "update.json"
    atomic_write(target, b"{}", mode=0o600, owner=(uid, gid))
    assert seen == [(uid, gid, 0o600)]
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (uid, gid)


def test_set_aside_keeps_the_newest_copies_even_when_the_clock_went_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pi restarts from its last saved time after a power cut: copies ordered by their time
    stamp put the newest first in line for deletion. They are ordered by their number."""
    path = tmp_path / "schedule.json"
    stamps = iter([2_000_000_000, 1_900_000_000, 1_800_000_000, 1_700_000_000])
    real_gmtime = time.gmtime
    monkeypatch.setattr(time, "gmtime", lambda: real_gmtime(next(stamps)))
    names = []
    for i in range(4):
        path.write_bytes(b"damaged %d" % i)
        names.append(set_aside(path, keep=3).name)
        assert not path.exists()
    kept = sorted(tmp_path.glob("schedule.json.*.corrupt"))
    assert [p.read_bytes() for p in kept] == [b"damaged 1", b"damaged 2", b"damaged 3"]
    assert [p.name for p in kept] == names[1:]
    assert names[3].startswith("schedule.json.0004-2023") and names[0].startswith(
        "schedule.json.0001-2033"
    )


def test_set_aside_moves_the_companions_with_the_file_and_leaves_other_files_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"damaged")
    Path(f"{path}-journal").write_bytes(b"its journal")
    (tmp_path / "h.sqlite.backup.corrupt").write_bytes(b"not one set_aside made")
    aside = set_aside(path, keep=1, companions=("-journal",))
    assert aside.read_bytes() == b"damaged"
    assert Path(f"{aside}-journal").read_bytes() == b"its journal"
    assert not Path(f"{path}-journal").exists()
    path.write_bytes(b"damaged again")
    second = set_aside(path, keep=1, companions=("-journal",))
    assert not aside.exists() and second.read_bytes() == b"damaged again"
    assert (tmp_path / "h.sqlite.backup.corrupt").read_bytes() == b"not one set_aside made"
