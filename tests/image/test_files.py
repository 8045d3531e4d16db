"""Checks of the appliance image files that need no Buildroot tree."""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.image.helpers import (
    BOARDS,
    EXT,
    LIBEXEC,
    OVERLAY,
    ROOT,
    RUNTIME_PACKAGES,
    UNITS,
    defconfig,
    unit,
)

EXT_VAR = "$(BR2_EXTERNAL_DYNEXPORT_PATH)"


def ext_path(value: str) -> Path:
    assert value.startswith(EXT_VAR + "/"), value
    return EXT / value[len(EXT_VAR) + 1 :]


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("board", BOARDS)
def test_defconfig_is_the_appliance(board: str) -> None:
    cfg = defconfig(board)
    for sym in (
        "BR2_INIT_SYSTEMD",
        "BR2_TARGET_ROOTFS_SQUASHFS",
        "BR2_PACKAGE_DYNEXPORT",
        "BR2_PACKAGE_PYTHON3",
        "BR2_PACKAGE_HOSTAPD",
        "BR2_PACKAGE_DNSMASQ",
        "BR2_PACKAGE_WPA_SUPPLICANT",
        "BR2_PACKAGE_E2FSPROGS_RESIZE2FS",
        "BR2_PACKAGE_UTIL_LINUX_BINARIES",  # blkid and sfdisk, for mount-data
        "BR2_PACKAGE_UTIL_LINUX_PARTX",
        "BR2_PACKAGE_IW",  # ap-rule counts the access point's stations
        "BR2_PACKAGE_RPI_FIRMWARE",
        "BR2_PACKAGE_HOST_GENIMAGE",
        "BR2_DOWNLOAD_FORCE_CHECK_HASHES",
        "BR2_PACKAGE_RAUC",  # A/B updates (docs/update.md)
        "BR2_PACKAGE_RAUC_DBUS",  # the unprivileged service talks to RAUC over D-Bus
        "BR2_PACKAGE_RAUC_JSON",  # rauc status --output-format=json
        "BR2_PACKAGE_HOST_RAUC",  # make bundle signs with the host rauc
    ):
        assert cfg.get(sym) == "y", sym
    # site.timeZone: BR2_TARGET_TZ_INFO is selected by systemd (savedefconfig leaves it out;
    # image-check requires it in the resolved configuration)
    assert cfg["BR2_INIT_SYSTEMD"] == "y"
    # the zone database holds every Australian zone (Python's zoneinfo reads it)
    assert "australasia" in cfg.get("BR2_TARGET_TZ_ZONELIST", "").split()
    # no password login, no getty, root never remounted read-write, no SSH server
    assert cfg["BR2_TARGET_ENABLE_ROOT_LOGIN"] == "n"
    assert cfg["BR2_TARGET_GENERIC_GETTY"] == "n"
    assert cfg["BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW"] == "n"
    assert not any("DROPBEAR" in s or "OPENSSH" in s for s in cfg)
    assert cfg["BR2_ROOTFS_POST_SCRIPT_ARGS"] == board
    assert ext_path(cfg["BR2_ROOTFS_OVERLAY"]).resolve() == OVERLAY
    for key in ("BR2_ROOTFS_POST_BUILD_SCRIPT", "BR2_ROOTFS_POST_IMAGE_SCRIPT"):
        assert os.access(ext_path(cfg[key]), os.X_OK), key
    for key in ("BR2_PACKAGE_RPI_FIRMWARE_CONFIG_FILE", "BR2_PACKAGE_RPI_FIRMWARE_CMDLINE_FILE"):
        path = ext_path(cfg[key]).resolve()
        assert path.parent == ROOT / "firmware" / board and path.is_file(), key
    for fragment in cfg["BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES"].split():
        assert ext_path(fragment).is_file()
    assert (ext_path(cfg["BR2_GLOBAL_PATCH_DIR"]) / "linux/linux.hash").is_file()


def test_dynexport_package_selects_the_runtime_dependencies() -> None:
    deps = pyproject()["project"]["dependencies"]  # type: ignore[index]
    names = {re.split(r"[=<>~!\[ ]", d, maxsplit=1)[0].lower() for d in deps}
    assert names == set(RUNTIME_PACKAGES), "a runtime dependency has no Buildroot package here"
    config_in = (EXT / "package/dynexport/Config.in").read_text()
    selected = set(re.findall(r"^\s*select (BR2_\w+)", config_in, re.M))
    assert set(RUNTIME_PACKAGES.values()) <= selected
    assert {"BR2_PACKAGE_PYTHON3_SSL", "BR2_PACKAGE_PYTHON3_ZLIB"} <= selected


def test_dynexport_package_matches_the_project() -> None:
    mk = (EXT / "package/dynexport/dynexport.mk").read_text()
    version = pyproject()["project"]["version"]  # type: ignore[index]
    assert f"DYNEXPORT_VERSION = {version}\n" in mk
    assert "DYNEXPORT_SITE = $(BR2_EXTERNAL_DYNEXPORT_PATH)/..\n" in mk
    assert "DYNEXPORT_SITE_METHOD = local\n" in mk
    assert "DYNEXPORT_SETUP_TYPE = setuptools\n" in mk
    users = re.search(r"define DYNEXPORT_USERS\n\t(.*)\nendef", mk)
    assert users is not None
    fields = users[1].split()
    assert fields[0] == "dynexport" and fields[4] == "*" and fields[7] == "dialout"


def test_pysunspec2_package_pins_the_sdist() -> None:
    pkg = EXT / "package/python-pysunspec2"
    mk = (pkg / "python-pysunspec2.mk").read_text()
    assert "PYTHON_PYSUNSPEC2_VERSION = 1.3.7\n" in mk
    assert "https://files.pythonhosted.org/packages/" in mk
    assert "$(eval $(python-package))" in mk
    hashes = (pkg / "python-pysunspec2.hash").read_text()
    assert re.search(r"^sha256  [0-9a-f]{64}  pysunspec2-1\.3\.7\.tar\.gz$", hashes, re.M)
    assert re.search(r"^sha256  [0-9a-f]{64}  LICENSE$", hashes, re.M)


def test_external_tree_is_named_dynexport() -> None:
    assert (EXT / "external.desc").read_text().startswith("name: DYNEXPORT\n")
    config_in = (EXT / "Config.in").read_text()
    for pkg in ("dynexport", "python-pysunspec2"):
        assert f'"$BR2_EXTERNAL_DYNEXPORT_PATH/package/{pkg}/Config.in"' in config_in


def test_kernel_fragment_has_the_appliance_drivers() -> None:
    text = (EXT / "board/dynexport/linux.fragment").read_text()
    for opt in (
        "USB_SERIAL_FTDI_SIO",
        "USB_SERIAL_CP210X",
        "USB_SERIAL_CH341",
        "USB_SERIAL_PL2303",
        "SERIAL_AMBA_PL011",
        "BCM2835_WDT",
        "SQUASHFS",
        "SQUASHFS_ZSTD",
        "EXT4_FS",
    ):
        assert f"\nCONFIG_{opt}=y\n" in text, opt


def genimage_files(board: str) -> list[str]:
    text = (EXT / f"board/dynexport/genimage-{board}.cfg").read_text()
    block = re.search(r"files = \{(.*?)\}", text, re.S)
    assert block is not None
    return re.findall(r'"([^"]+)"', block[1])


TRYBOOT_BOARDS = ("rpi4_64", "rpi5")
UBOOT_BOARDS = ("rpi3_64", "rpizero2w_64")


def test_every_board_has_one_boot_selection() -> None:
    assert sorted(TRYBOOT_BOARDS + UBOOT_BOARDS) == sorted(BOARDS)


@pytest.mark.parametrize("board", BOARDS)
def test_genimage_boot_files_match_the_defconfig(board: str) -> None:
    cfg = defconfig(board)
    files = genimage_files(board)
    dtbs = {Path(d).name + ".dtb" for d in cfg["BR2_LINUX_KERNEL_INTREE_DTS_NAME"].split()}
    config_txt = (ROOT / "firmware" / board / "config.txt").read_text()
    kernel = re.search(r"^kernel=(\S+)$", config_txt, re.M)
    assert kernel is not None
    assert "a" in files, "slot A's boot folder"
    overlays = cfg.get("BR2_PACKAGE_RPI_FIRMWARE_INSTALL_DTB_OVERLAYS") != "n"
    if board in TRYBOOT_BOARDS:
        # kernel, DTBs, overlays and cmdline.txt come from the slot's folder (os_prefix=)
        assert kernel[1] == "Image"
        assert not {f for f in files if f.endswith(".dtb")}
        assert "rpi-firmware/overlays" not in files and "rpi-firmware/cmdline.txt" not in files
        post_build = (EXT / "board/dynexport/post-build.sh").read_text()
        assert 'cp "${BINARIES_DIR}"/*.dtb "${TARGET_DIR}/boot/"' in post_build
        assert "rpi-firmware/overlays" in post_build
    else:
        # U-Boot: the firmware loads the DTB and overlays from the FAT root, U-Boot the kernel
        assert kernel[1] == "u-boot.bin" and kernel[1] in files
        assert "boot.scr" in files
        assert {f for f in files if f.endswith(".dtb")} == dtbs
        assert overlays == ("rpi-firmware/overlays" in files)
    for key in ("start_file", "fixup_file"):
        m = re.search(rf"^{key}=(\S+)$", config_txt, re.M)
        if m:
            assert f"rpi-firmware/{m[1]}" in files
    variant = {
        "BR2_PACKAGE_RPI_FIRMWARE_VARIANT_PI4_CD": "start4cd.elf",
        "BR2_PACKAGE_RPI_FIRMWARE_VARIANT_PI_CD": "start_cd.elf",
    }
    for sym, elf in variant.items():
        assert (cfg.get(sym) == "y") == (f"rpi-firmware/{elf}" in files), sym
    assert (cfg.get("BR2_PACKAGE_RPI_FIRMWARE_BOOTCODE_BIN") == "y") == (
        "rpi-firmware/bootcode.bin" in files
    )
    if "dtoverlay=" in config_txt:
        assert overlays


@pytest.mark.parametrize("board", BOARDS)
def test_cmdline_boots_the_read_only_root(board: str) -> None:
    cmdline = (ROOT / "firmware" / board / "cmdline.txt").read_text()
    assert cmdline.endswith("\n") and cmdline.count("\n") == 1, "one line"
    args = cmdline.split()
    genimage = (EXT / f"board/dynexport/genimage-{board}.cfg").read_text()
    sig = re.search(r"disk-signature = 0x([0-9a-f]{8})", genimage)
    assert sig is not None
    assert f"root=PARTUUID={sig[1]}-02" in args  # partition 2 = rootfs
    for arg in ("ro", "rootwait", "fsck.repair=yes", "rootfstype=squashfs", "net.ifnames=0"):
        assert arg in args
    assert any(a.startswith("console=") for a in args)
    # the GPIO 14/15 UART belongs to the RS485 HAT: no kernel console on it
    assert "console=ttyAMA0,115200" not in args and "console=serial0,115200" not in args
    parts = [
        name
        for name, body in re.findall(r"^\tpartition (\S+) \{(.*?)^\t\}", genimage, re.M | re.S)
        if "in-partition-table = false" not in body
    ]
    assert parts == ["boot", "rootfs", "rootfs-b", "data"]
    assert 'image = "rootfs.squashfs"' in genimage
    assert 'label = "dynexport-data"' in genimage


def test_data_partition_label_is_used_consistently() -> None:
    """genimage labels partition 4 dynexport-data; mount-data mounts it only with that label."""
    script = (LIBEXEC / "mount-data").read_text()
    assert re.search(r"^label=dynexport-data$", script, re.M)
    assert re.search(r'^\s+if \[ "\$\{num\}" = 4 \]; then$', script, re.M)
    options = re.search(r"^options=(\S+)$", script, re.M)
    assert options is not None and "commit=30" in options[1].split(",")
    cards = [*EXT.glob("board/dynexport/genimage-*.cfg"), ROOT / "systemtest/genimage-x86_64.cfg"]
    assert len(cards) == len(BOARDS) + 1
    for genimage in cards:
        text = genimage.read_text()
        data = re.findall(r"^\tpartition (\S+) \{(.*?)^\t\}", text, re.M | re.S)
        in_table = [(n, b) for n, b in data if "in-partition-table = false" not in b]
        assert in_table[3][0] == "data" and 'label = "dynexport-data"' in text, genimage
    fstab = (OVERLAY / "etc/fstab").read_text()
    assert re.search(r"^tmpfs\s+/var\s+tmpfs", fstab, re.M)


def test_overlay_modes() -> None:
    for helper in LIBEXEC.iterdir():
        mode = helper.stat().st_mode
        assert mode & stat.S_IXUSR and not mode & stat.S_IWOTH, helper
    logind = OVERLAY / "etc/systemd/system/systemd-logind.service"
    assert logind.is_symlink() and os.readlink(logind) == "/dev/null"
    for script in ("board/dynexport/post-build.sh", "board/dynexport/post-image.sh"):
        assert os.access(EXT / script, os.X_OK)
    for script in ("scripts/build-image.sh", "scripts/image-check.sh"):
        assert os.access(EXT / script, os.X_OK)


def test_shell_scripts_parse() -> None:
    scripts = [p for p in LIBEXEC.iterdir() if p.read_text().startswith("#!/bin/sh")]
    scripts += [EXT / "board/dynexport/post-build.sh", EXT / "board/dynexport/post-image.sh"]
    for script in scripts:
        subprocess.run(["sh", "-n", str(script)], check=True)
    for name in ("scripts/build-image.sh", "scripts/image-check.sh"):
        subprocess.run(["bash", "-n", str(EXT / name)], check=True)


def test_watchdog_settings() -> None:
    conf = unit(OVERLAY / "etc/systemd/system.conf.d/10-dynexport-watchdog.conf")
    runtime = int(conf["Manager.RuntimeWatchdogSec"][0].removesuffix("s"))
    reboot = int(conf["Manager.RebootWatchdogSec"][0].removesuffix("s"))
    assert 0 < runtime <= 15 and 0 < reboot <= 15, "bcm2835-wdt: 15 s at most"


def test_dynexport_service() -> None:
    svc = unit(ROOT / "systemd/dynexport.service")
    expect = {
        "Service.Type": "notify",
        "Service.ExecStart": "/usr/bin/dynexport run --config /data/dynexport/config.json"
        " --data /data/dynexport",
        "Service.WatchdogSec": "30",
        "Service.Restart": "always",
        "Service.TimeoutStopSec": "10",
        "Service.ProtectSystem": "strict",
        "Service.ReadWritePaths": "/data/dynexport",
        "Service.NoNewPrivileges": "yes",
        "Service.PrivateTmp": "yes",
        "Service.User": "dynexport",
        "Service.SupplementaryGroups": "dialout",
        "Unit.StartLimitAction": "reboot",
    }
    for key, value in expect.items():
        assert svc.get(key) == [value], key
    assert "Unit.StartLimitIntervalSec" in svc and "Unit.StartLimitBurst" in svc


def test_units_are_enabled_by_the_preset() -> None:
    preset = (OVERLAY / "usr/lib/systemd/system-preset/20-dynexport.preset").read_text()
    enabled = set(re.findall(r"^enable (\S+)$", preset, re.M))
    installable = {p.name for p in UNITS.glob("dynexport*") if "Install.WantedBy" in unit(p)}
    assert installable | {"dynexport.service"} <= enabled


def test_journal_is_volatile_and_bounded() -> None:
    conf = unit(OVERLAY / "etc/systemd/journald.conf.d/10-dynexport.conf")
    assert conf["Journal.Storage"] == ["volatile"]
    assert "Journal.RuntimeMaxUse" in conf
    tmpfiles = (OVERLAY / "usr/lib/tmpfiles.d/dynexport.conf").read_text()
    assert re.search(r"^d /data/dynexport\s+0700 dynexport\s+dynexport", tmpfiles, re.M)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path: Path) -> None:
    for src in [*UNITS.glob("dynexport*"), ROOT / "systemd/dynexport.service"]:
        shutil.copy(src, tmp_path / src.name)
    names = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    # The programs live in the image, not on this machine; anything else is a real problem.
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]
    assert problems == []


GENIMAGE_TOOLS = ("genimage", "mksquashfs", "mkfs.vfat", "mcopy", "mke2fs")


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in GENIMAGE_TOOLS),
    reason=f"needs {', '.join(GENIMAGE_TOOLS)} (Debian: genimage squashfs-tools dosfstools mtools)",
)
@pytest.mark.parametrize("board", ["rpi4_64", "rpi3_64"])
def test_genimage_assembles_the_card(board: str, tmp_path: Path) -> None:
    """genimage builds sdcard.img from stand-in inputs; the MBR holds the expected layout."""
    inp = tmp_path / "in"
    for name in genimage_files(board):
        target = inp / name
        if name.endswith("overlays"):
            target.mkdir(parents=True)
            (target / "disable-bt.dtbo").write_bytes(b"dtbo")
        elif name == "a":
            target.mkdir(parents=True)
            (target / "Image").write_bytes(b"stand-in")
            (target / "cmdline.txt").write_text("root=PARTUUID=64796e78-02 rauc.slot=A\n")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"stand-in")
    (inp / "uboot-env.bin").write_bytes(b"\x5a" * 0x4000)
    src = tmp_path / "rootsrc"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("dynexport\n")
    subprocess.run(
        ["mksquashfs", str(src), str(inp / "rootfs.squashfs"), "-quiet", "-noappend"],
        check=True,
        capture_output=True,
    )
    (tmp_path / "root").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [
            "genimage",
            "--rootpath", str(tmp_path / "root"),
            "--tmppath", str(tmp_path / "tmp"),
            "--inputpath", str(inp),
            "--outputpath", str(out),
            "--config", str(EXT / f"board/dynexport/genimage-{board}.cfg"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    mbr = (out / "sdcard.img").read_bytes()[:512]
    assert mbr[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", mbr, 440)[0] == 0x64796E78
    entries = [struct.unpack_from("<B3xB3xII", mbr, 446 + 16 * i) for i in range(4)]
    types = [e[1] for e in entries]
    assert types == [0x0C, 0x83, 0x83, 0x83]
    assert entries[0][0] == 0x80, "boot partition active"
    mib = 2048  # sectors
    assert all(e[2] % (4 * mib) == 0 for e in entries), "4 MiB aligned"
    assert entries[1][3] == entries[2][3] == 512 * mib, "two equal root slots"
    card = (out / "sdcard.img").read_bytes()
    if board in UBOOT_BOARDS:  # both environment copies where U-Boot and fw_setenv look
        for offset in (0x100000, 0x104000):
            assert card[offset : offset + 0x4000] == b"\x5a" * 0x4000
    data = out / "data.ext4"
    label = subprocess.run(
        ["blkid", "-s", "LABEL", "-o", "value", str(data)], capture_output=True, text=True
    )
    if label.returncode == 0:
        assert label.stdout.strip() == "dynexport-data"


def test_the_system_test_image_has_the_zone_database_too() -> None:
    script = (ROOT / "systemtest" / "build-image.sh").read_text()
    packages = script.split("packages=(", 1)[1].split(")", 1)[0].split()
    assert "tzdata" in packages
