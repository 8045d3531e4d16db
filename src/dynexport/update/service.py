"""The update tasks inside ``dynexport run``: commit a healthy trial boot, reboot after an install.

Both are trio tasks over an App-like object (the App itself; tests pass their own). They read and
write the update record in the data folder (``state.py``) and talk to RAUC (``rauc.py``).

- ``commit_when_healthy`` runs for the life of the process. On a trial boot of a new slot it
  samples the App every ``interval`` seconds, writes the health verdict where the shell fallback
  can read it, and commits (``rauc status mark-good``) once ``health.judge`` allows. If the
  verdict never comes, ``update-deadline`` (a systemd timer, plain shell) marks the slot bad and
  reboots into the old one. On every other boot of an A/B system it confirms the running slot
  (``mark-good``) once the service is READY: boot loaders that count attempts (U-Boot's
  ``BOOT_<S>_LEFT``, GRUB's ``<S>_TRY``) spend one at each boot and would otherwise leave a
  committed slot after a few reboots. When an install in this boot is waiting for its reboot,
  it hands over to ``reboot_when_quiet``.
- ``reboot_when_quiet`` waits (at most ``max_wait`` s) until no limit change is due within
  ``QUIET_S``, leaves every inverter at its fail-safe limit and asks for the reboot.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import trio

from dynexport.system.storage import atomic_write
from dynexport.update import health
from dynexport.update.rauc import Rauc, RaucError, RaucStatus
from dynexport.update.state import (
    DECISION_LOCK,
    FAILURE_FILE,
    HEALTH_FILE,
    REBOOT_REQUEST,
    STATE_FILE,
    UpdateRecord,
    UpdateReport,
    activated_before_its_record,
    parse_record,
    report,
    trial_never_booted,
    trial_reset_before_commit,
    waits_for_its_reboot,
)

log = logging.getLogger("dynexport.update")

QUIET_S = 300.0
"""No limit change may be due this soon (seconds) when the reboot starts."""
MAX_WAIT_S = 900.0
"""The reboot waits at most this long for a quiet moment (the fail-safe covers the reboot)."""
DEVICES_MAX_WAIT_S = 18 * 3600.0
"""... and, before that, at most this long for the devices the trial's health check needs
(``health.devices_silent``): inverters asleep from dusk to dawn, the longest winter night
with margin. A trial started without them would be rolled back; past this bound (a device
gone for good) the reboot goes ahead, and the rollback says why."""
DEVICES_STEADY_S = 300.0
"""... and they must have been answering for this long without a lapse: inverters switch on and
off at first light, and the trial needs them for its two minutes after the reboot."""
ACTIVATE_TRIES = 10
"""The new slot is made the next boot again right before the reboot is asked for; after this
many failed tries (``CONFIRM_RETRY_S`` apart) the update is recorded failed and not rebooted."""
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class _Reading(Protocol):
    last_reading: Any


class _Link(Protocol):
    @property
    def state(self) -> Any: ...


class AppLike(Protocol):
    """What the update tasks read of the App (app.App has all of it)."""

    ready: bool
    setup_mode: bool

    @property
    def meter(self) -> Any: ...

    @property
    def inverters(self) -> Sequence[Any]: ...

    @property
    def progress(self) -> Any: ...

    async def leave_fail_safe(self) -> None: ...

    def limits_outlook(self, hours: float = 24.0) -> list[tuple[float, Any]]: ...


def boot_id(path: Path = BOOT_ID) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


PROC = Path("/proc")


def process_identity(pid: int | None = None, proc: Path = PROC) -> str | None:
    """``<pid>:<start time>`` of a running process (its start in clock ticks after boot, from
    ``/proc/<pid>/stat``): with the boot id, it names one process even if its pid is reused.
    None when there is no such process (or no /proc)."""
    pid = os.getpid() if pid is None else pid
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; starttime is field 22
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return f"{pid}:{fields[19]}"


def installer_gone(
    record: UpdateRecord | None,
    this_boot: str,
    proc: Path = PROC,
    data_dir: Path | None = None,
) -> bool:
    """True when ``record`` is an install of this boot whose installing process has ended, or,
    for an install by this very process, that no longer runs (``claim``'s slot of ``data_dir``
    given back: the task was cancelled, as when the web server's task restarted, and the status
    said "installing" until the next boot).

    A record without an installer (written before the field existed) is taken as running, as
    it was before. The pid's own /proc entry is asked, which works across users (the command
    runs as root, the service as dynexport)."""
    if record is None or record.state != "installing" or record.boot_id != this_boot:
        return False
    if record.installer is None:
        return False
    if data_dir is not None and record.installer == process_identity(proc=proc):
        return not installing(data_dir)
    pid, _, _ = record.installer.partition(":")
    if not pid.isdigit():
        return False  # not written by this code: not trusted either way
    return process_identity(int(pid), proc) != record.installer


_claimed: set[Path] = set()


def claim(data_dir: Path) -> bool:
    """Takes the one install slot of ``data_dir`` (False: an install is already running).

    A plain set, not a lock: trio runs one task at a time, and this never awaits.
    """
    key = data_dir.resolve()
    if key in _claimed:
        return False
    _claimed.add(key)
    return True


def release(data_dir: Path) -> None:
    _claimed.discard(data_dir.resolve())


def installing(data_dir: Path) -> bool:
    return data_dir.resolve() in _claimed


UPLOAD_IDLE_S = 600.0
"""A web upload that has received nothing for this long no longer holds the update URL back
(a tab closed mid-upload)."""

_receiving: dict[Path, float] = {}
"""Web uploads of bundles being received, by data folder: when their last piece came (trio's
clock)."""


def upload_received(data_dir: Path, now: float | None) -> None:
    """Notes that a web upload into ``data_dir`` is being received (a piece came at ``now``),
    or, with None, that it is no longer (complete, refused, given up)."""
    if now is None:
        _receiving.pop(data_dir.resolve(), None)
    else:
        _receiving[data_dir.resolve()] = now


def upload_receiving(data_dir: Path, now: float) -> bool:
    """Whether a web upload into ``data_dir`` is being received: the update URL's download
    then waits. Its bytes still to come are not yet off the free space both size checks
    count, so both could pass and together fill the data partition."""
    last = _receiving.get(data_dir.resolve())
    return last is not None and now - last < UPLOAD_IDLE_S


CONFIG_FILES = ("config.json", "config.last-good.json")
"""The site's configuration in the data folder (the appliance's ``--config``), and the copy the
service runs on when it is lost (system/config_file.py)."""


def install_record(
    version: str, target: str, source: str, data_dir: Path | None = None
) -> UpdateRecord:
    """The record of an install this process is about to make: of this boot, by this process;
    with ``data_dir``, whether the site has a configuration there now."""
    configured = None
    if data_dir is not None:
        configured = any((data_dir / name).is_file() for name in CONFIG_FILES)
    return UpdateRecord(
        "installing",
        version,
        target,
        source,
        boot_id(),
        installer=process_identity(),
        configured=configured,
        reboot_asked=False,
    )


def read_record(data_dir: Path) -> UpdateRecord | None:
    try:
        return parse_record((data_dir / STATE_FILE).read_bytes())
    except OSError:
        return None


def write_record(
    data_dir: Path, record: UpdateRecord, owner: tuple[int, int] | None = None
) -> None:
    """``owner``: the service's (uid, gid) when root writes it (``dynexport update install``)."""
    atomic_write(data_dir / STATE_FILE, record.to_json(), mode=0o600, owner=owner)


def begin_install(
    data_dir: Path, record: UpdateRecord, owner: tuple[int, int] | None = None
) -> None:
    """Records an install about to start; what an earlier update left is cleared first.

    An old health verdict or rollback reason would otherwise be reported as this update's
    (``update-deadline`` quotes the health file, ``report`` the failure file).
    """
    for name in (HEALTH_FILE, FAILURE_FILE):
        (data_dir / name).unlink(missing_ok=True)
    write_record(data_dir, record, owner)


def _read_line(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()[:500] or None
    except OSError:
        return None


def update_report(data_dir: Path, status: RaucStatus | None, this_boot: str) -> UpdateReport:
    """The last update's fate for ``App.status()`` (``"update"``): RAUC's view plus the record."""
    return report_of(read_record(data_dir), data_dir, status, this_boot)


def report_of(
    record: UpdateRecord | None,
    data_dir: Path,
    status: RaucStatus | None,
    this_boot: str,
) -> UpdateReport:
    """``update_report`` for a record the caller has read already (one read, one view)."""
    return report(
        record,
        None if status is None else status.booted,
        this_boot,
        _read_line(data_dir / FAILURE_FILE),
        installer_gone=installer_gone(record, this_boot, data_dir=data_dir),
    )


RAUC_SYSTEM_CONF = Path("/etc/rauc/system.conf")


def tryboot_backend(conf: Path = RAUC_SYSTEM_CONF) -> bool:
    """Whether RAUC selects slots through the Pi 4/5 firmware's trial boot: the image's only
    custom backend (``rauc-tryboot``; update-reboot asks the same question the same way)."""
    try:
        text = conf.read_text(errors="replace")
    except OSError:
        return False
    return any(line.strip() == "bootloader=custom" for line in text.splitlines())


def observe(app: AppLike, now: float, record: UpdateRecord | None = None) -> health.Observation:
    """What the health check sees of ``app`` at trio time ``now`` (the devices' reading times
    are trio times too), on the trial of ``record``."""
    meter = app.meter
    inverters = list(app.inverters)
    last = getattr(app.progress, "last", {}).get("controller")
    gap = getattr(app.progress, "limits", {}).get("controller", health.MAX_DECISION_GAP_S)

    def answering(link: Any) -> bool:
        t = link.state.last_reading
        return isinstance(t, int | float) and now - t <= health.ANSWER_FRESH_S

    problem = None
    if app.setup_mode:
        problems = list(getattr(app, "config_problems", ()) or ())
        if problems:
            problem = str(problems[0])
        elif getattr(app, "config_unreadable", False):
            problem = "the configuration file cannot be read"
        elif record is not None and record.configured:
            problem = "the site was configured when the update was installed; none is found"
    output = getattr(app, "output", None)
    mode = getattr(output, "mode", None)
    return health.Observation(
        now=now,
        ready=bool(app.ready),
        setup_mode=bool(app.setup_mode),
        meter_configured=meter is not None,
        meter_answered=meter is not None and answering(meter),
        inverters_configured=len(inverters),
        inverter_answered=any(answering(i) for i in inverters),
        last_decision=last if isinstance(last, int | float) else None,
        max_decision_gap_s=gap if isinstance(gap, int | float) else health.MAX_DECISION_GAP_S,
        config_problem=problem,
        controller_mode=mode if isinstance(mode, str) else None,
    )


def next_change_in(outlook: Sequence[tuple[float, Any]], now: float) -> float | None:
    """Seconds until the next change of the effective limits (None: none in the outlook)."""
    later = [t - now for t, _ in outlook if t > now]
    return min(later) if later else None


async def reboot_when_quiet(
    app: AppLike,
    data_dir: Path,
    kind: str = "trial",
    *,
    wall_clock: Callable[[], float],
    rauc: Rauc | None = None,
    rauc_lock: trio.Lock | None = None,
    quiet_s: float = QUIET_S,
    max_wait: float = MAX_WAIT_S,
    devices_max_wait: float = DEVICES_MAX_WAIT_S,
    devices_steady_s: float = DEVICES_STEADY_S,
    interval: float = 5.0,
    this_boot: str | None = None,
) -> bool:
    """Reboots into the installed update once the devices answer and at a quiet moment: its slot
    made the next boot and every inverter left at its fail-safe limit first. True once the
    reboot is asked for (the root-owned dynexport-update-reboot.path does it, and systemd then
    stops the service).

    ``rauc``: the slot is made the next boot right before (``_activate_again``; the install
    left that for now, and on the Pi 4/5 a confirmation of the running slot deletes
    tryboot.txt); False when it cannot be, and nothing is rebooted. None: RAUC is asked
    nothing (the slot is taken as activated).
    """
    this_boot = boot_id() if this_boot is None else this_boot
    while True:
        await _wait_devices_and_quiet(
            app,
            data_dir,
            wall_clock,
            quiet_s=quiet_s,
            max_wait=max_wait,
            devices_max_wait=devices_max_wait,
            devices_steady_s=devices_steady_s,
            interval=interval,
        )
        if rauc is None:
            await _ask_for_the_reboot(app, data_dir, kind, this_boot)
            return True
        lock = rauc_lock or trio.Lock()
        # Held from the activation to the request (or the activation undone): ``dynexport
        # update reboot`` in between would undo this activation if its own failed.
        async with decision_lock(data_dir, interval):
            activated = await _activate_again(data_dir, rauc, lock, this_boot)
            if activated is None:
                return False
            # RAUC may have taken minutes: devices gone quiet meanwhile (dusk) are waited for
            # again, but not with the slot activated (on U-Boot and GRUB a reset would start
            # the trial)
            silent = health.devices_silent(observe(app, trio.current_time()))
            if (
                silent is None
                or _devices_waited(data_dir) >= devices_max_wait
                # activated for good: better the trial now than a reset's, unchecked, later;
                # or rebooted into by hand before (the fail-safe limits are left all the same)
                or await _back_to_the_running_slot(data_dir, rauc, lock, activated) != "undone"
            ):
                await _ask_for_the_reboot(app, data_dir, kind, this_boot)
                return True
        log.info("reboot after the update waits again: %s", silent)


async def _ask_for_the_reboot(app: AppLike, data_dir: Path, kind: str, this_boot: str) -> None:
    """Every inverter left at its fail-safe limit, the reboot noted as asked for, and asked."""
    log.warning("rebooting for the update: leaving every inverter at its fail-safe limit")
    await app.leave_fail_safe()
    _note_reboot_asked(data_dir, this_boot)
    request_reboot(data_dir, kind, this_boot)


DEVICES_WAIT_NOTE_S = 1800.0
"""How often the time waited for the devices is written to the record (at most 36 writes in
the 18 hours): a restart of the service or a boot of the old slot goes on from there."""


async def _wait_devices_and_quiet(
    app: AppLike,
    data_dir: Path,
    wall_clock: Callable[[], float],
    *,
    quiet_s: float,
    max_wait: float,
    devices_max_wait: float,
    devices_steady_s: float,
    interval: float,
) -> None:
    """Until the devices the trial needs have answered for ``devices_steady_s`` (at most
    ``devices_max_wait`` s of waiting in all: the seconds waited are kept in the record,
    ``devices_waited_s``, counted on the monotonic clock, so neither a restart of the service,
    nor a clock set or stepped, nor hours powered off start or spend them) and no limit change
    is due within ``quiet_s`` (at most ``max_wait`` s of that, counted while the devices
    answer). Devices that fall silent while the quiet moment is awaited (dusk) send it back to
    waiting for them."""
    key = _folder_key(data_dir)
    start = trio.current_time() - _devices_waited(data_dir)
    noted = trio.current_time()
    answering_since: float | None = None
    quiet_since: float | None = None
    try:
        while True:
            now = trio.current_time()
            if now - noted >= DEVICES_WAIT_NOTE_S:
                noted = now
                _note_devices_waited(data_dir, min(now - start, devices_max_wait))
            silent = health.devices_silent(observe(app, now))
            if now - start >= devices_max_wait:
                if silent is not None and _device_waits.get(key) is not None:
                    log.warning(
                        "reboot after the update: %s after %.0f h; rebooting without it (the "
                        "trial will be rolled back unless it answers then)",
                        silent,
                        devices_max_wait / 3600,
                    )
                    _device_waits.pop(key, None)
                silent = None  # waited long enough: the trial's rollback will say which
                answering_since = start - devices_steady_s
            if silent is not None:
                answering_since = quiet_since = None
                if _device_waits.get(key) != silent:
                    log.info("reboot after the update waits: %s", silent)
                _device_waits[key] = silent
                await trio.sleep(interval)
                continue
            answering_since = now if answering_since is None else answering_since
            if now - answering_since < devices_steady_s:
                _device_waits[key] = (
                    f"they have answered for {now - answering_since:.0f} s of the "
                    f"{devices_steady_s:.0f} s asked for"
                )
                await trio.sleep(interval)
                continue
            _device_waits.pop(key, None)
            quiet_since = now if quiet_since is None else quiet_since
            if now - quiet_since >= max_wait:
                break
            try:
                due = next_change_in(app.limits_outlook(1.0), wall_clock())
            except Exception:  # an outlook that cannot be computed: wait for the bound
                log.exception("limits outlook failed while waiting to reboot")
                due = 0.0
            if due is None or due > quiet_s:
                break
            log.info("reboot after the update waits: a limit change is due in %.0f s", due)
            await trio.sleep(interval)
        _note_devices_waited(data_dir, min(trio.current_time() - start, devices_max_wait))
    finally:
        _device_waits.pop(key, None)


Undo = Literal["undone", "stuck", "asked"]
"""What became of an activation to undo: undone; maybe still in force (RAUC refused both
steps); or kept, because ``dynexport update reboot`` had asked for the reboot into it."""


async def _back_to_the_running_slot(
    data_dir: Path,
    rauc: Rauc,
    rauc_lock: trio.Lock,
    record: UpdateRecord,
    failed_why: str | None = None,
) -> Undo:
    """Makes the running slot (``record.source``) the next boot again, and the update's slot
    no boot at all: an activation undone (``undo_activation``). Activated, that slot also
    became a fallback on U-Boot and GRUB (``BOOT_x_LEFT=3``, ``x_OK=1``), and a few boots of
    the running slot that never got through (a watchdog reset, a power cut at boot) would then
    start its trial unasked, with nothing to say it was one. ``failed_why``: the update is then
    recorded failed, with why.

    Called with the decision lock held (``reboot_when_quiet``), which ``dynexport update
    reboot`` holds from its activation to its request: a record that says the reboot was asked
    for, by that command before this activation, is left alone (undone then, or recorded
    failed, the reboot would boot the old slot and read as a rollback, or the new one with a
    record that says failed)."""
    now = read_record(data_dir)
    if now is not None and now.reboot_asked and now.boot_id == record.boot_id:
        log.warning(
            "update %s: its reboot was asked for already (dynexport update reboot): slot %s "
            "stays the next boot",
            record.version,
            record.target,
        )
        return "asked"
    undo = await undo_activation(rauc, rauc_lock, record)
    if failed_why is not None and undo == "undone":
        await _record_failed(data_dir, record, failed_why)
    elif failed_why is not None:
        # RAUC refused both steps: the update's slot may still be the next boot (an activation
        # carried out after its command timed out). Recorded failed, a boot of it would be
        # confirmed without a health check; noted as asked for, it is checked as a trial, and
        # a boot of the old slot reads as its rollback. The service tries the reboot again.
        log.error("update %s: RAUC refuses to undo its activation too: if slot %s boots, it is "
                  "checked as a trial", record.version, record.target)  # fmt: skip
        _note_reboot_asked(data_dir, record.boot_id)
    return undo


async def undo_activation(rauc: Rauc, rauc_lock: trio.Lock | None, record: UpdateRecord) -> Undo:
    """The running slot made the next boot again, and the update's slot marked bad. Either one
    alone keeps the next boot off the update's slot (a slot marked bad is skipped by U-Boot and
    GRUB, and its tryboot.txt dropped on the Pi 4/5), so both are tried whatever the first
    did: "stuck" only when RAUC refused both."""
    lock = rauc_lock or trio.Lock()
    first = unbootable = True
    try:
        async with lock:
            await rauc.activate(record.source)
    except RaucError as exc:
        first = False
        log.error("update %s: slot %s cannot be made the next boot again: %s",
                  record.version, record.source, exc)  # fmt: skip
    try:
        async with lock:
            await rauc.make_unbootable(record.target)
    except RaucError as exc:
        unbootable = False
        log.error("update %s: slot %s cannot be marked bad%s: %s", record.version, record.target,
                  "" if first else " either (it may boot next)",
                  exc)  # fmt: skip
    return "undone" if first or unbootable else "stuck"


async def _activate_again(
    data_dir: Path, rauc: Rauc, rauc_lock: trio.Lock, this_boot: str
) -> UpdateRecord | None:
    """Makes the installed slot the next boot, right before the reboot is asked for (not at the
    install: a reset while the reboot waits would start the trial, at night with the inverters
    asleep, on U-Boot and GRUB; and on the Pi 4/5 a confirmation of the running slot at READY,
    by a service restarted meanwhile, or by hand deletes tryboot.txt). Its record, or None when
    RAUC refuses ``ACTIVATE_TRIES`` times (the record then says failed, with why, and the
    running slot is made the next boot again, in case a refusal was a timeout RAUC carried out
    after all) or the record is no longer (readable as) this boot's trial: an update that
    cannot be made the next boot is not rebooted into."""
    error: str = "the update record cannot be read"
    for attempt in range(ACTIVATE_TRIES):
        if attempt:
            await trio.sleep(CONFIRM_RETRY_S)
        record = read_record(data_dir)
        if record is None:
            log.error("update: the record cannot be read before the reboot (retrying)")
            continue
        if not waits_for_its_reboot(record, this_boot):
            log.error("update %s: the record moved on (%s) before the reboot: not rebooted",
                      record.version, record.state)  # fmt: skip
            return None
        try:
            async with rauc_lock:
                await rauc.activate(record.target)
        except RaucError as exc:
            error = str(exc)
            log.error("update %s: its slot cannot be made the next boot: %s (retrying)",
                      record.version, exc)  # fmt: skip
        else:
            return record
    record = read_record(data_dir)
    if record is not None and waits_for_its_reboot(record, this_boot):
        why = f"its slot could not be made the next boot ({error})"
        if await _back_to_the_running_slot(data_dir, rauc, rauc_lock, record, why) != "asked":
            log.error("update %s: not rebooted into: %s", record.version, why)
    return None


async def _record_failed(data_dir: Path, record: UpdateRecord, why: str) -> None:
    """The record says the update failed, with why; tried a few times (within 7 s, well inside
    update-deadline's minute of waiting for the lock), and logged when it cannot be written."""
    for wait in (0.0, *RECORD_RETRY_S):
        await trio.sleep(wait)
        try:
            write_record(data_dir, record.moved_to("failed", why))
        except OSError as exc:
            log.error("update %s: its failure cannot be recorded: %s", record.version, exc)
        else:
            return


_device_waits: dict[Path, str] = {}
"""Data folders whose update reboot waits for its devices, and which one is silent."""


def reboot_waits_for(data_dir: Path) -> str | None:
    """Which device the reboot into the installed update waits for (None: it does not)."""
    return _device_waits.get(_folder_key(data_dir))


def _folder_key(data_dir: Path) -> Path:
    return data_dir.resolve()  # a few lstat calls, once per wait or status


def _devices_waited(data_dir: Path) -> float:
    """Seconds the reboot of the install recorded in ``data_dir`` has waited for its devices so
    far (the record's ``devices_waited_s``; 0 for none)."""
    record = read_record(data_dir)
    if record is None or record.state != "trial" or record.devices_waited_s is None:
        return 0.0
    return record.devices_waited_s


def _note_devices_waited(data_dir: Path, seconds: float) -> None:
    """Writes how long the reboot has waited for its devices into the record (a write that
    fails is logged: the wait then counts from its last note after a restart)."""
    record = read_record(data_dir)
    if record is None or record.state != "trial" or record.devices_waited_s == seconds:
        return
    try:
        write_record(data_dir, replace(record, devices_waited_s=round(seconds, 1)))
    except OSError as exc:
        log.error("update %s: cannot note how long its reboot waited: %s", record.version, exc)


def _note_reboot_asked(data_dir: Path, this_boot: str) -> None:
    """Notes in the record of this boot's install that its reboot is asked for now: a later
    boot of the old slot then knows that the trial was started (``trial_never_booted``). A note
    that cannot be written is logged and the reboot goes ahead: should that trial fail by a
    reset, the next boot takes it for one that never began and asks for it once more."""
    record = read_record(data_dir)
    if record is None or not waits_for_its_reboot(record, this_boot):
        return
    try:
        write_record(data_dir, replace(record, reboot_asked=True))
    except OSError as exc:
        log.error("update %s: cannot note that its reboot is asked for: %s", record.version, exc)


def request_reboot(
    data_dir: Path, kind: str, this_boot: str, owner: tuple[int, int] | None = None
) -> None:
    """Asks the root-owned dynexport-update-reboot.path for a reboot: ``<kind> <boot id>``.

    The boot id makes a request that outlives its boot harmless (update-reboot ignores it): a
    second request, written while the first one's reboot was under way (``--reboot-now`` and
    the service both ask), stays on /data, and acting on it at the next boot would reset the
    very trial boot it asked for, rolling a good update back.
    """
    atomic_write(
        data_dir / REBOOT_REQUEST, f"{kind} {this_boot}\n".encode(), mode=0o600, owner=owner
    )


KERNEL_CMDLINE = Path("/proc/cmdline")

FIRMWARE_TRIAL_FLAG = Path("/proc/device-tree/chosen/bootloader/tryboot")
"""Set by the Pi 4/5 firmware: a 32-bit big-endian 1 on its one-shot trial boot (tryboot)."""


def firmware_trial(flag: Path = FIRMWARE_TRIAL_FLAG) -> bool:
    """Whether the boot loader itself says this boot is a trial (only the Pi 4/5's firmware
    can: U-Boot and GRUB count attempts on every boot until the slot is confirmed)."""
    try:
        return flag.read_bytes() == b"\x00\x00\x00\x01"
    except OSError:
        return False


async def commit_when_healthy(
    app: AppLike,
    data_dir: Path,
    rauc: Rauc | None = None,
    *,
    wall_clock: Callable[[], float],
    this_boot: str | None = None,
    booted: str | None = None,
    interval: float = 2.0,
    trial_flag: Path = FIRMWARE_TRIAL_FLAG,
    rauc_conf: Path = RAUC_SYSTEM_CONF,
    cmdline: Path = KERNEL_CMDLINE,
) -> None:
    """Runs for the life of the process; see the module docstring. Never raises for RAUC.

    ``booted``: the running slot's bootname (default: ``rauc.slot=`` on the kernel command
    line); without one this is no A/B system and RAUC is asked nothing outside a trial.
    ``trial_flag``: the firmware's trial flag; ``rauc_conf``: RAUC's system.conf, which names
    the boot loader backend; ``cmdline``: the kernel command line, for U-Boot's attempts left
    (``boot_attempts_left``) (tests pass files of their own).
    """
    rauc = rauc or Rauc()
    this_boot = boot_id() if this_boot is None else this_boot
    booted = booted_slot(cmdline) if booted is None else booted
    tryboot = firmware_trial(trial_flag)
    watch = RecordWatch(data_dir)
    record = read_record(data_dir)
    pi = tryboot_backend(rauc_conf)
    never_booted = trial_never_booted(
        record, booted, this_boot, _read_line(data_dir / FAILURE_FILE)
    )
    # Held around the running slot's confirmation and the new slot's activation: on the Pi the
    # confirmation deletes tryboot.txt, so it must never land after the activation.
    rauc_lock = trio.Lock()
    confirm = _Confirm(rauc, rauc_lock, data_dir, this_boot, pi, boot_attempts_left(cmdline))
    async with trio.open_nursery() as nursery:
        if record is not None and never_booted and booted is not None:
            # The old, committed slot runs (the new one was never activated): nothing to check,
            # and it is confirmed as on any boot (U-Boot and GRUB spend an attempt at each boot;
            # on the Pi the activation before the reboot writes tryboot.txt anew, after it).
            nursery.start_soon(_confirm_boot, app, confirm, booted, interval)
            await _ask_trial_again(app, data_dir, record, this_boot, interval)
        else:
            nursery.start_soon(
                _check_this_boot, app, data_dir, confirm, record, booted, interval, tryboot
            )
        while True:  # an install made during this boot (CLI or web) waits for its reboot
            record = watch()
            ours = waits_for_its_reboot(record, this_boot)
            if ours and await reboot_when_quiet(
                app,
                data_dir,
                "trial",
                wall_clock=wall_clock,
                rauc=rauc,
                rauc_lock=rauc_lock,
                this_boot=this_boot,
            ):
                return
            # not rebooted (its slot could not be activated, the record then says failed): a
            # later install is watched for
            await trio.sleep(interval)


async def _ask_trial_again(
    app: AppLike,
    data_dir: Path,
    record: UpdateRecord,
    this_boot: str,
    interval: float,
) -> None:
    """Makes ``record``'s trial, whose reboot never happened, this boot's to ask for: the
    record is moved to this boot, which the caller then reboots into as after an install (the
    slot made the next boot again right before: ``_activate_again``). Once READY, so that the
    inverters are reached and left at their fail-safe limits first; a write that fails is
    tried again."""
    log.warning(
        "update %s: the device restarted before its reboot into slot %s; asking for it again",
        record.version,
        record.target,
    )
    while not app.ready:  # noqa: ASYNC110 (the App's READY is a flag, not an event)
        await trio.sleep(interval)
    while True:
        try:
            write_record(
                data_dir, replace(record, boot_id=this_boot, reboot_asked=False, trial_boot=None)
            )
        except OSError as exc:
            log.error("update %s: cannot ask for its trial again: %s (retrying)",
                      record.version, exc)  # fmt: skip
            await trio.sleep(CONFIRM_RETRY_S)
        else:
            return


async def _check_this_boot(
    app: AppLike,
    data_dir: Path,
    confirm: _Confirm,
    record: UpdateRecord | None,
    booted: str | None,
    interval: float,
    tryboot: bool = False,
) -> None:
    """The trial of an update committed when healthy; any other boot confirmed when READY.
    ``record``: the update record as this boot found it."""
    rauc, this_boot = confirm.rauc, confirm.this_boot
    if record is not None and activated_before_its_record(record, booted, this_boot):
        log.warning(
            "update %s: its slot runs though the record never said trial; this is its trial",
            record.version,
        )
        record = replace(record.moved_to("trial"), reboot_asked=True)  # it booted: a trial ran
        try:
            write_record(data_dir, record)
        except OSError as exc:  # the trial runs all the same: raised, it restarted this task
            log.error("update %s: its record cannot be moved to trial: %s", record.version, exc)
    trial = record is not None and record.state == "trial" and record.boot_id != this_boot
    # Not lost: this slot's trial, this slot committed (in this boot too: the flag stays 1 all
    # the boot, and a restarted service must not undo its own commit), or an install of this
    # boot waiting for its reboot.
    kept = record is not None and (
        (record.target == booted and record.state in ("trial", "committed"))
        or record.boot_id == this_boot
    )
    if tryboot and booted is not None and not kept:
        # The firmware says trial, the record does not (lost, corrupt, or an older one): confirmed
        # at READY as an ordinary boot, the trial would have been committed without its health
        # check. It is checked as a trial, and recorded as one for update-deadline.
        record = await _lost_trial_record(rauc, booted)
        log.error(
            "this boot is the firmware's trial of slot %s (%s), but the update record does not "
            "say so (lost or corrupt): health check first, as for any trial",
            booted,
            record.version,
        )
        try:
            write_record(data_dir, record)
        except OSError as exc:
            log.error(
                "the trial's record cannot be written (%s): update-deadline will not see it", exc
            )
        trial = True
    if (
        trial
        and record is not None
        and await _commit_trial(app, data_dir, confirm, record, booted, interval)
    ):
        return
    if booted is not None:
        await _confirm_boot(app, confirm, booted, interval)


CONFIRM_RETRY_S = 30.0
"""A failed confirmation of the running slot is tried again this often (seconds)."""


@dataclass(frozen=True)
class _Confirm:
    """What the running slot's confirmation needs: RAUC, the lock it shares with the new slot's
    activation, and whether an install of this boot waits for its reboot (on the Pi 4/5,
    ``pi``, a confirmation then would delete the trial's tryboot.txt)."""

    rauc: Rauc
    lock: trio.Lock
    data_dir: Path
    this_boot: str
    pi: bool
    boot_left: int | None = None
    """U-Boot's attempts left for the running slot (``boot_attempts_left``); None elsewhere."""

    def would_drop_a_trial(self) -> bool:
        if not self.pi:
            return False  # GRUB, U-Boot: the confirmation touches only the running slot
        record = read_record(self.data_dir)
        return waits_for_its_reboot(record, self.this_boot)

    def across_processes(self) -> contextlib.AbstractAsyncContextManager[None]:
        """On the Pi, the decision lock: ``dynexport update reboot`` (or ``install
        --reboot-now``) activates the new slot under it, in another process, so a confirmation
        already past its look at the record cannot delete the tryboot.txt written meanwhile."""
        if not self.pi:
            return contextlib.nullcontext()
        return decision_lock(self.data_dir)


async def _confirm_boot(app: AppLike, confirm: _Confirm, booted: str, interval: float) -> None:
    """Confirms the running (already committed) slot once the service is READY."""
    while not app.ready:  # noqa: ASYNC110 (the App's READY is a flag, not an event)
        await trio.sleep(interval)
    while True:
        try:
            # the decision lock first, as everywhere: the other order deadlocked against the
            # undoing of an activation (which holds it while it waits for the RAUC lock)
            async with confirm.across_processes(), confirm.lock:
                if confirm.would_drop_a_trial():
                    log.info("running slot %s not confirmed: an installed update waits for its "
                             "trial reboot (tryboot.txt is kept)", booted)  # fmt: skip
                    return
                await confirm.rauc.mark_good()
        except RaucError as exc:
            log.warning("could not confirm the running slot %s: %s (retrying)", booted, exc)
            await trio.sleep(CONFIRM_RETRY_S)
        else:
            log.info("running slot %s confirmed (the service is READY)", booted)
            return


LOST_RECORD_BOOT = "unknown (the record was lost)"
"""The install's boot id in a trial record written again: never this boot's."""


async def _lost_trial_record(rauc: Rauc, booted: str) -> UpdateRecord:
    """A trial record for the running slot, its version from RAUC when it answers."""
    try:
        slot = (await rauc.status()).by_bootname(booted)
        version = (slot.bundle_version if slot is not None else None) or "unknown"
    except RaucError:
        version = "unknown"
    source = "A" if booted == "B" else "B"
    return UpdateRecord("trial", version, target=booted, source=source, boot_id=LOST_RECORD_BOOT)


async def _running_slot(rauc: Rauc, booted: str | None, version: str) -> str | None:
    """The slot this boot runs: the kernel command line's (``rauc.slot=``), else RAUC's answer,
    asked until it comes. A RAUC that does not answer at once must not make a trial look like
    an ordinary boot: that boot would be confirmed (``mark-good``) without its health check."""
    if booted is not None:
        return booted
    while True:
        try:
            return (await rauc.status()).booted
        except RaucError as exc:
            log.error("update %s: cannot read RAUC's status: %s (retrying)", version, exc)
            await trio.sleep(CONFIRM_RETRY_S)


async def _commit_trial(
    app: AppLike,
    data_dir: Path,
    confirm: _Confirm,
    record: UpdateRecord,
    booted: str | None,
    interval: float,
) -> bool:
    """True once the trial of ``record`` is decided (committed, rolled back by update-deadline
    before it was healthy, or, started again after a reset, rolled back here); False when
    this boot is no such trial."""
    rauc, this_boot = confirm.rauc, confirm.this_boot
    running = await _running_slot(rauc, booted, record.version)
    if running != record.target:
        log.error("update to %s was rolled back (running slot %s)", record.version, running)
        return False
    if record.trial_boot is None and repeated_attempt(confirm.boot_left):
        log.error("update %s: U-Boot started slot %s before in this trial (%d attempts left) and "
                  "that boot was reset before dynexport could note it", record.version,
                  running, confirm.boot_left)  # fmt: skip
        record = _as_this_boots_trial(record, this_boot, confirm.boot_left)
        _note_trial(data_dir, record)
    if trial_reset_before_commit(record, running, this_boot):
        last = _read_line(data_dir / HEALTH_FILE) or ""
        # "healthy: ..." (the commit follows at once) or "healthy and committed, but the record
        # ...", not "healthy, but the commit failed / not committed" (mark-good never ran)
        if last.startswith(("healthy:", "healthy and committed")):
            # Judged healthy before the reset: it was being committed (RAUC's mark-good may have
            # run, the record not yet written). Rolled back, a committed slot on the Pi 4/5
            # booted again at every "rollback" reboot, the inverters at their fail-safe each
            # time. Its check runs again here, and it is committed as before.
            log.warning("update %s: its trial was reset after its health check passed; "
                        "checking it again to commit it", record.version)  # fmt: skip
        else:
            await _roll_back_reset_trial(app, data_dir, confirm, record, interval)
            return True
    # this boot noted as the trial's before its health check can pass: reset, the trial must
    # read as failed at its next boot (U-Boot boots the slot again), never as a trial to begin
    record = _as_this_boots_trial(record, this_boot)
    noted = _note_trial(data_dir, record)
    log.info("update %s: trial of slot %s; health check started", record.version, record.target)
    streak = health.Streak()
    last_reason = ""
    while True:
        if not noted:
            noted = _note_trial(data_dir, record, quiet=True)
        obs = observe(app, trio.current_time(), record)
        streak = health.observe(streak, obs)
        verdict = health.judge(streak, obs)
        reason = verdict.reason
        if verdict.healthy and not noted:
            reason = f"healthy, but not committed: {TRIAL_NOT_NOTED}"
        if reason != last_reason:
            last_reason = reason
            _write_health(data_dir, reason)
        if verdict.healthy and noted:
            async with decision_lock(data_dir, interval):
                if (data_dir / FAILURE_FILE).exists():
                    # update-deadline decided first: it has marked the slot bad and is rebooting
                    # into the old one. A commit now would make this slot good again.
                    log.error(
                        "update %s: healthy only after the deadline had rolled it back",
                        record.version,
                    )
                    return True
                committed = False
                try:
                    # Bounded below update-deadline's wait for the lock: a commit still under way
                    # when the script gives up waiting let both decide (the record "committed",
                    # the old slot booted).
                    with trio.move_on_after(COMMIT_WITHIN_LOCK_S):
                        await rauc.mark_good()
                        committed = True
                    if not committed:
                        raise RaucError(f"no answer in {COMMIT_WITHIN_LOCK_S:g} s")
                except RaucError as exc:
                    log.error("update %s: commit failed: %s (retrying)", record.version, exc)
                    _write_health(data_dir, f"healthy, but the commit failed: {exc}")
                    last_reason = ""
                else:
                    if await _record_committed(data_dir, record):
                        log.info("update %s committed: %s", record.version, verdict.reason)
                    return True
        await trio.sleep(interval)


TRIAL_NOT_NOTED = "this boot cannot be noted as the trial's in the update record (retrying)"
"""Why a healthy trial waits: committed without the note, a reset between the note's failure
and the commit could not be told from a first trial at the next boot (see ``trial_boot``)."""


def _as_this_boots_trial(
    record: UpdateRecord, this_boot: str, boot_left: int | None = None
) -> UpdateRecord:
    """``record`` as the trial of ``this_boot``: its reboot happened (it booted, so a reset
    between the activation and the note on U-Boot or GRUB must read as a rollback, not as a
    trial still to come), and this boot began it (``trial_boot``), unless U-Boot's attempts
    left say an earlier boot did (``repeated_attempt``: ``EARLIER_ATTEMPT``)."""
    began = EARLIER_ATTEMPT if repeated_attempt(boot_left) else this_boot
    return replace(record, reboot_asked=True, trial_boot=began)


def _note_trial(data_dir: Path, record: UpdateRecord, *, quiet: bool = False) -> bool:
    """Writes ``record`` (``_as_this_boots_trial``) unless the file says so already (a service
    restarted within its trial); False when it cannot be written (logged unless ``quiet``)."""
    if read_record(data_dir) == record:
        return True
    try:
        write_record(data_dir, record)  # fsync'd: atomic_write
    except OSError as exc:
        if not quiet:
            log.error("update %s: cannot note that its trial began: %s", record.version, exc)
        return False
    return True


def note_trial_boot(
    data_dir: Path,
    this_boot: str | None = None,
    booted: str | None = None,
    cmdline: Path = KERNEL_CMDLINE,
) -> bool:
    """Notes this boot as the one that began the trial of the update whose slot it runs, when
    the record names no such boot yet; True when it did. For the service's start, before
    anything there can hang: the trial task (``commit_when_healthy``) notes it too, but only
    once the first limits are computed, and a reset before that could not be told from a
    first trial at the next boot. A boot U-Boot says is not the trial's first
    (``repeated_attempt``) notes ``EARLIER_ATTEMPT`` instead. Never raises (a write that fails
    is logged)."""
    this_boot = boot_id() if this_boot is None else this_boot
    booted = booted_slot(cmdline) if booted is None else booted
    record = read_record(data_dir)
    if (
        record is None
        or record.state != "trial"
        or booted is None
        or booted != record.target
        or record.boot_id == this_boot
        or record.trial_boot is not None
    ):
        return False
    return _note_trial(
        data_dir, _as_this_boots_trial(record, this_boot, boot_attempts_left(cmdline))
    )


UBOOT_TRIAL_ATTEMPTS = 3
"""The boots U-Boot gives an activated slot (RAUC's ``boot-attempts`` default, and
boot-uboot.cmd's): the trial's first boot runs with one fewer left."""

EARLIER_ATTEMPT = "earlier"
"""``trial_boot`` of a trial U-Boot had started before the boot that found it, that earlier
boot reset before dynexport could note it (a kernel or early-boot hang, a power cut)."""


def boot_attempts_left(cmdline: Path = KERNEL_CMDLINE) -> int | None:
    """U-Boot's attempts left for the running slot after this boot (``dynexport.boot_left=`` on
    the kernel command line, from boot-uboot.cmd); None where the boot loader does not count
    (GRUB's and the Pi 4/5's trials are one-shot) or the line cannot be read."""
    try:
        words = cmdline.read_text().split()
    except OSError:
        return None
    for word in reversed(words):
        if word.startswith("dynexport.boot_left="):
            value = word.removeprefix("dynexport.boot_left=")
            return int(value) if value.isdecimal() and len(value) < 4 else None
    return None


def repeated_attempt(boot_left: int | None) -> bool:
    """True when U-Boot has started the running slot before since it was activated: fewer
    attempts are left than a first boot leaves. Such a boot of an update's slot, with no trial
    noted, is a trial reset before dynexport started, not a first trial."""
    return boot_left is not None and boot_left < UBOOT_TRIAL_ATTEMPTS - 1


RESET_READY_WAIT_S = 60.0
"""A trial found reset waits at most this long for the service's READY (its links up) before
leaving the inverters at their fail-safe and rebooting; update-deadline acts at 4 minutes."""


def reset_trial_reason(version: str, trial_boot: str, last_health: str | None) -> str:
    """Why a trial started again after a reset is rolled back (the failure note's line)."""
    last = f"; its last health verdict: {last_health}" if last_health else ""
    began = (
        "U-Boot's earlier attempt, reset before dynexport started"
        if trial_boot == EARLIER_ATTEMPT
        else f"boot {trial_boot}"
    )
    return (
        f"the trial of {version} was reset before its health check passed ({began}"
        f"{last}) and was not tried again"
    )


async def _roll_back_reset_trial(
    app: AppLike, data_dir: Path, confirm: _Confirm, record: UpdateRecord, interval: float
) -> None:
    """Ends the trial of ``record``, reset before its commit and booted again by the boot loader
    (``trial_reset_before_commit``), as update-deadline ends a trial: why is written to the
    failure note (unless the deadline wrote its own first; under the decision lock), the
    update's slot is marked bad and the old one made the next boot (``undo_activation``), every
    inverter is left at its fail-safe limit and the reboot is asked for. Never checked again,
    never committed: at most one trial per request. The health file says why too, in case
    update-deadline rolls back first and quotes it."""
    assert record.trial_boot is not None
    why = reset_trial_reason(record.version, record.trial_boot, _read_line(data_dir / HEALTH_FILE))
    log.error("update %s: %s; the boot loader started it again: rolling back to slot %s",
              record.version, why, record.source)  # fmt: skip
    async with decision_lock(data_dir, interval):
        written = _read_line(data_dir / FAILURE_FILE)
        if written is None:
            try:
                atomic_write(data_dir / FAILURE_FILE, (why + "\n").encode(), mode=0o600)
            except OSError as exc:
                log.error("update %s: cannot write why it is rolled back: %s", record.version, exc)
        else:
            why = written  # update-deadline decided first: its reason stands
        _write_health(data_dir, why)
    await undo_activation(rauc=confirm.rauc, rauc_lock=confirm.lock, record=record)
    await _old_slot_to_boot_normally(confirm.rauc, confirm.lock, record)
    with trio.move_on_after(RESET_READY_WAIT_S):
        while not app.ready:  # noqa: ASYNC110 (the App's READY is a flag, not an event)
            await trio.sleep(interval)
    log.warning("update %s: rolling back: leaving every inverter at its fail-safe limit",
                record.version)  # fmt: skip
    await app.leave_fail_safe()
    try:
        request_reboot(data_dir, "normal", confirm.this_boot)
    except OSError as exc:
        log.error("update %s: cannot ask for the reboot into slot %s (%s): update-deadline "
                  "reboots 4 minutes after boot", record.version, record.source, exc)  # fmt: skip


async def _old_slot_to_boot_normally(rauc: Rauc, lock: trio.Lock, record: UpdateRecord) -> None:
    """Makes the old slot (``record.source``) the one a normal boot starts when the update's
    slot still is after ``undo_activation``: on the Pi 4/5 a slot RAUC committed before the
    reset (its record not written, nor a healthy verdict) cannot be marked bad, and the
    activation of the old slot is only a one-shot trial (tryboot.txt) that a normal reboot
    ignores. Each "rollback" reboot had booted the update again, to be rolled back again,
    for ever. As update-deadline does (``mark-good other``). Never raises: a RAUC that
    refuses is logged, and the reboot goes ahead (update-deadline's would too)."""
    try:
        async with lock:
            primary = (await rauc.status()).primary_bootname
            if primary != record.target:
                return
            log.error("update %s: slot %s is what a normal boot starts (committed before the "
                      "reset); making slot %s that slot again", record.version, record.target,
                      record.source)  # fmt: skip
            await rauc.make_good(record.source)
    except RaucError as exc:
        log.error("update %s: slot %s cannot be made the slot a normal boot starts: %s (the "
                  "reboot may start slot %s again)", record.version, record.source, exc,
                  record.target)  # fmt: skip


COMMIT_WITHIN_LOCK_S = 20.0
"""The longest ``rauc status mark-good`` may take while the decision lock is held: with the
record's retries (`RECORD_RETRY_S`), less than update-deadline's 60 s wait for the lock, so that
the script never gives up waiting while a commit is under way (both then decided: the record
"committed", the old slot booted). A commit that takes longer is tried again."""
RECORD_RETRY_S = (1.0, 2.0, 4.0)
"""Waits between tries to write the "committed" record (still within the lock's 60 s)."""


def _write_health(data_dir: Path, text: str) -> None:
    """The trial's health verdict for the status and update-deadline; a write that fails (a full
    or read-only /data) is logged, never raised: raised, it restarted the health check's two
    minutes at every try, and the trial was never committed."""
    try:
        atomic_write(data_dir / HEALTH_FILE, (text + "\n").encode(), mode=0o600)
    except OSError as exc:
        log.error("update: cannot write %s (%s): %s", HEALTH_FILE, exc.strerror or exc, text)


async def _record_committed(data_dir: Path, record: UpdateRecord) -> bool:
    """Writes the record "committed" once RAUC has committed the slot, trying a few times;
    False when it cannot (its last error logged and left in the health file, which
    update-deadline quotes when it then rolls the slot back, still "trial" on /data)."""
    error: OSError | None = None
    for wait in (0.0, *RECORD_RETRY_S):
        await trio.sleep(wait)
        try:
            write_record(data_dir, record.moved_to("committed"))
        except OSError as exc:
            error = exc
        else:
            return True
    why = error.strerror if error is not None and error.strerror else str(error)
    log.error("update %s: committed by RAUC, but its record cannot be written: %s",
              record.version, why)  # fmt: skip
    _write_health(data_dir, f"healthy and committed, but the record could not be written: {why}")
    return False


@contextlib.asynccontextmanager
async def decision_lock(
    data_dir: Path, poll_s: float = 0.5, owner: tuple[int, int] | None = None
) -> AsyncIterator[None]:
    """Holds ``DECISION_LOCK`` (state.py): taken without blocking the event loop, tried again
    every ``poll_s`` while another process (update-deadline, ``dynexport update``, the service)
    holds it. A lock file that cannot be opened is logged and the decision goes ahead without
    it (as before the lock existed). ``owner``: the CLI run as root gives the file to the
    service user, who could not open it otherwise."""
    try:
        fd = os.open(data_dir / DECISION_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.warning("update: cannot open %s (%s); deciding without it", DECISION_LOCK, exc)
        yield
        return
    if owner is not None:
        with contextlib.suppress(OSError):
            os.fchown(fd, *owner)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                await trio.sleep(poll_s)
            else:
                break
        yield
    finally:
        os.close(fd)  # releases the lock


def booted_slot(cmdline: Path = KERNEL_CMDLINE) -> str | None:
    """The running slot's bootname from the kernel command line (``rauc.slot=``), as RAUC does."""
    try:
        text = cmdline.read_text()
    except OSError:
        return None
    for arg in text.split():
        if arg.startswith("rauc.slot="):
            return arg.removeprefix("rauc.slot=") or None
    return None


def update_status(
    data_dir: Path,
    cmdline: Path = Path("/proc/cmdline"),
    boot_id_path: Path = BOOT_ID,
) -> dict[str, Any]:
    """``App.status()["update"]``, asked once: synchronous, reads two small files (no RAUC call),
    and the installer's /proc entry while an install of this boot is recorded."""
    return UpdateStatus(data_dir, cmdline, boot_id_path)()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class RecordWatch:
    """The update record for a loop that asks every few seconds for the life of the process:
    read again only when a stat says the file changed (every write is a new inode:
    ``atomic_write``), so an idle appliance does not read it 43,000 times a day."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / STATE_FILE
        self._key: tuple[int, int, int] | None = None
        self._record: UpdateRecord | None = None

    def __call__(self) -> UpdateRecord | None:
        key = _stamp(self.path)
        if key is None:
            self._key = self._record = None
        elif key != self._key:
            self._key = key
            self._record = read_record(self.path.parent)
        return self._record


class UpdateStatus:
    """``update_status`` for a status asked for every second (history, live pages, MQTT): the
    running slot and boot id are read once (they cannot change while the process runs), and the
    record and failure files are read again only when a stat says they changed (every write is a
    new inode: ``atomic_write``). While the record says an install of this boot is running, its
    installer's /proc entry is looked at on every call: it can end without a write."""

    def __init__(
        self,
        data_dir: Path,
        cmdline: Path = Path("/proc/cmdline"),
        boot_id_path: Path = BOOT_ID,
    ) -> None:
        self.data_dir = data_dir
        self._booted = booted_slot(cmdline)
        self._boot_id = boot_id(boot_id_path)
        self._key: tuple[object, object] | None = None
        self._record: UpdateRecord | None = None
        self._failure: str | None = None
        self._gone = False
        self._waits: str | None = None
        self._doc: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        record, failure = self.data_dir / STATE_FILE, self.data_dir / FAILURE_FILE
        key = (_stamp(record), _stamp(failure))
        if key != self._key:
            self._key = key
            self._record, self._failure = read_record(self.data_dir), _read_line(failure)
            self._doc = {}
        # no I/O unless the record says installing
        gone = installer_gone(self._record, self._boot_id, data_dir=self.data_dir)
        waits = reboot_waits_for(self.data_dir)
        if not self._doc or gone != self._gone or waits != self._waits:
            self._gone, self._waits = gone, waits
            self._doc = report(
                self._record,
                self._booted,
                self._boot_id,
                self._failure,
                installer_gone=gone,
            ).to_status()
            if waits is not None and self._doc["phase"] == "reboot-pending":
                self._doc["message"] = (
                    f"{self._doc['version']} is installed; the reboot into it waits for the "
                    f"devices: {waits} (the new system's health check needs them)"
                )
        return dict(self._doc)
