"""The update tasks: a healthy trial boot is committed; a reboot waits and leaves the fail-safe."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from dynexport.system.watchdog import ProgressTracker
from dynexport.update.rauc import Rauc, RaucError, RaucStatus, SlotStatus
from dynexport.update.service import (
    ACTIVATE_TRIES,
    DEVICES_MAX_WAIT_S,
    DEVICES_STEADY_S,
    UpdateStatus,
    _Confirm,
    _confirm_boot,
    begin_install,
    commit_when_healthy,
    installer_gone,
    process_identity,
    read_record,
    reboot_when_quiet,
    report_of,
    undo_activation,
    update_report,
    update_status,
    write_record,
)
from dynexport.update.state import (
    DECISION_LOCK,
    FAILURE_FILE,
    HEALTH_FILE,
    REBOOT_REQUEST,
    UpdateRecord,
)


@dataclass
class Reading:
    """A device link's state: while ``answering``, its latest reading is always just now (as a
    device polled every second is); once it stops, the reading ages from when it stopped."""

    answering: bool = False
    stopped_at: float | None = None

    @property
    def last_reading(self) -> float | None:
        return trio.current_time() if self.answering else self.stopped_at

    def stop(self) -> None:
        self.answering, self.stopped_at = False, trio.current_time()


@dataclass
class Link:
    state: Reading = field(default_factory=Reading)


@dataclass
class Site:
    """What the update tasks read of an App, driven by the test."""

    ready: bool = False
    setup_mode: bool = False
    meter: Link | None = field(default_factory=Link)
    inverters: list[Link] = field(default_factory=lambda: [Link(), Link()])
    progress: ProgressTracker = field(default_factory=ProgressTracker)
    outlook: list[tuple[float, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    config_problems: list[str] = field(default_factory=list)
    config_unreadable: bool = False
    output: Any = None
    """The controller's latest output (its ``mode``), as App.output."""

    async def leave_fail_safe(self) -> None:
        self.events.append("fail-safe")

    def limits_outlook(self, hours: float = 24.0) -> list[tuple[float, Any]]:
        return self.outlook

    def answer(self) -> None:
        """The meter and the first inverter answer from now on."""
        assert self.meter is not None
        self.meter.state.answering = True
        self.inverters[0].state.answering = True


class RecordedRauc(Rauc):
    """RAUC's answers for a booted slot; records the commits asked of it."""

    def __init__(self, booted: str) -> None:
        super().__init__(program="/nonexistent/rauc")
        self.booted = booted
        self.marked: list[str] = []
        self.activated: list[str] = []
        self.unbootable: list[str] = []
        self.made_good: list[str] = []
        self.primary = "B"
        """The slot a normal boot starts: the last one activated, as on U-Boot and GRUB."""

    async def status(self) -> RaucStatus:
        slots = (SlotStatus("rootfs.0", "A", "", "good"), SlotStatus("rootfs.1", "B", "", "good"))
        return RaucStatus("dynexport-test", self.booted, SLOT_NAMES[self.primary], slots)

    async def mark_good(self) -> None:
        self.marked.append(f"good@{trio.current_time():.0f}")

    async def activate(self, target: str) -> None:
        self.activated.append(f"{target}@{trio.current_time():.0f}")
        self.primary = target

    async def make_unbootable(self, target: str) -> None:
        self.unbootable.append(f"{target}@{trio.current_time():.0f}")

    async def make_good(self, target: str) -> None:
        self.made_good.append(f"{target}@{trio.current_time():.0f}")
        self.primary = target


SLOT_NAMES = {"A": "rootfs.0", "B": "rootfs.1"}


TRIAL = UpdateRecord("trial", "1.4.0", target="B", source="A", boot_id="install-boot")


def device_files(tmp_path: Path, cmdline: str, boot_id: str) -> tuple[Path, Path, Path]:
    """A data folder, a kernel command line and a boot id file, for ``UpdateStatus``."""
    (tmp_path / "data").mkdir()
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    (tmp_path / "boot_id").write_text(boot_id + "\n")
    return tmp_path / "data", tmp_path / "cmdline", tmp_path / "boot_id"


def count_record_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """From now on, every read of the update record by ``service`` is listed in the result."""
    from dynexport.update import service

    reads: list[Path] = []
    real_read = service.read_record

    def counting_read(data_dir: Path) -> UpdateRecord | None:
        reads.append(data_dir)
        return real_read(data_dir)

    monkeypatch.setattr(service, "read_record", counting_read)
    return reads


async def decide_every_second(site: Site) -> None:
    site.progress.register("controller", 10.0, trio.current_time())
    while True:
        site.progress.progress("controller", trio.current_time())
        await trio.sleep(1.0)


async def committed_after_two_minutes_of_control(site: Site, rauc: RecordedRauc, why: str) -> None:
    """Meter and inverter answer from now on: nothing is committed for almost two minutes (with
    ``why``), then exactly once."""
    site.answer()
    await trio.sleep(110)
    assert rauc.marked == [], why
    await trio.sleep(20)
    assert len(rauc.marked) == 1


async def control_and_commit(
    site: Site,
    data: Path,
    rauc: Rauc,
    seconds: float,
    this_boot: str,
    booted: str | None = None,
    **more: Any,
) -> None:
    """The controller deciding every second beside ``commit_when_healthy`` (given ``more``
    keyword arguments too), for ``seconds``."""
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decide_every_second, site)
            nursery.start_soon(
                lambda: commit_when_healthy(
                    site,
                    data,
                    rauc,
                    wall_clock=lambda: 0.0,
                    this_boot=this_boot,
                    booted=booted,
                    **more,
                )
            )


async def test_a_healthy_trial_boot_is_committed_after_two_minutes_of_control(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    write_record(tmp_path, TRIAL)
    site, rauc = Site(), RecordedRauc(booted="B")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(decide_every_second, site)
        nursery.start_soon(
            lambda: commit_when_healthy(
                site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot"
            )
        )
        await trio.sleep(30)
        assert (tmp_path / HEALTH_FILE).read_text() == "the service is not READY yet\n"
        site.ready = True
        await trio.sleep(30)
        assert (tmp_path / HEALTH_FILE).read_text() == "the meter has not answered in 60 s\n"
        await committed_after_two_minutes_of_control(
            site, rauc, "not before two minutes of control"
        )
        nursery.cancel_scope.cancel()
    record = read_record(tmp_path)
    assert record is not None and record.state == "committed"


async def test_a_full_data_partition_neither_stops_the_commit_nor_loses_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
):
    """The health file cannot be written (/data full for the service's user): the error escaped,
    the task restarted and its two minutes began again at every try, so the trial was never
    committed. The record "committed" that fails twice after RAUC's commit is written at a
    later try, within the lock, not lost to a restart (which left "trial" for the deadline
    to roll the committed slot back)."""
    from dynexport.system import storage
    from dynexport.update import service

    real_atomic_write = storage.atomic_write
    record_failures = [OSError(28, "No space left on device")] * 2

    def full(path: Path, data: bytes, **kw: Any) -> None:
        if Path(path).name == HEALTH_FILE:
            raise OSError(28, "No space left on device")
        if Path(path).name == "update.json" and b"committed" in data and record_failures:
            raise record_failures.pop()
        real_atomic_write(path, data, **kw)

    write_record(tmp_path, TRIAL)
    monkeypatch.setattr(service, "atomic_write", full)
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit_briefly(site, tmp_path, rauc, seconds=400)
    assert len(rauc.marked) == 1 and record_failures == []
    record = read_record(tmp_path)
    assert record is not None and record.state == "committed"


async def test_devices_that_answered_once_and_went_silent_do_not_commit_a_trial(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """A meter and an inverter that answered once, then nothing (the new release's links broken
    after their first poll), while the controller decides in its fail-safe: "answered at some
    time" committed it. They must be answering (a reading in the last 30 s)."""
    write_record(tmp_path, TRIAL)
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit_briefly(site, tmp_path, rauc, stop_devices_after=1.0, seconds=400)
    assert rauc.marked == []
    assert (tmp_path / HEALTH_FILE).read_text() == "the meter has not answered in 60 s\n"
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial"


@pytest.mark.parametrize("meter", [True, False], ids=["meter", "no-meter"])
async def test_a_controller_held_in_its_fail_safe_commits_only_without_a_meter(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, meter: bool
):
    """App.output.mode "failsafe" for good: with a meter, its readings unusable (a new release's
    decoding broken), the trial is not committed; without one that is the site's control, and
    it is (every update of a meterless site was rolled back by the first version of this)."""
    write_record(tmp_path, TRIAL)
    site = Site(ready=True, output=SimpleNamespace(mode="failsafe"))
    if meter:
        site.answer()
    else:
        site.meter = None
        site.inverters[0].state.answering = True
    commits, health = await trial_outcome(site, tmp_path, seconds=300)
    assert commits == (0 if meter else 1)
    if meter:
        assert "fail-safe" in health


async def test_setup_mode_over_a_refused_configuration_does_not_commit_a_trial(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """The new release refuses the site's configuration and waits in setup mode: no devices,
    no control, READY at once. It was committed as "setup mode: no devices yet"."""
    write_record(tmp_path, TRIAL)
    site = Site(ready=True, setup_mode=True, meter=None, inverters=[])
    site.config_problems = ["meter.host: unknown key"]
    rauc = RecordedRauc(booted="B")
    await control_and_commit_briefly(site, tmp_path, rauc, seconds=400)
    assert rauc.marked == []
    assert "could not be used (meter.host: unknown key)" in (tmp_path / HEALTH_FILE).read_text()
    site.config_problems = []  # a true first boot of a site without devices: committed
    await control_and_commit_briefly(site, tmp_path, rauc, seconds=200)
    assert len(rauc.marked) == 1


@pytest.mark.parametrize("configured", [True, False], ids=["was-configured", "first-boot"])
async def test_setup_mode_on_a_trial_of_a_configured_site_does_not_commit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, configured: bool
):
    """A release that looks for the configuration in the wrong place finds none: setup mode
    with no problem to report, as on a true first boot, and it was committed as "no devices
    yet". The install's record says whether the site had a configuration."""
    from dynexport.update.service import install_record

    if configured:
        (tmp_path / "config.last-good.json").write_text("{}")  # config.json itself lost
    record = install_record("1.4.0", "B", "A", tmp_path)
    assert record.configured is configured
    write_record(tmp_path, replace(record, state="trial", boot_id="install-boot"))
    site = Site(ready=True, setup_mode=True, meter=None, inverters=[])
    commits, health = await trial_outcome(site, tmp_path, seconds=300)
    assert commits == (0 if configured else 1)
    if configured:
        assert "configured when the update was installed" in health


async def trial_outcome(site: Site, data: Path, *, seconds: float) -> tuple[int, str]:
    """(commits RAUC was asked for, the health file's verdict) after the trial recorded in
    ``data`` ran for ``seconds`` beside a controller deciding every second."""
    rauc = RecordedRauc(booted="B")
    await control_and_commit_briefly(site, data, rauc, seconds=seconds)
    return len(rauc.marked), (data / HEALTH_FILE).read_text()


async def control_and_commit_briefly(
    site: Site,
    data: Path,
    rauc: RecordedRauc,
    *,
    seconds: float,
    stop_devices_after: float | None = None,
) -> None:
    """``commit_when_healthy`` beside a controller deciding every second, for ``seconds``; the
    devices stop answering ``stop_devices_after`` seconds in, if given."""

    async def stop_devices() -> None:
        assert stop_devices_after is not None
        await trio.sleep(stop_devices_after)
        for link in [site.meter, *site.inverters]:
            if link is not None:
                link.state.stop()

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decide_every_second, site)
            if stop_devices_after is not None:
                nursery.start_soon(stop_devices)
            await commit_when_healthy(
                site, data, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot", booted="B"
            )


async def test_a_slot_activated_before_its_record_said_trial_gets_the_trials_health_check(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    # the power was cut after the written slot was activated, before the record said "trial"
    write_record(tmp_path, TRIAL.moved_to("installing"))
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(decide_every_second, site)
        nursery.start_soon(
            lambda: commit_when_healthy(
                site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot", booted="B"
            )
        )
        await trio.sleep(1)
        record = read_record(tmp_path)
        assert record is not None and record.state == "trial", "the deadline sees a trial"
        # it booted: a reset in it reads as a rollback, not as a trial still to come
        assert record.reboot_asked is True
        await committed_after_two_minutes_of_control(
            site, rauc, "not confirmed as an ordinary boot: two minutes of control first"
        )
        nursery.cancel_scope.cancel()
    record = read_record(tmp_path)
    assert record is not None and record.state == "committed"


async def test_an_interrupted_install_on_the_old_slot_is_not_taken_for_a_trial(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    write_record(tmp_path, TRIAL.moved_to("installing"))
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    with trio.move_on_after(60):
        await commit_when_healthy(
            site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="later-boot", booted="A"
        )
    record = read_record(tmp_path)
    assert record is not None and record.state == "installing"
    assert not (tmp_path / HEALTH_FILE).exists()
    assert len(rauc.marked) == 1, "the running slot is confirmed as on any boot"


async def test_a_trial_that_never_gets_ready_is_never_committed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    write_record(tmp_path, TRIAL)
    site, rauc = Site(), RecordedRauc(booted="B")
    with trio.move_on_after(3600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decide_every_second, site)
            nursery.start_soon(
                lambda: commit_when_healthy(
                    site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot"
                )
            )
    assert rauc.marked == []
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial"
    assert (tmp_path / HEALTH_FILE).read_text() == "the service is not READY yet\n"


async def test_after_a_rollback_nothing_is_committed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    write_record(tmp_path, TRIAL)
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    site.answer()
    await control_and_commit(site, tmp_path, rauc, 600, "after-rollback")
    assert rauc.marked == []
    assert not (tmp_path / REBOOT_REQUEST).exists()


async def test_a_trial_the_deadline_rolled_back_is_not_committed_once_healthy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """update-deadline decided first (its failure file is there, the slot marked bad, the
    reboot under way): healthy afterwards, the service neither commits the trial nor confirms
    the slot, either of which would make the bad slot good again."""
    write_record(tmp_path, TRIAL)
    (tmp_path / FAILURE_FILE).write_text("it did not pass its health check within 4 minutes\n")
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    await control_and_commit(site, tmp_path, rauc, 600, "trial-boot", booted="B")
    assert rauc.marked == []
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial"


@pytest.mark.parametrize("deadline_rolled_back", [True, False])
async def test_the_commit_waits_while_the_deadline_holds_the_decision_lock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, deadline_rolled_back: bool
):
    """Healthy while update-deadline holds the lock: nothing is committed until it lets go,
    then only if it did not roll the trial back."""
    write_record(tmp_path, TRIAL)
    site, rauc = Site(ready=True), RecordedRauc(booted="B")
    site.answer()
    fd = os.open(tmp_path / DECISION_LOCK, os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the deadline's, from another process
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decide_every_second, site)
            nursery.start_soon(
                lambda: commit_when_healthy(
                    site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot", booted="B"
                )
            )
            await trio.sleep(300)  # healthy after two minutes of control
            assert rauc.marked == [], "committed while the deadline held the lock"
            if deadline_rolled_back:
                (tmp_path / FAILURE_FILE).write_text("it did not pass its health check\n")
            os.close(fd)
            fd = -1
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
    finally:
        if fd >= 0:
            os.close(fd)
    record = read_record(tmp_path)
    assert record is not None
    if deadline_rolled_back:
        assert rauc.marked == [] and record.state == "trial"
    else:
        assert len(rauc.marked) == 1 and record.state == "committed"


def start_with_a_running_wall_clock(
    nursery: trio.Nursery, site: Site, data: Path, rauc: RecordedRauc
) -> None:
    """``commit_when_healthy`` of boot ``install-boot`` in ``nursery``, its wall clock at 1000 s
    when started and running on with trio's (the limits outlook is read against it)."""
    wall = [1000.0]

    async def clock_runs() -> None:
        while True:
            await trio.sleep(1.0)
            wall[0] += 1.0

    nursery.start_soon(clock_runs)
    nursery.start_soon(
        partial(
            commit_when_healthy, site, data, rauc, wall_clock=lambda: wall[0],
            this_boot="install-boot",
        )
    )  # fmt: skip


async def test_the_reboot_after_an_install_waits_for_quiet_and_leaves_the_fail_safe_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    site.answer()  # the devices answer: nothing holds the reboot
    # due 200 s after the devices' five steady minutes (the install at 10 s)
    site.outlook = [(1000.0 + 10 + DEVICES_STEADY_S + 200.0, "a utility limit starts")]
    async with trio.open_nursery() as nursery:
        start_with_a_running_wall_clock(nursery, site, tmp_path, rauc)
        await trio.sleep(10)
        write_record(tmp_path, TRIAL)  # `dynexport update install` finished in this boot
        await trio.sleep(DEVICES_STEADY_S + 60)
        assert not (tmp_path / REBOOT_REQUEST).exists(), "a limit change is due within 5 min"
        assert site.events == [] and rauc.activated == []
        await trio.sleep(200)  # the change has passed: nothing more is due
        assert site.events == ["fail-safe"]
        assert [a.split("@")[0] for a in rauc.activated] == ["B"], "made the next boot now"
        assert (tmp_path / REBOOT_REQUEST).read_text() == "trial install-boot\n"
        noted = read_record(tmp_path)
        assert noted is not None and noted.reboot_asked is True, "a later boot knows it was asked"
        nursery.cancel_scope.cancel()


def test_the_status_api_reports_a_rollback_with_its_reason(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    write_record(data, TRIAL)
    (data / "update-failure").write_text(
        "it did not pass its health check (the meter has not answered)\n"
    )
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=PARTUUID=64796e78-02 ro rauc.slot=A\n")
    boot = tmp_path / "boot_id"
    boot.write_text("after-the-rollback\n")
    assert update_status(data, cmdline, boot) == {
        "phase": "rolled-back",
        "version": "1.4.0",
        "message": "update to 1.4.0 failed and was rolled back, because it did not pass its "
        "health check (the meter has not answered)",
    }
    cmdline.write_text("root=PARTUUID=64796e78-03 ro rauc.slot=B\n")
    assert update_status(data, cmdline, boot)["phase"] == "trial"


class FailingRauc(RecordedRauc):
    """RAUC whose D-Bus service does not answer: every mark-good fails."""

    def __init__(self, booted: str) -> None:
        super().__init__(booted)
        self.attempts = 0

    async def mark_good(self) -> None:
        self.attempts += 1
        raise RaucError("rauc status: Failed to connect to the D-Bus service")


class SlowStatusRauc(RecordedRauc):
    """RAUC whose status fails the first ``failures`` times (its D-Bus service still starting)."""

    def __init__(self, booted: str, failures: int) -> None:
        super().__init__(booted)
        self.failures = failures

    async def status(self) -> RaucStatus:
        if self.failures > 0:
            self.failures -= 1
            raise RaucError("rauc status: Failed to connect to the D-Bus service")
        return await super().status()


@pytest.mark.parametrize("booted", ["B", None], ids=["slot on the command line", "RAUC asked"])
async def test_a_trial_is_never_confirmed_without_its_health_check_when_rauc_answers_late(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, booted: str | None
):
    """RAUC's status failing at the trial's start: before, the boot was taken for an ordinary
    one and confirmed (mark-good) as soon as the service was READY, so an unproven slot was
    kept (tryboot) or a healthy one rolled back with the wrong reason (GRUB, U-Boot)."""
    write_record(tmp_path, TRIAL)
    site, rauc = Site(ready=True), SlowStatusRauc(booted="B", failures=3)
    site.answer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(decide_every_second, site)
        nursery.start_soon(
            lambda: commit_when_healthy(
                site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="trial-boot", booted=booted
            )
        )
        await trio.sleep(100)
        assert rauc.marked == [], "confirmed before two minutes of control"
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert len(rauc.marked) == 1
    record = read_record(tmp_path)
    assert record is not None and record.state == "committed"


async def test_an_ordinary_boot_confirms_the_running_slot_once_ready(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    # Boot loaders that count attempts (GRUB's <S>_TRY, U-Boot's BOOT_<S>_LEFT) need a
    # mark-good at every boot, or a committed slot is abandoned after a few reboots.
    site, rauc = Site(), RecordedRauc(booted="A")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: commit_when_healthy(
                site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="b1", booted="A"
            )
        )
        await trio.sleep(61)  # between two looks (every 2 s): no tie with the poller
        assert rauc.marked == [], "not before the service is READY"
        site.ready = True
        await trio.sleep(5)
        assert rauc.marked == ["good@62"], "once, at the first look after READY"
        await trio.sleep(600)
        assert len(rauc.marked) == 1
        nursery.cancel_scope.cancel()
    assert read_record(tmp_path) is None, "an ordinary boot writes no update record"


async def test_without_an_ab_slot_rauc_is_never_asked(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    site, rauc = Site(ready=True), FailingRauc(booted="A")
    with trio.move_on_after(600):
        await commit_when_healthy(
            site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="b1", booted=None
        )
    assert rauc.attempts == 0


async def test_after_a_rollback_the_old_slot_is_confirmed_and_the_update_is_not(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    write_record(tmp_path, TRIAL)
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    with trio.move_on_after(600):
        await commit_when_healthy(
            site, tmp_path, rauc, wall_clock=lambda: 0.0, this_boot="after-rollback", booted="A"
        )
    assert rauc.marked == ["good@0"], "slot A (running) confirmed"
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial", "the update is not committed"


async def test_a_failing_confirmation_is_retried_and_never_blocks_an_install_reboot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    site, rauc = Site(ready=True), FailingRauc(booted="A")
    site.answer()  # the devices answer: nothing holds the reboot
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service_on_a, site, tmp_path, rauc)
        await trio.sleep(95)
        assert rauc.attempts == 4, "at once, then every 30 s"
        write_record(tmp_path, TRIAL)  # installed in this boot: nothing is due
        await trio.sleep(DEVICES_STEADY_S + 10)  # the devices' five steady minutes
        assert site.events == ["fail-safe"]
        assert (tmp_path / REBOOT_REQUEST).read_text() == "trial install-boot\n"
        noted = read_record(tmp_path)
        assert noted is not None and noted.reboot_asked is True, "a later boot knows it was asked"
        nursery.cancel_scope.cancel()


def test_a_new_install_clears_what_the_last_update_left(tmp_path: Path):
    (tmp_path / HEALTH_FILE).write_text("meter and inverters answered, decided for 120 s\n")
    (tmp_path / FAILURE_FILE).write_text("it did not pass its health check\n")
    begin_install(tmp_path, UpdateRecord("installing", "1.5.0", "A", "B", "now"))
    assert not (tmp_path / HEALTH_FILE).exists()
    assert not (tmp_path / FAILURE_FILE).exists()
    record = read_record(tmp_path)
    assert record is not None and (record.state, record.version) == ("installing", "1.5.0")


def test_an_install_record_written_by_root_belongs_to_the_service_from_its_first_byte(
    tmp_path: Path,
) -> None:
    """`dynexport update install` runs as root; the service (its own user) must be able to read
    the record after a power cut, or an interrupted install would be reported as no update."""
    from dynexport.update.cli import folder_owner
    from dynexport.update.service import begin_install, read_record

    if os.geteuid() != 0:
        assert folder_owner(tmp_path) is None  # not root: files are the caller's anyway
        return
    os.chown(tmp_path, 4242, 4343)
    assert folder_owner(tmp_path) == (4242, 4343)
    record = UpdateRecord("installing", "1.5.0", "B", "A", "boot-1")
    begin_install(tmp_path, record, folder_owner(tmp_path))
    st = (tmp_path / "update.json").stat()
    assert (st.st_uid, st.st_gid) == (4242, 4343)
    assert read_record(tmp_path) == record


def test_the_status_asked_every_second_follows_each_write_and_reads_nothing_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``UpdateStatus`` answers as ``update_status`` does after every change of the record or
    the failure file, and reads neither while they stay as they are."""
    from dynexport.update import service

    data, cmdline, boot = device_files(
        tmp_path, "root=PARTUUID=64796e78-02 ro rauc.slot=A", "after-the-rollback"
    )
    status = UpdateStatus(data, cmdline, boot)
    assert status() == update_status(data, cmdline, boot) == {
        "phase": "none", "version": None, "message": None
    }  # fmt: skip
    write_record(data, TRIAL)
    assert status() == update_status(data, cmdline, boot) and status()["phase"] == "rolled-back"
    (data / FAILURE_FILE).write_text("the meter has not answered\n")
    assert status() == update_status(data, cmdline, boot)
    assert "the meter has not answered" in status()["message"]
    write_record(data, TRIAL.moved_to("committed"))  # committed, but slot A runs: rolled back
    assert status() == update_status(data, cmdline, boot)
    assert status()["message"] == (
        "update to 1.4.0 was committed but rolled back, because the meter has not answered"
    )
    reads: list[Path] = []
    monkeypatch.setattr(service, "read_record", lambda d: reads.append(d))
    for _ in range(5):
        assert status()["phase"] == "rolled-back"
    assert reads == []  # nothing changed: nothing read again


async def test_the_install_watch_reads_the_record_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """``commit_when_healthy`` looks for an install made in this boot every 2 s for the life of
    the process: an unchanged record is not read again, a new one is seen at the next look."""
    reads = count_record_reads(monkeypatch)
    write_record(tmp_path, TRIAL.moved_to("committed"))  # an earlier update, long done
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    site.answer()  # the devices answer: nothing holds the reboot
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: commit_when_healthy(
                site, tmp_path, rauc, wall_clock=lambda: 1000.0, this_boot="install-boot"
            )
        )
        await trio.sleep(3600)  # an hour of looks every 2 s
        assert len(reads) <= 2, reads  # the boot's own check, and the watch's first look
        (tmp_path / "update.json").unlink()  # a missing record is no install
        await trio.sleep(10)
        assert not (tmp_path / REBOOT_REQUEST).exists()
        write_record(tmp_path, TRIAL)  # `dynexport update install` finished in this boot
        await trio.sleep(DEVICES_STEADY_S + 10)
        # seen; read again for the time already waited, to note it when the wait ends, to make
        # its slot the next boot and to note the reboot as asked for
        assert len(reads) <= 7
        assert site.events == ["fail-safe"]  # the install was seen: nothing limits the reboot
        assert (tmp_path / REBOOT_REQUEST).read_text() == "trial install-boot\n"
        nursery.cancel_scope.cancel()


def test_the_record_watch_follows_rewrites_removal_and_garbage(tmp_path: Path) -> None:
    from dynexport.update.service import RecordWatch

    watch = RecordWatch(tmp_path)
    assert watch() is None
    write_record(tmp_path, TRIAL)
    assert watch() == TRIAL
    write_record(tmp_path, TRIAL.moved_to("committed"))
    assert watch() == TRIAL.moved_to("committed")
    (tmp_path / "update.json").write_bytes(b"\x00not json")
    assert watch() is None  # not a record: never trusted
    (tmp_path / "update.json").unlink()
    assert watch() is None


# -- an install whose installer has gone (issue 15: a watchdog restart during a web install) -----


def _ended_process() -> int:
    """The pid of a process that has run and been reaped (its /proc entry is gone)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_process_identity_names_a_running_process_and_nothing_for_an_ended_one(tmp_path: Path):
    me = process_identity()
    assert me is not None and me.startswith(f"{os.getpid()}:")
    assert process_identity(os.getpid()) == me  # stable for the life of the process
    assert process_identity(_ended_process()) is None
    # a command name with spaces and parentheses does not shift the fields
    fake = tmp_path / "77"
    fake.mkdir()
    fields = ["S", "1", *["0"] * 17, "123456", "0"]  # state ... starttime is the 20th after ")"
    (fake / "stat").write_text(f"77 (a (b) c) {' '.join(fields)}\n")
    assert process_identity(77, proc=tmp_path) == "77:123456"
    (fake / "stat").write_text("77 (short) S 1\n")
    assert process_identity(77, proc=tmp_path) is None


def test_an_install_is_gone_only_when_its_installer_of_this_boot_has_ended():
    rec = UpdateRecord("installing", "1.5.0", "B", "A", "boot-1", installer=process_identity())
    assert not installer_gone(rec, "boot-1")  # this process: still running
    ended = f"{_ended_process()}:1"
    assert installer_gone(replace(rec, installer=ended), "boot-1")
    pid = os.getpid()
    assert installer_gone(replace(rec, installer=f"{pid}:1"), "boot-1")  # a pid reused since
    assert not installer_gone(replace(rec, installer=ended), "boot-2")  # another boot's
    assert not installer_gone(replace(rec, installer=None), "boot-1")  # an older record
    assert not installer_gone(replace(rec, installer="x:1"), "boot-1")  # not ours: not trusted
    assert not installer_gone(replace(rec, state="trial", installer=ended), "boot-1")
    assert not installer_gone(None, "boot-1")


def test_the_status_says_interrupted_once_the_installer_ends_without_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service restarted mid-install: the record still says ``installing`` (nobody is left
    to move it), and the status asked every second says so as soon as the installer is gone."""

    data, cmdline, boot = device_files(tmp_path, "ro rauc.slot=A", "install-boot")
    installer = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)  # fmt: skip
    try:
        who = process_identity(installer.pid)
        assert who is not None
        write_record(data, UpdateRecord("installing", "1.5.0", "B", "A", "install-boot", None, who))
        status = UpdateStatus(data, cmdline, boot)
        assert status()["phase"] == "installing"
        assert status() == update_status(data, cmdline, boot)
        reads = count_record_reads(monkeypatch)
        assert status()["phase"] == "installing"
    finally:
        assert installer.stdin is not None
        installer.stdin.close()
        installer.wait()
    after = status()
    assert after["phase"] == "failed" and after["version"] == "1.5.0"
    assert "interrupted: the program installing it (the service" in after["message"]
    assert reads == []  # seen from /proc, not from a write
    assert after == update_status(data, cmdline, boot)
    from dynexport.update.service import claim, release

    assert claim(data)  # an install by this process holds the install slot while it runs
    try:
        write_record(data, UpdateRecord("installing", "1.6.0", "B", "A", "install-boot", None,
                                        process_identity()))  # fmt: skip
        assert status()["phase"] == "installing"  # a new install, by a running process
    finally:
        release(data)
    # its task cancelled (the web server's task restarted): this process runs on, the install
    # does not; the status said "installing" until the next boot
    stopped = status()
    assert stopped["phase"] == "failed" and "was interrupted" in stopped["message"]


async def test_the_web_and_url_install_names_its_installer_in_the_record(tmp_path: Path) -> None:
    from dynexport.update.install import install_verified
    from dynexport.update.rauc import BundleInfo

    seen: list[UpdateRecord | None] = []

    class Writing(RecordedRauc):
        async def install(
            self, bundle: str, target: str, progress: Any, *, activate: bool = True
        ) -> None:
            seen.append(read_record(tmp_path))

    info = BundleInfo("dynexport-test", "1.5.0", "CN = test")
    result = await install_verified(
        tmp_path, Writing(booted="A"), tmp_path / "b.raucb", info, _no_progress, origin="a test"
    )
    assert result is None
    assert seen[0] is not None and seen[0].state == "installing"
    assert seen[0].installer == process_identity()
    assert read_record(tmp_path) == replace(seen[0], state="trial")


async def _no_progress(text: str) -> None:
    pass


# -- the firmware's trial flag (Pi 4/5 tryboot) when the record is lost ------------------------


class VersionedRauc(RecordedRauc):
    """RecordedRauc whose slot B holds bundle 1.5.0."""

    async def status(self) -> RaucStatus:
        slots = (
            SlotStatus("rootfs.0", "A", "", "good"),
            SlotStatus("rootfs.1", "B", "booted", "good", bundle_version="1.5.0"),
        )
        return RaucStatus("dynexport-test", self.booted, "rootfs.0", slots)


def trial_flag(tmp_path: Path, value: bytes | None) -> Path:
    flag = tmp_path / "tryboot"
    if value is not None:
        flag.write_bytes(value)
    return flag


@pytest.mark.parametrize(
    "lost",
    [None, b"not json", UpdateRecord("committed", "1.4.0", "A", "B", "old-boot").to_json()],
    ids=["no record", "corrupt", "an older update's"],
)
async def test_a_firmware_trial_whose_record_is_lost_gets_the_trials_health_check(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, lost: bytes | None
):
    """Confirmed at READY as an ordinary boot, the trial was committed with no health check."""
    data = tmp_path / "data"
    data.mkdir()
    if lost is not None:
        (data / "update.json").write_bytes(lost)
    flag = trial_flag(tmp_path, b"\x00\x00\x00\x01")
    site, rauc = Site(ready=True), VersionedRauc(booted="B")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(control_and_commit, site, data, rauc, 3600, "trial-boot", "B", trial_flag=flag)
        )
        await trio.sleep(5)
        record = read_record(data)
        assert record is not None, "recorded again, so that update-deadline sees the trial"
        assert (record.state, record.version, record.target, record.source) == (
            "trial", "1.5.0", "B", "A",
        )  # fmt: skip
        assert update_report(data, await rauc.status(), "trial-boot").phase == "trial"
        await committed_after_two_minutes_of_control(
            site, rauc, "not confirmed at READY: two minutes of control first"
        )
        nursery.cancel_scope.cancel()
    record = read_record(data)
    assert record is not None and record.state == "committed"


@pytest.mark.parametrize("flag", [None, b"\x00\x00\x00\x00"], ids=["no flag", "flag 0"])
async def test_without_the_firmware_trial_flag_a_boot_without_a_record_is_confirmed_at_ready(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, flag: bytes | None
):
    data = tmp_path / "data"
    data.mkdir()
    site, rauc = Site(ready=True), VersionedRauc(booted="B")
    with trio.move_on_after(30):
        await commit_when_healthy(
            site, data, rauc, wall_clock=lambda: 0.0, this_boot="boot", booted="B",
            trial_flag=trial_flag(tmp_path, flag),
        )  # fmt: skip
    assert len(rauc.marked) == 1
    assert read_record(data) is None


async def test_a_firmware_trial_with_its_record_is_checked_as_recorded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    write_record(tmp_path, TRIAL)
    site, rauc = Site(ready=True), VersionedRauc(booted="B")
    site.answer()
    flag = trial_flag(tmp_path / "..", b"\x00\x00\x00\x01")
    await control_and_commit(site, tmp_path, rauc, 30, "trial-boot", "B", trial_flag=flag)
    noted = replace(TRIAL, reboot_asked=True, trial_boot="trial-boot")  # this boot began it
    assert read_record(tmp_path) == noted, "the record as the install wrote it"
    assert rauc.marked == []


async def test_a_service_restarted_after_committing_its_firmware_trial_leaves_the_commit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """The firmware's flag stays 1 all that boot: a restart (the watchdog) took the committed
    record for a lost trial and wrote it back as one, which update-deadline then rolled back."""
    flag = trial_flag(tmp_path, b"\x00\x00\x00\x01")
    write_record(tmp_path, TRIAL)
    site, rauc = Site(ready=True), VersionedRauc(booted="B")
    site.answer()
    await control_and_commit(site, tmp_path, rauc, 150, "trial-boot", "B", trial_flag=flag)
    committed = read_record(tmp_path)
    assert committed is not None and committed.state == "committed"
    again = Site(ready=True)
    await control_and_commit(
        again, tmp_path, VersionedRauc("B"), 5, "trial-boot", "B", trial_flag=flag
    )
    assert read_record(tmp_path) == committed


async def test_an_install_waiting_for_its_reboot_is_not_taken_for_a_lost_trial(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """Later in the firmware trial's boot (committed), a newer bundle waits for its reboot into
    slot A; a restart of the service must keep its record."""
    flag = trial_flag(tmp_path, b"\x00\x00\x00\x01")
    pending = UpdateRecord("trial", "1.6.0", target="A", source="B", boot_id="trial-boot")
    write_record(tmp_path, pending)
    site = Site(ready=True)
    site.answer()
    await control_and_commit(
        site, tmp_path, VersionedRauc("B"), DEVICES_STEADY_S + 30, "trial-boot", "B",
        trial_flag=flag,
    )  # fmt: skip
    # kept, with the note that its reboot was asked for (nothing limits it)
    kept = read_record(tmp_path)
    assert kept is not None
    assert replace(kept, devices_waited_s=None) == replace(pending, reboot_asked=True)


class ActivatingRauc(RecordedRauc):
    """RAUC whose first ``failures`` activations fail, as a RAUC without its boot partition
    would."""

    def __init__(self, booted: str, failures: int = 0) -> None:
        super().__init__(booted)
        self.failures = failures

    async def activate(self, target: str) -> None:
        if self.failures:
            self.failures -= 1
            raise RaucError("Failed to mount /dev/mmcblk0p1")
        await super().activate(target)


NOT_REBOOTED = replace(TRIAL, reboot_asked=False)
"""Installed in ``install-boot``; the reboot into slot B not asked for yet."""


def rauc_conf(tmp_path: Path, backend: str) -> Path:
    conf = tmp_path / "system.conf"
    conf.write_text(f"[system]\ncompatible=dynexport-test\nbootloader={backend}\n")
    return conf


@pytest.mark.parametrize("backend", ["custom", "grub"], ids=["pi", "grub"])
async def test_a_reset_before_the_trial_reboot_asks_for_the_trial_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, backend: str
):
    """The device was reset (a power cut) while the installed update waited for its reboot.
    Its slot is made the next boot only right before the reboot (on the Pi 4/5 that is only
    tryboot.txt anyway), so the old slot booted normally. The update was reported "failed and
    was rolled back" and never tried again (on GRUB and U-Boot the trial started at once, at
    night with the inverters asleep); now the next boot, once READY, takes the reboot on as its
    own: it waits for the devices, activates the slot (on the Pi a mark-good of the old slot
    deletes tryboot.txt), leaves the fail-safe and asks for the trial reboot; that trial is
    checked and committed as any."""
    data, cmdline, boot = device_files(tmp_path, "rauc.slot=A", "boot-2")
    conf = rauc_conf(tmp_path, backend)
    write_record(data, NOT_REBOOTED)
    status = UpdateStatus(data, cmdline, boot)
    assert status()["phase"] == "reboot-pending"
    assert "restarted before its reboot into it" in status()["message"]
    site, rauc = Site(), ActivatingRauc(booted="A")
    site.answer()  # the devices answer: nothing holds the reboot
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: commit_when_healthy(
                site, data, rauc, wall_clock=lambda: 0.0, this_boot="boot-2", booted="A",
                rauc_conf=conf,
            )
        )  # fmt: skip
        await trio.sleep(60)
        assert read_record(data) == NOT_REBOOTED, "not before READY"
        site.ready = True
        await trio.sleep(10)
        now_ours = replace(NOT_REBOOTED, boot_id="boot-2")
        assert read_record(data) == now_ours, "this boot's now"
        assert rauc.activated == [] and not (data / REBOOT_REQUEST).exists()
        await trio.sleep(DEVICES_STEADY_S)  # the devices' five steady minutes
        assert [a.split("@")[0] for a in rauc.activated] == ["B"], "tryboot.txt written anew"
        assert site.events == ["fail-safe"]
        assert (data / REBOOT_REQUEST).read_text() == "trial boot-2\n"
        asked = read_record(data)
        assert asked is not None
        assert replace(asked, devices_waited_s=None) == replace(now_ours, reboot_asked=True)
        assert status() == {
            "phase": "reboot-pending", "version": "1.4.0",
            "message": "1.4.0 is installed; rebooting into it",
        }  # fmt: skip
        # the old slot confirmed at READY (U-Boot and GRUB spend an attempt at every boot); on
        # the Pi, where that is not needed, it may be skipped once the record is this boot's
        # (its mark-good deletes tryboot.txt), and if made, it came before the activation
        (activated,) = rauc.activated
        assert len(rauc.marked) == 1 or (backend == "custom" and rauc.marked == [])
        for confirmed in rauc.marked:
            assert float(confirmed.split("@")[1]) <= float(activated.split("@")[1])
        nursery.cancel_scope.cancel()
    # the firmware's trial boot of slot B: checked and committed
    trial = Site(ready=True)
    trial.answer()
    rauc_b = ActivatingRauc(booted="B")
    await control_and_commit(trial, data, rauc_b, 300, "boot-3", booted="B", rauc_conf=conf)
    committed = read_record(data)
    assert committed is not None and committed.state == "committed"
    assert len(rauc_b.marked) == 1 and rauc_b.activated == []


@pytest.mark.parametrize("asked", [True, None], ids=["asked", "older-record"])
@pytest.mark.parametrize("backend", ["custom", "grub", "uboot"], ids=["pi", "grub", "u-boot"])
async def test_a_trial_that_was_asked_for_is_not_asked_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, backend: str, asked: bool | None
):
    """The old slot after a trial that ran (its reboot asked for, or a record from before the
    note, its slot activated at the install): the new slot failed. It is reported rolled back,
    the running slot confirmed, and nothing rebooted (no loop of trials)."""
    data, cmdline, boot = device_files(tmp_path, "rauc.slot=A", "boot-2")
    conf = rauc_conf(tmp_path, backend)
    write_record(data, replace(TRIAL, reboot_asked=asked))
    site, rauc = Site(ready=True), ActivatingRauc(booted="A")
    site.answer()
    await control_and_commit(site, data, rauc, 900, "boot-2", booted="A", rauc_conf=conf)
    assert rauc.activated == [] and site.events == []
    assert not (data / REBOOT_REQUEST).exists()
    assert len(rauc.marked) == 1, "the running slot is confirmed as on any boot"
    assert UpdateStatus(data, cmdline, boot)()["phase"] == "rolled-back"


@pytest.mark.parametrize("failures", [2, 1 + ACTIVATE_TRIES], ids=["twice", "for-good"])
async def test_a_slot_that_cannot_be_made_the_next_boot_is_never_rebooted_into(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, failures: int
):
    """The slot is made the next boot again right before the reboot is asked for (a confirmation
    of the running slot, on the Pi, deletes tryboot.txt: the reboot would boot the old slot and
    read as a rollback). A RAUC that refuses is asked again every 30 s; one that refuses ten
    times ends the update as failed, with why, and nothing is rebooted: "reboot-pending" for
    good would block every install, a fixed release's too."""
    data, cmdline, boot = device_files(tmp_path, "rauc.slot=A", "install-boot")
    conf = rauc_conf(tmp_path, "custom")
    write_record(data, TRIAL)
    site, rauc = Site(ready=True), ActivatingRauc(booted="A", failures=failures)
    site.answer()
    service = partial(
        commit_when_healthy, site, data, rauc, wall_clock=lambda: 0.0, this_boot="install-boot",
        booted="A", rauc_conf=conf,
    )  # fmt: skip
    with trio.move_on_after(DEVICES_STEADY_S + 20):
        await service()
    assert rauc.activated == [] and not (data / REBOOT_REQUEST).exists()
    assert site.events == [], "no inverter left at its fail-safe for a reboot that never comes"
    with trio.move_on_after(DEVICES_STEADY_S + ACTIVATE_TRIES * 30 + 10) as still_running:
        await service()
    rep = UpdateStatus(data, cmdline, boot)()
    if failures < ACTIVATE_TRIES:
        assert len(rauc.activated) == 1 and site.events == ["fail-safe"]
        assert (data / REBOOT_REQUEST).read_text() == "trial install-boot\n"
    else:
        # the running slot made the next boot again, in case a refusal was a timeout RAUC
        # carried out after all (the record says failed: the new slot must never boot)
        assert [a.split("@")[0] for a in rauc.activated] == ["A"] and site.events == []
        assert [a.split("@")[0] for a in rauc.unbootable] == ["B"], "and no fallback"
        assert not (data / REBOOT_REQUEST).exists()
        assert rep == {
            "phase": "failed", "version": "1.4.0",
            "message": "update to 1.4.0 failed before its reboot, because its slot could not be "
            "made the next boot (Failed to mount /dev/mmcblk0p1)",
        }  # fmt: skip
        # and the service goes on watching: a fixed release installed later is rebooted into
        assert still_running.cancelled_caught
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service)
            await trio.sleep(5)
            write_record(data, replace(TRIAL, version="1.4.1"))
            await trio.sleep(DEVICES_STEADY_S + 20)
            assert (data / REBOOT_REQUEST).read_text() == "trial install-boot\n"
            assert [a.split("@")[0] for a in rauc.activated] == ["A", "B"]
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("backend", ["custom", "grub"], ids=["pi", "grub"])
async def test_a_service_restarted_while_an_update_waits_does_not_drop_its_trial(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, backend: str
):
    """The service restarts (the watchdog, a crash) in the boot whose install waits for its
    reboot: its READY confirmation of the running slot, on the Pi, deleted tryboot.txt, and the
    reboot then booted the old slot ("rolled back"). On the Pi the confirmation now waits for
    no install of this boot; elsewhere it touches only the running slot and is made. Either
    way the slot is made the next boot right before the reboot."""
    data, _cmdline, _boot = device_files(tmp_path, "rauc.slot=A", "install-boot")
    conf = rauc_conf(tmp_path, backend)
    write_record(data, TRIAL)
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    site.answer()
    await service_on_a(site, data, rauc, rauc_conf=conf)
    assert len(rauc.marked) == (0 if backend == "custom" else 1)
    # made the next boot right before the reboot (the install left it)
    assert [a.split("@")[0] for a in rauc.activated] == ["B"]
    assert (data / REBOOT_REQUEST).read_text() == "trial install-boot\n"


async def test_the_reboot_into_an_update_waits_for_sleeping_inverters(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """An update installed at night (``install: auto``, or an upload): the inverters sleep, and a
    trial started now would be rolled back for want of them, that version then never installed
    automatically again. The reboot waits until they answer; the status says why meanwhile."""
    data, cmdline, boot = device_files(tmp_path, "rauc.slot=A", "install-boot")
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    assert site.meter is not None
    site.meter.state.answering = True  # the meter never sleeps; the inverters do
    status = UpdateStatus(data, cmdline, boot)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service_on_a, site, data, rauc)
        write_record(data, TRIAL)  # installed in this boot
        await trio.sleep(10 * 3600)  # the night
        assert not (data / REBOOT_REQUEST).exists() and site.events == []
        assert status()["message"] == (
            "1.4.0 is installed; the reboot into it waits for the devices: no inverter has "
            "answered in 60 s (the new system's health check needs them)"
        )
        site.inverters[1].state.answering = True  # dawn: one inverter is enough, as for the check
        await trio.sleep(60)
        said = status()["message"]  # "... for 55 s ...": seen at the wait's 5 s looks
        assert re.fullmatch(
            r"1\.4\.0 is installed; the reboot into it waits for the devices: they have "
            r"answered for (5\d|60) s of the 300 s asked for \(the new system's health check "
            r"needs them\)",
            said,
        ), said
        site.inverters[1].state.stop()  # off again: first light comes and goes
        await trio.sleep(DEVICES_STEADY_S)
        assert not (data / REBOOT_REQUEST).exists(), "five minutes without a lapse"
        site.inverters[1].state.answering = True
        await trio.sleep(DEVICES_STEADY_S + 10)
        assert site.events == ["fail-safe"]
        assert (data / REBOOT_REQUEST).read_text() == "trial install-boot\n"
        assert status()["message"] == "1.4.0 is installed; rebooting into it"
        nursery.cancel_scope.cancel()


async def test_devices_that_fall_asleep_while_a_quiet_moment_is_awaited_hold_the_reboot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """At dusk: the devices answered, but a limit change was due, and by the quiet moment the
    inverters slept. The reboot went ahead and the trial was rolled back; now it waits for them
    again."""
    write_record(tmp_path, TRIAL)
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    site.answer()
    site.outlook = [(1000.0 + DEVICES_STEADY_S + 200.0, "a utility limit starts")]
    async with trio.open_nursery() as nursery:
        start_with_a_running_wall_clock(nursery, site, tmp_path, rauc)
        await trio.sleep(DEVICES_STEADY_S + 30)  # steady, but the change is due in 170 s
        for link in site.inverters:
            link.state.stop()  # dusk
        await trio.sleep(3600)
        assert site.events == [] and not (tmp_path / REBOOT_REQUEST).exists()
        site.inverters[0].state.answering = True
        await trio.sleep(DEVICES_STEADY_S + 10)
        assert site.events == ["fail-safe"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("setup_mode", [True, False], ids=["no-devices-yet", "device-gone"])
async def test_the_reboot_does_not_wait_for_devices_for_ever(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, setup_mode: bool
):
    """A site with no devices yet (setup mode) reboots once it could (the five minutes of the
    site as it is), as its trial needs none; a device that never answers holds the reboot for
    18 hours of waiting in all, counted across restarts of the service (one every 6 hours
    started the 18 hours again, and the update, pending for good, blocked every install), each
    restart losing at most the half hour since the wait was last noted. The wall clock plays no
    part: here it jumps two days ahead after the first restart, and nothing fires early."""
    write_record(tmp_path, replace(TRIAL, boot_id="install-boot"))
    site = Site(ready=True, setup_mode=setup_mode)
    if setup_mode:
        site.meter, site.inverters = None, []
    rauc = RecordedRauc(booted="A")
    wall = [1000.0]

    async def service_for(hours: float) -> None:
        with trio.move_on_after(hours * 3600):
            await commit_when_healthy(
                site, tmp_path, rauc, wall_clock=lambda: wall[0], this_boot="install-boot",
                booted="A",
            )  # fmt: skip

    await service_for(0.2)
    assert (tmp_path / REBOOT_REQUEST).exists() is setup_mode
    if not setup_mode:
        await service_for(5.8)  # restarted by the watchdog after 6 hours of waiting
        wall[0] += 2 * 86400.0  # a clock stepped two days ahead
        await service_for(6.0)
        await service_for(6.0)
        assert not (tmp_path / REBOOT_REQUEST).exists(), "at most 1.5 h lost to restarts"
        await service_for(1.6)
    assert (tmp_path / REBOOT_REQUEST).read_text() == "trial install-boot\n"
    assert site.events == ["fail-safe"]


async def service_on_a(site: Site, data: Path, rauc: RecordedRauc, **options: Any) -> None:
    """``commit_when_healthy`` of boot ``install-boot``, running slot A."""
    await commit_when_healthy(
        site, data, rauc, wall_clock=lambda: 0.0, this_boot="install-boot", booted="A", **options
    )


async def a_pi_running_slot_a(site: Site, data: Path, rauc: RecordedRauc, tmp_path: Path) -> None:
    """``service_on_a`` on a Pi 4/5 (RAUC's tryboot backend)."""
    await service_on_a(site, data, rauc, rauc_conf=rauc_conf(tmp_path, "custom"))


class SlowConfirmRauc(RecordedRauc):
    """RAUC whose confirmation (mark-good) takes ``takes_s`` to answer: a busy D-Bus service."""

    def __init__(self, booted: str, takes_s: float = 400.0) -> None:
        super().__init__(booted)
        self.takes_s = takes_s

    async def mark_good(self) -> None:
        begun = trio.current_time()
        await trio.sleep(self.takes_s)
        self.marked.append(f"good@{begun:.0f}-{trio.current_time():.0f}")


async def test_on_the_pi_the_activation_waits_for_a_confirmation_under_way(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """Pi 4/5: the READY confirmation of the running slot (its mark-good deletes tryboot.txt)
    was begun before the install, and RAUC is slow to answer. The activation before the reboot
    must come after it, never during it, or the trial reboot boots the old slot."""
    data, _cmdline, _boot = device_files(tmp_path, "rauc.slot=A", "install-boot")
    site, rauc = Site(ready=True), SlowConfirmRauc(booted="A")
    site.answer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a_pi_running_slot_a, site, data, rauc, tmp_path)
        await trio.sleep(5)  # the confirmation is under way
        write_record(data, TRIAL)  # an install of this boot finished meanwhile
        await trio.sleep(DEVICES_STEADY_S + 200)
        (confirmed,) = rauc.marked
        ended = float(confirmed.split("-")[1])
        (activated,) = rauc.activated
        assert float(activated.split("@")[1]) >= ended, (confirmed, activated)
        assert (data / REBOOT_REQUEST).read_text() == "trial install-boot\n"
        nursery.cancel_scope.cancel()


async def test_on_the_pi_the_reboot_command_waits_for_a_confirmation_under_way(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
):
    """Pi 4/5: the service's READY confirmation of the running slot (its mark-good deletes
    tryboot.txt) had looked at the record before an install finished, and RAUC is slow to
    answer. ``dynexport update reboot`` (or ``install --reboot-now``), another process, must
    not activate the new slot during it: the confirmation would then delete the tryboot.txt
    just written, and the trial reboot boot the old slot. They share the decision lock."""
    from dynexport.update import cli

    data, _cmdline, _boot = device_files(tmp_path, "rauc.slot=A", "install-boot")
    monkeypatch.setattr(cli, "boot_id", lambda: "install-boot")
    site, rauc = Site(ready=True), SlowConfirmRauc(booted="A", takes_s=200)
    site.answer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a_pi_running_slot_a, site, data, rauc, tmp_path)
        await trio.sleep(5)  # the confirmation is under way
        write_record(data, NOT_REBOOTED)  # an install of this boot finished meanwhile
        assert await cli._reboot_into(data, rauc, NOT_REBOOTED) == 0
        assert len(rauc.marked) == 1, "the command did not wait for the confirmation to end"
        (confirmed,) = rauc.marked
        ended = float(confirmed.split("-")[1])
        assert rauc.activated, "the command activated the slot"
        for activated in rauc.activated:
            assert float(activated.split("@")[1]) >= ended, (confirmed, activated)
        record = read_record(data)
        assert record is not None and record.reboot_asked is True
        assert (data / REBOOT_REQUEST).read_text() == "trial install-boot\n"
        nursery.cancel_scope.cancel()


async def test_a_record_unreadable_before_the_reboot_is_not_rebooted_into(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """Pi 4/5: the record cannot be read when the slot is to be made the next boot (a damaged
    file): the reboot went ahead without the activation. Nothing tells then whether tryboot.txt
    names the new slot, so nothing is rebooted."""
    data, _cmdline, _boot = device_files(tmp_path, "rauc.slot=A", "install-boot")
    write_record(data, TRIAL)
    site, rauc = Site(ready=True), RecordedRauc(booted="A")
    site.answer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a_pi_running_slot_a, site, data, rauc, tmp_path)
        await trio.sleep(DEVICES_STEADY_S - 10)
        (data / "update.json").write_bytes(b'{"state": "tri')  # damaged
        await trio.sleep(ACTIVATE_TRIES * 30 + 60)
        assert rauc.activated == [] and site.events == []
        assert not (data / REBOOT_REQUEST).exists()
        nursery.cancel_scope.cancel()


class SlowActivationRauc(RecordedRauc):
    """RAUC whose activation number ``slow_from`` (from 0: the first) takes 600 s, while the
    site does ``meanwhile``."""

    def __init__(self, booted: str, meanwhile: Any, slow_from: int = 0) -> None:
        super().__init__(booted)
        self.meanwhile = meanwhile
        self.calls = 0
        self.slow = slow_from

    async def activate(self, target: str) -> None:
        self.calls += 1
        if self.calls - 1 == self.slow:
            self.meanwhile()
            await trio.sleep(600)
        await super().activate(target)


def at_dusk(site: Site, slow_from: int = 0) -> SlowActivationRauc:
    """RAUC on slot A whose activation number ``slow_from`` takes 600 s, while the inverters
    fall asleep."""

    def dusk() -> None:
        for link in site.inverters:
            link.state.stop()

    return SlowActivationRauc(booted="A", meanwhile=dusk, slow_from=slow_from)


async def test_devices_silent_after_a_slow_activation_are_waited_for_with_it_undone(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """RAUC took ten minutes to make the slot the next boot, and the inverters fell asleep
    meanwhile (dusk). The reboot waits for them again, but not with the new slot activated: a
    reset on U-Boot or GRUB would start the trial at night, unchecked by any device."""
    write_record(tmp_path, TRIAL)
    site = Site(ready=True)
    site.answer()

    rauc = at_dusk(site)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service_on_a, site, tmp_path, rauc)
        await trio.sleep(DEVICES_STEADY_S + 600 + 60)
        assert [a.split("@")[0] for a in rauc.activated] == ["B", "A"], "undone at once"
        # and slot B no fallback of U-Boot's or GRUB's: failed boots of A would start its trial
        assert [a.split("@")[0] for a in rauc.unbootable] == ["B"]
        assert site.events == [] and not (tmp_path / REBOOT_REQUEST).exists()
        await trio.sleep(6 * 3600)  # the night
        assert not (tmp_path / REBOOT_REQUEST).exists()
        site.inverters[0].state.answering = True  # dawn
        await trio.sleep(DEVICES_STEADY_S + 60)
        assert [a.split("@")[0] for a in rauc.activated] == ["B", "A", "B"]
        assert (tmp_path / REBOOT_REQUEST).read_text() == "trial install-boot\n"
        nursery.cancel_scope.cancel()


async def test_a_reboot_asked_for_by_hand_before_is_not_undone_by_the_service(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
):
    """The installer ran ``dynexport update reboot`` (the slot activated, the reboot noted and
    asked for) just before the service's own activation, which then took ten minutes while the
    inverters fell asleep (dusk). The service, finding the devices silent, must not undo that
    activation: the reboot already asked for would boot the old slot (GRUB, U-Boot: the running
    slot first again, the new one marked bad) and read as a rollback. It leaves the inverters
    at their fail-safe and asks for the reboot instead."""
    from dynexport.update import cli

    data, _cmdline, _boot = device_files(tmp_path, "rauc.slot=A", "install-boot")
    monkeypatch.setattr(cli, "boot_id", lambda: "install-boot")
    write_record(data, NOT_REBOOTED)
    site = Site(ready=True)
    site.answer()

    rauc = at_dusk(site, slow_from=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service_on_a, site, data, rauc)
        await trio.sleep(DEVICES_STEADY_S - 60)  # before the service's activation
        assert await cli._reboot_into(data, rauc, NOT_REBOOTED) == 0
        await trio.sleep(60 + 600 + 60)  # the service's activation returns; devices silent
        assert [a.split("@")[0] for a in rauc.activated] == ["B", "B"], "never undone"
        assert rauc.unbootable == []
        assert site.events == ["fail-safe"]
        assert (data / REBOOT_REQUEST).read_text() == "trial install-boot\n"
        nursery.cancel_scope.cancel()


async def test_the_reboot_command_waits_for_the_services_activation_and_then_gives_up(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """The service holds the decision lock from its activation to its reboot request (or the
    activation undone): ``dynexport update reboot`` in between, its own activation failing,
    would undo the service's. The command waits for the lock at most LOCK_WAIT_S, and says
    so; the service then undoes its activation (the devices fell silent) and waits again."""
    from dynexport.update import cli

    data, _cmdline, _boot = device_files(tmp_path, "rauc.slot=A", "install-boot")
    monkeypatch.setattr(cli, "boot_id", lambda: "install-boot")
    write_record(data, NOT_REBOOTED)
    site = Site(ready=True)
    site.answer()

    rauc = at_dusk(site)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service_on_a, site, data, rauc)
        await trio.sleep(DEVICES_STEADY_S + 60)  # the service's activation is under way
        asked = trio.current_time()
        assert await cli._reboot_into(data, rauc, NOT_REBOOTED) == 1
        assert trio.current_time() - asked == pytest.approx(cli.LOCK_WAIT_S, abs=1.0)
        err = capsys.readouterr().err
        assert "waiting for the service to finish with RAUC (at most 360 s)" in err
        assert "update.lock was held for 360 s" in err
        assert rauc.activated == [] and not (data / REBOOT_REQUEST).exists()
        await trio.sleep(600 - cli.LOCK_WAIT_S)
        assert [a.split("@")[0] for a in rauc.activated] == ["B", "A"], "undone, by the service"
        record = read_record(data)
        assert record is not None and record.reboot_asked is False
        nursery.cancel_scope.cancel()


async def test_the_pi_confirmation_and_an_undone_activation_never_wait_for_each_other(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """Pi 4/5: a retry of the running slot's confirmation came while the service's slow
    activation held the RAUC lock, and the devices fell silent meanwhile. The confirmation took
    the RAUC lock, then waited for the decision lock; the undo held the decision lock and
    waited for the RAUC lock: no reboot ever, and every later install refused. Both now take
    the decision lock first."""
    write_record(tmp_path, TRIAL)
    site = Site(ready=True)
    site.answer()

    rauc, lock = at_dusk(site), trio.Lock()
    confirm = _Confirm(rauc, lock, tmp_path, "install-boot", pi=True)
    rebooted: list[bool] = []

    async def service() -> None:
        rebooted.append(
            await reboot_when_quiet(
                site, tmp_path, wall_clock=lambda: 0.0, rauc=rauc, rauc_lock=lock,
                this_boot="install-boot", devices_max_wait=DEVICES_MAX_WAIT_S,
            )
        )  # fmt: skip

    with trio.move_on_after(3600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service)
            await trio.sleep(DEVICES_STEADY_S + 60)  # the activation is under way
            nursery.start_soon(_confirm_boot, site, confirm, "A", 1.0)
            await trio.sleep(600)
            assert [a.split("@")[0] for a in rauc.activated] == ["B", "A"], "undone"
            assert rauc.marked == [], "skipped: an installed update waits for its reboot"
            site.inverters[0].state.answering = True  # dawn
    assert rebooted == [True]


class TimedOutActivationRauc(RecordedRauc):
    """RAUC that carries an activation out, but answers too late: a RaucError all the same."""

    async def activate(self, target: str) -> None:
        await super().activate(target)
        if target == "B":
            raise RaucError("rauc status: no answer in 300 s (is the RAUC service hung?)")


async def test_a_failed_reboot_command_leaves_the_update_no_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """``dynexport update reboot`` whose activation timed out after RAUC had carried it out:
    the new slot was left first, and on U-Boot or GRUB any reset (at night) would start its
    trial unasked. The command undoes it, as the service does, and the service reboots into
    the update at its quiet moment (activating it again)."""
    from dynexport.update import cli

    monkeypatch.setattr(cli, "boot_id", lambda: "install-boot")
    write_record(tmp_path, NOT_REBOOTED)
    rauc = TimedOutActivationRauc(booted="A")
    assert await cli._reboot_into(tmp_path, rauc, NOT_REBOOTED) == 1
    assert [a.split("@")[0] for a in rauc.activated] == ["B", "A"]
    assert [a.split("@")[0] for a in rauc.unbootable] == ["B"]
    assert "not rebooted now" in capsys.readouterr().err
    assert read_record(tmp_path) == NOT_REBOOTED and not (tmp_path / REBOOT_REQUEST).exists()


async def test_the_reboot_command_notes_its_reboot_in_the_record_as_the_service_left_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The command was handed the record as it read it before the lock; the service had noted
    the time waited for the devices since. The note of the reboot keeps what the service
    wrote."""
    from dynexport.update import cli

    monkeypatch.setattr(cli, "boot_id", lambda: "install-boot")
    waited = replace(NOT_REBOOTED, devices_waited_s=1800.0)
    write_record(tmp_path, waited)
    rauc = RecordedRauc(booted="A")
    assert await cli._reboot_into(tmp_path, rauc, NOT_REBOOTED) == 0
    assert read_record(tmp_path) == replace(waited, reboot_asked=True)


class HungRauc(ActivatingRauc):
    """RAUC that refuses every activation and every mark-bad: an activation of the update's
    slot may have been carried out after a timeout, and nothing can undo it."""

    def __init__(self, booted: str) -> None:
        super().__init__(booted, failures=10**6)

    async def make_unbootable(self, target: str) -> None:
        raise RaucError("no answer in 300 s (is the RAUC service hung?)")


async def test_an_activation_that_cannot_be_undone_is_never_recorded_failed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """RAUC refused the activation ten times, then refused both steps of its undo: the update's
    slot may still be the next boot. Recorded failed, a boot of it (a reset) would be
    confirmed at READY without a health check, the failed release committed. It is noted as
    asked for instead: that boot is checked as a trial, and a boot of the old slot reads as
    the update's rollback. Nothing is rebooted meanwhile."""
    write_record(tmp_path, NOT_REBOOTED)
    site, rauc = Site(ready=True), HungRauc(booted="A")
    site.answer()
    with trio.move_on_after(DEVICES_STEADY_S + ACTIVATE_TRIES * 30 + 60):
        await service_on_a(site, tmp_path, rauc)
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial" and record.reboot_asked is True
    assert not (tmp_path / REBOOT_REQUEST).exists() and site.events == []
    # a reset now: if the update's slot boots, its trial is checked
    assert update_report(tmp_path, await RecordedRauc("B").status(), "later").phase == "trial"


async def test_the_reboot_command_never_undoes_a_reboot_asked_for_already(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The service had activated the slot and asked for the reboot (or an earlier run of the
    command had) when the command got the lock: activating again, failing, and undoing would
    have made the asked-for reboot boot the old slot, read as a rollback. It does nothing."""
    from dynexport.update import cli

    monkeypatch.setattr(cli, "boot_id", lambda: "install-boot")
    asked = replace(NOT_REBOOTED, reboot_asked=True)
    write_record(tmp_path, asked)
    (tmp_path / REBOOT_REQUEST).write_text("trial install-boot\n")
    rauc = TimedOutActivationRauc(booted="A")
    assert await cli._reboot_into(tmp_path, rauc, NOT_REBOOTED) == 0
    assert rauc.activated == [] and rauc.unbootable == []
    assert "asked for already; asked again" in capsys.readouterr().out
    assert read_record(tmp_path) == asked
    # the request gone (the service stopped between its note and its request, or the reboot
    # failed): written again, still without activating anything
    (tmp_path / REBOOT_REQUEST).unlink()
    assert await cli._reboot_into(tmp_path, rauc, NOT_REBOOTED) == 0
    assert (tmp_path / REBOOT_REQUEST).read_text() == "trial install-boot\n"
    assert rauc.activated == [] and rauc.unbootable == []


async def test_an_undo_whose_activation_is_refused_still_marks_the_update_bad():
    """Making the running slot first again was refused, yet an earlier activation of the new
    slot may have been carried out (a timeout): the new slot is marked bad all the same, which
    alone keeps U-Boot and GRUB off it, and the undo counts as done."""
    rauc = ActivatingRauc(booted="A", failures=10**6)  # every activation refused
    assert await undo_activation(rauc, None, NOT_REBOOTED) == "undone"
    assert [a.split("@")[0] for a in rauc.unbootable] == ["B"]
    assert await undo_activation(HungRauc(booted="A"), None, NOT_REBOOTED) == "stuck"


async def test_a_trial_notes_that_it_began_when_its_reboot_was_not_noted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
):
    """U-Boot or GRUB: a reset between the activation and the note (while the inverters were
    left at their fail-safe) started the trial with the record saying its reboot was never
    asked for. It booted, so a reset in it must read as a rollback, not as a trial still to
    come (which would be asked for once more, a broken release booted again)."""
    write_record(tmp_path, NOT_REBOOTED)
    site, rauc = Site(), RecordedRauc(booted="B")
    await control_and_commit(site, tmp_path, rauc, 30, "trial-boot", booted="B")
    record = read_record(tmp_path)
    assert record is not None and record.state == "trial" and record.reboot_asked is True
    assert update_report(tmp_path, await rauc.status(), "after-a-reset").phase == "trial"
    rolled = report_of(record, tmp_path, RaucStatus("dynexport-test", "A", "rootfs.0"), "later")
    assert rolled.phase == "rolled-back"
