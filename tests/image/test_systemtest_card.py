"""The system test's fresh card (systemtest/run.py ``fresh_card``): the image's bytes, its holes
kept, and room for the data partition to grow."""

from __future__ import annotations

import importlib.util
import os
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.image.helpers import ROOT

MIB = 1 << 20


@pytest.fixture(scope="module")
def run_py() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("systemtest_run", ROOT / "systemtest/run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(folder: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    folder.mkdir()
    with open(folder / "disk.img", "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    return folder


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _zeros_from(path: Path, offset: int) -> bool:
    """Whether everything from ``offset`` to the end reads as zeros (read in 4 MiB pieces)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(4 * MIB):
            if chunk.count(0) != len(chunk):
                return False
    return True


def test_a_card_holds_the_image_and_room_to_grow_without_writing_its_holes(
    run_py: types.ModuleType, tmp_path: Path
) -> None:
    """A 64 MiB image with 2.5 MiB written: the card has the same bytes, CARD_EXTRA more zeros
    after them, and about as much written as the image (not 64 MiB)."""
    pieces = [(0, b"MBR" * 100), (8 * MIB, os.urandom(2 * MIB)), (64 * MIB - 4096, b"\xff" * 4096)]
    image = _image(tmp_path / "image", 64 * MIB, pieces)
    work = tmp_path / "work"
    work.mkdir()
    disk = run_py.fresh_card(image, work)
    assert disk == work / "disk.img"
    assert disk.stat().st_size == 64 * MIB + run_py.CARD_EXTRA
    assert _read(disk, 0, 64 * MIB) == (image / "disk.img").read_bytes()
    assert _zeros_from(disk, 64 * MIB)
    if _allocated(image / "disk.img") < 8 * MIB:  # the file system keeps holes (ext4, tmpfs)
        assert _allocated(disk) <= _allocated(image / "disk.img") + MIB


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size_kib=st.integers(min_value=0, max_value=4096),
    pieces=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=4096 * 1024), st.binary(min_size=1, max_size=9000)
        ),
        max_size=6,
    ),
)
def test_a_card_is_the_image_byte_for_byte_whatever_its_holes(
    run_py: types.ModuleType,
    tmp_path_factory: pytest.TempPathFactory,
    size_kib: int,
    pieces: list[tuple[int, bytes]],
) -> None:
    """Data at any offset, holes anywhere (none, leading, trailing, the whole file): the card
    starts with exactly the image's bytes."""
    base = tmp_path_factory.mktemp("card")
    image = _image(base / "image", size_kib * 1024, pieces)
    work = base / "work"
    work.mkdir()
    disk = run_py.fresh_card(image, work)
    want = (image / "disk.img").read_bytes()
    assert disk.stat().st_size == len(want) + run_py.CARD_EXTRA
    assert _read(disk, 0, len(want) + 65536) == want + bytes(65536)
