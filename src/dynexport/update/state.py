"""The update record on /data and what it says about the last update (pure).

``update.json`` is written before an install starts and moved on at each step, so that whatever
happens next (a failed install, a reset during the trial boot, a rollback by the deadline) the
running system can say what became of the update. Its ``"state"`` and ``"target"`` are written
on one line each: the shell fallback ``update-deadline`` reads them with sed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

RecordState = Literal["installing", "trial", "committed", "failed"]
STATES: tuple[RecordState, ...] = ("installing", "trial", "committed", "failed")
STATE_FILE = "update.json"
FAILURE_FILE = "update-failure"
"""One line: why update-deadline rolled the trial back (written by that script)."""
HEALTH_FILE = "update-health"
"""One line: the health check's latest verdict during a trial (read by update-deadline)."""
DECISION_LOCK = "update.lock"
"""flock(2)ed by whoever decides a trial's fate: update-deadline from reading the record to its
reboot, the service from its last look at the failure file to the record saying ``committed``.
Without it the two could both decide at the 4-minute mark: a commit undone by the deadline's
mark-bad (the old slot boots, the record says committed), or a mark-bad undone by the commit.
Also held, on boots that are no trial, by ``dynexport update reboot`` (and ``install
--reboot-now``) from its look at the record to its reboot request, by the service from its own
activation to its reboot request (or the activation undone), and on the Pi 4/5 by the running
slot's confirmation (its mark-good deletes tryboot.txt): none of them may land between
another's activation and its reboot. Taken before the service's in-process RAUC lock, never
after it."""
UPLOAD_FILE = "update-upload.raucb"
"""A bundle uploaded from the web page, until it is refused or installed."""
DOWNLOAD_FILE = "update-download.raucb"
"""A bundle downloaded from the update URL, until it is refused or installed."""
SPARE_BYTES = 16 * 1024 * 1024
"""The data partition keeps this much free beside a bundle being received (the history, the
schedule and the update record are written meanwhile): for the update URL's download and the web
page's upload alike."""
REBOOT_REQUEST = "reboot-request"
"""``trial`` or ``normal``: dynexport-update-reboot.path reboots as root."""


@dataclass(frozen=True)
class UpdateRecord:
    state: RecordState
    version: str
    target: str
    """Bootname of the slot written (``A``/``B``)."""
    source: str
    """Bootname of the slot the install ran on."""
    boot_id: str
    """The kernel's boot id during the install: another id means the device has rebooted since."""
    reason: str | None = None
    installer: str | None = None
    """The installing process (``<pid>:<start time>``, ``service.process_identity``): while the
    record says ``installing`` in the same boot, another process can tell an install still
    running from one whose installer is gone (the service restarted by the watchdog, the
    command stopped), which nobody will finish. None in records written before it existed."""
    configured: bool | None = None
    """Whether the site had a configuration when the update was installed: a trial that then
    waits in setup mode finds none (a release looking in the wrong place), which is no first
    boot. None in records written before it existed."""
    reboot_asked: bool | None = None
    """Whether the reboot into the new slot was asked for (``service.request_reboot``, the slot
    made the next boot just before): False from the install until the request is written
    (``trial_never_booted``). None in records written before it existed (their slot activated
    at the install: taken as asked)."""
    devices_waited_s: float | None = None
    """Seconds the reboot has waited for the devices so far (``service.reboot_when_quiet``,
    counted on the monotonic clock and noted now and then): its bound counts on from here after
    a restart of the service or a boot of the old slot."""
    trial_boot: str | None = None
    """The kernel's boot id of the boot that began this update's trial (``service.note_trial_boot``,
    written and fsync'd when the trial starts): a later boot of the update's slot that finds the
    trial still uncommitted is that trial reset before its health check passed (U-Boot gives
    the slot three attempts), never a trial of its own (``trial_reset_before_commit``). None
    until the trial starts, and in records written before it existed."""

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1) + "\n").encode()

    def moved_to(self, state: RecordState, reason: str | None = None) -> UpdateRecord:
        return replace(self, state=state, reason=reason)


def parse_record(raw: bytes) -> UpdateRecord | None:
    """The record, or None for a file that is not one (it is then ignored, never trusted).

    Never raises: an optional field of the wrong kind or out of range (a string, a negative
    number, 1 followed by 400 zeros) is read as absent, as the records written before it
    existed are; the record itself still tells a trial from a committed slot."""
    try:
        doc: Any = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep for the decoder
        return None
    if not isinstance(doc, dict) or doc.get("state") not in STATES:
        return None
    fields = ("version", "target", "source", "boot_id")
    if not all(isinstance(doc.get(k), str) for k in fields):
        return None
    reason, installer = doc.get("reason"), doc.get("installer")
    configured, asked = doc.get("configured"), doc.get("reboot_asked")
    waited, trial_boot = doc.get("devices_waited_s"), doc.get("trial_boot")
    return UpdateRecord(
        state=doc["state"],
        version=doc["version"],
        target=doc["target"],
        source=doc["source"],
        boot_id=doc["boot_id"],
        reason=reason if isinstance(reason, str) else None,
        installer=installer if isinstance(installer, str) else None,
        configured=configured if isinstance(configured, bool) else None,
        reboot_asked=asked if isinstance(asked, bool) else None,
        devices_waited_s=_seconds(waited),
        trial_boot=trial_boot if isinstance(trial_boot, str) and trial_boot else None,
    )


def _seconds(value: object) -> float | None:
    """``value`` as a finite, non-negative number of seconds; None for anything else. An integer
    beyond a float's range is one of those: ``float(10**400)`` raises OverflowError, which
    escaped ``parse_record`` and failed every status read (API, live events, MQTT) and every
    restart of the update task."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if 0 <= seconds < math.inf else None


Phase = Literal[
    "none", "installing", "reboot-pending", "trial", "committed", "rolled-back", "failed"
]

RESET_REASON = (
    "the new system was reset before it passed its health check "
    "(hardware watchdog, power cut or a reboot)"
)


@dataclass(frozen=True)
class UpdateReport:
    """What the status API and the UI say about the last update."""

    phase: Phase
    version: str | None = None
    message: str | None = None

    def to_status(self) -> dict[str, Any]:
        return {"phase": self.phase, "version": self.version, "message": self.message}


def activated_before_its_record(record: UpdateRecord, booted: str | None, boot_id: str) -> bool:
    """True when this boot runs the slot an install (of an earlier boot) was writing, though its
    record still says ``installing``: the power was cut after the slot was activated and before
    the record said ``trial`` (an install by an older release, which activated at the install,
    or ``rauc install`` by hand). The slot is activated only once RAUC has written it
    completely, and marked bad before its writing starts, so this is its trial. Only a record
    from before ``reboot_asked`` existed (None): this release's installs never activate, so
    their slot booting (as a ``failed`` record's) is the boot loader falling back to the slot
    it had before, its own release, after the running one failed: no trial of this update."""
    return (
        record.state == "installing"
        and record.reboot_asked is None
        and record.boot_id != boot_id
        and booted == record.target
    )


def trial_reset_before_commit(
    record: UpdateRecord | None, booted: str | None, boot_id: str
) -> bool:
    """True when this boot runs the slot of an update whose trial another boot began and never
    committed: that trial was reset before its health check passed (a hang and the hardware
    watchdog, a power cut, a reboot by hand), and the boot loader started the slot again.
    Only U-Boot does (``BOOT_<S>_LEFT`` gives a slot three attempts); GRUB skips a slot on
    trial and the Pi 4/5 firmware's trial is one-shot, so there the old slot boots. It is a
    failed trial, not a new one: checked again and committed, a release that resets the
    device now and then became permanent on its second or third try."""
    return (
        record is not None
        and record.state == "trial"
        and booted is not None
        and booted == record.target
        and record.trial_boot is not None
        and record.trial_boot != boot_id
    )


def waits_for_its_reboot(record: UpdateRecord | None, boot_id: str) -> bool:
    """True when ``record`` is an install of boot ``boot_id`` that waits for its reboot into the
    new slot (the record says ``trial`` in the very boot that installed it)."""
    return record is not None and record.state == "trial" and record.boot_id == boot_id


def trial_never_booted(
    record: UpdateRecord | None, booted: str | None, boot_id: str, failure: str | None
) -> bool:
    """True when an update's trial boot never happened: the device was reset (a power cut, the
    watchdog, a reboot by hand) while the installed update waited for its reboot, before the
    reboot was asked for. The slot is made the next boot only right before that request
    (``service.reboot_when_quiet``; on the Pi 4/5 that is only ``tryboot.txt``, which a normal
    boot ignores anyway), so the old slot came back and the new one was never tried. A record
    that says the reboot was asked for (or predates saying so: activated at its install) is a
    trial that ran, or at least was started; a rollback reason says it ran."""
    return (
        record is not None
        and record.state == "trial"
        and record.boot_id != boot_id
        and booted is not None
        and booted == record.source
        and booted != record.target
        and record.reboot_asked is False
        and not (failure and failure.strip())
    )


NEVER_BOOTED = (
    "{v} is installed, but the device restarted before its reboot into it (a power cut, the "
    "watchdog or a reboot by hand); it reboots into it at a quiet moment"
)


INSTALLER_GONE = (
    "the install of {v} was interrupted: the program installing it (the service or the update "
    "command) stopped before it finished; this system is unchanged"
)


def report(
    record: UpdateRecord | None,
    booted: str | None,
    boot_id: str,
    failure: str | None,
    *,
    installer_gone: bool = False,
) -> UpdateReport:
    """The last update's fate from its record, the running slot (RAUC) and this boot's id.

    ``installer_gone``: the process named by an ``installing`` record of this boot has ended
    (``service.installer_gone``). The slot it was writing is never activated then (only the
    installer activates it, after RAUC has finished), so the running system stays as it is."""
    if record is None:
        return UpdateReport("none")
    v = record.version
    same_boot = record.boot_id == boot_id
    if record.state == "installing":
        if same_boot:
            if installer_gone:
                return UpdateReport("failed", v, INSTALLER_GONE.format(v=v))
            return UpdateReport("installing", v, f"installing {v}")
        rolled_back = bool(failure and failure.strip())  # by the deadline, as a trial
        if not rolled_back and not activated_before_its_record(record, booted, boot_id):
            return UpdateReport(
                "failed", v, f"the install of {v} was interrupted; this system is unchanged"
            )
        # else a trial whose record lagged its activation: reported as one, below
    if record.state == "failed":
        why = record.reason or "unknown"
        return UpdateReport("failed", v, f"update to {v} failed before its reboot, because {why}")
    if record.state == "committed":
        if booted is not None and record.target is not None and booted != record.target:
            # committed, yet the other slot runs: the deadline rolled the trial back while its
            # commit was under way (or the slot was given up since); it is not this system
            why = (failure or "").strip() or "the system runs the other slot"
            message = f"update to {v} was committed but rolled back, because {why}"
            return UpdateReport("rolled-back", v, message)
        return UpdateReport("committed", v, f"updated to {v}")
    if same_boot:
        return UpdateReport("reboot-pending", v, f"{v} is installed; rebooting into it")
    if booted == record.target:
        return UpdateReport("trial", v, f"trying {v}: it is kept once it passes its health check")
    if trial_never_booted(record, booted, boot_id, failure):
        return UpdateReport("reboot-pending", v, NEVER_BOOTED.format(v=v))
    why = (failure or "").strip() or RESET_REASON
    message = f"update to {v} failed and was rolled back, because {why}"
    return UpdateReport("rolled-back", v, message)
