"""Atomic files on the data partition.

A power cut at any moment must leave either the old or the new file, never a torn one: write a temp
file in the same folder, fsync it, rename it over the target, then fsync the folder so the rename
itself is durable. Secrets are created with their final mode from the first byte (no window where a
private key is world-readable).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any


def atomic_write(
    path: str | Path,
    data: bytes,
    *,
    mode: int = 0o644,
    overwrite: bool = True,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replaces ``path`` with ``data`` so that it is either the old file or the complete new one.

    The temporary file is created with ``mode`` already set (a key is never readable by others,
    not even for a moment), fsynced, then renamed into place (``overwrite``) or hard-linked
    (no overwrite: fails with FileExistsError if the target exists, without a check-then-act
    race; used for private keys, since replacing one means a new utility registration), and the
    folder is fsynced so the name survives a power cut.

    ``owner`` (uid, gid), for a file written by root for the service's user: set on the temporary
    file before its data is fsynced, so the file never appears, not even after a power cut, with
    root as its owner (a chown after the rename is a metadata change nothing makes durable).
    """
    target = Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; never widen beyond `mode`
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(folder)


def _link_new(tmp: Path, target: Path) -> None:
    refuse = FileExistsError(errno.EEXIST, "refusing to overwrite existing file", str(target))
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise refuse from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # a filesystem without hard links (e.g. FAT): best-effort check, then rename
        if target.exists():
            raise refuse from None
        os.replace(tmp, target)


def fsync_dir(folder: str | Path) -> None:
    """Makes a rename or a new file in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: str | Path, value: Any, *, mode: int = 0o644) -> None:
    """Writes ``value`` as JSON atomically (sorted keys, so diffs of state files stay readable)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write(path, text.encode("utf-8"), mode=mode)


def read_json(path: str | Path) -> Any:
    """Reads a JSON state file; a missing file is FileNotFoundError, a corrupt one ValueError."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from exc


def set_aside(path: Path, *, keep: int = 3, companions: tuple[str, ...] = ()) -> Path:
    """Renames a damaged ``path`` to ``<name>.<n>-<UTC time>.corrupt`` and keeps the newest
    ``keep`` such copies, deleting older ones; returns the new name.

    Never deleted at once: the copy is the evidence, and the data if a bug called it damaged.
    ``n`` is one more than that of any copy kept, and the copies are ordered by it, not by their
    time: a Pi's clock restarts behind after a power cut, and ordered by time the newest copy
    was the one deleted. ``companions`` (SQLite's ``-journal``) belong to the damaged file and
    move, and go, with it."""
    prefix = f"{path.name}."
    kept = sorted(
        (n, p)
        for p in path.parent.glob(f"{glob.escape(path.name)}.*.corrupt")
        if (n := _aside_number(p.name[len(prefix) :])) is not None
    )
    n = 1 + max((n for n, _ in kept), default=0)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{prefix}{n:04d}-{stamp}.corrupt")
    os.replace(path, aside)
    for suffix in companions:
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    for _, old in kept[: max(0, len(kept) + 1 - keep)]:
        for name in (str(old), *(f"{old}{suffix}" for suffix in companions)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(name)
    fsync_dir(path.parent)
    return aside


def _aside_number(rest: str) -> int | None:
    """The ``n`` of ``<n>-<UTC time>.corrupt`` (None: not a copy `set_aside` made)."""
    digits = rest.split("-", 1)[0]
    return int(digits) if digits.isascii() and digits.isdigit() and "-" in rest else None
