"""Configuration schema versions: old documents are migrated step by step, newer ones refused.

The configuration file carries ``"version": N``. A file without it is version 0, the format
before versions existed. Each release reads every older version by applying the steps in
``STEPS`` in order, in memory only: the file on ``/data`` is not rewritten by reading it, so the
previous release (the other root slot, after a rollback) still finds the file it wrote.

A document written by a newer release is refused with a message that says so, instead of being
read as if it were this release's format: after a rolled-back update, a misread limit would be
worse than a controller that waits in setup mode with a clear reason.

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
        raise MigrationError(
            f"written by a newer dynexport (version {version}); this one reads up to "
            f"{CURRENT_VERSION}: the update was rolled back?"
        )
    body = {k: v for k, v in data.items() if k != VERSION_KEY}
    for step in STEPS[version:]:
        body = step(body)
    return body
