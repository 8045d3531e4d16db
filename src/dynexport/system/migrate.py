"""Configuration schema versions: old documents are migrated step by step, newer ones refused.

The configuration file carries ``"version": N``. A file without it is version 0, the format
before versions existed. Each release reads every older version by applying the steps in
``STEPS`` in order, in memory only: the file on ``/data`` is not rewritten by reading it, so the
previous release (the other root slot, after a rollback) still finds the file it wrote.

A document written by a newer release is refused with a message that says so, instead of being
read as if it were this release's format: after a rolled-back update, a misread limit would be
worse than a controller that waits in setup mode with a clear reason.

A newer release that replaces the file with its newer version first keeps the old one beside it
(``kept_name``, ``version_to_keep``; system/config_file.py does the I/O), and a release that finds
a file newer than it can read runs on the copy of its own version, saying so.

Pure: a function of the decoded JSON, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

CURRENT_VERSION = 1
"""The schema version this release writes and reads natively."""

VERSION_KEY = "version"


class MigrationError(ValueError):
    """The document's version cannot be read by this release; the message says why."""


class NewerVersionError(MigrationError):
    """The document was written by a newer release (``version``): after a rolled-back update,
    the copy kept of this release's version (``kept_name``) is what this release can run on."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


def _v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 1 is version 0 with the version key: every version 0 document is valid as is."""
    return doc


STEPS: tuple[Callable[[dict[str, Any]], dict[str, Any]], ...] = (_v0_to_v1,)
"""``STEPS[n]`` turns a version ``n`` body into a version ``n + 1`` body."""

if len(STEPS) != CURRENT_VERSION:  # not an assert: the service runs with -OO
    raise ImportError(f"{len(STEPS)} migration steps for schema version {CURRENT_VERSION}")


def document_version(data: Mapping[str, Any]) -> int:
    """The schema version a decoded document declares (0 when it has none)."""
    if VERSION_KEY not in data:
        return 0
    value = data[VERSION_KEY]
    if isinstance(value, bool) or not isinstance(value, int):
        raise MigrationError(f"{VERSION_KEY}: must be a whole number, not {value!r}")
    if value < 0:
        raise MigrationError(f"{VERSION_KEY}: must be 0 or more, not {value}")
    return value


def migrate(data: object) -> object:
    """The document as this release's schema, without its version key.

    Anything that is not a JSON object is returned unchanged, so that the configuration's own
    validation names the problem. Raises MigrationError for a version this release cannot read.
    """
    if not isinstance(data, dict):
        return data
    version = document_version(data)
    if version > CURRENT_VERSION:
        raise NewerVersionError(
            f"written by a newer dynexport (version {version}); this one reads up to "
            f"{CURRENT_VERSION}: the update was rolled back?",
            version,
        )
    body = {k: v for k, v in data.items() if k != VERSION_KEY}
    for step in STEPS[version:]:
        body = step(body)
    return body


def kept_name(name: str, version: int) -> str:
    """The name of the copy kept of a version ``version`` file ``name`` when a newer version
    replaced it: ``config.json`` → ``config.v1.json`` (beside it, same folder)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return f"{name}.v{version}"
    return f"{stem}.v{version}.{suffix}"


def version_to_keep(replaced: object, written: Mapping[str, Any]) -> int | None:
    """The version of the file being replaced that must be kept as a copy (None: none).

    A file is kept when the document written over it has a higher version: the release that
    wrote it (the other root slot) could not read the new one after a rollback, and runs on the
    copy instead of waiting in setup mode without limits. A file that is not a versioned JSON
    object (unreadable, invalid) is not worth keeping, nor one replaced by the same version.
    """
    if not isinstance(replaced, dict):
        return None
    try:
        old, new = document_version(replaced), document_version(written)
    except MigrationError:
        return None
    return old if old < new else None
