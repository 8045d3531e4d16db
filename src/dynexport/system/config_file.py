"""The configuration file on ``/data``, across updates and their rollbacks.

An update may bring a newer schema version (system/migrate.py). Reading never rewrites the file,
but the installer may save the configuration on the web page while the new release runs, on its
trial boot: the file then has a version the previous release cannot read, and if the trial fails
and is rolled back, the previous release found it refused and waited in setup mode, without
limits, until someone came by.

So ``write_config`` first keeps the file it replaces when the new document's version is higher
(``config.json`` → ``config.v1.json``), and ``load_site_config`` runs on the copy of this
release's version when the file itself is newer than it can read, and says so. The copy is the
configuration as it was when the newer release first replaced it: the site runs on what it ran on
before the update, not on nothing.

A file damaged otherwise (a bad SD card, a hand edit: truncated, garbage, invalid) left the
service in setup mode, the inverters on their own settings once their limits reverted (a review
measured 12 kW exported under a 0 W limit), until someone came by. So every configuration read
or written without error is also kept as ``config.last-good.json``, and a file that cannot be
used is replaced, for running, by that copy, with a notice; the damaged file is left as it is
for the installer to see and fix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dynexport.system.config import (
    Config,
    ConfigError,
    decode_json,
    load_config,
    load_config_bytes,
)
from dynexport.system.migrate import (
    CURRENT_VERSION,
    NewerVersionError,
    kept_name,
    version_to_keep,
)
from dynexport.system.storage import atomic_write, write_json

log = logging.getLogger("dynexport.config")

MODE = 0o600
"""The file holds the MQTT password and the like: readable by the service's user only."""


def write_config(path: Path, document: dict[str, Any]) -> Path | None:
    """Writes ``document`` as the configuration file ``path`` (atomically, mode 0600).

    When the file it replaces has a lower schema version, that file is first kept beside it
    (``migrate.kept_name``); returns the kept copy's path (None: nothing kept).
    """
    kept: Path | None = None
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = None
    except OSError as exc:  # the new file is written all the same; nothing to keep from it
        log.warning("%s: the file it replaces cannot be read to keep a copy: %s", path, exc)
        old = None
    if old is not None:
        try:
            replaced: object = decode_json(old)
        except ConfigError:
            replaced = None
        version = version_to_keep(replaced, document)
        if version is not None:
            kept = path.with_name(kept_name(path.name, version))
            atomic_write(kept, old, mode=MODE)
            log.info("%s: version %d kept as %s before writing a newer one", path, version, kept)
    write_json(path, document, mode=MODE)
    try:
        _, checked = load_config_bytes(path)
    except ConfigError:
        pass  # saved as asked, but not a configuration to fall back on
    else:
        _keep_last_good(path, checked)
    return kept


def last_good_path(path: Path) -> Path:
    """``config.json`` → ``config.last-good.json``: the configuration last read without error."""
    return path.with_name(f"{path.stem}.last-good{path.suffix}")


def _keep_last_good(path: Path, data: bytes) -> None:
    """Keeps ``data``, the bytes of the configuration file just read and validated, as its
    last-good copy (not the file read again: another writer may have changed it since), unless
    the copy already holds them. A failure is logged, never raised: the site runs on the
    configuration all the same."""
    last = last_good_path(path)
    try:
        try:
            if last.read_bytes() == data:
                return
        except FileNotFoundError:
            pass
        atomic_write(last, data, mode=MODE)
    except OSError as exc:
        log.warning("%s: cannot keep a copy as %s: %s", path, last.name, exc)


def load_site_config(path: str | Path) -> tuple[Config, list[str]]:
    """``load_config``, or after a rolled-back update the copy kept of this release's version.

    Returns the configuration and what the installer must be told (empty for the file itself).
    A file that cannot be used otherwise (damaged, invalid, unreadable) is replaced by the last
    configuration read without error, if one was kept, with a notice. Raises ConfigError as
    ``load_config`` does, when the file cannot be used and no copy can.
    """
    p = Path(path)
    try:
        config, checked = load_config_bytes(p)
    except ConfigError as exc:
        if not isinstance(exc.__cause__, NewerVersionError):
            return _run_on_last_good(p, exc)
        refused = exc
    else:
        _keep_last_good(p, checked)
        for caution in config.cautions:  # it runs, but a headless site must say so somewhere
            log.warning("%s: %s", p.name, caution)
        return config, list(config.cautions)
    return _run_on_kept_copy(p, refused)


def _run_on_kept_copy(p: Path, refused: ConfigError) -> tuple[Config, list[str]]:
    """The copy kept of this release's version (or an older one), for a file of a newer
    version: the configuration as it was before the newer release replaced it."""
    for version in range(CURRENT_VERSION, -1, -1):
        copy = p.with_name(kept_name(p.name, version))
        if not copy.is_file():
            continue
        try:
            config = load_config(copy)
        except ConfigError as copy_exc:
            invalid = f"the copy kept of version {version} is invalid too: {copy_exc}"
            raise ConfigError([*refused.problems, invalid], refused.source) from refused.__cause__
        notice = (
            f"{p.name}: {refused.problems[0]}; running on {copy.name}, the configuration as it "
            "was before the newer version replaced it. Save the settings again to make it "
            f"{p.name}"
        )
        log.warning("%s", notice)
        return config, [notice, *config.cautions]
    raise refused


def _run_on_last_good(path: Path, refused: ConfigError) -> tuple[Config, list[str]]:
    """The last configuration read without error in place of ``path``, with a notice; raises
    ``refused`` when there is none, or it cannot be used either."""
    last = last_good_path(path)
    try:
        config = load_config(last)
    except ConfigError as exc:
        if isinstance(exc.__cause__, NewerVersionError):
            # after a rolled-back update the last good copy is the newer release's: the copy
            # kept of this release's version is what it ran on (a damaged or lost file then
            # left the site in setup mode, without limits)
            try:
                config, notices = _run_on_kept_copy(path, refused)
            except ConfigError:
                raise refused from refused.__cause__
            return config, notices
        raise refused from refused.__cause__
    notice = (
        f"{path.name}: {refused.problems[0]}; running on {last.name}, the configuration last "
        f"read without error. Fix {path.name}, or save the settings again to replace it"
    )
    log.error("%s", notice)
    return config, [notice, *config.cautions]
