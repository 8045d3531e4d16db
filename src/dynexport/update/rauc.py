"""A thin adapter for the ``rauc`` program (RAUC, https://rauc.io): run it, parse what it prints.

The parsers are pure and tested with RAUC's own output; the runners only start ``rauc`` with
``trio.run_process``. On the appliance ``rauc`` talks to the RAUC service over D-Bus (the
``dynexport`` user may, /etc/dbus-1/system.d/dynexport-rauc.conf); ``rauc info`` checks the
bundle's signature against the keyring in /etc/rauc before anything is shown or written.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

RAUC = "rauc"


class RaucError(Exception):
    """``rauc`` failed; the message is its last words (e.g. a signature that does not verify)."""


@dataclass(frozen=True)
class BundleInfo:
    compatible: str
    version: str
    signer: str
    """The signing certificate's subject (``O = ..., CN = ...``), verified against the keyring."""
    description: str = ""
    build: str = ""


@dataclass(frozen=True)
class SlotStatus:
    name: str
    """RAUC's slot name, ``rootfs.0``."""
    bootname: str | None
    state: str
    """``booted``, ``active`` or ``inactive``."""
    boot_status: str | None
    """``good`` or ``bad`` as the boot loader sees the slot (None: unknown)."""
    bundle_version: str | None = None
    """Version of the bundle last installed into the slot."""


@dataclass(frozen=True)
class RaucStatus:
    compatible: str
    booted: str | None
    """Bootname of the running slot (``A``/``B``)."""
    boot_primary: str | None
    """Slot name (``rootfs.1``) the boot loader starts next."""
    slots: tuple[SlotStatus, ...] = field(default_factory=tuple)

    def slot(self, name: str | None) -> SlotStatus | None:
        return next((s for s in self.slots if s.name == name), None)

    def by_bootname(self, bootname: str | None) -> SlotStatus | None:
        return next((s for s in self.slots if s.bootname == bootname), None)

    @property
    def primary_bootname(self) -> str | None:
        primary = self.slot(self.boot_primary)
        return None if primary is None else primary.bootname


def _quoted(text: str, key: str) -> str:
    m = re.search(rf"^{key}:\s*'(.*)'\s*$", text, re.M)
    return m[1] if m else ""


def parse_info(text: str) -> BundleInfo:
    """``rauc info BUNDLE`` (text output, which alone names the signer)."""
    signer = re.search(r"^Certificate Chain:\s*\n\s*0 Subject:\s*(.+?)\s*$", text, re.M)
    version = _quoted(text, "Version")
    if signer is None or not version:
        raise RaucError("rauc info printed no version or signer")
    return BundleInfo(
        compatible=_quoted(text, "Compatible"),
        version=version,
        signer=signer[1],
        description=_quoted(text, "Description"),
        build=_quoted(text, "Build"),
    )


def parse_status(text: str) -> RaucStatus:
    """``rauc status --detailed --output-format=json``."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RaucError(f"rauc status printed no JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RaucError("rauc status printed no JSON object")
    slots: list[SlotStatus] = []
    for entry in doc.get("slots") or []:
        if not isinstance(entry, dict):
            continue
        for name, raw in entry.items():
            if not isinstance(raw, dict):
                continue
            detail = raw.get("slot_status") or {}
            bundle = detail.get("bundle") if isinstance(detail, dict) else None
            slots.append(
                SlotStatus(
                    name=str(name),
                    bootname=_opt_str(raw.get("bootname")),
                    state=str(raw.get("state") or ""),
                    boot_status=_opt_str(raw.get("boot_status")),
                    bundle_version=_opt_str(bundle.get("version"))
                    if isinstance(bundle, dict)
                    else None,
                )
            )
    return RaucStatus(
        compatible=str(doc.get("compatible") or ""),
        booted=_opt_str(doc.get("booted")),
        boot_primary=_opt_str(doc.get("boot_primary")),
        slots=tuple(slots),
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _last_words(stderr: bytes, stdout: bytes = b"") -> str:
    lines = [ln.strip() for ln in (stderr + b"\n" + stdout).decode("utf-8", "replace").splitlines()]
    useful = [ln for ln in lines if ln and "rauc-Message" not in ln]
    return useful[-1] if useful else "no message"


COMMAND_TIMEOUT_S = 300.0
"""Bound on one ``rauc info``/``status``/``mark-*`` (they take seconds; ``info`` of a large
bundle on a slow card under a minute). A RAUC service that never answers (D-Bus hung) must not
hold a web request, an install's claim or a commit forever: it becomes a RaucError."""
INSTALL_SILENCE_S = 600.0
"""``rauc install`` is stopped when it prints nothing (no progress line) for this long: writing
a slot takes a minute or two and RAUC reports each step, so ten silent minutes is a hung
install, and without a bound the install's claim was held until the next reboot (every later
install refused as "being installed now")."""


class Rauc:
    """Runs ``rauc``; ``program`` and ``extra`` (e.g. ``--keyring=...``) for tests and tools.

    Every call is bounded (``timeout_s``; ``install_silence_s`` for ``rauc install``); a call
    that runs past its bound is stopped (SIGTERM, then SIGKILL) and raises RaucError.
    """

    def __init__(
        self,
        program: str = RAUC,
        extra: Sequence[str] = (),
        *,
        timeout_s: float = COMMAND_TIMEOUT_S,
        install_silence_s: float = INSTALL_SILENCE_S,
    ) -> None:
        self.program = program
        self.extra = list(extra)
        self.timeout_s = timeout_s
        self.install_silence_s = install_silence_s

    async def _run(self, *args: str) -> str:
        proc: subprocess.CompletedProcess[bytes] | None = None
        try:
            with trio.move_on_after(self.timeout_s):
                proc = await trio.run_process(
                    [self.program, *args, *self.extra],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
        except OSError as exc:  # no rauc here (not the appliance), or not executable
            raise RaucError(f"rauc {args[0]}: {self.program} cannot be run ({exc})") from exc
        if proc is None:
            raise RaucError(
                f"rauc {args[0]}: no answer in {self.timeout_s:g} s (is the RAUC service hung?); "
                "stopped"
            )
        if proc.returncode != 0:
            raise RaucError(f"rauc {args[0]}: {_last_words(proc.stderr, proc.stdout)}")
        return bytes(proc.stdout).decode("utf-8", "replace")

    async def info(self, bundle: str) -> BundleInfo:
        """The bundle's version and signer; raises RaucError when its signature does not verify."""
        return parse_info(await self._run("info", bundle))

    async def status(self) -> RaucStatus:
        return parse_status(await self._run("status", "--detailed", "--output-format=json"))

    async def mark_good(self) -> None:
        await self._run("status", "mark-good", "booted")

    async def mark_bad(self) -> None:
        await self._run("status", "mark-bad", "booted")

    async def install(
        self,
        bundle: str,
        target: str,
        progress: Callable[[str], Awaitable[None]],
        *,
        activate: bool = True,
    ) -> None:
        """Installs into the other slot (bootname ``target``), handing each line RAUC prints (its
        progress) on, then (``activate``) makes that slot the one the boot loader starts next.
        dynexport's installs leave that to the moment of the reboot (``service.reboot_when_quiet``):
        activated now, a reset while the reboot waits (for the devices, for hours at night)
        would start the trial on U-Boot and GRUB, with the inverters asleep.

        The image's RAUC does not activate what it installed (``activate-installed=false``): it
        would mark the slot active before its post-install handler has put the slot's kernel on
        the boot partition, and a power cut between the two left a card whose boot loader chose
        a slot without a kernel. So the slot is activated here, after ``rauc install`` has
        returned: by then the handler's work is on the disk. A cut before this leaves the old
        slot first; the slot is written but never booted.
        """
        await self._write(bundle, progress)
        if activate:
            await self.activate(target)

    async def activate(self, target: str) -> None:
        """``rauc status mark-active`` for the slot named ``target`` (``A``/``B``): the boot
        loader starts it next (for the Pi's trial boot: on the next trial reboot)."""
        name = await self._slot_name(target)
        try:
            await self._run("status", "mark-active", name)
        except RaucError as exc:
            raise RaucError(f"slot {target} was written but could not be activated: {exc}") from exc

    async def make_unbootable(self, target: str) -> None:
        """``rauc status mark-bad`` for the slot named ``target`` (``A``/``B``): the boot loader
        no longer falls back to it (U-Boot's ``BOOT_x_LEFT=0``, GRUB's ``x_OK=0``; on the Pi
        4/5 its trial, tryboot.txt, is dropped). A later ``activate`` makes it bootable again."""
        await self._run("status", "mark-bad", await self._slot_name(target))

    async def make_good(self, target: str) -> None:
        """``rauc status mark-good`` for the slot named ``target`` (``A``/``B``), not the booted
        one: on the Pi 4/5 (tryboot) it becomes the slot a normal boot starts (config.txt); U-Boot
        and GRUB give it its attempts back. For a rollback from a slot the boot loader already
        starts normally, which refuses ``make_unbootable``."""
        await self._run("status", "mark-good", await self._slot_name(target))

    async def _slot_name(self, target: str) -> str:
        """RAUC's name for the slot whose bootname is ``target`` (``rootfs.0`` for ``A``)."""
        slot = (await self.status()).by_bootname(target)
        if slot is None:
            raise RaucError(f"rauc status names no slot {target}")
        return slot.name

    async def _write(self, bundle: str, progress: Callable[[str], Awaitable[None]]) -> None:
        cmd = [self.program, "install", bundle, *self.extra]
        not_run: OSError | None = None
        returncode: int | None = None
        last = ""
        silence = self.install_silence_s
        with trio.CancelScope(deadline=trio.current_time() + silence) as watch:
            async with trio.open_nursery() as nursery:
                try:
                    proc: trio.Process = await nursery.start(self._start_install, cmd)
                except OSError as exc:  # no rauc here (not the appliance), or not executable
                    not_run = exc  # raised below, outside the nursery (not in an exception group)
                else:
                    assert proc.stdout is not None
                    buf = b""
                    async for chunk in proc.stdout:
                        watch.deadline = trio.current_time() + silence  # it said something
                        buf += chunk
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            text = line.decode("utf-8", "replace").strip()
                            if text:
                                last = text
                                await progress(text)
                    returncode = await proc.wait()
        if not_run is not None:
            raise RaucError(f"rauc install: {self.program} cannot be run ({not_run})") from not_run
        if watch.cancelled_caught:
            said = f" (its last words: {last})" if last else ""
            raise RaucError(
                f"rauc install: no progress for {silence:g} s{said}; stopped. The slot it was "
                "writing is not activated: the device goes on booting the running one"
            )
        if returncode != 0:
            raise RaucError(f"rauc install: {last or 'failed'}")

    @staticmethod
    async def _start_install(cmd: list[str], *, task_status: Any) -> None:
        await trio.run_process(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            task_status=task_status,
        )
