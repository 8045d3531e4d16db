"""Boot to controlling (docs/image.md): what the image starts, in what order, and the system-test
VM's own initramfs."""

from __future__ import annotations

import gzip
import importlib.util
import os
import stat
import subprocess
import types
from pathlib import Path

import pytest

from tests.image.helpers import BOARDS, LIBEXEC, OVERLAY, ROOT, UNITS, unit

SYSTEMTEST_IMAGE = ROOT / "systemtest/image"
MASKS = OVERLAY / "etc/systemd/system"
GENERATOR_MASKS = OVERLAY / "etc/systemd/system-generators"

NEEDED = {
    # RAUC mounts bundles on loop devices and checks them with dm-verity. Built in on the Pi;
    # where they are modules (the system test's kernel) opening /dev/loop-control and
    # /dev/mapper/control (static nodes, from kmod-static-nodes) loads them when RAUC first
    # needs them, and a unit that asks for them still gets them.
    "modprobe@loop.service",
    "modprobe@dm_mod.service",
    "kmod-static-nodes.service",
    "systemd-tmpfiles-setup-dev.service",
    # /data: found, checked and mounted without udev (mount-data); udev for everything else
    "dynexport-data.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-tmpfiles-setup.service",
    "systemd-journald.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "dbus.service",
}


def _masked(folder: Path) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in folder.iterdir() if p.is_symlink()}


def test_unneeded_units_are_masked_and_needed_ones_are_not() -> None:
    masked = _masked(MASKS)
    for name in (
        "sys-kernel-debug.mount",
        "sys-kernel-tracing.mount",
        "dev-hugepages.mount",
        "dev-mqueue.mount",
        "systemd-network-generator.service",
        "modprobe@fuse.service",
        "systemd-update-utmp.service",
        # the root is the read-only squashfs the kernel mounted: nothing to remount, and udev
        # started only after it
        "systemd-remount-fs.service",
        # mount-data grows /data; repart would only pull in modprobe@loop and @dm_mod at boot
        "systemd-repart.service",
    ):
        assert masked.get(name) == "/dev/null", name
    assert all(target == "/dev/null" for target in masked.values())
    assert not NEEDED & masked.keys()


def test_only_the_fstab_generator_runs() -> None:
    masked = _masked(GENERATOR_MASKS)
    assert "systemd-fstab-generator" not in masked  # the tmpfs mounts come from fstab
    for name in ("systemd-gpt-auto-generator", "systemd-sysv-generator", "systemd-getty-generator"):
        assert masked.get(name) == "/dev/null", name
    assert all(target == "/dev/null" for target in masked.values())


def test_controller_stops_before_the_network_and_outranks_housekeeping() -> None:
    service = unit(ROOT / "systemd/dynexport.service")
    after = " ".join(service["Unit.After"]).split()
    # the stop mirrors the start: dynexport writes the fail-safe limits before networkd stops
    assert "network.target" in after and "time-set.target" in after
    # and before the home Wi-Fi's wpa_supplicant, for inverters reached over Wi-Fi
    assert "dynexport-wifi.service" in after
    rule = unit(UNITS / "dynexport-ap-rule.service")
    assert int(service["Service.CPUWeight"][0]) > 100 > int(rule["Service.CPUWeight"][0])
    assert int(rule["Service.Nice"][0]) > 0


@pytest.mark.parametrize("board", BOARDS)
def test_pi_console_is_quiet(board: str) -> None:
    args = (ROOT / "firmware" / board / "cmdline.txt").read_text().split()
    assert "quiet" in args


def test_growing_holds_udev_off_the_disk_while_it_grows() -> None:
    lines = (LIBEXEC / "mount-data").read_text().splitlines()
    code = [ln.strip() for ln in lines if not ln.lstrip().startswith("#")]

    def at(prefix: str) -> int:
        return next(i for i, ln in enumerate(code) if ln.startswith(prefix))

    # an exclusive lock on the whole disk from before the partition table is written (or, with
    # the partition grown at an earlier boot, before the file system is) ...
    assert at("grow() (") < at("flock -x 9") < at('if ! echo ", +" | sfdisk')
    assert at("flock -x 9") < at('e2fsck -f -p "${dev}"') < at('resize2fs "${dev}"')
    assert code[at("flock -x 9") - 1] == 'exec 9<"${disk}"'
    # ... until the script exits, then udev's events pass before fsck and data.mount run
    trap = code[at("trap ")]
    assert "exec 9<&-" in trap and "udevadm settle" in trap and trap.endswith(" EXIT")


# -- the system-test VM's initramfs ---------------------------------------------------------------


def _mkinitramfs() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mkinitramfs", SYSTEMTEST_IMAGE / "mkinitramfs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _members(archive: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """newc cpio members: name -> (mode, data, (rdev major, minor))."""
    out: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    off = 0
    while True:
        header = archive[off : off + 110]
        assert header[:6] == b"070701"
        field = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = field[1], field[6], field[11]
        name = archive[off + 110 : off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        data = archive[off : off + size]
        off += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data, (field[9], field[10]))


def _fake_root(tmp_path: Path, tools: tuple[str, ...]) -> Path:
    root = tmp_path / "root"
    (root / "usr/lib/klibc/bin").mkdir(parents=True)
    for tool in tools:
        (root / "usr/lib/klibc/bin" / tool).write_bytes(b"\x7fELF " + tool.encode())
    (root / "usr/lib/klibc-TEST.so").write_bytes(b"\x7fELF klibc")
    return root


def test_initramfs_holds_init_klibc_and_the_modules_in_load_order(tmp_path: Path) -> None:
    mk = _mkinitramfs()
    root = _fake_root(tmp_path, mk.TOOLS)
    modules = []
    for name in ("virtio_ring", "virtio", "virtio_pci", "virtio_blk", "squashfs"):
        (tmp_path / f"{name}.ko").write_bytes(b"module " + name.encode())
        modules.append(tmp_path / f"{name}.ko")
    out = tmp_path / "initrd.img"
    rc = mk.main(
        [str(root), str(SYSTEMTEST_IMAGE / "initramfs-init"), str(out), *map(str, modules)]
    )
    assert rc == 0
    members = _members(gzip.decompress(out.read_bytes()))
    mode, data, _ = members["init"]
    assert stat.S_ISREG(mode) and mode & 0o111
    assert data == (SYSTEMTEST_IMAGE / "initramfs-init").read_bytes()
    mode, _, rdev = members["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    for tool in mk.TOOLS:
        assert members[f"bin/{tool}"][1] == b"\x7fELF " + tool.encode()
    assert members["lib/klibc-TEST.so"][1] == b"\x7fELF klibc"  # the tools' interpreter
    assert members["modules"][1].decode().split() == [
        "virtio_ring.ko",
        "virtio.ko",
        "virtio_pci.ko",
        "virtio_blk.ko",
        "squashfs.ko",
    ]
    assert members["lib/modules/squashfs.ko"][1] == b"module squashfs"
    # /init runs the tools it packs: every one it calls is there
    script = (SYSTEMTEST_IMAGE / "initramfs-init").read_text()
    for tool in ("insmod", "mount", "umount", "dd", "sleep", "run-init", "mkdir"):
        assert tool in mk.TOOLS and tool in script


def test_initramfs_refuses_what_klibc_cannot_load(tmp_path: Path) -> None:
    mk = _mkinitramfs()
    root = _fake_root(tmp_path, mk.TOOLS)
    xz = tmp_path / "virtio.ko.xz"
    xz.write_bytes(b"xz")
    init = str(SYSTEMTEST_IMAGE / "initramfs-init")
    with pytest.raises(SystemExit, match=r"only uncompressed \.ko"):
        mk.main([str(root), init, str(tmp_path / "out"), str(xz)])
    with pytest.raises(SystemExit, match="no module"):
        mk.main([str(root), init, str(tmp_path / "out"), str(tmp_path / "missing.ko")])
    (root / "usr/lib/klibc-TEST.so").unlink()
    ok = tmp_path / "virtio.ko"
    ok.write_bytes(b"m")
    with pytest.raises(SystemExit, match="expected one klibc"):
        mk.main([str(root), init, str(tmp_path / "out"), str(ok)])


def test_initramfs_init_is_valid_shell() -> None:
    proc = subprocess.run(
        ["sh", "-n", str(SYSTEMTEST_IMAGE / "initramfs-init")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
