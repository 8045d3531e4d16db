"""The update URL's pure core: manifests (hostile ones too), versions, decisions, schedules, and
the ``update`` configuration section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.system.config import ConfigError, UpdateConfig, parse_config
from dynexport.update.check import (
    MAX_MANIFEST_BYTES,
    ManifestError,
    VersionError,
    compare_versions,
    decide,
    first_check_delay,
    next_check_delay,
    parse_manifest,
    parse_system_compatible,
    parse_version,
)

BASE = "https://updates.example.com/dynexport/manifest.json"
SHA = "ab" * 32
ENTRY = {
    "version": "1.5.0",
    "compatible": "dynexport-rpi4_64",
    "url": "dynexport-rpi4_64-1.5.0.raucb",
    "size": 52_000_000,
    "sha256": SHA,
    "notes": "fixes the utility link's retry",
}


def manifest(**changes: object) -> bytes:
    return json.dumps({**ENTRY, **changes}).encode()


def test_a_manifest_names_the_bundle_resolved_against_its_own_url():
    (b,) = parse_manifest(manifest(), BASE).bundles
    assert b.url == "https://updates.example.com/dynexport/dynexport-rpi4_64-1.5.0.raucb"
    assert (b.version.text, b.compatible, b.size, b.sha256) == (
        "1.5.0",
        "dynexport-rpi4_64",
        52_000_000,
        SHA,
    )
    assert b.notes == "fixes the utility link's retry"


def test_a_manifest_may_list_one_bundle_per_board_and_this_boards_is_picked():
    doc = {"bundles": [ENTRY, {**ENTRY, "compatible": "dynexport-rpi5", "url": "/b/5.raucb"}]}
    got = parse_manifest(json.dumps(doc).encode(), BASE)
    assert got.for_board("dynexport-rpi5").url == "https://updates.example.com/b/5.raucb"
    with pytest.raises(ManifestError, match=r"no bundle for this board \(dynexport-pi3\).*"):
        got.for_board("dynexport-pi3")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\x89PNG\r\n\x1a\n", "not UTF-8"),
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"[1, 2]", "must be a JSON object, not a list"),
        (b"x" * (MAX_MANIFEST_BYTES + 1), f"at most {MAX_MANIFEST_BYTES}"),
        (b"[" * 100_000, "at most"),
        (b"[" * 60_000, "not usable JSON|not JSON"),
        (manifest(version=15), "version: a version must be a string, not a number"),
        (manifest(version="latest"), "version: 'latest' is not a version"),
        (manifest(size="52MB"), "size: must be a whole number of bytes, not a string"),
        (manifest(size=True), "size: must be a whole number of bytes, not true"),
        (manifest(size=10**12), "size: must be 1 to 268435456 bytes"),
        (manifest(size=0), "size: must be 1 to"),
        (manifest(sha256="abc"), "sha256: must be 64 hexadecimal digits"),
        (manifest(sha256=None), "sha256: must be 64 hexadecimal digits"),
        (manifest(url="http://updates.example.com/b.raucb"), "url: must be an https:// URL"),
        (manifest(url="https://user:pw@example.com/b"), "user name or password"),
        (manifest(url="https://exa mple.com/b"), "not a URL"),
        (manifest(url=["a"]), "url: must be a string, not a list"),
        (manifest(compatible="../../etc"), "compatible: must be a board name"),
        (manifest(notes=7), "notes: must be a string"),
        (json.dumps({"bundles": []}).encode(), "bundles: must be a non-empty list"),
        (json.dumps({"bundles": [ENTRY] * 33}).encode(), "at most 32 entries"),
        (json.dumps({"bundles": [ENTRY, 3]}).encode(), r"bundles\[1\]\.must be a JSON object"),
        (json.dumps({k: v for k, v in ENTRY.items() if k != "size"}).encode(), "size: is missing"),
    ],
)
def test_a_hostile_manifest_is_refused_with_the_problem_named(raw: bytes, says: str):
    with pytest.raises(ManifestError, match=says):
        parse_manifest(raw, BASE)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from([*sorted(ENTRY), "bundles"]),
            JSON | st.sampled_from(list(ENTRY.values())),
        ).map(lambda d: json.dumps({**ENTRY, **d}).encode()),
    )
)
def test_any_bytes_give_a_manifest_or_a_clear_error_never_another_exception(raw: bytes):
    try:
        got = parse_manifest(raw, BASE)
    except ManifestError as exc:
        assert str(exc)
    else:
        assert got.bundles
        for b in got.bundles:
            assert b.url.startswith("https://") and 0 < b.size <= 256 * 1024 * 1024


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.4.0", "1.4.1"),
        ("1.4.9", "1.10.0"),
        ("1.5.0rc1", "1.5.0"),
        ("1.5.0-rc.1", "1.5.0-rc.2"),
        ("1.5.0.dev3", "1.5.0a1"),
        ("0.9", "1.0.0"),
        ("v2.0.0", "2.0.1"),
    ],
)
def test_versions_are_ordered_as_releases(older: str, newer: str):
    assert compare_versions(parse_version(newer), parse_version(older)) == "newer"
    assert compare_versions(parse_version(older), parse_version(newer)) == "older"


def test_build_metadata_after_plus_is_not_compared():
    assert compare_versions(parse_version("1.4.0+ab12cd"), parse_version("1.4.0+ff00")) == "same"
    assert compare_versions(parse_version("1.4"), parse_version("1.4.0")) == "same"


@pytest.mark.parametrize("text", ["", "latest", "1.4.0.0.0", "1..4", "1.4 beta", "x1.4"])
def test_a_version_that_cannot_be_compared_is_an_error(text: str):
    with pytest.raises(VersionError):
        parse_version(text)


BOARD = "dynexport-rpi4_64"


def _decide(version: str, mode: str = "auto", phase: str = "none", last: str | None = None):
    m = parse_manifest(manifest(version=version), BASE)
    return decide(m, BOARD, parse_version("1.4.0+abc"), mode, phase, last)  # type: ignore[arg-type]


def test_a_newer_version_is_installed_in_auto_and_only_shown_in_notify():
    auto, notify = _decide("1.5.0"), _decide("1.5.0", "notify")
    assert auto.install and auto.available is not None
    assert not notify.install and notify.available is not None
    assert "install it from Installer tools" in notify.message


@pytest.mark.parametrize("version", ["1.4.0", "1.4.0+other", "1.3.9", "0.1.0"])
def test_the_same_or_an_older_version_is_never_offered(version: str):
    got = _decide(version)
    assert not got.install and got.available is None
    assert got.message.startswith("up to date")


@pytest.mark.parametrize("phase", ["installing", "reboot-pending", "trial"])
def test_nothing_is_installed_while_the_last_update_is_unfinished(phase: str):
    got = _decide("1.5.0", phase=phase, last="1.5.0")
    assert not got.install and "waiting for the last update" in got.message


@pytest.mark.parametrize("phase", ["rolled-back", "failed"])
def test_a_version_that_failed_or_was_rolled_back_is_not_installed_again(phase: str):
    again = _decide("1.5.0+newbuild", phase=phase, last="1.5.0+abc")
    assert not again.install and "not installed again automatically" in again.message
    assert _decide("1.5.1", phase=phase, last="1.5.0").install


def test_another_boards_manifest_is_an_error_naming_both():
    with pytest.raises(ManifestError, match=r"no bundle for this board .*it offers dynexport-rpi5"):
        decide(
            parse_manifest(manifest(compatible="dynexport-rpi5"), BASE),
            BOARD,
            parse_version("1.0"),
            "auto",
            "none",
            None,
        )


def test_the_boards_compatible_is_read_from_raucs_system_conf():
    conf = "# comment\n[system]\ncompatible=dynexport-rpi4_64\nbootloader=custom\n[keyring]\n"
    assert parse_system_compatible(conf) == "dynexport-rpi4_64"
    assert parse_system_compatible("[keyring]\ncompatible=x\n") is None
    assert parse_system_compatible("") is None


@settings(max_examples=200, deadline=None)
@given(
    hours=st.floats(1.0, 720.0),
    failures=st.integers(0, 10_000),
    jitter=st.floats(-1.0, 2.0, allow_nan=False),
)
def test_checks_are_spread_and_back_off_but_never_wait_past_the_interval_by_more_than_10_pct(
    hours: float, failures: int, jitter: float
):
    interval = hours * 3600
    delay = next_check_delay(interval, failures, jitter)
    if failures == 0:
        assert 0.9 * interval <= delay <= 1.1 * interval
    else:
        assert min(interval, 300.0) / 2 <= delay <= interval
    assert 120.0 <= first_check_delay(interval, jitter) <= 120.0 + 3600.0


def test_retries_double_from_five_minutes():
    day = 86400.0
    assert [next_check_delay(day, n, 1.0) for n in range(1, 6)] == [300, 600, 1200, 2400, 4800]
    assert next_check_delay(day, 40, 1.0) == day


# -- the configuration section -----------------------------------------------------------------


def test_without_an_update_section_nothing_is_checked():
    assert parse_config({}).update is None


def test_the_update_section_defaults_to_notify_once_a_day(tmp_path: Path):
    got = parse_config(
        {"update": {"url": "https://u.example.com/m.json", "ca": "ca.pem"}}, tmp_path
    )
    assert got.update == UpdateConfig(
        url="https://u.example.com/m.json",
        ca=tmp_path / "ca.pem",
        check_hours=24.0,
        install="notify",
    )


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"url": "http://u.example.com/m.json"}, "update.url: must be an https:// URL"),
        ({"url": "http://127.0.0.1:8080/m.json"}, "update.url: must be an https:// URL"),
        ({"url": "ftp://u.example.com/m"}, "update.url: must be an https:// URL"),
        ({}, "update.url: must be a non-empty string"),
        ({"url": "https://u.example.com/m", "install": "yes"}, "update.install: must be one of"),
        ({"url": "https://u.example.com/m", "checkHours": 0}, r"update.checkHours: must be 1..720"),
        ({"url": "https://u.example.com/m", "checkhours": 2}, "did you mean 'checkHours'"),
    ],
)
def test_a_bad_update_section_is_refused_naming_the_key(section: dict[str, object], says: str):
    with pytest.raises(ConfigError, match=says):
        parse_config({"update": section})


@settings(max_examples=50, deadline=None)
@given(
    hours=st.floats(1.0, 720.0) | st.integers(1, 720),
    install=st.sampled_from(["notify", "auto"]),
    ca=st.none() | st.just("/etc/dynexport/update-ca.pem"),
)
def test_the_section_written_back_parses_to_the_same(hours: float, install: str, ca: str | None):
    section = {"url": "https://u.example.com/m.json", "checkHours": hours, "install": install}
    if ca is not None:
        section["ca"] = ca
    first = parse_config({"update": section}).update
    assert first is not None
    assert parse_config({"update": first.document()}).update == first


def test_settings_saved_from_the_web_page_keep_the_update_section(tmp_path: Path):
    """The web page writes the whole configuration back (config_document): a configured update
    URL must survive it, not be dropped by an Apply that never showed it."""
    from dynexport.web.configdoc import config_document

    section = {
        "url": "https://updates.example.com/dynexport.json",
        "checkHours": 12,
        "install": "auto",
    }
    first = parse_config({"update": section}, tmp_path)
    again = parse_config(config_document(first), tmp_path)
    assert again.update == first.update
    assert "update" not in config_document(parse_config({}, tmp_path))
