"""The configuration file across an update and its rollback (system/config_file.py): a newer
release keeps the file it replaces with a newer schema version, and the release rolled back to
runs on that copy instead of waiting in setup mode without limits."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.system import config as config_module
from dynexport.system import config_file
from dynexport.system import migrate as migrate_module
from dynexport.system.config import ConfigError
from dynexport.system.config_file import last_good_path, load_site_config, write_config
from dynexport.system.migrate import kept_name, version_to_keep

SITE = {
    "version": 1,
    "inverters": [{"type": "sunspec", "tcp": "127.0.0.1:1502", "unit": 1}],
    "limits": {"exportW": 3000},
}


def newer_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """This code as the next release would run it: schema version 2 (a no-op step)."""
    monkeypatch.setattr(migrate_module, "STEPS", (*migrate_module.STEPS, lambda doc: doc))
    monkeypatch.setattr(migrate_module, "CURRENT_VERSION", 2)


def test_kept_names_sit_beside_the_file():
    assert kept_name("config.json", 1) == "config.v1.json"
    assert kept_name("site.conf.json", 0) == "site.conf.v0.json"
    assert kept_name("config", 3) == "config.v3"
    assert kept_name(".config", 1) == ".config.v1"


@given(
    old=st.one_of(st.none(), st.integers(0, 5), st.just("x")),
    new=st.one_of(st.none(), st.integers(0, 5)),
)
def test_only_a_valid_older_version_is_kept(old: object, new: int | None):
    """Kept exactly when the replaced file is a versioned object of a lower version than the
    document written over it; never for a file that is not a configuration at all."""
    replaced = {} if old is None else {"version": old}
    written = {} if new is None else {"version": new}
    old_v = 0 if old is None else old
    new_v = 0 if new is None else new
    expected = old_v if isinstance(old_v, int) and old_v < new_v else None
    assert version_to_keep(replaced, written) == expected
    assert version_to_keep([replaced], written) is None
    assert version_to_keep(None, written) is None


def test_a_rolled_back_release_runs_on_the_copy_the_newer_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The whole story: this release wrote config.json (version 1); the update's trial wrote a
    version 2 over it (the installer saved the settings); the trial was rolled back. This
    release runs on config.v1.json, byte for byte the file it wrote, and says why."""
    path = tmp_path / "config.json"
    assert write_config(path, SITE) is None  # nothing replaced, nothing kept
    before = path.read_bytes()
    with monkeypatch.context() as m:
        newer_release(m)
        kept = write_config(path, {**SITE, "version": 2, "limits": {"exportW": 9000}})
    assert kept == tmp_path / "config.v1.json"
    assert kept.read_bytes() == before
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600  # it may hold the MQTT password
    assert json.loads(path.read_text())["version"] == 2

    config, notices = load_site_config(path)
    assert config.limits.export_w == 3000  # what the site ran on before the update, not 9000
    assert config.inverters[0].unit == 1
    assert len(notices) == 1
    assert notices[0].startswith("config.json: written by a newer dynexport (version 2)")
    assert "running on config.v1.json" in notices[0]


def test_writing_the_same_version_keeps_nothing(tmp_path: Path):
    path = tmp_path / "config.json"
    write_config(path, SITE)
    assert write_config(path, {**SITE, "limits": {"exportW": 1000}}) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "config.last-good.json"]


def test_a_newer_file_without_a_kept_copy_is_refused_as_before(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SITE, "version": 2}))
    with pytest.raises(ConfigError, match=r"written by a newer dynexport \(version 2\)"):
        load_site_config(path)


def test_an_invalid_kept_copy_is_named_and_not_run_on(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SITE, "version": 2}))
    (tmp_path / "config.v1.json").write_text(json.dumps({**SITE, "limits": {"exportW": -5}}))
    with pytest.raises(ConfigError) as refused:
        load_site_config(path)
    assert refused.value.problems[0].startswith("written by a newer dynexport (version 2)")
    assert "the copy kept of version 1 is invalid too" in refused.value.problems[1]
    assert "limits.exportW" in refused.value.problems[1]


def test_an_invalid_file_of_this_version_never_falls_back_to_a_copy(tmp_path: Path):
    """The version copy is for a rolled-back update only: a file this release can read but is
    wrong (a typo) is not replaced by it (only by the last-good copy, below, with a notice)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SITE, "limits": {"exportW": "lots"}}))
    (tmp_path / "config.v1.json").write_text(json.dumps(SITE))
    with pytest.raises(ConfigError, match=r"limits\.exportW"):
        load_site_config(path)


def test_a_file_that_is_not_json_is_replaced_and_nothing_is_kept(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xff not json")
    assert write_config(path, SITE) is None
    assert json.loads(path.read_text()) == SITE


@settings(max_examples=30, deadline=None)
@given(versions=st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_each_kept_copy_is_the_last_file_of_its_version_replaced_by_a_newer_one(
    tmp_path_factory: pytest.TempPathFactory, versions: list[int]
):
    """Over any sequence of saves by releases of schema versions 0..3 (updates, rollbacks):
    config.v<N>.json is always byte for byte the last version N file a higher version replaced,
    and config.json the last document written: no save loses the file a rollback needs."""
    folder = tmp_path_factory.mktemp("saves")
    path = folder / "config.json"
    expected: dict[int, bytes] = {}
    last: dict[str, Any] | None = None
    for i, v in enumerate(versions):
        doc: dict[str, Any] = {"version": v, "limits": {"exportW": i}}
        if last is not None and last["version"] < v:
            expected[last["version"]] = path.read_bytes()
        write_config(path, doc)
        last = doc
    assert json.loads(path.read_text()) == last
    kept = {int(p.name.split(".")[1][1:]): p.read_bytes() for p in folder.glob("config.v*.json")}
    assert kept == expected


DAMAGED: dict[str, bytes] = {
    "truncated to nothing": b"",
    "torn": json.dumps(SITE).encode()[:20],
    "garbage": bytes(range(256)),
    "invalid": json.dumps({**SITE, "limits": {"exportW": "lots"}}).encode(),
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_file_is_replaced_for_running_by_the_last_good_copy_with_a_notice(
    tmp_path: Path, damage: str
):
    """A bad SD card or a hand edit: the service ran in setup mode, the inverters on their
    own settings once their limits reverted, until someone came by. It runs on the last
    configuration read without error, says so, and leaves the damaged file as it is."""
    path = tmp_path / "config.json"
    write_config(path, SITE)
    assert last_good_path(path).read_bytes() == path.read_bytes()
    path.write_bytes(DAMAGED[damage])
    config, notices = load_site_config(path)
    assert config.limits.export_w == 3000
    assert len(notices) == 1
    assert notices[0].startswith("config.json: ")
    assert "running on config.last-good.json" in notices[0]
    assert path.read_bytes() == DAMAGED[damage]  # left for the installer to see and fix


def test_every_good_read_keeps_the_copy_and_a_damaged_one_never_replaces_it(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SITE))  # a file from before this copy was kept
    load_site_config(path)
    assert json.loads(last_good_path(path).read_text()) == SITE
    changed = {**SITE, "limits": {"exportW": 1000}}
    path.write_text(json.dumps(changed))
    load_site_config(path)
    assert json.loads(last_good_path(path).read_text()) == changed
    path.write_bytes(b"{")
    load_site_config(path)
    assert json.loads(last_good_path(path).read_text()) == changed


@pytest.mark.parametrize("how", ["read", "saved"])
def test_the_copy_kept_is_the_bytes_that_were_checked_not_the_file_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
):
    """Another writer (a hand edit, or the settings page saving) may change the file between
    the check and the copy: the file read again then made a damaged last-good copy."""
    path = tmp_path / "config.json"
    real = config_module.load_config_bytes

    def checked_then_changed(p: Path) -> tuple[Any, bytes]:
        got = real(p)
        Path(p).write_bytes(b"{half a write")  # the other writer, right after the check
        return got

    monkeypatch.setattr(config_file, "load_config_bytes", checked_then_changed)
    if how == "read":
        path.write_text(json.dumps(SITE))
        load_site_config(path)
    else:
        write_config(path, SITE)
    assert json.loads(last_good_path(path).read_text()) == SITE


def test_without_a_usable_last_good_copy_the_damaged_file_is_refused_as_before(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_bytes(b"{")
    with pytest.raises(ConfigError):
        load_site_config(path)
    last_good_path(path).write_bytes(b"not a configuration")
    with pytest.raises(ConfigError) as refused:
        load_site_config(path)
    assert "last-good" not in str(refused.value.problems)  # the file's own problem


def test_an_invalid_document_saved_is_not_kept_as_last_good(tmp_path: Path):
    path = tmp_path / "config.json"
    write_config(path, SITE)
    write_config(path, {**SITE, "limits": {"exportW": -5}})
    assert json.loads(last_good_path(path).read_text()) == SITE


def _rolled_back_after_a_newer_save(tmp_path: Path) -> Path:
    """What a newer release (schema 2) leaves after a save on its trial boot, then rolled back:
    config.json of version 2, config.v1.json (this release's copy), and config.last-good.json
    holding the v2 bytes (the newer release keeps its own last good copy)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"version": 1, "limits": {"exportW": 0}}))
    load_site_config(path)  # this release ran on it
    write_config(path, {"version": 2, "limits": {"exportW": 0}})  # keeps config.v1.json
    last_good_path(path).write_bytes(path.read_bytes())
    return path


@pytest.mark.parametrize("damage", ["truncated", "lost"])
def test_after_a_rollback_a_damaged_or_lost_file_runs_on_the_copy_of_this_version(
    tmp_path: Path, damage: str
) -> None:
    """The last good copy is then the newer release's, refused as newer: the site went to
    setup mode, without limits, though the copy it had just run on was beside it."""
    path = _rolled_back_after_a_newer_save(tmp_path)
    config, notices = load_site_config(path)
    assert config.limits.export_w == 0 and "running on config.v1.json" in notices[0]
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    else:
        path.unlink()
    config, notices = load_site_config(path)
    assert config.limits.export_w == 0
    assert len(notices) == 1 and "running on config.v1.json" in notices[0]
