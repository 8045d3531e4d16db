"""Configuration schema versions: old files migrate, newer files are refused with a reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.cli import main
from dynexport.system import migrate as migrate_module
from dynexport.system.config import ConfigError, load_config, parse_config
from dynexport.system.migrate import CURRENT_VERSION, MigrationError, document_version, migrate
from dynexport.web.configdoc import config_document

VERSION_0 = {
    "inverters": [
        {"type": "sunspec", "tcp": "192.168.1.50:502", "unit": 1},
        {"type": "sunspec", "rtu": "/dev/ttyUSB0", "baud": 9600, "parity": "N", "unit": 2},
    ],
    "meter": {"type": "sunspec", "tcp": "192.168.1.50:502", "unit": 240, "location": "feedin"},
    "limits": {"exportW": 5000},
}

NEWER_MESSAGE = (
    "written by a newer dynexport (version 2); this one reads up to 1: the update was rolled back?"
)


def test_current_version_is_one():
    assert CURRENT_VERSION == 1


def test_a_file_without_version_is_version_0_and_loads_as_today():
    assert document_version(VERSION_0) == 0
    unversioned = parse_config(VERSION_0, base_dir=Path("/d"))
    versioned = parse_config({**VERSION_0, "version": 1}, base_dir=Path("/d"))
    assert unversioned == versioned
    assert unversioned.limits.export_w == 5000


def test_explicit_version_0_is_read_like_a_file_without_version():
    assert parse_config({**VERSION_0, "version": 0}, base_dir=Path("/d")) == parse_config(
        VERSION_0, base_dir=Path("/d")
    )


def test_a_newer_version_is_refused_with_the_rollback_message(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**VERSION_0, "version": 2}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [NEWER_MESSAGE]
    assert str(path) in str(info.value)


def test_refusing_a_newer_file_leaves_it_byte_for_byte(tmp_path: Path):
    path = tmp_path / "config.json"
    text = json.dumps({**VERSION_0, "version": 7, "futureKey": {"x": 1}}, indent=1)
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)
    assert path.read_text() == text


def test_reading_an_old_file_does_not_rewrite_it(tmp_path: Path):
    path = tmp_path / "config.json"
    text = json.dumps(VERSION_0)
    path.write_text(text)
    load_config(path)
    assert path.read_text() == text


def test_config_check_command_names_the_newer_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**VERSION_0, "version": 2}))
    assert main(["config", "check", str(path)]) == 2
    assert NEWER_MESSAGE in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1", "version: must be a whole number, not '1'"),
        (1.0, "version: must be a whole number, not 1.0"),
        (True, "version: must be a whole number, not True"),
        (None, "version: must be a whole number, not None"),
        (-1, "version: must be 0 or more, not -1"),
    ],
)
def test_a_malformed_version_is_named(value: object, problem: str):
    with pytest.raises(ConfigError) as info:
        parse_config({**VERSION_0, "version": value}, base_dir=Path("/d"))
    assert info.value.problems == [problem]


def test_migration_does_not_modify_the_decoded_document():
    doc = {**copy.deepcopy(VERSION_0), "version": 1}
    before = copy.deepcopy(doc)
    migrate(doc)
    assert doc == before


def test_non_objects_are_left_for_the_validator_to_name():
    assert migrate([1, 2]) == [1, 2]
    with pytest.raises(ConfigError) as info:
        parse_config([1, 2])
    assert info.value.problems == ["(top level): must be an object, not a list"]


def test_steps_run_in_order_from_the_file_version(monkeypatch: pytest.MonkeyPatch):
    """A future version 2 that renames a key: a version 0 file passes through both steps."""
    calls: list[str] = []

    def v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
        calls.append("1->2")
        out = dict(doc)
        out["limitsV2"] = out.pop("limits")
        return out

    def v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
        calls.append("0->1")
        return doc

    monkeypatch.setattr(migrate_module, "STEPS", (v0_to_v1, v1_to_v2))
    monkeypatch.setattr(migrate_module, "CURRENT_VERSION", 2)
    assert migrate_module.migrate(VERSION_0) == {
        "inverters": VERSION_0["inverters"],
        "meter": VERSION_0["meter"],
        "limitsV2": {"exportW": 5000},
    }
    assert calls == ["0->1", "1->2"]
    calls.clear()
    migrate_module.migrate({**VERSION_0, "version": 1})
    assert calls == ["1->2"]
    calls.clear()
    migrate_module.migrate({"version": 2, "limitsV2": {}})
    assert calls == []
    with pytest.raises(MigrationError, match=r"version 3\); this one reads up to 2"):
        migrate_module.migrate({"version": 3})


def test_the_web_document_carries_the_version_and_parses_back():
    config = parse_config(VERSION_0, base_dir=Path("/d"))
    doc = config_document(config)
    assert doc["version"] == CURRENT_VERSION
    assert parse_config(doc, base_dir=Path("/d")) == config


@settings(max_examples=100, deadline=None)
@given(version=st.integers(min_value=CURRENT_VERSION + 1, max_value=10**6))
def test_every_newer_version_is_refused_never_read(version: int):
    """A rollback must never read a newer file as if it were its own format."""
    with pytest.raises(ConfigError) as info:
        parse_config({**VERSION_0, "version": version}, base_dir=Path("/d"))
    assert info.value.problems == [
        f"written by a newer dynexport (version {version}); this one reads up to "
        f"{CURRENT_VERSION}: the update was rolled back?"
    ]


@settings(max_examples=100, deadline=None)
@given(
    version=st.integers(min_value=0, max_value=CURRENT_VERSION),
    export_w=st.one_of(st.none(), st.integers(min_value=0, max_value=100_000)),
)
def test_every_readable_version_gives_the_same_config(version: int, export_w: int | None):
    doc = copy.deepcopy(VERSION_0)
    doc["limits"] = {} if export_w is None else {"exportW": export_w}
    expected = parse_config(doc, base_dir=Path("/d"))
    assert parse_config({**doc, "version": version}, base_dir=Path("/d")) == expected
