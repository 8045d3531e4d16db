"""mount-data grows the data file system whenever it is smaller than its partition, not only on
the boot that grew the partition (docs/image.md "Persistence").

A power cut or a failure after sfdisk and partx but before resize2fs finished used to leave the
partition at the end of the card and the file system at 64 MiB for good: every later boot found
nothing after the partition and never resized. The card is the stand-in world of
tests/image/test_mount_data.py, kept across boots (partx lengthens the partition in sysfs and
its file as the kernel and the card would)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.image.test_mount_data import OPTIONS, PART_SECTORS, SBIN, World, _make_world, _recorder

pytestmark = pytest.mark.skipif(
    any(shutil.which(t, path=SBIN) is None for t in ("mke2fs", "blkid", "e2fsck", "dumpe2fs")),
    reason="needs e2fsprogs and blkid",
)

GROWTH = 524288  # 256 MiB of card after the data partition, in sectors


def _block_count(world: World) -> int:
    out = subprocess.run(
        [shutil.which("dumpe2fs", path=SBIN) or "dumpe2fs", "-h", str(world.base / "dev/vda4")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(next(ln for ln in out.splitlines() if ln.startswith("Block count:")).split()[-1])


def _card(tmp_path: Path) -> World:
    return _make_world(tmp_path, {1: None, 2: None, 3: None, 4: "dynexport-data"}, None, GROWTH)


def _resizes(world: World) -> list[str]:
    return [c for c in world.calls() if c.startswith("resize2fs")]


@pytest.mark.parametrize(
    "cut",
    [
        "resize2fs",  # the power cut (or a failure) while resize2fs ran
        "e2fsck",  # ... or during the forced check before it
    ],
)
def test_a_cut_after_the_partition_grew_is_finished_at_the_next_boot(
    tmp_path: Path, cut: str
) -> None:
    world = _card(tmp_path)
    dev = f"{tmp_path}/dev/vda4"
    if cut == "resize2fs":
        _recorder(world.base / "bin/resize2fs", 'echo "resize2fs $*" >>"$CALLS"; exit 1\n')
        first = world.run()
    else:
        first = world.run(FAKE_FSCK_RC="8")
    assert "growing" in first.stdout
    assert _block_count(world) == PART_SECTORS // 8  # still 64 MiB of 4 KiB blocks
    # the next boot: the partition reaches the end of the card, its file system does not
    _recorder(world.base / "bin/resize2fs", 'echo "resize2fs $*" >>"$CALLS"\n')
    world.log.unlink()
    proc = world.run()
    assert proc.returncode == 0, proc.stderr
    assert "growing" not in proc.stdout.replace("; growing it", "")  # no sfdisk this time
    assert "file system on" in proc.stdout and "fills 64 MiB of its partition's 320 MiB" in (
        proc.stdout
    )
    assert world.calls() == [
        f"e2fsck -f -p {dev}",  # resize2fs wants a checked file system
        f"resize2fs {dev}",
        "udevadm settle --timeout=60",  # under the disk lock, as the first boot's growing
        f"e2fsck -y {dev}",
        f"mount -t ext4 -o {OPTIONS} {dev} /data",
    ]


def test_with_the_real_resize2fs_the_file_system_fills_the_card_and_stays(
    tmp_path: Path,
) -> None:
    world = _card(tmp_path)
    real = shutil.which("resize2fs", path=SBIN)
    if real is None:
        pytest.skip("needs resize2fs")
    _recorder(world.base / "bin/resize2fs", 'echo "resize2fs $*" >>"$CALLS"; exit 1\n')
    world.run()  # the cut
    _recorder(world.base / "bin/resize2fs", f'echo "resize2fs $*" >>"$CALLS"\nexec {real} "$@"\n')
    world.log.unlink()
    assert world.run().returncode == 0
    assert _block_count(world) == (PART_SECTORS + GROWTH) // 8
    world.log.unlink()
    assert world.run().returncode == 0  # a boot after: nothing left to grow
    assert _resizes(world) == [] and len(world.mounted()) == 1


def test_a_file_system_within_16_mib_of_its_partition_is_left_alone(tmp_path: Path) -> None:
    world = _make_world(tmp_path, {2: None, 4: "dynexport-data"}, None)
    part = world.base / "sys/devices/pci0000:00/virtio0/block/vda"
    (part / "vda4/size").write_text(f"{PART_SECTORS + 32767}\n")
    (part / "size").write_text(f"{5 * PART_SECTORS + 32767}\n")
    assert world.run().returncode == 0
    assert _resizes(world) == [] and not [c for c in world.calls() if c.startswith("sfdisk")]
    (part / "vda4/size").write_text(f"{PART_SECTORS + 32768}\n")
    (part / "size").write_text(f"{5 * PART_SECTORS + 32768}\n")
    world.log.unlink()
    assert world.run().returncode == 0
    assert _resizes(world) == [f"resize2fs {tmp_path}/dev/vda4"]
