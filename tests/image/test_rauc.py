"""A/B updates in the image tree: slot numbers agree everywhere; the trial boot backend works."""

from __future__ import annotations

import configparser
import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dynexport.update.state import UpdateRecord
from tests.image.helpers import (
    BOARDS,
    EXT,
    LIBEXEC,
    OVERLAY,
    ROOT,
    UNITS,
    deadline_env,
    deadline_outcome,
    defconfig,
    unit,
    waiting_on_lock,
)

BOARD_DIR = EXT / "board/dynexport"
TRYBOOT = ("rpi4_64", "rpi5")
UBOOT = ("rpi3_64", "rpizero2w_64")


def system_conf(kind: str) -> configparser.ConfigParser:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string((BOARD_DIR / f"rauc/system-{kind}.conf").read_text())
    return conf


def table_partitions(board: str) -> list[str]:
    text = (BOARD_DIR / f"genimage-{board}.cfg").read_text()
    return [
        name
        for name, body in re.findall(r"^\tpartition (\S+) \{(.*?)^\t\}", text, re.M | re.S)
        if "in-partition-table = false" not in body
    ]


@pytest.mark.parametrize("kind", ["tryboot", "uboot"])
def test_rauc_slots_are_partitions_2_and_3_named_a_and_b(kind: str) -> None:
    conf = system_conf(kind)
    assert conf["system"]["compatible"] == "dynexport-@BOARD@"
    assert conf["keyring"]["path"] == "/etc/rauc/keyring.pem"
    assert conf["system"]["statusfile"].startswith("/data/"), "the root is read-only"
    assert conf["system"]["bundle-formats"] == "-plain", "verity bundles only"
    slots = {s: conf[s] for s in conf.sections() if s.startswith("slot.")}
    assert {s: (v["device"], v["type"], v["bootname"]) for s, v in slots.items()} == {
        "slot.rootfs.0": ("/dev/disk/by-partuuid/64796e78-02", "raw", "A"),
        "slot.rootfs.1": ("/dev/disk/by-partuuid/64796e78-03", "raw", "B"),
    }
    assert conf["handlers"]["post-install"] == "/usr/libexec/dynexport/rauc-post-install"
    # dynexport marks the slot active once the post-install handler has copied its kernel
    assert conf["system"]["activate-installed"] == "false"
    assert conf["system"]["bootloader"] == {"tryboot": "custom", "uboot": "uboot"}[kind]
    if kind == "tryboot":
        assert conf["handlers"]["bootloader-custom-backend"] == (
            "/usr/libexec/dynexport/rauc-tryboot"
        )


@pytest.mark.parametrize("board", BOARDS)
def test_partition_numbers_agree_with_genimage_cmdline_and_boot_config(board: str) -> None:
    # genimage: p1 boot, p2 slot A, p3 slot B, p4 data; the disk signature names PARTUUIDs
    assert table_partitions(board) == ["boot", "rootfs", "rootfs-b", "data"]
    genimage = (BOARD_DIR / f"genimage-{board}.cfg").read_text()
    assert "disk-signature = 0x64796e78" in genimage
    cmdline = (ROOT / "firmware" / board / "cmdline.txt").read_text()
    assert "root=PARTUUID=64796e78-02" in cmdline.split(), "the first boot is slot A"
    config_txt = (ROOT / "firmware" / board / "config.txt").read_text()
    if board in TRYBOOT:
        last = config_txt.strip().splitlines()[-1]
        assert last == "os_prefix=a/", "rauc-tryboot rewrites the last os_prefix line"
    else:
        assert "os_prefix" not in config_txt
        script = (BOARD_DIR / "boot-uboot.cmd").read_text()
        assert re.search(r"setenv slot A\n\s*setenv rootpart 2\n\s*setenv prefix a/", script)
        assert re.search(r"setenv slot B\n\s*setenv rootpart 3\n\s*setenv prefix b/", script)
        assert "root=PARTUUID=64796e78-0${rootpart} rauc.slot=${slot}" in script


def test_uboot_environment_offsets_agree() -> None:
    fragment = dict(
        line.split("=", 1)
        for line in (BOARD_DIR / "uboot.fragment").read_text().splitlines()
        if line.startswith("CONFIG_ENV_")
    )
    fw_env = [
        line.split()
        for line in (BOARD_DIR / "fw_env.config").read_text().splitlines()
        if line.startswith("/dev/")
    ]
    assert fw_env == [
        ["/dev/mmcblk0", fragment["CONFIG_ENV_OFFSET"], fragment["CONFIG_ENV_SIZE"]],
        ["/dev/mmcblk0", fragment["CONFIG_ENV_OFFSET_REDUND"], fragment["CONFIG_ENV_SIZE"]],
    ]
    size = int(fragment["CONFIG_ENV_SIZE"], 16)
    first, second = (
        int(fragment["CONFIG_ENV_OFFSET"], 16),
        int(fragment["CONFIG_ENV_OFFSET_REDUND"], 16),
    )
    assert second >= first + size and second + size <= 4 << 20, "before partition 1 (4 MiB)"
    for board in UBOOT:
        genimage = (BOARD_DIR / f"genimage-{board}.cfg").read_text()
        offsets = re.findall(r"offset = (0x[0-9a-f]+)", genimage)
        assert [int(o, 16) for o in offsets] == [first, second]
        cfg = defconfig(board)
        assert cfg["BR2_PACKAGE_HOST_UBOOT_TOOLS_ENVIMAGE_SIZE"] == fragment["CONFIG_ENV_SIZE"]
        assert cfg["BR2_PACKAGE_HOST_UBOOT_TOOLS_ENVIMAGE_REDUNDANT"] == "y"
        assert cfg["BR2_TARGET_UBOOT_BOARD_DEFCONFIG"] == "rpi_arm64"
        assert cfg["BR2_PACKAGE_UBOOT_TOOLS"] == "y", "fw_setenv for RAUC's U-Boot backend"
    env = (BOARD_DIR / "uboot-env.txt").read_text().split("\n")
    assert "BOOT_ORDER=A B" in env


def test_kernel_can_mount_verity_bundles() -> None:
    text = (BOARD_DIR / "linux.fragment").read_text()
    for opt in ("BLK_DEV_LOOP", "BLK_DEV_DM", "DM_VERITY", "SQUASHFS"):
        assert f"\nCONFIG_{opt}=y\n" in text, opt


def test_update_units_are_enabled_and_the_service_may_use_rauc() -> None:
    preset = (OVERLAY / "usr/lib/systemd/system-preset/20-dynexport.preset").read_text()
    assert "enable dynexport-update-deadline.timer" in preset.splitlines()
    assert "enable dynexport-update-reboot.path" in preset.splitlines()
    timer = unit(UNITS / "dynexport-update-deadline.timer")
    assert timer["Timer.OnBootSec"] == ["4min"], "a bad update is rolled back within 5 minutes"
    path = unit(UNITS / "dynexport-update-reboot.path")
    assert path["Path.PathExists"] == ["/data/dynexport/reboot-request"]
    policy = (OVERLAY / "etc/dbus-1/system.d/dynexport-rauc.conf").read_text()
    assert '<policy user="dynexport">' in policy
    assert '<allow send_destination="de.pengutronix.rauc"/>' in policy


def test_bundle_manifest_is_verity_and_names_the_root_image() -> None:
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string((BOARD_DIR / "rauc/manifest.raucm.in").read_text())
    assert conf["update"]["compatible"] == "dynexport-@BOARD@"
    assert conf["bundle"]["format"] == "verity"
    assert conf["image.rootfs"]["filename"] == "rootfs.img"
    for script in ("build-bundle.sh", "signing-key.sh", "report-sizes.sh"):
        assert os.access(EXT / "scripts" / script, os.X_OK), script
        subprocess.run(["bash", "-n", str(EXT / "scripts" / script)], check=True)


def test_report_sizes_prints_both_sizes_and_warns_over_budget(tmp_path: Path) -> None:
    image, bundle = tmp_path / "sdcard.img.xz", tmp_path / "b.raucb"
    image.write_bytes(b"\0" * (3 << 20))
    bundle.write_bytes(b"\0" * (1 << 20))
    run = subprocess.run(
        [str(EXT / "scripts/report-sizes.sh"), "rpi4_64", str(image), str(bundle)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "DYNEXPORT_IMAGE_BUDGET_MB": "2"},
    )  # fmt: skip
    assert run.stdout == "sizes rpi4_64: image (xz) 3.0 MiB, bundle 1.0 MiB\n"
    assert "over its 2 MiB budget" in run.stderr


# -- the Pi 4/5 trial-boot backend, run for real on a folder standing in for the FAT partition


def tryboot(fat: Path, *args: str, booted: str = "A") -> subprocess.CompletedProcess[str]:
    cmdline = fat.parent / "cmdline"
    cmdline.write_text(f"root=PARTUUID=64796e78-02 ro rauc.slot={booted}\n")
    return subprocess.run(
        [str(LIBEXEC / "rauc-tryboot"), *args],
        capture_output=True, text=True, check=False,
        env={**os.environ, "RAUC_TRYBOOT_DIR": str(fat), "RAUC_TRYBOOT_CMDLINE": str(cmdline)},
    )  # fmt: skip


@pytest.fixture
def fat(tmp_path: Path) -> Path:
    fat = tmp_path / "fat"
    fat.mkdir()
    (fat / "config.txt").write_text((ROOT / "firmware/rpi4_64/config.txt").read_text())
    return fat


def test_tryboot_install_writes_a_one_shot_trial_and_keeps_the_committed_slot(fat: Path) -> None:
    before = (fat / "config.txt").read_text()
    assert tryboot(fat, "get-primary").stdout == "A\n"
    assert tryboot(fat, "set-state", "B", "bad").returncode == 0  # RAUC, before writing B
    assert tryboot(fat, "set-primary", "B").returncode == 0  # RAUC, after writing B
    assert (fat / "config.txt").read_text() == before, "a normal boot still boots A"
    trial = (fat / "tryboot.txt").read_text()
    assert trial == before.replace("os_prefix=a/", "os_prefix=b/")
    assert tryboot(fat, "get-primary").stdout == "A\n"
    assert tryboot(fat, "get-state", "B").stdout == "good\n"
    assert tryboot(fat, "get-current", booted="B").stdout == "B\n"


def test_tryboot_commit_makes_the_new_slot_the_normal_boot(fat: Path) -> None:
    tryboot(fat, "set-primary", "B")
    assert tryboot(fat, "set-state", "B", "good", booted="B").returncode == 0  # mark-good
    assert (fat / "config.txt").read_text().strip().splitlines()[-1] == "os_prefix=b/"
    assert not (fat / "tryboot.txt").exists()
    assert tryboot(fat, "get-primary").stdout == "B\n"
    assert tryboot(fat, "get-state", "A").stdout == "bad\n"


def test_tryboot_mark_bad_cancels_the_trial_but_never_the_committed_slot(fat: Path) -> None:
    tryboot(fat, "set-primary", "B")
    assert tryboot(fat, "set-state", "B", "bad", booted="B").returncode == 0
    assert not (fat / "tryboot.txt").exists()
    refused = tryboot(fat, "set-state", "A", "bad")
    assert refused.returncode != 0 and "committed slot" in refused.stderr
    assert tryboot(fat, "get-primary").stdout == "A\n"


def test_tryboot_a_normal_boots_confirmation_drops_a_trial_and_activation_brings_it_back(
    fat: Path,
) -> None:
    """A reset before the trial reboot boots slot A normally; confirming A (mark-good) deletes
    tryboot.txt. The service therefore activates B again (set-primary) before asking for the
    trial reboot once more (update/service.py, _ask_trial_again)."""
    tryboot(fat, "set-primary", "B")
    assert tryboot(fat, "set-state", "A", "good", booted="A").returncode == 0
    assert not (fat / "tryboot.txt").exists(), "a trial reboot now would boot A again"
    assert tryboot(fat, "set-primary", "B").returncode == 0
    assert "os_prefix=b/" in (fat / "tryboot.txt").read_text().splitlines()
    assert tryboot(fat, "get-primary").stdout == "A\n"


def test_tryboot_refuses_unknown_slots_and_commands(fat: Path) -> None:
    assert "unknown slot 'C'" in tryboot(fat, "set-primary", "C").stderr
    assert tryboot(fat, "frobnicate").returncode != 0
    (fat / "config.txt").write_text("kernel=Image\n")
    assert "no os_prefix" in tryboot(fat, "get-primary").stderr


SYSTEMTEST_IMAGE = ROOT / "systemtest/image"


def test_the_system_test_uses_the_appliance_slots_with_grubs_backend() -> None:
    # GRUB stands in for the Pi's trial boot; everything else RAUC sees must be the appliance's.
    test_conf = configparser.ConfigParser(interpolation=None)
    test_conf.read_string((SYSTEMTEST_IMAGE / "rauc-system.conf").read_text())
    pi = system_conf("tryboot")
    assert test_conf["system"]["bootloader"] == "grub"
    assert test_conf["system"]["grubenv"] == "/bootfs/grub/grubenv"
    for key in ("statusfile", "bundle-formats", "activate-installed"):
        assert test_conf["system"][key] == pi["system"][key]
    assert test_conf["keyring"]["path"] == pi["keyring"]["path"]
    assert test_conf["handlers"]["post-install"] == pi["handlers"]["post-install"]
    slots = [s for s in pi.sections() if s.startswith("slot.")]
    assert [s for s in test_conf.sections() if s.startswith("slot.")] == slots
    for slot in slots:
        assert dict(test_conf[slot]) == dict(pi[slot])


def test_the_system_test_grub_cfg_boots_each_slot_from_its_partition_and_folder() -> None:
    cfg = (SYSTEMTEST_IMAGE / "grub.cfg").read_text()
    # RAUC's GRUB variables, loaded and saved
    for var in ("ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"):
        assert re.search(rf"^load_env .*\b{var}\b", cfg, re.M), var
        assert re.search(rf"^save_env .*\b{var}\b", cfg, re.M), var
    # a slot booted untried is marked on trial before it boots
    assert re.search(
        r'"\$A_TRY" = "0" -a "\$A_KERNEL" = "1" \]; then\n\s*set slot=A\n\s*set A_TRY=1', cfg
    )
    assert re.search(
        r'"\$B_TRY" = "0" -a "\$B_KERNEL" = "1" \]; then\n\s*set slot=B\n\s*set B_TRY=1', cfg
    )
    # a slot is chosen only with its kernel on the FAT partition, in either pass
    assert "if [ -f /a/vmlinuz ]; then set A_KERNEL=1; fi" in cfg
    assert "if [ -f /b/vmlinuz ]; then set B_KERNEL=1; fi" in cfg
    for slot in "AB":
        chosen = re.findall(rf"^\s*if \[ .*; then\s*(?:\n\s*)?set slot={slot}\b", cfg, re.M)
        assert chosen and all(f'"${slot}_KERNEL" = "1"' in c for c in chosen[:2]), chosen
    # slot B: partition 3 and b/ (rauc-post-install's folder); otherwise A: partition 2, a/
    assert re.search(r'if \[ "\$slot" = "B" \]; then\n\s*set part=3\n\s*set dir=b\nelse\n'
                     r"\s*set part=2\n\s*set dir=a\n", cfg)  # fmt: skip
    # the kernel and initramfs of the chosen slot, through the 16-bit boot protocol (the core
    # image carries linux16, not linux: build-image.sh)
    linux = re.search(r"^linux16 (.*)$", cfg, re.M)
    assert linux is not None
    args = linux[1].split()
    assert args[0] == "/$dir/vmlinuz"
    assert "root=PARTUUID=64796e78-0$part" in args and "rauc.slot=$slot" in args
    assert re.search(r"^initrd16 /\$dir/initrd\.img$", cfg, re.M)
    build = (SYSTEMTEST_IMAGE.parent / "build-image.sh").read_text()
    assert re.search(r"grub-mkimage -O i386-pc .*\n\s.*\blinux16\b", build)
    post_install = (LIBEXEC / "rauc-post-install").read_text()
    assert "A) prefix=a part=02 ;;" in post_install and "B) prefix=b part=03 ;;" in post_install


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="grub-common not installed")
def test_the_system_test_grub_cfg_is_valid_grub_script(tmp_path: Path) -> None:
    cfg = (SYSTEMTEST_IMAGE / "grub.cfg").read_text().replace("@CMDLINE@", "ro")
    (tmp_path / "grub.cfg").write_text(cfg)
    result = subprocess.run(
        ["grub-script-check", str(tmp_path / "grub.cfg")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- update-reboot: a reboot request belongs to the boot that wrote it ------------------------

THIS_BOOT = "0f6c2a8e-3b1d-4c55-9a0e-7d2f1e4b9c10"


def update_reboot(tmp_path: Path, request: str | None, rauc_conf: str = "") -> tuple[str, str]:
    """Runs update-reboot against stand-ins; (what systemctl was asked, its stderr)."""
    tmp_path = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    tmp_path.mkdir()
    req, booted, conf = tmp_path / "reboot-request", tmp_path / "boot_id", tmp_path / "system.conf"
    calls, systemctl = tmp_path / "systemctl.log", tmp_path / "systemctl"
    if request is not None:
        req.write_text(request)
    booted.write_text(THIS_BOOT + "\n")
    conf.write_text(rauc_conf)
    systemctl.write_text(f'#!/bin/sh\necho "$*" >>"{calls}"\n')
    systemctl.chmod(0o755)
    env = {
        **os.environ,
        "UPDATE_REBOOT_REQUEST": str(req),
        "UPDATE_REBOOT_BOOT_ID": str(booted),
        "UPDATE_REBOOT_RAUC_CONF": str(conf),
        "UPDATE_REBOOT_SYSTEMCTL": str(systemctl),
    }
    proc = subprocess.run(
        [str(LIBEXEC / "update-reboot")], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert not req.exists(), "the request is consumed whatever it says"
    return (calls.read_text() if calls.exists() else ""), proc.stderr


def test_update_reboot_acts_on_a_request_from_this_boot(tmp_path: Path) -> None:
    asked, _ = update_reboot(tmp_path, f"trial {THIS_BOOT}\n")
    assert asked == "reboot\n"
    asked, _ = update_reboot(tmp_path, f"trial {THIS_BOOT}\n", "[system]\nbootloader=custom\n")
    assert asked == "reboot 0 tryboot\n", "the Pi 4/5's trial boot is the firmware's tryboot"
    asked, _ = update_reboot(tmp_path, f"normal {THIS_BOOT}\n", "[system]\nbootloader=custom\n")
    assert asked == "reboot\n"


@pytest.mark.parametrize(
    "request_text",
    ["trial 11111111-2222-3333-4444-555555555555\n", "trial\n", "", "trial $(reboot)\n"],
    ids=["another boot's", "no boot id (an older release's)", "empty", "garbage"],
)
def test_update_reboot_ignores_a_request_that_outlived_its_boot(
    tmp_path: Path, request_text: str
) -> None:
    # A second request written while the first one's reboot was under way is still on /data at
    # the next boot: acted on, it would reset the trial boot it asked for (the system test saw a
    # good update rolled back this way).
    asked, said = update_reboot(tmp_path, request_text)
    assert asked == ""
    assert "ignored a request from an earlier boot" in said


def test_update_reboot_without_a_request_does_nothing(tmp_path: Path) -> None:
    assert update_reboot(tmp_path, None) == ("", "")


# -- update-deadline: the last word on a trial boot, in plain shell ----------------------------


def _write_record(data: Path, state: str) -> None:
    """The record as dynexport writes it."""
    record = UpdateRecord(state, "1.5.0", target="B", source="A", boot_id="install-boot")  # type: ignore[arg-type]
    (data / "update.json").write_bytes(record.to_json())


def run_deadline(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """update-deadline run to its end with these stand-ins; it always exits 0."""
    proc = subprocess.run(
        [str(LIBEXEC / "update-deadline")], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def update_deadline(
    tmp_path: Path, state: str | None, booted: str, health: str | None = None
) -> tuple[str, str | None]:
    """Runs update-deadline against stand-ins: (what rauc and systemctl were asked, the failure
    note it left for the status API)."""
    env = deadline_env(tmp_path, booted)
    data = tmp_path / "data"
    if state is not None:
        _write_record(data, state)
    if health is not None:
        (data / "update-health").write_text(health + "\n")
    run_deadline(env)
    return deadline_outcome(tmp_path)


@pytest.mark.parametrize("state", ["trial", "installing"])
def test_the_deadline_rolls_back_an_uncommitted_trial_of_the_new_slot(
    tmp_path: Path, state: str
) -> None:
    # "installing": the power was cut after the complete slot was activated and before the
    # record said "trial" (an older release activated at the install); that boot is a trial as
    # well
    asked, failure = update_deadline(
        tmp_path, state, booted="B", health="the meter has not answered"
    )
    assert asked == "rauc status mark-bad booted\nsystemctl reboot\n"
    assert failure == (
        "it did not pass its health check within 4 minutes of booting "
        "(the meter has not answered)\n"
    )
    assert_the_lock_is_free(tmp_path / "data" / "update.lock")


def test_a_healthy_trial_whose_commit_failed_is_not_said_to_have_failed_its_health_check(
    tmp_path: Path,
) -> None:
    asked, failure = update_deadline(
        tmp_path, "trial", booted="B", health="healthy, but the commit failed: rauc: D-Bus error"
    )
    assert asked == "rauc status mark-bad booted\nsystemctl reboot\n"
    assert failure == (
        "it was not committed within 4 minutes of booting "
        "(healthy, but the commit failed: rauc: D-Bus error)\n"
    )


def test_a_hung_rauc_does_not_keep_the_trial_alive(tmp_path: Path) -> None:
    """RAUC's D-Bus service stuck: ``rauc status mark-bad`` never returned, so the script never
    reached its reboot, and the uncommitted trial ran until someone pulled the power. Each rauc
    command is stopped after UPDATE_DEADLINE_RAUC_WAIT_S and the reboot comes all the same."""
    env = deadline_env(tmp_path, "B", UPDATE_DEADLINE_RAUC_WAIT_S="1")
    calls = tmp_path / "calls.log"
    (tmp_path / "rauc").write_text(f'#!/bin/sh\necho "rauc $*" >>"{calls}"\nexec sleep 600\n')
    _write_record(tmp_path / "data", "trial")
    started = time.monotonic()
    proc = run_deadline(env)
    asked, failure = deadline_outcome(tmp_path)
    assert asked == ("rauc status mark-bad booted\nrauc status mark-good other\nsystemctl reboot\n")
    assert "took over 1 s; stopped" in proc.stderr
    assert failure is not None and failure.startswith("it did not pass its health check")
    assert time.monotonic() - started < 300  # not the 600 s of the hung commands
    assert_the_lock_is_free(tmp_path / "data" / "update.lock")


def assert_the_lock_is_free(lock: Path) -> None:
    """Nothing the script started (a command, the watcher's sleeps) still holds the decision
    lock once it has ended: an orphaned sleep kept it for a minute, and the service's commit
    waited on it."""
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if anything holds it
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("state", "booted"),
    [
        (None, "B"),
        ("committed", "B"),
        ("trial", "A"),
        ("installing", "A"),
        ("failed", "A"),
        ("failed", "B"),
    ],
    ids=[
        "no record",
        "committed",
        "rolled back",
        "install cut short",
        "failed install",
        "fallen back to the failed install's slot",  # the boot loader: the slot it had before
    ],
)
def test_the_deadline_leaves_every_other_boot_alone(
    tmp_path: Path, state: str | None, booted: str
) -> None:
    assert update_deadline(tmp_path, state, booted) == ("", None)


@pytest.mark.parametrize(
    ("record", "flag", "rolled_back"),
    [
        (None, b"\x00\x00\x00\x01", True),
        (b"{not json", b"\x00\x00\x00\x01", True),
        (b'{"state": "failed", "target": "A"}', b"\x00\x00\x00\x01", True),
        (b'{"state": "committed", "target": "B"}', b"\x00\x00\x00\x01", False),
        (None, b"\x00\x00\x00\x00", False),
        (b"{not json", None, False),
    ],
    ids=["lost", "corrupt", "an older one", "committed", "flag 0", "no flag"],
)
def test_on_the_firmwares_trial_boot_a_lost_record_is_still_rolled_back(
    tmp_path: Path, record: bytes | None, flag: bytes | None, rolled_back: bool
) -> None:
    """dynexport records the trial again when it starts (update/service.py); this is the
    trial whose dynexport never got that far."""
    flag_file = tmp_path / "tryboot"
    if flag is not None:
        flag_file.write_bytes(flag)
    env = deadline_env(tmp_path, "B", UPDATE_DEADLINE_TRYBOOT=str(flag_file))
    if record is not None:
        (tmp_path / "data/update.json").write_bytes(record)
    run_deadline(env)
    asked, failure = deadline_outcome(tmp_path)
    if rolled_back:
        assert asked == "rauc status mark-bad booted\nsystemctl reboot\n"
        assert failure is not None and "dynexport never reported its health" in failure
    else:
        assert (asked, failure) == ("", None)


@pytest.mark.parametrize("state", ["installing", "failed"])
def test_on_the_firmwares_trial_boot_an_install_of_this_boot_is_left_alone(
    tmp_path: Path, state: str
) -> None:
    """The trial was committed within its first 4 minutes, and an install into the other slot
    began (or failed) at once: the flag stays 1 all the boot, but that record is this boot's
    own, not a lost trial's. Rolling back would make the slot being written the next boot."""
    flag, boot = tmp_path / "tryboot", tmp_path / "boot_id"
    flag.write_bytes(b"\x00\x00\x00\x01")
    boot.write_text("this-boot\n")
    env = deadline_env(
        tmp_path, "B", UPDATE_DEADLINE_TRYBOOT=str(flag), UPDATE_DEADLINE_BOOT_ID=str(boot)
    )
    record = UpdateRecord(state, "1.6.0", target="A", source="B", boot_id="this-boot")  # type: ignore[arg-type]
    (tmp_path / "data/update.json").write_bytes(record.to_json())
    run_deadline(env)
    assert deadline_outcome(tmp_path) == ("", None)
    # the same record from an earlier boot is an older update's: a lost trial, rolled back
    boot.write_text("a-later-boot\n")
    run_deadline(env)
    assert deadline_outcome(tmp_path)[0] == "rauc status mark-bad booted\nsystemctl reboot\n"


def test_the_deadline_leaves_alone_the_slot_a_boot_loader_fell_back_to(tmp_path: Path) -> None:
    """An install by this release (the record says "reboot_asked": false) never activates its
    slot: that slot booting under its "installing" record is the boot loader falling back to
    the slot it had before (the running one failed), its own release, no trial of the update."""
    env = deadline_env(tmp_path, "B")
    record = UpdateRecord(
        "installing", "1.6.0", target="B", source="A", boot_id="install-boot", reboot_asked=False
    )
    (tmp_path / "data/update.json").write_bytes(record.to_json())
    run_deadline(env)
    assert deadline_outcome(tmp_path) == ("", None)


def test_the_deadline_waits_for_a_commit_under_way_and_then_leaves_the_committed_slot(
    tmp_path: Path,
) -> None:
    """dynexport holds the decision lock while it commits: the deadline, due meanwhile, waits
    and reads the record only after it (committed: nothing to do). Without the lock it read
    "trial" and marked the committed slot bad."""
    env = deadline_env(tmp_path, "B")
    data = tmp_path / "data"
    _write_record(data, "trial")
    lock = data / "update.lock"
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = subprocess.Popen(
        [str(LIBEXEC / "update-deadline")], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        waited = waiting_on_lock(lock)
        _write_record(data, "committed")  # the commit the lock was held for
    finally:
        os.close(fd)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert waited, "the deadline did not wait for the lock"
    assert proc.returncode == 0, err
    assert deadline_outcome(tmp_path) == ("", None)


def test_a_lock_held_too_long_does_not_keep_a_trial_alive(tmp_path: Path) -> None:
    """A hung commit holding the lock: after its wait the deadline decides anyway."""
    env = deadline_env(tmp_path, "B", UPDATE_DEADLINE_LOCK_WAIT_S="0")
    data = tmp_path / "data"
    _write_record(data, "trial")
    fd = os.open(data / "update.lock", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = subprocess.run(
            [str(LIBEXEC / "update-deadline")], env=env, capture_output=True, text=True, check=False
        )
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    assert "the update lock was held for 0 s; deciding without it" in proc.stderr
    asked, failure = deadline_outcome(tmp_path)
    assert asked == "rauc status mark-bad booted\nsystemctl reboot\n"
    assert failure is not None and failure.startswith("it did not pass its health check")


def test_a_data_folder_that_cannot_be_written_does_not_stop_the_rollback(tmp_path: Path) -> None:
    """/data remounted read-only after an error (here: the lock a dangling link into nowhere,
    the failure note's temporary name taken by a folder; root can write anything else): the
    trial is still marked bad and the device rebooted, each file it could not write named."""
    env = deadline_env(tmp_path, "B")
    data = tmp_path / "data"
    _write_record(data, "trial")
    (data / "update.lock").symlink_to(tmp_path / "nowhere/update.lock")
    (data / "update-failure.tmp").mkdir()
    proc = run_deadline(env)
    assert "update.lock cannot be opened; deciding without the lock" in proc.stderr
    assert "update-failure could not be written; rolling back without the reason" in proc.stderr
    assert deadline_outcome(tmp_path) == ("rauc status mark-bad booted\nsystemctl reboot\n", None)


# RAUC as the Pi 4/5 image configures it (bootloader=custom): its status marks, for the running
# slot (rauc.slot=B) and the other one, handed to the real rauc-tryboot on a stand-in partition
RAUC_ON_TRYBOOT = """#!/bin/sh
echo "rauc $*" >>"$CALLS"
[ "$1" = status ] || exit 3
case "$3" in booted) slot=B ;; other) slot=A ;; *) exit 3 ;; esac
case "$2" in mark-good) state=good ;; mark-bad) state=bad ;; *) exit 3 ;; esac
exec "$TRYBOOT" set-state "$slot" "$state"
"""


def test_a_trial_already_committed_by_the_firmware_is_still_rolled_back_once(
    tmp_path: Path, fat: Path
) -> None:
    """Pi 4/5: slot B is what config.txt boots (its mark-good happened) but the record still
    says trial (a power cut before it was written). The deadline's mark-bad is refused for the
    committed slot; before, it rebooted into B again, and every boot ended the same way 4 minutes
    later. Now slot A is made the committed slot and the reboot boots it."""
    assert tryboot(fat, "set-state", "B", "good").returncode == 0  # B committed
    assert tryboot(fat, "get-primary").stdout == "B\n"
    env = deadline_env(tmp_path, "B")
    rauc = tmp_path / "rauc"
    rauc.write_text(RAUC_ON_TRYBOOT)
    env.update(
        CALLS=str(tmp_path / "calls.log"),
        TRYBOOT=str(LIBEXEC / "rauc-tryboot"),
        RAUC_TRYBOOT_DIR=str(fat),
        RAUC_TRYBOOT_CMDLINE=str(tmp_path / "cmdline"),
    )
    _write_record(tmp_path / "data", "trial")
    proc = run_deadline(env)
    assert "slot B is the committed slot" in proc.stderr
    asked, failure = deadline_outcome(tmp_path)
    assert asked == ("rauc status mark-bad booted\nrauc status mark-good other\nsystemctl reboot\n")
    assert tryboot(fat, "get-primary").stdout == "A\n", "a normal boot now boots A"
    assert failure is not None


def test_a_failed_mark_bad_and_mark_good_still_reboot(tmp_path: Path) -> None:
    """RAUC not answering at all: the reboot alone ends a trial on GRUB and U-Boot."""
    env = deadline_env(tmp_path, "B")
    (tmp_path / "rauc").write_text(f'#!/bin/sh\necho "rauc $*" >>"{tmp_path}/calls.log"\nexit 1\n')
    _write_record(tmp_path / "data", "trial")
    proc = run_deadline(env)
    assert "mark-good other failed too; rebooting anyway" in proc.stderr
    asked, _ = deadline_outcome(tmp_path)
    assert asked.splitlines() == [
        "rauc status mark-bad booted",
        "rauc status mark-good other",
        "systemctl reboot",
    ]


# -- update-nodata: a trial boot that cannot mount /data ---------------------------------------


def update_nodata(tmp_path: Path, flag: bytes | None) -> tuple[str, str]:
    """Runs update-nodata with the device tree's trial flag holding ``flag`` (None: no such
    property, as on U-Boot, GRUB or an older firmware): (what systemctl was asked, stderr)."""
    calls = tmp_path / "calls.log"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "systemctl $*" >>"{calls}"\n')
    systemctl.chmod(0o755)
    tryboot = tmp_path / "tryboot"
    if flag is not None:
        tryboot.write_bytes(flag)
    proc = subprocess.run(
        [str(LIBEXEC / "update-nodata")],
        env={
            **os.environ,
            "UPDATE_NODATA_TRYBOOT": str(tryboot),
            "UPDATE_NODATA_SYSTEMCTL": str(systemctl),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return (calls.read_text() if calls.exists() else ""), proc.stderr


def test_a_firmware_trial_boot_without_data_reboots_into_the_committed_slot(
    tmp_path: Path,
) -> None:
    asked, said = update_nodata(tmp_path, b"\x00\x00\x00\x01")
    assert asked == "systemctl reboot\n"
    assert "trial boot cannot mount /data" in said


@pytest.mark.parametrize(
    "flag", [None, b"\x00\x00\x00\x00", b"\x01", b"\x00\x00\x00\x01\x00"], ids=str
)
def test_any_other_boot_without_data_is_not_rebooted(tmp_path: Path, flag: bytes | None) -> None:
    """An ordinary boot (or a boot loader that counts attempts, which cannot tell): a reboot would
    only alternate the slots."""
    asked, said = update_nodata(tmp_path, flag)
    assert asked == ""
    assert "not a trial boot" in said


def test_the_data_mount_failing_starts_update_nodata_which_needs_no_data() -> None:
    data = unit(UNITS / "dynexport-data.service")
    assert data["Unit.OnFailure"] == ["dynexport-update-nodata.service"]
    nodata = unit(UNITS / "dynexport-update-nodata.service")
    assert nodata["Service.ExecStart"] == ["/usr/libexec/dynexport/update-nodata"]
    for key in ("Unit.Requires", "Unit.RequiresMountsFor", "Unit.BindsTo", "Unit.After"):
        assert key not in nodata, key
