"""``dynexport update install FILE`` and ``dynexport update status`` (docs/update.md)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from dynexport.update.install import update_under_way
from dynexport.update.rauc import COMMAND_TIMEOUT_S, Rauc, RaucError
from dynexport.update.service import (
    begin_install,
    boot_id,
    decision_lock,
    install_record,
    read_record,
    request_reboot,
    undo_activation,
    update_report,
    write_record,
)
from dynexport.update.state import DECISION_LOCK, UpdateRecord, waits_for_its_reboot

DATA = "/data/dynexport"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("update", help="install signed updates (RAUC)")
    usub = p.add_subparsers(dest="update_command", metavar="ACTION", required=True)
    inst = usub.add_parser("install", help="install a bundle into the other root slot")
    inst.add_argument("file", help="the .raucb bundle")
    inst.add_argument("--yes", action="store_true", help="do not ask before installing")
    inst.add_argument(
        "--reboot-now",
        action="store_true",
        help="reboot at once (the service leaves the inverters at their fail-safe when stopped); "
        "default: the running service reboots at a quiet moment",
    )
    inst.add_argument("--data", default=DATA, help=f"the data folder (default {DATA})")
    inst.set_defaults(handler=_install)
    now = usub.add_parser(
        "reboot",
        help="reboot into the installed update now, not at the service's quiet moment (its slot "
        "made the next boot first; the service leaves the inverters at their fail-safe when "
        "stopped)",
    )
    now.add_argument("--data", default=DATA, help=f"the data folder (default {DATA})")
    now.set_defaults(handler=_reboot)
    st = usub.add_parser("status", help="the slots and the last update")
    st.add_argument("--data", default=DATA, help=f"the data folder (default {DATA})")
    st.set_defaults(handler=_status)


def other_slot(booted: str | None) -> str:
    if booted == "A":
        return "B"
    if booted == "B":
        return "A"
    raise RaucError(f"the running slot is {booted!r}, not A or B: is this an A/B appliance?")


def _write(data: Path, record: UpdateRecord) -> None:
    write_record(data, record, folder_owner(data))


def folder_owner(folder: Path) -> tuple[int, int] | None:
    """Run as root, the files it writes are owned by the service user owning the folder from
    their first byte (a chown afterwards might not survive a power cut: the service could then
    not read the record, and would say nothing of an interrupted install)."""
    if os.geteuid() != 0:
        return None
    st = folder.stat()
    return (st.st_uid, st.st_gid)


def _install(args: argparse.Namespace) -> int:
    return trio.run(_install_async, args, Rauc())


async def _install_async(args: argparse.Namespace, rauc: Rauc) -> int:
    data = Path(args.data)
    try:
        info = await rauc.info(args.file)
    except RaucError as exc:
        print(f"{args.file}: refused, nothing was written: {exc}", file=sys.stderr)
        return 2
    print(f"bundle:     {args.file}")
    print(f"version:    {info.version}")
    print(f"compatible: {info.compatible}")
    print(f"signed by:  {info.signer} (verified against this device's keyring)")
    if not args.yes:
        if not sys.stdin.isatty():
            print("not installed: confirm with --yes", file=sys.stderr)
            return 2
        answer = await trio.to_thread.run_sync(input, "install it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not installed")
            return 1
    try:
        status = await rauc.status()
        target = other_slot(status.booted)
    except RaucError as exc:
        print(f"not installed: {exc}", file=sys.stderr)
        return 1
    assert status.booted is not None
    why = update_under_way(data, status, boot_id())
    if why is not None:
        print(f"not installed, nothing was written: {why}", file=sys.stderr)
        return 1
    record = install_record(info.version, target, status.booted, data)
    begin_install(data, record, folder_owner(data))

    async def progress(line: str) -> None:
        print(f"  {line}", flush=True)

    try:
        await rauc.install(args.file, target, progress, activate=False)
    except RaucError as exc:
        _write(data, record.moved_to("failed", str(exc)))
        print(f"install failed, the running system is unchanged: {exc}", file=sys.stderr)
        return 1
    trial = record.moved_to("trial")
    _write(data, trial)  # the service reboots into it at a quiet moment (and notes that then)
    if args.reboot_now:
        return await _reboot_into(data, rauc, trial)
    else:
        print(
            f"{info.version} installed in slot {target}; dynexport reboots into it at a quiet "
            "moment, with every inverter at its fail-safe limit first"
        )
    return 0


LOCK_WAIT_S = COMMAND_TIMEOUT_S + 60.0
"""How long ``dynexport update reboot`` waits for the decision lock before it gives up, saying
so: a confirmation holds it for one RAUC command, the service's reboot for up to ten tries of
its activation and the fail-safe writes (then the reboot is asked for, or the update failed)."""


async def _reboot_into(data: Path, rauc: Rauc, trial: UpdateRecord) -> int:
    """Makes ``trial``'s slot the next boot, notes that its reboot is asked for, and asks for it.

    Only once the record says "trial": on the Pi a confirmation of the running slot by the
    service deletes tryboot.txt, and it skips one while a trial of this boot is recorded. All
    under the decision lock, which that confirmation holds from its look at the record to its
    end, and the service from its own activation to its reboot request (or the activation
    undone): neither can then land between this activation and the reboot, nor this command
    between the service's. An activation that fails is undone (it may have been carried out
    after its command timed out): a reset would otherwise start the trial unasked on U-Boot and
    GRUB."""
    owner = folder_owner(data)
    quiet = trio.CancelScope()

    async def say_it_waits() -> None:
        with quiet:
            await trio.sleep(3.0)
            print(f"waiting for the service to finish with RAUC (at most {LOCK_WAIT_S:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip

    async with trio.open_nursery() as nursery:
        nursery.start_soon(say_it_waits)
        try:
            return await _reboot_into_locked(data, rauc, trial, owner, quiet)
        finally:
            quiet.cancel()


async def _reboot_into_locked(
    data: Path, rauc: Rauc, trial: UpdateRecord, owner: tuple[int, int] | None,
    quiet: trio.CancelScope,
) -> int:  # fmt: skip
    with trio.move_on_after(LOCK_WAIT_S) as waiting:
        async with decision_lock(data, owner=owner):
            quiet.cancel()
            waiting.deadline = math.inf  # taken: what follows is bounded by RAUC's timeouts
            now, this_boot = read_record(data), boot_id()
            if now is not None and now.reboot_asked and waits_for_its_reboot(now, this_boot):
                # Asked for already (by the service, or a run of this command), so activated
                # already: no activation again, above all none to undo should it fail now. The
                # request is written again: the first may be gone (the service stopped before
                # writing it, or its reboot failed), and one more of this boot is harmless.
                request_reboot(data, "trial", this_boot, owner)
                print(f"{trial.version}: the reboot into slot {trial.target} was asked for "
                      "already; asked again")  # fmt: skip
                return 0
            if not waits_for_its_reboot(now, this_boot):
                print(
                    f"{trial.version} is no longer waiting for its reboot (the service moved it "
                    "on: see dynexport update status); not rebooted",
                    file=sys.stderr,
                )
                return 1
            try:
                await rauc.activate(trial.target)
            except RaucError as exc:
                undone = await undo_activation(rauc, None, trial)
                print(
                    f"{trial.version} is installed in slot {trial.target}, but not rebooted now: "
                    f"{exc}; the service reboots into it at a quiet moment"
                    + ("" if undone == "undone" else " (RAUC refused to undo the activation too)"),
                    file=sys.stderr,
                )
                return 1
            _write(data, replace(now or trial, reboot_asked=True))  # as the service left it
            request_reboot(data, "trial", this_boot, owner)
    if waiting.cancelled_caught:
        print(f"not rebooted: {data / DECISION_LOCK} was held for {LOCK_WAIT_S:.0f} s (the "
              "service is busy with RAUC); try again", file=sys.stderr)  # fmt: skip
        return 1
    print(f"{trial.version} is installed in slot {trial.target}; rebooting into it now")
    return 0


def _reboot(args: argparse.Namespace) -> int:
    return trio.run(_reboot_async, args, Rauc())


async def _reboot_async(args: argparse.Namespace, rauc: Rauc) -> int:
    """``dynexport update reboot``: the installed update of this boot, rebooted into now."""
    data = Path(args.data)
    record = read_record(data)
    if record is None or not waits_for_its_reboot(record, boot_id()):
        print("no installed update waits for its reboot", file=sys.stderr)
        return 1
    return await _reboot_into(data, rauc, record)


def _status(args: argparse.Namespace) -> int:
    return trio.run(_status_async, args, Rauc())


async def _status_async(args: argparse.Namespace, rauc: Rauc) -> int:
    try:
        status = await rauc.status()
    except RaucError as exc:
        print(f"RAUC: {exc}", file=sys.stderr)
        status = None
    if status is not None:
        print(f"compatible: {status.compatible}")
        print(f"booted:     {status.booted}  (next normal boot: {status.primary_bootname})")
        for slot in status.slots:
            print(
                f"  {slot.name} ({slot.bootname}): {slot.state}, boot {slot.boot_status}, "
                f"bundle {slot.bundle_version or '-'}"
            )
    rep = update_report(Path(args.data), status, boot_id())
    print(f"last update: {rep.message or 'none'}")
    record = read_record(Path(args.data))
    return 0 if status is not None and (record is None or rep.phase != "rolled-back") else 1
