"""A trial reset before its commit is a failed trial on every boot loader, never a new one.

U-Boot (Pi 3, Zero 2 W) gives an activated slot three attempts (``BOOT_<S>_LEFT=3``): a trial
that hangs (the hardware watchdog) or loses its power before the commit boots the same slot
again, with the record still saying ``trial``. Checked again there, a release that resets the
device now and then was committed on its second or third try. GRUB (the system test) skips a
slot on trial and the Pi 4/5 firmware's trial is one-shot: there the old slot boots, and the
record reads as a rollback, as before.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dynexport.update import service
from dynexport.update.rauc import RaucError, RaucStatus
from dynexport.update.service import (
    EARLIER_ATTEMPT,
    boot_attempts_left,
    note_trial_boot,
    read_record,
    repeated_attempt,
    report_of,
    reset_trial_reason,
    write_record,
)
from dynexport.update.state import (
    FAILURE_FILE,
    HEALTH_FILE,
    REBOOT_REQUEST,
    STATE_FILE,
    UpdateRecord,
    parse_record,
    trial_reset_before_commit,
)
from tests.update.test_service import TRIAL, RecordedRauc, Site, control_and_commit

ASKED = replace(TRIAL, reboot_asked=True)
"""As the service leaves it: the slot activated, the reboot into it noted as asked for."""

NEXT_BOOT_AFTER_A_RESET = {
    "tryboot": "A",  # Pi 4/5: the firmware's trial is one-shot; config.txt names slot A
    "grub": "A",  # system test: B_TRY=1 since the trial's boot, so GRUB skips B
    "uboot": "B",  # Pi 3 / Zero 2 W: BOOT_B_LEFT 3 -> 2 -> 1, B boots again
}
"""Which slot the boot loader starts after the trial of B was reset before its commit
(docs/image.md, "A/B updates"; tests/image/test_uboot_script.py runs U-Boot's ["B", "B", "B"])."""


def slot_of(rauc: RecordedRauc, entries: list[str]) -> list[str]:
    return [e.split("@")[0] for e in entries]


async def first_trial_boot_reset(data: Path, seconds: float = 90) -> None:
    """The trial's first boot: READY, but the devices never answer; reset after ``seconds``
    (the watchdog, a power cut), before the health check could pass."""
    await control_and_commit(
        Site(ready=True), data, RecordedRauc(booted="B"), seconds, "trial-boot-1", "B"
    )
    record = read_record(data)
    assert record is not None and record.trial_boot == "trial-boot-1", "noted at its start"


@pytest.mark.parametrize("loader", sorted(NEXT_BOOT_AFTER_A_RESET))
async def test_a_trial_reset_before_its_commit_is_rolled_back_on_every_boot_loader(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, loader: str
) -> None:
    write_record(tmp_path, ASKED)
    await first_trial_boot_reset(tmp_path)
    booted = NEXT_BOOT_AFTER_A_RESET[loader]
    site, rauc = Site(ready=True), RecordedRauc(booted=booted)
    site.answer()  # healthy this time: two minutes of control would have committed it
    await control_and_commit(site, tmp_path, rauc, 300, "trial-boot-2", booted)
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial", "never committed"
    if booted == "A":  # the old slot: a rollback, confirmed as on any boot
        assert len(rauc.marked) == 1 and rauc.unbootable == []
        status = RaucStatus("dynexport-test", "A", "rootfs.0")
        assert report_of(record, tmp_path, status, "trial-boot-2").phase == "rolled-back"
        return
    assert rauc.marked == [], "the repeated trial was neither checked again nor committed"
    assert slot_of(rauc, rauc.unbootable) == ["B"] and slot_of(rauc, rauc.activated) == ["A"]
    assert site.events == ["fail-safe"], "every inverter left at its fail-safe first"
    assert (tmp_path / REBOOT_REQUEST).read_text() == "normal trial-boot-2\n"
    failure = (tmp_path / FAILURE_FILE).read_text()
    assert failure.startswith(
        "the trial of 1.4.0 was reset before its health check passed (boot trial-boot-1; its "
        "last health verdict: "
    )
    assert (tmp_path / HEALTH_FILE).read_text() == failure, "what update-deadline would quote"
    # the old slot boots: the status says why
    status = RaucStatus("dynexport-test", "A", "rootfs.0")
    rolled = report_of(record, tmp_path, status, "old-slot-boot")
    assert rolled.phase == "rolled-back" and failure.strip() in (rolled.message or "")


class TrybootRauc(RecordedRauc):
    """RAUC with the Pi 4/5's backend (rootfs-overlay/usr/libexec/dynexport/rauc-tryboot): the
    activation of a slot other than the committed one is a one-shot trial (tryboot.txt) that a
    normal reboot ignores, and the committed slot cannot be marked bad."""

    def __init__(self, booted: str, committed: str) -> None:
        super().__init__(booted)
        self.primary = committed

    async def activate(self, target: str) -> None:
        self.activated.append(f"{target}@{trio.current_time():.0f}")  # tryboot.txt only

    async def make_unbootable(self, target: str) -> None:
        if target == self.primary:
            raise RaucError(f"slot {target} is the committed slot")
        await super().make_unbootable(target)


async def test_a_reset_trial_rauc_had_committed_is_rolled_back_to_a_slot_a_normal_boot_starts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Pi 4/5: RAUC committed the trial's slot (config.txt), then the device was reset before
    the record said so, and no healthy verdict could be written either (a full /data). The
    rollback's reboot is a normal one: with only tryboot.txt naming the old slot, the
    firmware booted the update again, to be rolled back again, at every boot."""
    write_record(tmp_path, replace(ASKED, trial_boot="trial-boot-1"))
    (tmp_path / HEALTH_FILE).write_text("waiting: the meter has not answered yet\n")
    conf = tmp_path / "system.conf"
    conf.write_text("[system]\nbootloader=custom\n")
    site, rauc = Site(ready=True), TrybootRauc(booted="B", committed="B")
    site.answer()
    await control_and_commit(
        site, tmp_path, rauc, 300, "trial-boot-2", "B",
        trial_flag=tmp_path / "no-trial-flag", rauc_conf=conf,
    )  # fmt: skip
    assert rauc.marked == [], "never checked again nor committed"
    assert slot_of(rauc, rauc.made_good) == ["A"] and rauc.primary == "A", "a normal boot starts A"
    assert (tmp_path / REBOOT_REQUEST).read_text() == "normal trial-boot-2\n"
    assert site.events == ["fail-safe"]


async def test_a_third_boot_of_the_reset_trial_is_rolled_back_too_and_keeps_the_first_reason(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """RAUC refused to mark the slot bad (or the reboot never came): U-Boot boots it once
    more. Still no trial: the same rollback, the first reason kept."""
    write_record(tmp_path, ASKED)
    await first_trial_boot_reset(tmp_path)
    await control_and_commit(Site(ready=True), tmp_path, RecordedRauc("B"), 30, "trial-boot-2", "B")
    first_reason = (tmp_path / FAILURE_FILE).read_text()
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit(site, tmp_path, rauc, 300, "trial-boot-3", "B")
    assert rauc.marked == [] and slot_of(rauc, rauc.unbootable) == ["B"]
    assert (tmp_path / FAILURE_FILE).read_text() == first_reason
    assert (tmp_path / REBOOT_REQUEST).read_text() == "normal trial-boot-3\n"


async def test_the_deadlines_reason_stands_when_it_decided_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_record(tmp_path, ASKED)
    await first_trial_boot_reset(tmp_path)
    deadline = "it did not pass its health check within 4 minutes of booting (...)\n"
    (tmp_path / FAILURE_FILE).write_text(deadline)
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit(site, tmp_path, rauc, 300, "trial-boot-2", "B")
    assert rauc.marked == [] and slot_of(rauc, rauc.unbootable) == ["B"]
    assert (tmp_path / FAILURE_FILE).read_text() == deadline


async def test_a_service_restarted_within_its_trials_boot_goes_on_with_the_trial(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The watchdog restarts the service, not the device: the same boot id, the same trial."""
    write_record(tmp_path, ASKED)
    await control_and_commit(Site(ready=True), tmp_path, RecordedRauc("B"), 90, "trial-boot", "B")
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit(site, tmp_path, rauc, 300, "trial-boot", "B")
    record = read_record(tmp_path)
    assert record is not None and record.state == "committed" and len(rauc.marked) == 1
    assert rauc.unbootable == [] and not (tmp_path / FAILURE_FILE).exists()


async def test_a_trial_whose_start_cannot_be_noted_is_not_committed_until_it_is(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Committed without the note, a reset after the note failed could not be told from a
    first trial at the next boot. The note is tried again; the commit waits for it."""
    real_write = service.write_record
    refusals = [0]

    def refusing(data_dir: Path, record: UpdateRecord, owner: Any = None) -> None:
        if record.trial_boot is not None and record.state == "trial" and refusals[0] < 100:
            refusals[0] += 1
            raise OSError(30, "Read-only file system")
        real_write(data_dir, record, owner)

    monkeypatch.setattr(service, "write_record", refusing)
    write_record(tmp_path, ASKED)
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit(site, tmp_path, rauc, 180, "trial-boot", "B")
    assert rauc.marked == [], "healthy, but its start is not on /data"
    assert "healthy, but not committed" in (tmp_path / HEALTH_FILE).read_text()
    await control_and_commit(site, tmp_path, rauc, 300, "trial-boot", "B")  # /data writable
    record = read_record(tmp_path)
    assert record is not None and record.state == "committed"
    assert record.trial_boot == "trial-boot" and len(rauc.marked) == 1


def test_the_service_start_notes_a_first_trial_only(tmp_path: Path) -> None:
    """``note_trial_boot`` (for the service's start, before anything there can hang) notes a
    first trial of the running slot, and never moves an earlier boot's note to this boot."""
    write_record(tmp_path, ASKED)
    assert not note_trial_boot(tmp_path, "old-slot-boot", booted="A"), "not the update's slot"
    assert not note_trial_boot(tmp_path, "install-boot", booted="B"), "the install's own boot"
    assert note_trial_boot(tmp_path, "trial-boot-1", booted="B")
    noted = read_record(tmp_path)
    assert noted == replace(ASKED, trial_boot="trial-boot-1")
    assert not note_trial_boot(tmp_path, "trial-boot-2", booted="B")
    assert read_record(tmp_path) == noted, "the reset trial's boot stays on record"
    assert trial_reset_before_commit(noted, "B", "trial-boot-2")
    assert not trial_reset_before_commit(noted, "B", "trial-boot-1")
    assert not trial_reset_before_commit(noted, "A", "trial-boot-2")
    assert not trial_reset_before_commit(noted.moved_to("committed"), "B", "trial-boot-2")
    assert not trial_reset_before_commit(ASKED, "B", "trial-boot-2"), "no note: a first trial"


def uboot_cmdline(tmp_path: Path, left: str) -> Path:
    """The kernel command line boot-uboot.cmd gives slot B with ``left`` attempts left."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        f"console=ttyS0 root=PARTUUID=64796e78-03 rauc.slot=B dynexport.boot_left={left}\n"
    )
    return cmdline


async def test_a_second_attempt_of_an_unnoted_trial_is_rolled_back_as_reset_before_dynexport(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """U-Boot's first boot of the trial hung before dynexport started (a kernel or early-boot
    hang, the watchdog), so no boot was noted; U-Boot starts the slot again with one attempt
    fewer left. Checked as a first trial, a release that hangs at boot now and then was
    committed on a later attempt."""
    write_record(tmp_path, ASKED)
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit(
        site, tmp_path, rauc, 300, "trial-boot-2", "B", cmdline=uboot_cmdline(tmp_path, "1")
    )
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial" and rauc.marked == [], "not committed"
    assert slot_of(rauc, rauc.unbootable) == ["B"] and slot_of(rauc, rauc.activated) == ["A"]
    assert (tmp_path / REBOOT_REQUEST).read_text() == "normal trial-boot-2\n"
    assert (tmp_path / FAILURE_FILE).read_text() == (
        "the trial of 1.4.0 was reset before its health check passed (U-Boot's earlier attempt, "
        "reset before dynexport started) and was not tried again\n"
    )


async def test_the_first_attempt_of_a_trial_on_u_boot_is_checked_and_committed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_record(tmp_path, ASKED)
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit(
        site, tmp_path, rauc, 300, "trial-boot-1", "B", cmdline=uboot_cmdline(tmp_path, "2")
    )
    record = read_record(tmp_path)
    assert record is not None and record.state == "committed" and len(rauc.marked) == 1
    assert record.trial_boot == "trial-boot-1" and rauc.unbootable == []


def test_the_service_start_notes_a_repeated_u_boot_attempt_as_an_earlier_boots_trial(
    tmp_path: Path,
) -> None:
    write_record(tmp_path, ASKED)
    assert note_trial_boot(
        tmp_path, "trial-boot-2", booted="B", cmdline=uboot_cmdline(tmp_path, "0")
    )
    noted = read_record(tmp_path)
    assert noted is not None and noted.trial_boot == EARLIER_ATTEMPT
    assert trial_reset_before_commit(noted, "B", "trial-boot-2")
    write_record(tmp_path, ASKED)
    assert note_trial_boot(
        tmp_path, "trial-boot-1", booted="B", cmdline=uboot_cmdline(tmp_path, "2")
    )
    noted = read_record(tmp_path)
    assert noted is not None and noted.trial_boot == "trial-boot-1"


def test_attempts_left_come_from_u_boots_word_on_the_command_line_only(tmp_path: Path) -> None:
    assert boot_attempts_left(uboot_cmdline(tmp_path, "1")) == 1
    for odd in ("", "-1", "x", "99999", "1.5"):
        assert boot_attempts_left(uboot_cmdline(tmp_path, odd)) is None, odd
    (tmp_path / "grub").write_text("root=/dev/vda2 rauc.slot=B\n")
    assert boot_attempts_left(tmp_path / "grub") is None, "GRUB does not count"
    assert boot_attempts_left(tmp_path / "missing") is None
    assert not repeated_attempt(None) and not repeated_attempt(2) and repeated_attempt(1)


def test_the_note_survives_its_round_trip_and_a_bad_one_is_no_note(tmp_path: Path) -> None:
    noted = replace(ASKED, trial_boot="trial-boot-1")
    assert parse_record(noted.to_json()) == noted
    for odd in (b"1", b'""', b"null", b"[]"):
        raw = noted.to_json().replace(b'"trial-boot-1"', odd)
        parsed = parse_record(raw)
        assert parsed is not None and parsed.trial_boot is None, odd
    write_record(tmp_path, noted)
    assert b'\n "trial_boot": "trial-boot-1"' in (tmp_path / STATE_FILE).read_bytes()


def test_the_reason_names_the_reset_boot_and_its_last_verdict() -> None:
    assert reset_trial_reason("1.5.0", "b1", "the meter has not answered in 60 s") == (
        "the trial of 1.5.0 was reset before its health check passed (boot b1; its last "
        "health verdict: the meter has not answered in 60 s) and was not tried again"
    )
    assert reset_trial_reason("1.5.0", "b1", None) == (
        "the trial of 1.5.0 was reset before its health check passed (boot b1) and was not "
        "tried again"
    )


async def test_a_trial_judged_healthy_then_reset_before_its_record_is_committed_not_rolled_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAUC committed the slot (mark-good), then the power went before update.json said so: the
    next boot of that slot took it for a trial reset before its health check and rolled a
    good, committed update back; on the Pi 4/5, where the firmware already boots the committed
    slot, every such "rollback" reboot came back to it, the inverters at their fail-safe each
    time. A trial whose last verdict was healthy is checked again and committed."""
    write_record(tmp_path, ASKED)
    real_write = service.write_record

    def cut_before_committed(data_dir: Path, record: UpdateRecord, owner: Any = None) -> None:
        if record.state == "committed":
            raise OSError(5, "the power went before the record's fsync")
        real_write(data_dir, record, owner)

    monkeypatch.setattr(service, "write_record", cut_before_committed)
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit(site, tmp_path, rauc, 200, "trial-boot-1", "B")
    assert len(rauc.marked) == 1  # RAUC committed slot B
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial" and record.trial_boot == "trial-boot-1"
    monkeypatch.setattr(service, "write_record", real_write)
    again, rauc_again = Site(ready=True), RecordedRauc(booted="B")
    again.answer()
    await control_and_commit(again, tmp_path, rauc_again, 300, "boot-2", "B")
    assert rauc_again.unbootable == [] and rauc_again.activated == []
    assert len(rauc_again.marked) == 1
    assert not (tmp_path / FAILURE_FILE).exists()
    record = read_record(tmp_path)
    assert record is not None and record.state == "committed"
