"""journal-save keeps the persistent copy of the journal within 16 MiB after every run
(docs/image.md "Persistence"), whatever one run brings.

The size used to be checked before the entries were appended, so one run could add any amount
on top of a full 4 MiB file: ten runs of 3 MiB each left 25 MB. The script runs against a
stand-in journalctl that writes a given number of numbered lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.image.helpers import LIBEXEC

SCRIPT = LIBEXEC / "journal-save"
MIB = 1024 * 1024
LINE = 100  # bytes per stand-in entry, newline included


class Saver:
    """journal-save on a folder of its own, its journalctl a stand-in writing numbered entries."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin_dir, self.log_dir, self.cursor = tmp_path / "bin", tmp_path / "log", tmp_path / "c"
        self.bin_dir.mkdir()
        stand_in = self.bin_dir / "journalctl"
        stand_in.write_text(
            "#!/bin/sh\n"
            "# the entries since the cursor: ENTRIES lines numbered from FIRST, 100 bytes each\n"
            'for c in "$@"; do case "$c" in --cursor-file=*) echo c >"${c#*=}";; esac; done\n'
            'awk -v n="$ENTRIES" -v f="$FIRST" \'BEGIN {\n'
            'x = sprintf("%82s", ""); gsub(/ /, "x", x)\n'
            'for (i = f; i < f + n; i++) printf "entry %010d %s\\n", i, x }\'\n'
        )
        stand_in.chmod(0o755)
        self.next = 0

    def __call__(self, nbytes: int) -> list[Path]:
        """One run that finds ``nbytes`` of new entries; the files left in the folder."""
        entries = nbytes // LINE
        env = {
            **os.environ,
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
            "DYNEXPORT_JOURNAL_CURSOR": str(self.cursor),
            "ENTRIES": str(entries),
            "FIRST": str(self.next),
        }
        self.next += entries
        subprocess.run(["sh", str(SCRIPT), str(self.log_dir)], env=env, check=True, timeout=60)
        return sorted(self.log_dir.iterdir())

    def last(self) -> str:
        return f"entry {self.next - 1:010d} " + "x" * 82


@pytest.fixture
def save(tmp_path: Path) -> Saver:
    return Saver(tmp_path)


def _total(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def _newest(files: list[Path]) -> str:
    lines = [ln for f in files for ln in f.read_text().splitlines() if ln.startswith("entry ")]
    return max(lines)


def test_ten_runs_of_3_mib_stay_within_16_mib(save: Saver) -> None:
    for _ in range(10):
        files = save(3 * MIB)
        assert _total(files) <= 16 * MIB
        assert all(f.stat().st_size <= 4 * MIB for f in files), [f.stat().st_size for f in files]
        assert len(files) <= 4  # journal.log and three older ones
        assert _newest(files) == save.last()  # nothing new lost
    assert {f.name for f in files} <= {"journal.log", *(f"journal.log.{i}" for i in (1, 2, 3))}


def test_one_run_larger_than_a_file_keeps_its_newest_4_mib(save: Saver) -> None:
    save(1 * MIB)
    files = save(10 * MIB)  # a first save after a long boot, or a service logging in a loop
    assert _total(files) <= 16 * MIB
    rotated = next(f for f in files if f.name == "journal.log.1")
    assert 4 * MIB - 512 <= rotated.stat().st_size <= 4 * MIB
    text = rotated.read_text()
    assert text.startswith("-- journal-save: ") and "older entries dropped" in text.splitlines()[0]
    assert all(ln.startswith("entry ") for ln in text.splitlines()[1:])  # whole lines only
    assert _newest(files) == save.last()


def test_a_small_run_appends_without_rotating(save: Saver) -> None:
    save(1000)
    files = save(1000)
    assert [f.name for f in files] == ["journal.log"]
    text = files[0].read_text()
    assert text.startswith("-- boot ")  # the boot's first run marks it, once
    assert text.count("-- boot ") == 1 and text.count("entry ") == 20
