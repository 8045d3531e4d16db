"""The RAUC adapter: its parsers against RAUC's own output, and signatures checked by real rauc."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from dynexport.update.rauc import BundleInfo, Rauc, RaucError, parse_info, parse_status
from dynexport.update.service import process_identity, read_record, write_record
from dynexport.update.state import REBOOT_REQUEST, UpdateRecord
from tests.update.bundles import SIGNING_KEY, make_bundle, needs_rauc

STATUS = {
    "compatible": "dynexport-rpi4_64",
    "variant": "",
    "booted": "B",
    "boot_primary": "rootfs.1",
    "slots": [
        {"rootfs.0": {"class": "rootfs", "device": "/dev/disk/by-partuuid/64796e78-02",
                      "type": "raw", "bootname": "A", "state": "inactive", "parent": None,
                      "mountpoint": None, "boot_status": "good",
                      "slot_status": {"bundle": {"compatible": "dynexport-rpi4_64",
                                                 "version": "1.3.0"}, "status": "ok"}}},
        {"rootfs.1": {"class": "rootfs", "device": "/dev/disk/by-partuuid/64796e78-03",
                      "type": "raw", "bootname": "B", "state": "booted", "parent": None,
                      "mountpoint": "/", "boot_status": "good",
                      "slot_status": {"bundle": {"compatible": "dynexport-rpi4_64",
                                                 "version": "1.4.0"}, "status": "ok"}}},
    ],
}  # fmt: skip


def test_status_names_the_booted_slot_the_primary_and_each_slots_bundle():
    st = parse_status(json.dumps(STATUS))
    assert st.booted == "B"
    assert st.primary_bootname == "B"
    assert [(s.name, s.bootname, s.state, s.bundle_version) for s in st.slots] == [
        ("rootfs.0", "A", "inactive", "1.3.0"),
        ("rootfs.1", "B", "booted", "1.4.0"),
    ]


def test_status_that_is_not_json_is_a_rauc_error():
    with pytest.raises(RaucError, match="no JSON"):
        parse_status("Error retrieving slot status via D-Bus")


def test_info_without_a_signer_is_refused():
    with pytest.raises(RaucError, match="no version or signer"):
        parse_info("Compatible: \t'x'\nVersion: \t'1'\n")


@needs_rauc
async def test_info_shows_version_and_verified_signer_and_refuses_another_key(tmp_path: Path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    await trio.run_process([str(SIGNING_KEY), str(ours)], capture_stderr=True)
    await trio.run_process([str(SIGNING_KEY), str(theirs), "someone else"], capture_stderr=True)
    good = make_bundle(tmp_path, ours, "1.4.0+abc")
    foreign = make_bundle(tmp_path, theirs, "6.6.6")
    rauc = Rauc(extra=[f"--keyring={ours}/keyring.pem"])
    info = await rauc.info(str(good))
    assert info.version == "1.4.0+abc"
    assert info.compatible == "dynexport-test"
    assert "CN = dynexport development bundle signing key - NOT FOR FIELD USE" in info.signer
    with pytest.raises(RaucError, match="signature verification failed"):
        await rauc.info(str(foreign))


def test_the_development_key_warns_loudly(tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    proc = subprocess.run(
        [str(SIGNING_KEY), str(tmp_path / "k")], capture_output=True, text=True, check=True
    )
    assert "WARNING: made a DEVELOPMENT signing key" in proc.stderr
    assert (tmp_path / "k/keyring.pem").read_text() == (tmp_path / "k/cert.pem").read_text()
    assert (tmp_path / "k/key.pem").stat().st_mode & 0o077 == 0
    again = subprocess.run(
        [str(SIGNING_KEY), str(tmp_path / "k")], capture_output=True, text=True, check=True
    )
    assert again.stderr == "", "an existing key is kept, not replaced"


# -- install, then activate: never a boot loader pointed at a slot without its boot files -------

SCRIPTED_RAUC = """#!/bin/sh
# rauc as the appliance's RAUC service answers (booted slot B): logs each call, fails on demand
echo "$*" >>"$RAUC_LOG"
case "$1 $2" in
"install "*)
	echo "installing"
	[ -z "$HANG_INSTALL" ] || { echo $$ >"$RAUC_LOG.pid"; exec sleep 3600; }
	echo "100% Installing done."
	[ -z "$FAIL_INSTALL" ] || { echo "Post-install handler error: no space" >&2; exit 1; }
	;;
"info "*)
	printf 'Compatible: \t'"'"'dynexport-rpi4_64'"'"'\nVersion:    \t'"'"'1.5.0'"'"'\n'
	printf 'Certificate Chain:\n 0 Subject: CN = test\n'
	;;
"status --detailed")
	[ -z "$HANG_STATUS" ] || { echo $$ >"$RAUC_LOG.pid"; exec sleep 3600; }
	cat "$RAUC_STATUS"
	;;
"status mark-active")
	[ -z "$FAIL_MARK" ] || { echo "Failed marking slot: grubenv is read-only" >&2; exit 1; }
	echo "marked slot $3 as active"
	;;
"status mark-bad")
	echo "marked slot $3 as bad"
	;;
"status mark-good")
	echo "marked slot $3 as good"
	;;
*) echo "unexpected: $*" >&2; exit 3 ;;
esac
"""


def scripted_rauc(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    bound_s: float = 120.0,
    **fail: str,
) -> tuple[Rauc, Path]:
    """The scripted rauc, each call bounded by ``bound_s`` (``rauc install``: that long without
    a line); a bound, never a speed: a loaded machine takes seconds to start a shell script."""
    program, log = tmp_path / "rauc", tmp_path / "rauc.log"
    program.write_text(SCRIPTED_RAUC)
    program.chmod(0o755)
    (tmp_path / "status.json").write_text(json.dumps(STATUS))
    monkeypatch.setenv("RAUC_LOG", str(log))
    monkeypatch.setenv("RAUC_STATUS", str(tmp_path / "status.json"))
    for key in ("FAIL_INSTALL", "FAIL_MARK", "HANG_INSTALL", "HANG_STATUS"):
        monkeypatch.setenv(key, fail.get(key, ""))
    return Rauc(program=str(program), timeout_s=bound_s, install_silence_s=bound_s), log


HANG_BOUND_S = 5.0
"""The bound the hang tests give the scripted rauc: long enough for any machine to have started
the script (and for it to say its first line and its pid) before it is stopped."""


def gone(pid_file: Path) -> bool:
    """The process whose pid the scripted rauc left is no longer running (killed and reaped)."""
    return not Path(f"/proc/{pid_file.read_text().strip()}").exists()


async def test_install_activates_the_written_slot_only_after_rauc_install_has_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    rauc, log = scripted_rauc(tmp_path, monkeypatch)
    seen: list[str] = []

    async def progress(line: str) -> None:
        seen.append(line)

    await rauc.install("/data/b.raucb", "A", progress)
    assert seen == ["installing", "100% Installing done."]
    assert log.read_text().splitlines() == [
        "install /data/b.raucb",
        "status --detailed --output-format=json",
        "status mark-active rootfs.0",  # slot A by RAUC's name, after the install
    ]


async def test_an_undone_activation_marks_the_slot_bad_by_its_rauc_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    rauc, log = scripted_rauc(tmp_path, monkeypatch)
    await rauc.make_unbootable("A")
    assert log.read_text().splitlines() == [
        "status --detailed --output-format=json",
        "status mark-bad rootfs.0",  # no fallback of the boot loader any more
    ]
    with pytest.raises(RaucError, match="names no slot C"):
        await rauc.make_unbootable("C")


async def test_the_old_slot_is_made_good_by_its_rauc_name_not_the_booted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """For a rollback from a slot the Pi 4/5 firmware boots normally (``make_good``)."""
    rauc, log = scripted_rauc(tmp_path, monkeypatch)
    await rauc.make_good("A")
    assert log.read_text().splitlines() == [
        "status --detailed --output-format=json",
        "status mark-good rootfs.0",
    ]


async def test_a_failed_install_activates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rauc, log = scripted_rauc(tmp_path, monkeypatch, FAIL_INSTALL="1")

    async def progress(line: str) -> None:
        pass

    with pytest.raises(RaucError, match="rauc install: Post-install handler error: no space"):
        await rauc.install("/data/b.raucb", "A", progress)
    assert [ln for ln in log.read_text().splitlines() if "mark-active" in ln] == []


async def test_a_written_slot_is_recorded_as_on_trial_and_not_activated_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The web's and the URL's install writes the slot and records the trial; the slot is made
    the next boot only right before the reboot (service.reboot_when_quiet): activated now, a
    reset while the reboot waits for the devices (hours, at night) would start the trial on
    U-Boot and GRUB with the inverters asleep."""
    from dynexport.update.install import install_verified
    from dynexport.update.rauc import BundleInfo
    from dynexport.update.service import read_record

    rauc, log = scripted_rauc(tmp_path, monkeypatch)
    data = tmp_path / "data"
    data.mkdir()

    async def progress(line: str) -> None:
        pass

    info = BundleInfo("dynexport-rpi4_64", "1.5.0", "CN = test")
    assert (
        await install_verified(data, rauc, tmp_path / "b.raucb", info, progress, origin="t") is None
    )
    record = read_record(data)
    assert record is not None and (record.state, record.version, record.target) == (
        "trial",
        "1.5.0",
        "A",
    )
    assert record.reboot_asked is False
    assert not [c for c in log.read_text().splitlines() if c.startswith("status mark")]


# -- no install while another update is under way: on trial, waiting for its reboot, installing


TRIAL_OF_B = UpdateRecord("trial", "1.4.0", target="B", source="A", boot_id="install-boot")
INSTALLING = UpdateRecord("installing", "1.4.0", target="A", source="B", boot_id="this-boot")


def _under_way_cases() -> list[tuple[UpdateRecord | None, str | None]]:
    """(the last update's record, the refusal's words or None: the install goes ahead)."""
    return [
        (None, None),
        (TRIAL_OF_B, "the update to 1.4.0 is on trial"),  # B's trial in a later boot
        (TRIAL_OF_B.moved_to("committed"), None),
        (replace(TRIAL_OF_B, target="A", source="B"), None),  # A's trial rolled back to B
        (TRIAL_OF_B.moved_to("failed", "no space"), None),
        (replace(TRIAL_OF_B, boot_id="this-boot"), "1.4.0 is installed and waits for its reboot"),
        (replace(INSTALLING, installer=process_identity(os.getppid())), "being installed now"),
        (replace(INSTALLING, installer=process_identity()), None),  # this process's, left over
        (replace(INSTALLING, installer="999999999:1"), None),  # its installer is gone
    ]


@pytest.mark.parametrize(
    ("record", "refusal"),
    _under_way_cases(),
    ids=[
        "no update",
        "on trial",
        "committed",
        "rolled back",
        "failed",
        "reboot pending",
        "another installer",
        "own leftover",
        "installer gone",
    ],
)
async def test_the_web_and_url_install_waits_while_another_update_is_under_way(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record: UpdateRecord | None,
    refusal: str | None,
):
    from dynexport.update.install import install_verified

    rauc, log = scripted_rauc(tmp_path, monkeypatch)  # slot B runs
    data = tmp_path / "data"
    data.mkdir()
    if record is not None:
        write_record(data, record)

    async def progress(line: str) -> None:
        pass

    info = BundleInfo("dynexport-rpi4_64", "1.5.0", "CN = test")
    said = await install_verified(
        data, rauc, tmp_path / "b.raucb", info, progress, origin="t", this_boot="this-boot"
    )
    calls = log.read_text().splitlines()
    if refusal is not None:
        assert said is not None and said.startswith("not installed, nothing was written: ")
        assert refusal in said
        assert not [c for c in calls if c.startswith(("install", "status mark"))]
        assert read_record(data) == record, "the other update's record is untouched"
    else:
        assert said is None
        assert "install " + str(tmp_path / "b.raucb") in calls


async def test_the_install_command_waits_for_a_trial_to_be_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from dynexport.update import cli, service

    rauc, log = scripted_rauc(tmp_path, monkeypatch)  # slot B runs
    data = tmp_path / "data"
    data.mkdir()
    write_record(data, TRIAL_OF_B)
    (tmp_path / "boot_id").write_text("this-boot\n")
    monkeypatch.setattr(service, "BOOT_ID", tmp_path / "boot_id")
    args = argparse.Namespace(file=str(tmp_path / "b.raucb"), data=str(data), yes=True,
                              reboot_now=False)  # fmt: skip
    assert await cli._install_async(args, rauc) == 1
    err = capsys.readouterr().err
    assert "not installed, nothing was written: the update to 1.4.0 is on trial" in err
    assert not [c for c in log.read_text().splitlines() if c.startswith(("install", "status mark"))]
    assert read_record(data) == TRIAL_OF_B


@pytest.mark.parametrize("on_trial", [True, False])
async def test_the_web_upload_is_refused_before_it_starts_while_an_update_is_on_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_trial: bool
):
    """Not after minutes of uploading: the page says why at once (409) and nothing is written."""
    from dynexport.web.updates import UPLOAD_FILE, UpdateError, Updates

    rauc, _log = scripted_rauc(tmp_path, monkeypatch)  # slot B runs
    data = tmp_path / "data"
    data.mkdir()
    write_record(data, TRIAL_OF_B if on_trial else TRIAL_OF_B.moved_to("committed"))
    updates = Updates(data, rauc)
    if on_trial:
        with pytest.raises(UpdateError) as refused:
            await updates.start(1000)
        assert refused.value.status == 409
        assert refused.value.message.startswith("not now: the update to 1.4.0 is on trial")
        assert not (data / UPLOAD_FILE).exists() and updates.state.phase == "idle"
    else:
        assert (await updates.start(1000))["phase"] == "uploading"
        assert (data / UPLOAD_FILE).exists()


async def test_an_install_whose_record_cannot_be_written_afterwards_says_what_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The data partition full after RAUC wrote the slot: no exception into the web server or
    the update URL's task, and a message saying the running system is unchanged. It is: the
    slot is made the next boot only right before the reboot, and nothing reboots into it; the
    record, left at installing, reads "interrupted" once the installer is done."""
    from dynexport.update import install, service

    rauc, log = scripted_rauc(tmp_path, monkeypatch)  # slot B runs
    data = tmp_path / "data"
    data.mkdir()
    real_write = service.write_record

    def full_disk(folder: Path, record: UpdateRecord, *more: object) -> None:
        if record.state != "installing":
            raise OSError(28, "No space left on device")
        real_write(folder, record)

    monkeypatch.setattr(install, "write_record", full_disk)

    async def progress(line: str) -> None:
        pass

    info = BundleInfo("dynexport-rpi4_64", "1.5.0", "CN = test")
    said = await install.install_verified(
        data, rauc, tmp_path / "b.raucb", info, progress, origin="t", this_boot="this-boot"
    )
    assert said is not None and said.startswith("1.5.0 was written to slot A, but the update ")
    assert "No space left on device" in said and "the running system is unchanged" in said
    assert not [c for c in log.read_text().splitlines() if c.startswith("status mark")]
    record = read_record(data)
    assert record is not None and record.state == "installing"
    report = service.report_of(record, data, None, record.boot_id)  # its installer done
    assert report.phase == "failed" and "this system is unchanged" in (report.message or "")


async def test_a_web_upload_that_would_fill_the_data_partition_is_refused_at_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from dynexport.web import updates as web_updates

    data = tmp_path / "data"
    updates = web_updates.Updates(data, Rauc(program="/nonexistent/rauc"))
    free = 100 * 1024 * 1024
    usage = shutil.disk_usage(tmp_path)._replace(free=free)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
    with pytest.raises(web_updates.UpdateError) as refused:
        await updates.start(free - 8 * 1024 * 1024)  # fits, but not with 16 MiB to spare
    assert refused.value.status == 507
    assert refused.value.message.startswith("not enough space on the data partition: 104.9 MB")
    assert not (data / web_updates.UPLOAD_FILE).exists()
    assert (await updates.start(free - 17 * 1024 * 1024))["phase"] == "uploading"


async def test_a_missing_rauc_is_a_rauc_error_not_an_os_error(tmp_path: Path) -> None:
    """Every caller handles RaucError (the service never raises for RAUC); an OSError from a
    rauc that is not installed escaped them all (a development machine, a broken image)."""
    rauc = Rauc(program=str(tmp_path / "no-rauc"))
    with pytest.raises(RaucError, match=r"rauc status: .*no-rauc cannot be run"):
        await rauc.status()

    async def progress(line: str) -> None:
        pass

    with pytest.raises(RaucError, match=r"rauc install: .*no-rauc cannot be run"):
        await rauc.install(str(tmp_path / "b.raucb"), "A", progress)


async def test_a_rauc_that_never_answers_is_stopped_and_is_a_rauc_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung RAUC service (D-Bus) held a web request, an install's claim or a commit forever;
    every call is bounded, the hung ``rauc`` is killed, and the caller gets a RaucError."""
    rauc, log = scripted_rauc(tmp_path, monkeypatch, bound_s=HANG_BOUND_S, HANG_STATUS="1")
    with pytest.raises(RaucError, match=r"rauc status: no answer in 5 s .*hung.*stopped"):
        await rauc.status()
    assert gone(Path(f"{log}.pid"))


async def test_an_install_that_stops_making_progress_is_stopped_recorded_failed_and_not_activated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``rauc install`` that hangs after its first line: stopped after its silence bound, the
    slot never activated (the device keeps booting the running slot), the record ``failed``
    with the reason, so that the next install is not refused as "being installed now"."""
    from dynexport.update.install import install_verified, update_under_way
    from dynexport.update.rauc import BundleInfo, parse_status
    from dynexport.update.service import read_record

    rauc, log = scripted_rauc(tmp_path, monkeypatch, bound_s=HANG_BOUND_S, HANG_INSTALL="1")
    data = tmp_path / "data"
    data.mkdir()
    seen: list[str] = []

    async def progress(line: str) -> None:
        seen.append(line)

    info = BundleInfo("dynexport-rpi4_64", "1.5.0", "CN = test")
    said = await install_verified(
        data, rauc, tmp_path / "b.raucb", info, progress, origin="the test", this_boot="boot-1"
    )
    assert said is not None and said.startswith("install failed, the running system is unchanged")
    assert "no progress for 5 s (its last words: installing); stopped" in said
    assert seen == ["installing"]
    assert gone(Path(f"{log}.pid"))
    assert [ln for ln in log.read_text().splitlines() if "mark-active" in ln] == []
    record = read_record(data)
    assert record is not None and record.state == "failed"
    assert record.reason is not None and "no progress" in record.reason
    assert update_under_way(data, parse_status(json.dumps(STATUS)), "boot-1") is None


@pytest.mark.parametrize("reboot_now", [True, False], ids=["reboot-now", "at-a-quiet-moment"])
async def test_the_install_command_notes_whether_it_asked_for_the_reboot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reboot_now: bool
):
    """``--reboot-now`` asks for the trial reboot itself, and the record says so before the
    request is written; without it the service asks later (and notes it then). On the Pi 4/5
    a record never asked for, found on the old slot after a reset, is a trial still to come."""
    from dynexport.update import cli

    rauc, log = scripted_rauc(tmp_path, monkeypatch)  # slot B runs
    data = tmp_path / "data"
    data.mkdir()
    args = argparse.Namespace(file=str(tmp_path / "b.raucb"), data=str(data), yes=True,
                              reboot_now=reboot_now)  # fmt: skip
    assert await cli._install_async(args, rauc) == 0
    record = read_record(data)
    assert record is not None and (record.state, record.target) == ("trial", "A")
    assert record.reboot_asked is reboot_now
    request = data / REBOOT_REQUEST
    assert (request.read_text() if request.exists() else None) == (
        f"trial {record.boot_id}\n" if reboot_now else None
    )
    # activated with --reboot-now once the record says "trial" (the service's confirmation on
    # the Pi skips a boot with such a record: it would delete tryboot.txt); else the service
    # does it right before its own reboot
    activations = log.read_text().splitlines().count("status mark-active rootfs.0")
    assert activations == (1 if reboot_now else 0)


async def test_the_reboot_command_reboots_into_the_installed_update_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """``dynexport update reboot``: an update installed without --reboot-now is rebooted into
    now, not at the service's quiet moment: its slot made the next boot, the record noting that
    the reboot was asked for (a reset on the way then reads as a rollback, never as a trial
    still to come), and the request written. Nothing installed in this boot: nothing done."""
    from dynexport.update import cli

    rauc, log = scripted_rauc(tmp_path, monkeypatch)  # slot B runs
    data = tmp_path / "data"
    data.mkdir()
    args = argparse.Namespace(data=str(data))
    assert await cli._reboot_async(args, rauc) == 1
    assert "no installed update waits for its reboot" in capsys.readouterr().err
    install = argparse.Namespace(file=str(tmp_path / "b.raucb"), data=str(data), yes=True,
                                 reboot_now=False)  # fmt: skip
    assert await cli._install_async(install, rauc) == 0
    assert not (data / REBOOT_REQUEST).exists()
    assert await cli._reboot_async(args, rauc) == 0
    record = read_record(data)
    assert record is not None and record.state == "trial" and record.reboot_asked is True
    assert (data / REBOOT_REQUEST).read_text() == f"trial {record.boot_id}\n"
    assert log.read_text().splitlines().count("status mark-active rootfs.0") == 1
