"""The last update's fate, as the status API and the UI say it."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.update.state import (
    RESET_REASON,
    UpdateRecord,
    parse_record,
    report,
    trial_never_booted,
)

REC = UpdateRecord("trial", "1.4.0", target="B", source="A", boot_id="boot-1")


def test_a_rolled_back_update_says_what_failed_and_why():
    rep = report(REC, booted="A", boot_id="boot-2", failure="it did not pass (meter silent)")
    assert rep.phase == "rolled-back"
    assert rep.message == (
        "update to 1.4.0 failed and was rolled back, because it did not pass (meter silent)"
    )


def test_a_reset_during_the_trial_is_reported_as_the_reason_without_a_failure_note():
    rep = report(REC, booted="A", boot_id="boot-2", failure=None)
    assert rep.phase == "rolled-back"
    assert rep.message == f"update to 1.4.0 failed and was rolled back, because {RESET_REASON}"


def test_installed_but_not_yet_rebooted_is_pending_not_rolled_back():
    rep = report(REC, booted="A", boot_id="boot-1", failure=None)
    assert rep.phase == "reboot-pending"


def test_the_trial_boot_itself_is_a_trial():
    assert report(REC, booted="B", boot_id="boot-2", failure=None).phase == "trial"


def test_committed_and_failed_installs():
    assert report(REC.moved_to("committed"), "B", "boot-3", None).message == "updated to 1.4.0"
    failed = report(REC.moved_to("failed", "rauc install: no space"), "A", "boot-1", None)
    assert failed.phase == "failed"
    assert (
        failed.message == "update to 1.4.0 failed before its reboot, because rauc install: no space"
    )


def test_an_install_cut_short_by_a_reset_leaves_the_system_unchanged():
    rep = report(REC.moved_to("installing"), "A", "boot-2", None)
    assert rep.phase == "failed" and "interrupted" in (rep.message or "")


def test_no_record_no_update():
    assert report(None, "A", "x", None).to_status() == {
        "phase": "none", "version": None, "message": None
    }  # fmt: skip


def test_the_record_round_trips_and_the_shell_can_read_state_and_target():
    raw = REC.to_json()
    assert parse_record(raw) == REC
    lines = raw.decode().splitlines()
    assert ' "state": "trial",' in lines
    assert ' "target": "B",' in lines


def test_a_damaged_record_is_ignored_not_trusted():
    assert parse_record(b"{not json") is None
    assert parse_record(b'{"state": "exploded"}') is None
    assert parse_record(b'{"state": "trial", "version": 1}') is None
    # nested too deep for the decoder: RecursionError reached the status, which the web
    # server's history recorder builds every second, and took the web server down
    assert parse_record(b"[" * 100_000) is None


@settings(max_examples=200, deadline=None)
@given(
    state=st.sampled_from(["installing", "trial", "committed", "failed"]),
    booted=st.sampled_from(["A", "B", None]),
    same_boot=st.booleans(),
)
def test_rolled_back_is_reported_only_for_a_trial_not_running_after_a_reboot(
    state, booted, same_boot
):
    rec = REC.moved_to(state)
    rep = report(rec, booted, "boot-1" if same_boot else "boot-9", None)
    rolled = rep.phase == "rolled-back"
    trial_ended = state == "trial" and not same_boot and booted != "B"
    # committed, yet the other slot runs: the deadline rolled it back while its commit was
    # under way, or the slot was given up since: "updated to" would name a system not running
    committed_elsewhere = state == "committed" and booted == "A"
    assert rolled == (trial_ended or committed_elsewhere)


def test_a_slot_activated_before_its_record_said_trial_is_on_trial_when_it_boots():
    # the power was cut between `rauc status mark-active` and the record's move to "trial":
    # the written slot boots with the install's record; the slot was complete, so this is its trial
    rep = report(REC.moved_to("installing"), booted="B", boot_id="boot-2", failure=None)
    assert rep.phase == "trial" and rep.message == (
        "trying 1.4.0: it is kept once it passes its health check"
    )


def test_such_a_trial_rolled_back_by_the_deadline_says_why():
    rep = report(REC.moved_to("installing"), "A", "boot-3", "it did not pass its health check")
    assert rep.phase == "rolled-back"
    assert rep.message == (
        "update to 1.4.0 failed and was rolled back, because it did not pass its health check"
    )


def test_an_install_of_this_boot_whose_installer_stopped_is_reported_interrupted():
    """The watchdog restarted the service (or the command was stopped) while RAUC was writing:
    nobody will activate the slot, so the status must not say "installing" until a reboot."""
    rec = REC.moved_to("installing")
    running = report(rec, "A", "boot-1", None)
    assert (running.phase, running.message) == ("installing", "installing 1.4.0")
    gone = report(rec, "A", "boot-1", None, installer_gone=True)
    assert gone.phase == "failed"
    assert gone.message == (
        "the install of 1.4.0 was interrupted: the program installing it (the service or the "
        "update command) stopped before it finished; this system is unchanged"
    )
    # only an install of this boot: after a reboot the record speaks for itself, as before
    assert report(rec, "A", "boot-2", None, installer_gone=True) == report(rec, "A", "boot-2", None)
    assert report(REC, "A", "boot-1", None, installer_gone=True).phase == "reboot-pending"


def test_the_installer_survives_the_round_trip_and_each_move_and_old_records_have_none():
    rec = UpdateRecord("installing", "1.4.0", "B", "A", "boot-1", installer="812:4501")
    assert parse_record(rec.to_json()) == rec
    assert rec.moved_to("trial").installer == "812:4501"
    assert rec.moved_to("failed", "no space").reason == "no space"
    old = b'{"state": "trial", "version": "1.4.0", "target": "B", "source": "A", "boot_id": "b"}'
    parsed = parse_record(old)
    assert parsed is not None and parsed.installer is None
    odd = old.replace(b"}", b', "installer": 812}')
    parsed = parse_record(odd)
    assert parsed is not None and parsed.installer is None  # not a string: ignored


UNASKED = UpdateRecord(
    "trial", "1.4.0", target="B", source="A", boot_id="boot-1", reboot_asked=False
)


def test_a_reset_before_the_reboot_was_asked_is_no_rollback():
    """The device was reset while the installed update waited for its reboot: the slot is made
    the next boot only right before the reboot is asked for (on the Pi 4/5 that is only
    tryboot.txt, which a normal boot ignores anyway), so the old slot ran again and the new one
    was never tried. The update is still to be tried, not "failed and was rolled back"."""
    rep = report(UNASKED, booted="A", boot_id="boot-2", failure=None)
    assert rep.phase == "reboot-pending"
    assert rep.message == (
        "1.4.0 is installed, but the device restarted before its reboot into it (a power cut, "
        "the watchdog or a reboot by hand); it reboots into it at a quiet moment"
    )


def test_once_the_reboot_was_asked_the_old_slot_running_is_a_rollback():
    asked = replace(UNASKED, reboot_asked=True)
    rep = report(asked, booted="A", boot_id="boot-2", failure=None)
    assert rep.phase == "rolled-back" and RESET_REASON in (rep.message or "")
    # a record written before the note existed (its slot activated at the install) is taken as
    # asked: never tried twice
    old = replace(UNASKED, reboot_asked=None)
    assert report(old, "A", "boot-2", None).phase == "rolled-back"


def test_a_rollback_reason_says_the_trial_ran_even_without_the_note():
    rep = report(UNASKED, "A", "boot-2", "it did not pass its health check")
    assert rep.phase == "rolled-back"


def test_the_note_survives_the_round_trip_and_a_wrong_type_is_ignored():
    assert parse_record(UNASKED.to_json()) == UNASKED
    assert UNASKED.moved_to("committed").reboot_asked is False
    odd = UNASKED.to_json().replace(b'"reboot_asked": false', b'"reboot_asked": "yes"')
    parsed = parse_record(odd)
    assert parsed is not None and parsed.reboot_asked is None


@settings(max_examples=400, deadline=None)
@given(
    state=st.sampled_from(["installing", "trial", "committed", "failed"]),
    asked=st.sampled_from([True, False, None]),
    booted=st.sampled_from(["A", "B", None]),
    same_boot=st.booleans(),
    failure=st.sampled_from([None, "", "it did not pass its health check"]),
    gone=st.booleans(),
)
def test_only_a_trial_whose_reboot_never_came_is_still_to_come(
    state, asked, booted, same_boot, failure, gone
):
    """Whatever the record and the boot, "rolled back" is said of a trial of an earlier boot
    while the old slot runs, and "still to come" instead exactly when its reboot was never asked
    for and no rollback reason was written; the note changes no other answer."""
    rec = replace(UNASKED.moved_to(state), reboot_asked=asked)
    boot = "boot-1" if same_boot else "boot-9"
    rep = report(rec, booted, boot, failure, installer_gone=gone)
    # (None keeps its own meaning: a record from before the note, its slot activated at install)
    asked_now = replace(rec, reboot_asked=True if asked is False else asked)
    noted = report(asked_now, booted, boot, failure, installer_gone=gone)
    never = trial_never_booted(rec, booted, boot, failure)
    assert never == (
        state == "trial" and asked is False and booted == "A" and not same_boot and not failure
    )
    if never:
        assert (noted.phase, rep.phase) == ("rolled-back", "reboot-pending")
    else:
        assert rep == noted


def test_how_long_the_reboot_waited_survives_the_round_trip_and_garbage_is_ignored():
    waiting = replace(UNASKED, devices_waited_s=5400.5)
    assert parse_record(waiting.to_json()) == waiting
    for odd in (b'"x"', b"true", b"NaN", b"Infinity", b"-1", b"null"):
        raw = waiting.to_json().replace(b"5400.5", odd)
        parsed = parse_record(raw)
        assert parsed is not None and parsed.devices_waited_s is None, odd


def test_a_failed_installs_slot_that_boots_is_no_trial():
    """The boot loader fell back to the slot a failed install named (the running one failed:
    U-Boot's attempts spent): that slot holds the release it had before, its own; "trying X"
    or a commit as X would name a system that is not running."""
    failed = UNASKED.moved_to("failed", "rauc install: another installation is in progress")
    rep = report(failed, booted="B", boot_id="boot-5", failure=None)
    assert rep.phase == "failed" and "failed before its reboot" in (rep.message or "")


def test_only_an_older_releases_installing_record_reveals_a_trial_when_its_slot_boots():
    """Older releases activated at the install: their slot booting under an "installing" record
    was its trial (a cut before the record moved on). This release never activates at the
    install, so its slot booting is the boot loader falling back to the slot it had before."""
    older = replace(UNASKED.moved_to("installing"), reboot_asked=None)
    assert report(older, "B", "boot-5", None).phase == "trial"
    ours = UNASKED.moved_to("installing")
    rep = report(ours, "B", "boot-5", None)
    assert rep.phase == "failed" and "interrupted" in (rep.message or "")
