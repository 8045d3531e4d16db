"""The Pi 3 and Zero 2 W's A/B slot choice (``boot.scr``, from buildroot/board/dynexport/
boot-uboot.cmd) run by a real U-Boot: Debian's ``qemu_arm64`` build (2023.01, the series the
Buildroot tree builds for ``rpi_arm64``) in qemu-system-aarch64, one VM per case.

As on the Pi, U-Boot's distro boot finds ``boot.scr`` on the card's first (FAT) partition and
runs it, and the script resets the board when it cannot boot. What differs, and why the cases
still hold: the card is a virtio disk, so the script's ``mmc 0:1`` reads ``virtio 0:1``; the
kernels are stand-in files, so ``booti`` refuses them and the script resets: each boot ends where
the Pi's hands over to Linux, after the console line that names the slot and its command line.
And the environment: qemu's flash cannot keep U-Boot's writes (its buffered-write emulation
fails them), so the script's ``saveenv`` prints the A/B variables instead, and this test keeps
what the last one printed and sets it again at the next boot's prompt, as the card's
environment sectors would hold it. At that prompt it also writes what RAUC writes from Linux
(``fw_setenv``: an install, ``mark-good``, ``mark-bad``). Nothing waits on a timer: every step
waits, within a generous bound, for the console line it needs.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.image.helpers import EXT

SCRIPT = EXT / "board" / "dynexport" / "boot-uboot.cmd"
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
QEMU = "qemu-system-aarch64"
TOOLS = (QEMU, "mkimage", "sfdisk", "mkfs.vfat", "mcopy", "mmd")
SAVED = "BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT"
"""What the script's ``saveenv`` writes that it reads back (printed here: see above)."""
STEP_S = 120.0
"""Bound on any one wait for the console (a boot takes about a second unloaded)."""

missing = [tool for tool in TOOLS if shutil.which(tool) is None]
if not UBOOT.exists():
    missing.append(str(UBOOT))
pytestmark = pytest.mark.skipif(
    bool(missing) and not os.environ.get("CI"),
    reason=f"needs qemu-system-arm, u-boot-qemu, u-boot-tools, fdisk, dosfstools, mtools "
    f"(bash .ci/run installs them); missing: {', '.join(missing)}",
)


def card(folder: Path, kernels: set[str]) -> Path:
    """A card whose FAT partition holds ``boot.scr`` and a stand-in kernel per slot in
    ``kernels`` (``a/Image``, ``b/Image``), as genimage lays out the Pi 3's."""
    text = SCRIPT.read_text()
    assert text.count("mmc 0:1") == 3, "the script reads the card three times"
    assert text.count("saveenv") == 2, "the script saves the counters in two places"
    text = text.replace("mmc 0:1", "virtio 0:1").replace("saveenv", f"printenv {SAVED}")
    (folder / "boot.cmd").write_text(text)
    subprocess.run(
        ["mkimage", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
         "-d", str(folder / "boot.cmd"), str(folder / "boot.scr")],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    disk = folder / "card.img"
    with disk.open("wb") as f:
        f.truncate(16 << 20)
    subprocess.run(
        ["sfdisk", "-q", str(disk)], input=b"label: dos\nstart=2048, size=24576, type=c\n",
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["mkfs.vfat", "-F", "16", "--offset", "2048", str(disk), str(24576 // 2)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    fat = f"{disk}@@{2048 * 512}"
    subprocess.run(["mcopy", "-i", fat, str(folder / "boot.scr"), "::boot.scr"], check=True)
    for slot in sorted(kernels):
        image = folder / f"Image-{slot}"
        image.write_bytes(f"stand-in kernel of slot {slot}\n".encode())
        subprocess.run(["mmd", "-i", fat, f"::{slot.lower()}"], check=True)
        subprocess.run(["mcopy", "-i", fat, str(image), f"::{slot.lower()}/Image"], check=True)
    return disk


@dataclass
class Boot:
    """What one boot's script did: the slot it chose (None: it reset without one), the
    command line it would hand the kernel, and the console lines it printed."""

    slot: str | None
    cmdline: str
    lines: list[str]


class UBootVM:
    """qemu-system-aarch64 running U-Boot, with the card attached; the serial console is read
    by a thread into one growing text. ``saved`` stands in for the environment sectors."""

    def __init__(self, disk: Path) -> None:
        self.proc = subprocess.Popen(
            [QEMU, "-M", "virt", "-cpu", "cortex-a53", "-m", "128", "-nographic",
             "-nic", "none", "-bios", str(UBOOT),
             "-drive", f"if=none,id=card,format=raw,file={disk}",
             "-device", "virtio-blk-device,drive=card"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.text = ""
        self.seen = 0
        """How far the test has read ``text``."""
        self.saved: dict[str, str] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._prompt()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            with self._cond:
                self.text += chunk.decode(errors="replace").replace("\r", "")
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _gone(self) -> bool:
        return self.proc.poll() is not None and not self._reader.is_alive()

    def expect(self, pattern: str) -> re.Match[str]:
        """Waits for ``pattern`` after what was read so far; reads past it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + STEP_S
        with self._cond:
            while True:
                found = regex.search(self.text, self.seen)
                if found:
                    self.seen = found.end()
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._gone():
                    tail = self.text[self.seen :][-1500:]
                    raise AssertionError(f"no {pattern!r} on U-Boot's console; after:\n{tail}")
                self._cond.wait(min(left, 1.0))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def setenv(self, name: str, value: str) -> None:
        """Sets a variable at the prompt (in U-Boot's memory: nothing is saved)."""
        line = f'setenv {name} "{value}"'
        self.send(line)
        self.expect(re.escape(line) + "\n")
        self.expect(r"=> ")

    def _prompt(self) -> None:
        """Stops autoboot (keys go in until the prompt shows: no race with its countdown) and
        sets what the environment sectors hold."""
        assert self.proc.stdin is not None
        deadline = time.monotonic() + STEP_S
        with self._cond:
            while "=> " not in self.text[self.seen :]:
                if time.monotonic() > deadline or self._gone():
                    raise AssertionError(f"no U-Boot prompt:\n{self.text[self.seen :][-1500:]}")
                self.proc.stdin.write(b" ")
                self.proc.stdin.flush()
                self._cond.wait(0.1)
        self.expect(r"=> ")
        for name, value in self.saved.items():
            self.setenv(name, value)

    def fw_setenv(self, **values: str) -> None:
        """What RAUC's U-Boot backend writes from Linux (``fw_setenv``), at the prompt."""
        for name, value in values.items():
            self.setenv(name, value)
            self.saved[name] = value

    def boot(self) -> Boot:
        """Lets the boot go on (distro boot runs ``boot.scr``) until the script resets, keeps
        what it saved, and stops the next boot at its prompt."""
        self.send("boot")
        self.expect(r"Executing script")
        start = self.seen
        self.expect(r"resetting \.\.\.")
        lines = self.text[start : self.seen].splitlines()
        self.saved.update(re.findall(r"^(BOOT_\w+)=(.*)$", "\n".join(lines), re.M))
        self._prompt()
        chosen = [ln for ln in lines if ln.startswith("dynexport: booting root slot")]
        if not chosen:
            return Boot(None, "", lines)
        found = re.match(r"dynexport: booting root slot (\w) \((\w)/Image\): (.*)$", chosen[-1])
        assert found, chosen
        assert found[2] == found[1].lower(), chosen
        return Boot(found[1], found[3].strip(), lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=5)


@pytest.fixture
def uboot(tmp_path: Path) -> Iterator[Callable[[set[str]], UBootVM]]:
    vms: list[UBootVM] = []

    def start(kernels: set[str]) -> UBootVM:
        folder = tmp_path / f"vm{len(vms)}"
        folder.mkdir()
        vm = UBootVM(card(folder, kernels))
        vms.append(vm)
        return vm

    yield start
    for vm in vms:
        vm.close()


def root_of(boot: Boot) -> tuple[str, str]:
    """The root partition and RAUC slot the command line names (the last ``root=`` wins)."""
    words = boot.cmdline.split()
    roots = [w.split("=", 1)[1] for w in words if w.startswith("root=")]
    slots = [w.split("=", 1)[1] for w in words if w.startswith("rauc.slot=")]
    return roots[-1], slots[-1]


def left_of(boot: Boot) -> str:
    """The attempts left after this boot that the command line gives the service."""
    words = boot.cmdline.split()
    return [w.split("=", 1)[1] for w in words if w.startswith("dynexport.boot_left=")][-1]


def test_a_card_never_updated_boots_slot_a_and_a_commit_keeps_it_there(
    uboot: Callable[[set[str]], UBootVM],
) -> None:
    vm = uboot({"A"})
    first = vm.boot()
    assert first.slot == "A" and root_of(first) == ("PARTUUID=64796e78-02", "A")
    # the script's defaults were saved with one attempt of A spent
    assert vm.saved == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "2", "BOOT_B_LEFT": "3"}
    vm.fw_setenv(BOOT_A_LEFT="3")  # the health check passed: rauc status mark-good
    assert vm.boot().slot == "A"
    assert vm.saved["BOOT_A_LEFT"] == "2"


def test_an_update_that_never_commits_falls_back_to_the_old_slot(
    uboot: Callable[[set[str]], UBootVM],
) -> None:
    vm = uboot({"A", "B"})
    assert vm.boot().slot == "A"
    vm.fw_setenv(BOOT_A_LEFT="3")
    # rauc install wrote slot B and made it the primary: B first, with its attempts
    vm.fw_setenv(BOOT_ORDER="B A", BOOT_B_LEFT="3")
    trials = [vm.boot() for _ in range(3)]  # never committed: the watchdog, a power cut ...
    assert [b.slot for b in trials] == ["B", "B", "B"]
    assert root_of(trials[0]) == ("PARTUUID=64796e78-03", "B")
    # each boot tells the service how many attempts are left: a repeat is not a first trial
    assert [left_of(b) for b in trials] == ["2", "1", "0"]
    assert vm.saved == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}
    back = vm.boot()
    assert back.slot == "A" and root_of(back) == ("PARTUUID=64796e78-02", "A")
    assert vm.boot().slot == "A", "slot B stays skipped"


def test_a_committed_update_stays_and_mark_bad_returns_at_once(
    uboot: Callable[[set[str]], UBootVM],
) -> None:
    vm = uboot({"A", "B"})
    vm.fw_setenv(BOOT_ORDER="B A", BOOT_A_LEFT="3", BOOT_B_LEFT="3")
    assert vm.boot().slot == "B"
    vm.fw_setenv(BOOT_B_LEFT="3")  # committed
    assert [vm.boot().slot for _ in range(2)] == ["B", "B"]
    vm.fw_setenv(BOOT_B_LEFT="0")  # the deadline's rauc status mark-bad
    assert vm.boot().slot == "A"


def test_a_slot_without_a_kernel_is_skipped_without_spending_an_attempt(
    uboot: Callable[[set[str]], UBootVM],
) -> None:
    vm = uboot({"A"})
    vm.fw_setenv(BOOT_ORDER="B A", BOOT_A_LEFT="3", BOOT_B_LEFT="3")
    boot = vm.boot()
    assert boot.slot == "A"
    assert "dynexport: root slot B has no kernel (b/Image); skipped" in boot.lines
    assert vm.saved == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "2", "BOOT_B_LEFT": "3"}
    # slot A never commits and B has nothing to boot: after A's attempts, the counters are
    # reset and A is tried again (not three resets spent on an empty slot B)
    assert [vm.boot().slot for _ in range(2)] == ["A", "A"]
    spent = vm.boot()
    assert spent.slot is None
    assert "dynexport: no root slot has boot attempts left; resetting the counters" in spent.lines
    assert vm.saved == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    assert vm.boot().slot == "A"


def test_a_card_with_no_kernel_at_all_resets_without_writing_its_environment(
    uboot: Callable[[set[str]], UBootVM],
) -> None:
    vm = uboot(set())
    vm.fw_setenv(BOOT_ORDER="A B", BOOT_A_LEFT="2", BOOT_B_LEFT="1")
    boot = vm.boot()
    assert boot.slot is None
    assert "dynexport: no root slot has a kernel; trying again in 5 s" in boot.lines
    assert not [ln for ln in boot.lines if ln.startswith("BOOT_")], "nothing saved"
    assert vm.saved == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "2", "BOOT_B_LEFT": "1"}
