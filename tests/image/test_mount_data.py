"""mount-data (dynexport-data.service): /data found without udev, checked, and mounted only when
it is the data partition and its check left no errors (docs/image.md "Persistence").

The script runs against a stand-in world: a sysfs tree and mountinfo as the kernel shows them
for a root on partition 2 of a disk, partition files that are real ext4 images (real blkid reads
their labels), and recording stand-ins for mount, e2fsck (which runs the real one unless told to
exit with a status) and the growing's sfdisk, partx (which sets the partition's new size in
sysfs, as the kernel does, and lengthens its file), resize2fs and udevadm. The file systems
fill their 64 MiB partitions, as genimage makes them; dumpe2fs reads their real size."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.image.helpers import LIBEXEC, OVERLAY, ROOT, UNITS, unit

SCRIPT = LIBEXEC / "mount-data"
OPTIONS = "rw,noatime,nodev,nosuid,commit=30,errors=remount-ro"
TOOLS = ("mke2fs", "blkid", "e2fsck", "dumpe2fs")
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"

pytestmark = pytest.mark.skipif(
    any(shutil.which(t, path=SBIN) is None for t in TOOLS), reason="needs e2fsprogs and blkid"
)

ROOT_LINE = "22 1 254:2 / / ro,relatime shared:1 - squashfs /dev/root ro\n"
DATA_LINE = "30 22 254:4 / /data rw,noatime shared:9 - ext4 /dev/vda4 rw,commit=30\n"


@dataclass
class World:
    base: Path
    log: Path

    def run(
        self, cmdline: str = "ro fsck.repair=yes", **env: str
    ) -> subprocess.CompletedProcess[str]:
        (self.base / "proc/cmdline").write_text(cmdline + "\n")
        full = {
            "PATH": f"{self.base / 'bin'}:{SBIN}",
            "DYNEXPORT_SYS": str(self.base / "sys"),
            "DYNEXPORT_DEV": str(self.base / "dev"),
            "DYNEXPORT_PROC": str(self.base / "proc"),
            "DYNEXPORT_LABEL_WAIT_S": "0",
            "CALLS": str(self.log),
            **env,
        }
        return subprocess.run(
            ["sh", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=60
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def mounted(self) -> list[str]:
        return [c for c in self.calls() if c.startswith("mount ")]


def _ext4(path: Path, label: str) -> None:
    """An ext4 image labelled ``label`` that fills its 64 MiB partition, with 4 KiB blocks as
    the card's; without a journal, sparse, it takes 140 KiB of disk (a run makes about sixty:
    the suite's temporary folder stays small on CI)."""
    subprocess.run(
        [shutil.which("mke2fs", path=SBIN) or "mke2fs", "-q", "-F", "-t", "ext4", "-O",
         "^has_journal", "-b", "4096", "-L", label, str(path), f"{PART_SECTORS // 2}k"],
        check=True, capture_output=True,
    )  # fmt: skip


def _recorder(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


PART_SECTORS = 131072  # 64 MiB, as genimage makes the data partition


def _make_world(
    base: Path, partitions: dict[int, str | None], label_link: str | None, free: int = 0
) -> World:
    """A disk vda whose partition N holds an ext4 image labelled partitions[N] (None: no file
    system), the root mounted from vda2, ``free`` sectors after the last partition;
    ``label_link``: the udev link's target partition name."""
    for sub in ("proc/self", "dev/disk/by-label", "bin", "sys/dev/block", "sys/class/block"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "proc/self/mountinfo").write_text(ROOT_LINE)
    disk = base / "sys/devices/pci0000:00/virtio0/block/vda"
    (disk / "queue").mkdir(parents=True)  # not a partition: no "partition" file
    (base / "dev/vda").write_bytes(b"")  # the whole disk, which the growing locks
    last = max(partitions)
    (disk / "size").write_text(f"{(last + 1) * PART_SECTORS + free}\n")
    for n, label in partitions.items():
        (disk / f"vda{n}").mkdir()
        (disk / f"vda{n}/partition").write_text(f"{n}\n")
        (disk / f"vda{n}/start").write_text(f"{n * PART_SECTORS}\n")
        (disk / f"vda{n}/size").write_text(f"{PART_SECTORS}\n")
        os.symlink(disk / f"vda{n}", base / f"sys/class/block/vda{n}")
        dev = base / f"dev/vda{n}"
        if label is None:
            dev.write_bytes(b"\0" * 65536)
        else:
            _ext4(dev, label)
    os.symlink(disk / "vda2", base / "sys/dev/block/254:2")
    if label_link is not None:
        os.symlink(base / "dev" / label_link, base / "dev/disk/by-label/dynexport-data")
    log = base / "calls"
    _recorder(base / "bin/mount", 'echo "mount $*" >>"$CALLS"; exit "${FAKE_MOUNT_RC:-0}"\n')
    # sfdisk records whether it could take the disk's lock itself: it must not (the script holds it)
    _recorder(
        base / "bin/sfdisk",
        'cat >/dev/null; d="$(eval echo \\${$#})"\n'
        'if flock -n -x "$d" true; then l=unlocked; else l=locked; fi\n'
        'echo "sfdisk $* ($l)" >>"$CALLS"; exit "${FAKE_SFDISK_RC:-0}"\n',
    )
    # partx --update --nr N DISK: the kernel's partition N now reaches the end of the disk
    _recorder(
        base / "bin/partx",
        f'echo "partx $*" >>"$CALLS"\n[ "${{FAKE_PARTX_RC:-0}}" = 0 ] || exit "$FAKE_PARTX_RC"\n'
        f'read -r start <"{disk}/vda$3/start"\n'
        f"size=$(({(last + 1) * PART_SECTORS + free} - start))\n"
        f'echo "$size" >"{disk}/vda$3/size"\ntruncate -s $((size * 512)) "{base}/dev/vda$3"\n',
    )
    for tool in ("resize2fs", "udevadm"):
        _recorder(base / f"bin/{tool}", f'echo "{tool} $*" >>"$CALLS"\n')
    real = shutil.which("e2fsck", path=SBIN)
    _recorder(
        base / "bin/e2fsck",
        f'echo "e2fsck $*" >>"$CALLS"\n'
        f'if [ -n "${{FAKE_FSCK_RC:-}}" ]; then exit "$FAKE_FSCK_RC"; fi\nexec {real} "$@"\n',
    )
    return World(base, log)


@pytest.fixture
def card(tmp_path: Path) -> World:
    """The appliance's card: boot (FAT, not probed here), two root slots, the data partition."""
    return _make_world(tmp_path, {1: None, 2: None, 3: None, 4: "dynexport-data"}, None)


def test_mounts_partition_4_of_the_roots_disk_without_udev(card: World) -> None:
    proc = card.run()
    assert proc.returncode == 0, proc.stderr
    dev = f"{card.base}/dev/vda4"
    # nothing to grow: checked as the kernel command line asks (fsck.repair=yes), then mounted
    assert card.calls() == [f"e2fsck -y {dev}", f"mount -t ext4 -o {OPTIONS} {dev} /data"]
    assert f"{dev} mounted on /data" in proc.stdout


def test_the_first_boot_grows_the_partition_under_the_disk_lock(tmp_path: Path) -> None:
    world = _make_world(tmp_path, {1: None, 2: None, 3: None, 4: "dynexport-data"}, None, 524288)
    proc = world.run()
    assert proc.returncode == 0, proc.stderr
    dev, disk = f"{tmp_path}/dev/vda4", f"{tmp_path}/dev/vda"
    assert f"growing {dev} (partition 4 of {disk}) by 256 MiB" in proc.stdout
    assert world.calls() == [
        f"sfdisk --no-reread --no-tell-kernel -N 4 {disk} (locked)",
        f"partx --update --nr 4 {disk}",
        f"e2fsck -f -p {dev}",
        f"resize2fs {dev}",
        "udevadm settle --timeout=60",  # the lock released, udev's events let through
        f"e2fsck -y {dev}",
        f"mount -t ext4 -o {OPTIONS} {dev} /data",
    ]


def test_less_than_16_mib_after_the_partition_is_not_grown(tmp_path: Path) -> None:
    world = _make_world(tmp_path, {2: None, 4: "dynexport-data"}, None, 32767)
    assert world.run().returncode == 0
    assert not [c for c in world.calls() if c.startswith(("sfdisk", "resize2fs"))]
    assert len(world.mounted()) == 1


def test_a_failed_growing_still_checks_and_mounts(tmp_path: Path) -> None:
    world = _make_world(tmp_path, {2: None, 4: "dynexport-data"}, None, 524288)
    proc = world.run(FAKE_SFDISK_RC="1")
    assert proc.returncode == 0
    assert "sfdisk failed" in proc.stderr
    assert not [c for c in world.calls() if c.startswith(("partx", "resize2fs"))]
    assert world.calls()[-2:] == [
        f"e2fsck -y {tmp_path}/dev/vda4",
        f"mount -t ext4 -o {OPTIONS} {tmp_path}/dev/vda4 /data",
    ]


def test_the_check_follows_fsck_mode_and_repair_as_systemd_fsck_does(card: World) -> None:
    dev = f"{card.base}/dev/vda4"
    for cmdline, fsck in (
        ("ro", f"e2fsck -p {dev}"),  # preen: systemd-fsck's default
        ("ro fsck.repair=no", f"e2fsck -n {dev}"),
        ("ro fsck.mode=force fsck.repair=yes", f"e2fsck -f -y {dev}"),
        ("ro fsck.mode=skip", None),
    ):
        card.log.unlink(missing_ok=True)
        assert card.run(cmdline).returncode == 0
        checks = [c for c in card.calls() if c.startswith("e2fsck")]
        assert checks == ([fsck] if fsck else []), cmdline
        assert len(card.mounted()) == 1


def test_an_uncorrected_check_leaves_data_unmounted(card: World) -> None:
    proc = card.run(FAKE_FSCK_RC="4")
    assert proc.returncode == 1
    assert card.mounted() == []
    assert "exited 4 (errors left uncorrected)" in proc.stderr and "not mounted" in proc.stderr
    # errors corrected (1) or corrected with a reboot advised (2, for a mounted root): mounted
    for rc in ("1", "2"):
        card.log.unlink()
        proc = card.run(FAKE_FSCK_RC=rc)
        assert proc.returncode == 0 and len(card.mounted()) == 1, rc
        assert f"corrected errors on {card.base}/dev/vda4 (exit status {rc})" in proc.stdout


def test_an_already_mounted_data_is_left_alone(card: World) -> None:
    """A restart of the unit must not check a mounted file system or mount it twice."""
    (card.base / "proc/self/mountinfo").write_text(ROOT_LINE + DATA_LINE)
    proc = card.run()
    assert proc.returncode == 0 and "already mounted" in proc.stdout
    assert card.calls() == []


def test_a_failed_mount_fails_the_unit(card: World) -> None:
    proc = card.run(FAKE_MOUNT_RC="32")
    assert proc.returncode == 1 and "mounting" in proc.stderr and "failed" in proc.stderr


def test_another_layout_falls_back_to_the_label(tmp_path: Path) -> None:
    """Partition 4 is not the data partition (another card's layout): the label's link decides."""
    world = _make_world(tmp_path, {2: None, 4: "other", 5: "dynexport-data"}, "vda5")
    proc = world.run()
    assert proc.returncode == 0, proc.stderr
    assert "is not labelled dynexport-data (found 'other')" in proc.stderr
    assert world.mounted() == [f"mount -t ext4 -o {OPTIONS} {tmp_path}/dev/vda5 /data"]


def test_a_partition_without_its_node_falls_back_to_the_label(tmp_path: Path) -> None:
    world = _make_world(tmp_path, {2: None, 4: "dynexport-data", 5: "dynexport-data"}, "vda5")
    (tmp_path / "dev/vda4").unlink()
    proc = world.run()
    assert proc.returncode == 0, proc.stderr
    assert f"{tmp_path}/dev/vda4 (partition 4 of the root's disk) has no device node" in proc.stderr
    assert world.mounted() == [f"mount -t ext4 -o {OPTIONS} {tmp_path}/dev/vda5 /data"]


def test_no_data_partition_anywhere_mounts_nothing(tmp_path: Path) -> None:
    world = _make_world(tmp_path, {1: None, 2: None, 3: None}, None)
    proc = world.run()
    assert proc.returncode == 1
    assert "has no partition 4" in proc.stderr
    assert "no partition labelled dynexport-data after 0 s" in proc.stderr
    assert world.calls() == []


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    part4=st.sampled_from(["dynexport-data", "other", None, "absent"]),
    link=st.sampled_from([None, "vda4", "vda5"]),
    part5=st.sampled_from(["dynexport-data", "other"]),
    fsck_rc=st.sampled_from(["0", "1", "2", "4", "8", "12", "16"]),
    mount_rc=st.sampled_from(["0", "32"]),
    free=st.sampled_from([0, 524288]),
)
def test_only_a_checked_data_partition_is_ever_mounted(
    tmp_path_factory: pytest.TempPathFactory,
    part4: str | None,
    link: str | None,
    part5: str,
    fsck_rc: str,
    mount_rc: str,
    free: int,
) -> None:
    """In every state: what is mounted is labelled dynexport-data and its check left no errors,
    and the unit succeeds exactly when /data got mounted."""
    base = tmp_path_factory.mktemp("world")
    parts: dict[int, str | None] = {2: None, 5: part5}
    if part4 != "absent":
        parts[4] = part4
    if link == "vda4" and part4 == "absent":
        link = None  # udev links only to partitions that exist
    world = _make_world(base, parts, link, free)
    proc = world.run(FAKE_FSCK_RC=fsck_rc, FAKE_MOUNT_RC=mount_rc)
    mounted = world.mounted()
    assert len(mounted) <= 1
    if mounted:
        dev = mounted[0].split()[-2]
        label = subprocess.run(
            [shutil.which("blkid", path=SBIN) or "blkid", "-p", "-o", "value", "-s", "LABEL", dev],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        assert label == "dynexport-data"
        assert int(fsck_rc) < 4
        assert f"e2fsck -y {dev}" in world.calls()
    assert (proc.returncode == 0) == (bool(mounted) and mount_rc == "0")
    expected = part4 == "dynexport-data" or (link == "vda5" and part5 == "dynexport-data")
    assert bool(mounted) == (expected and int(fsck_rc) < 4)


def test_the_units_that_need_data_require_the_mount() -> None:
    """No fstab line for /data any more: RequiresMountsFor= alone would no longer keep a unit
    from starting without it, so each such unit requires dynexport-data.service."""
    fstab = (OVERLAY / "etc/fstab").read_text()
    assert not [ln for ln in fstab.splitlines() if "/data" in ln and not ln.startswith("#")]
    data = unit(UNITS / "dynexport-data.service")
    assert data["Unit.DefaultDependencies"] == ["no"]
    assert "local-fs.target" in data["Unit.Before"][0].split()
    assert data["Install.WantedBy"] == ["local-fs.target"]
    assert data["Service.ExecStart"] == ["/usr/libexec/dynexport/mount-data"]
    service_files = [ROOT / "systemd/dynexport.service", *UNITS.glob("dynexport-*")]
    needing = 0
    for path in service_files:
        if not path.is_file():
            continue
        u = unit(path)
        mounts = " ".join(u.get("Unit.RequiresMountsFor", []))
        if "/data" not in mounts or u.get("Unit.ConditionPathIsMountPoint") == ["/data"]:
            continue
        needing += 1
        assert "dynexport-data.service" in " ".join(u.get("Unit.Requires", [])).split(), path
        assert "dynexport-data.service" in " ".join(u.get("Unit.After", [])).split(), path
    assert needing >= 4  # the controller, the update deadline, the reboot request (path, service)
