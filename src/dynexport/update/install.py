"""One install path for a bundle that ``rauc info`` has verified: the web upload's and the URL's.

Whoever brought the bundle (the web page, the update URL), the install is the same: RAUC's A/B
service is asked which slot runs, the update record is written (``installing``, clearing what an
earlier update left), ``rauc install`` writes the other slot while control goes on, and the
record moves to ``trial`` (``service.commit_when_healthy`` then makes the slot the next boot and
reboots into it once the devices answer and at a quiet moment, every inverter at its fail-safe
limit first) or ``failed``. One install at a time per data folder:
``claim`` is taken before one starts and ``release`` after it ends.

The texts an installer sees are here too (``refusal``): RAUC's own words go to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from dynexport.update.check import BUSY_PHASES
from dynexport.update.rauc import BundleInfo, Rauc, RaucError, RaucStatus
from dynexport.update.service import (
    begin_install,
    boot_id,
    install_record,
    process_identity,
    read_record,
    report_of,
    write_record,
)
from dynexport.update.service import claim as claim  # the install slot: shared.* for callers
from dynexport.update.service import installing as installing
from dynexport.update.service import release as release
from dynexport.update.service import upload_received as upload_received
from dynexport.update.service import upload_receiving as upload_receiving

log = logging.getLogger("dynexport.update")

NOT_A_BUNDLE = "this file is not an update bundle (.raucb)"
FOREIGN_KEY = (
    "this bundle is not signed by a key this device trusts (signature verification failed)"
)
NO_KEYRING = (
    "this system has no update keyring to check signatures with "
    "(is it the dynexport appliance image?)"
)
NOT_AB = (
    "this system cannot install updates: it has no RAUC A/B update service "
    "(is it the dynexport appliance image?)"
)


def refusal(detail: str) -> str:
    """Why ``rauc info`` refused a bundle, in an installer's words (RAUC's own, e.g. ``Verify
    error: self-signed certificate`` for a foreign key, are logged, not shown)."""
    low = detail.lower()
    if "signature verification failed" in low or "verify error" in low:
        return FOREIGN_KEY
    if "keyring" in low:
        return NO_KEYRING
    if "bundle format" in low or "squashfs" in low:
        return NOT_A_BUNDLE
    if "no version or signer" in low:
        return "the bundle names no version or signer"
    return f"the bundle could not be checked ({detail})"


def _on_trial(v: str) -> str:
    return (
        f"the update to {v} is on trial and not committed yet; installing now would "
        "overwrite the slot this device falls back to if it fails. Try again once it is "
        "committed (at most 4 minutes after its boot)"
    )


def _reboot_pending(v: str) -> str:
    return (
        f"{v} is installed and waits for its reboot (once the meter and an inverter have "
        "answered for 5 minutes, and at a quiet moment); that reboot would cut another install "
        "short. Try again once it is committed"
    )


def _installing(v: str) -> str:
    return f"{v} is being installed now by another installer; try again once it has finished"


BUSY_WHY: dict[str, Callable[[str], str]] = {
    "trial": _on_trial,
    "reboot-pending": _reboot_pending,
    "installing": _installing,
}
"""Why an install must wait, for each of ``check.BUSY_PHASES`` (the update URL's check waits
for the same phases): one set, so the two paths cannot drift apart."""

if set(BUSY_WHY) != BUSY_PHASES:  # not an assert: the service runs with -OO
    raise ImportError(f"install.BUSY_WHY {sorted(BUSY_WHY)} != check.BUSY_PHASES")


class CalledOff(Exception):
    """The installer called the install off (``install_verified``'s ``called_off``) before
    anything was written; the message says why."""


def update_under_way(
    data_dir: Path, status: RaucStatus, this_boot: str, *, claimed: bool = False
) -> str | None:
    """Why no install may start now (None: it may), from the last update's phase (state.py)
    and, unless the caller holds it (``claimed``), this process's install slot (``claim``):

    - ``trial``: the running slot is an update's trial, not committed yet; an install would
      write the other slot, the one the device falls back to if the trial fails;
    - ``reboot-pending``: an installed update waits for its reboot (a quiet moment); that reboot
      would cut the new install short, and both would be lost;
    - ``installing``: another installer (the command, the web page, the update URL) is writing
      the slot now. An ``installing`` record of this very process reads as running while the
      install slot is held (``service.installer_gone``): held by the caller, it is one an
      earlier install of this process left when it failed, not a running one; held by
      another task (the update URL's install, while a web upload asks), it is running;
    - the install slot held by another task of this process, with no record yet (the update
      URL's download, up to 4 hours): its install comes next.
    """
    record = read_record(data_dir)
    rep = report_of(record, data_dir, status, this_boot)
    own = record is not None and record.installer == process_identity()
    if rep.phase == "installing" and own and claimed:
        return None
    if rep.phase in BUSY_PHASES:
        return BUSY_WHY[rep.phase](rep.version or "an update")
    if not claimed and installing(data_dir):
        return URL_INSTALLING
    return None


URL_INSTALLING = (
    "an update is being downloaded or installed from the update URL; try again once it has finished"
)
"""Why an upload waits while this process's install slot is held by another task."""


async def install_verified(
    data_dir: Path,
    rauc: Rauc,
    bundle: Path,
    info: BundleInfo,
    progress: Callable[[str], Awaitable[None]],
    *,
    origin: str,
    this_boot: str | None = None,
    called_off: Callable[[], str | None] | None = None,
) -> str | None:
    """Installs ``bundle`` (already verified by ``rauc info`` as ``info``) into the other slot.
    The caller holds the install slot (``claim``).

    Returns None once installed (the record says ``trial``), else the installer's message.
    ``origin`` (``the web page``, ``the update URL``) goes to the log; ``this_boot``: the kernel's
    boot id (read from /proc by default). ``called_off``: asked right before the record is
    written and ``rauc install`` starts (no await between): a reason raises CalledOff, nothing
    written (the update URL's configuration changed meanwhile). The caller deletes the bundle
    file afterwards, whatever the outcome.
    """
    try:
        status = await rauc.status()
    except RaucError as exc:
        log.warning("update not installed: %s", exc)
        return f"not installed, nothing was written: {NOT_AB}"
    from dynexport.update.cli import other_slot  # the command's module: not the service's

    try:
        target = other_slot(status.booted)
    except RaucError as exc:
        return f"not installed, nothing was written: {exc}"
    assert status.booted is not None
    this_boot = boot_id() if this_boot is None else this_boot
    why = update_under_way(data_dir, status, this_boot, claimed=True)
    if why is not None:
        return f"not installed, nothing was written: {why}"
    if called_off is not None and (off := called_off()) is not None:
        raise CalledOff(off)
    record = install_record(info.version, target, status.booted, data_dir)
    try:  # clears what an earlier update left (its health verdict, its rollback reason)
        await trio.to_thread.run_sync(begin_install, data_dir, record)
    except OSError as exc:
        return f"not installed: the update record cannot be written ({exc})"
    try:
        await rauc.install(str(bundle), target, progress, activate=False)
    except RaucError as exc:
        try:
            write_record(data_dir, record.moved_to("failed", str(exc)))
        except OSError as write_error:
            log.error("update %s: its failure cannot be recorded: %s", info.version, write_error)
        return f"install failed, the running system is unchanged: {exc}"
    try:
        write_record(data_dir, record.moved_to("trial"))
    except OSError as exc:
        # The slot is written, not activated (the reboot does that): nothing boots it, and the
        # record left at "installing" reads "interrupted" once this install has ended.
        log.error("update %s installed, but its record cannot be written: %s", info.version, exc)
        return (
            f"{info.version} was written to slot {target}, but the update record cannot be "
            f"written ({exc}): it is not rebooted into, and the running system is unchanged"
        )
    log.info("update %s installed in slot %s from %s", info.version, target, origin)
    return None
