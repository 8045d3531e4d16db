"""Atomic files on the data partition.

A power cut at any moment must leave either the old or the new file, never a torn one: write a temp
file in the same folder, fsync it, rename it over the target, then fsync the folder so the rename
itself is durable. Secrets are created with their final mode from the first byte (no window where a
private key is world-readable).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(
    path: str | Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True
) -> None:
    """Replaces ``path`` with ``data`` atomically and durably.

    With ``overwrite=False`` an existing file is left alone and FileExistsError is raised (used for
    private keys: replacing one silently means a new registration with the utility).
    """
    target = Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        if overwrite:
            os.replace(tmp_name, target)
        else:
            # link() fails if the target exists, so two writers cannot both "create" the file.
            os.link(tmp_name, target)
            os.unlink(tmp_name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(folder)


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
