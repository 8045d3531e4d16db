"""Paths of the appliance image files, loaders for the overlay's Python helpers, and
update-deadline's stand-ins."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXT = ROOT / "buildroot"
OVERLAY = ROOT / "rootfs-overlay"
UNITS = OVERLAY / "usr/lib/systemd/system"
LIBEXEC = OVERLAY / "usr/libexec/dynexport"
BOARDS = ("rpi4_64", "rpi3_64", "rpizero2w_64", "rpi5")
# Buildroot package of each runtime dependency in pyproject.toml
RUNTIME_PACKAGES = {
    "trio": "BR2_PACKAGE_PYTHON_TRIO",
    "h11": "BR2_PACKAGE_PYTHON_H11",
    "lxml": "BR2_PACKAGE_PYTHON_LXML",
    "pymodbus": "BR2_PACKAGE_PYTHON_PYMODBUS",
    "cryptography": "BR2_PACKAGE_PYTHON_CRYPTOGRAPHY",
    "sdnotify": "BR2_PACKAGE_PYTHON_SDNOTIFY",
    "pyserial": "BR2_PACKAGE_PYTHON_SERIAL",
    "pysunspec2": "BR2_PACKAGE_PYTHON_PYSUNSPEC2",
    "paho-mqtt": "BR2_PACKAGE_PYTHON_PAHO_MQTT",
}


def load_script(name: str) -> types.ModuleType:
    """Import an extension-less Python helper from the overlay's libexec folder."""
    path = LIBEXEC / name
    loader = importlib.machinery.SourceFileLoader(
        f"dynexport_image_{name.replace('-', '_')}", str(path)
    )
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def defconfig(board: str) -> dict[str, str]:
    """SYMBOL -> value of a defconfig (``"n"`` for ``# SYMBOL is not set``)."""
    values: dict[str, str] = {}
    for line in (EXT / "configs" / f"dynexport_{board}_defconfig").read_text().splitlines():
        if m := re.fullmatch(r"# (BR2_\w+) is not set", line):
            values[m[1]] = "n"
        elif m := re.fullmatch(r"(BR2_\w+)=(.*)", line):
            values[m[1]] = m[2].strip('"')
    return values


def unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values of a systemd unit file (enough for these checks)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


# -- update-deadline against stand-ins --------------------------------------------------------


def deadline_env(tmp_path: Path, booted: str, **more: str) -> dict[str, str]:
    """update-deadline's stand-ins (data folder ``data``, rauc and systemctl recording their
    calls in ``calls.log``), ``booted`` on the kernel command line."""
    data, cmdline, calls = tmp_path / "data", tmp_path / "cmdline", tmp_path / "calls.log"
    data.mkdir(exist_ok=True)
    cmdline.write_text(f"root=PARTUUID=64796e78-03 ro rauc.slot={booted}\n")
    for name in ("rauc", "systemctl"):
        (tmp_path / name).write_text(f'#!/bin/sh\necho "{name} $*" >>"{calls}"\n')
        (tmp_path / name).chmod(0o755)
    return {
        **os.environ,
        "UPDATE_DEADLINE_DIR": str(data),
        "UPDATE_DEADLINE_CMDLINE": str(cmdline),
        "UPDATE_DEADLINE_RAUC": str(tmp_path / "rauc"),
        "UPDATE_DEADLINE_SYSTEMCTL": str(tmp_path / "systemctl"),
        **more,
    }


def deadline_outcome(tmp_path: Path) -> tuple[str, str | None]:
    """(what rauc and systemctl were asked, the failure note left for the status API)."""
    calls, failure = tmp_path / "calls.log", tmp_path / "data/update-failure"
    return (
        calls.read_text() if calls.exists() else "",
        failure.read_text() if failure.exists() else None,
    )


def waiting_on_lock(lock: Path, bound_s: float = 60.0) -> bool:
    """Whether a process is blocked on ``lock`` (a ``->`` line in /proc/locks for its inode),
    watched for at most ``bound_s``."""
    inode = f":{lock.stat().st_ino} "
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        if any(
            "->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()
        ):
            return True
        time.sleep(0.05)
    return False
