"""The users that own files on /data keep their IDs from one image to the next, and a card
written under other IDs is given back to them at boot (docs/image.md "Users and IDs").

Left to Buildroot (uid -1 in a USERS line), a user gets the lowest free ID from 100, in package
order (dynexport's external package last): a release with one more such user moved dynexport's
ID, and after the A/B update config.json, the 0600 keys and the history belonged to the old ID.
The allocation is modelled from Buildroot's manual (makeusers syntax: fixed IDs are taken as
given, before any automatic one; -1 is the lowest free system ID from 100 to 999, -2 a user ID
from 1000 to 1999; a user defined twice keeps its fixed ID)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.image.helpers import BOARDS, EXT, LIBEXEC, OVERLAY, ROOT, UNITS, unit

USERS_TABLE = EXT / "board/dynexport/users.table"
TMPFILES = OVERLAY / "usr/lib/tmpfiles.d/dynexport.conf"
AUTO_RANGES = (range(100, 1000), range(1000, 2000))
# The users Buildroot's systemd package makes for this image's options (package/systemd/
# systemd.mk: networkd, resolved, timesyncd), all automatic; other packages may add more.
SYSTEMD_USERS = [
    "systemd-network -1 systemd-network -1 * - - - systemd Network Management",
    "systemd-resolve -1 systemd-resolve -1 * - - - systemd Resolver",
    "systemd-timesync -1 systemd-timesync -1 * - - - systemd Time Synchronization",
]


def _table_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def dynexport_users() -> list[str]:
    mk = (EXT / "package/dynexport/dynexport.mk").read_text()
    block = re.search(r"define DYNEXPORT_USERS\n(.*?)\nendef", mk, re.S)
    assert block is not None
    return _table_lines(block[1])


def allocate(lines: list[str]) -> dict[str, int]:
    """user -> UID, as Buildroot's manual describes makeusers' allocation."""
    fixed = {ln.split()[0]: int(ln.split()[1]) for ln in lines if int(ln.split()[1]) >= 0}
    uids = dict(fixed)
    for ln in lines:
        name, uid = ln.split()[0], int(ln.split()[1])
        if uid >= 0 or name in uids:
            continue
        pool = AUTO_RANGES[0] if uid == -1 else AUTO_RANGES[1]
        uids[name] = next(u for u in pool if u not in uids.values())
    return uids


def image_users(extra_before: int = 0) -> dict[str, int]:
    """The image's users table: the packages' lines in package order (dynexport last), then
    BR2_ROOTFS_USERS_TABLES; ``extra_before`` more automatic users from another package."""
    extra = [
        f"newpkg{i} -1 newpkg{i} -1 * - - - a later release's user" for i in range(extra_before)
    ]
    table = _table_lines(USERS_TABLE.read_text())
    return allocate([*SYSTEMD_USERS, *extra, *dynexport_users(), *table])


def data_owners() -> set[str]:
    """The users (not root) that own folders on /data (tmpfiles.d)."""
    owners = set()
    for ln in _table_lines(TMPFILES.read_text()):
        fields = ln.split()
        if fields[1].startswith("/data") and fields[3] != "root":
            owners.add(fields[3])
    return owners


def test_the_users_owning_data_have_fixed_ids_outside_buildroots_ranges() -> None:
    lines = {
        ln.split()[0]: ln.split()
        for ln in [*dynexport_users(), *_table_lines(USERS_TABLE.read_text())]
    }
    assert data_owners() == {"dynexport", "systemd-timesync"}
    for user in data_owners():
        fields = lines[user]
        uid, gid = int(fields[1]), int(fields[3])
        assert fields[2] == user and uid == gid, fields
        assert uid > 0 and not any(uid in r for r in AUTO_RANGES), fields
    assert lines["dynexport"][7] == "dialout"


@pytest.mark.parametrize("board", BOARDS)
def test_every_image_uses_the_users_table(board: str) -> None:
    config = (EXT / f"configs/dynexport_{board}_defconfig").read_text()
    assert (
        'BR2_ROOTFS_USERS_TABLES="$(BR2_EXTERNAL_DYNEXPORT_PATH)/board/dynexport/users.table"\n'
        in config
    )


def test_one_more_automatic_user_in_a_later_release_moves_no_owner_of_data() -> None:
    before = image_users()
    for extra in (1, 2, 7):
        after = image_users(extra)
        for user in data_owners():
            assert after[user] == before[user], (user, extra)


def test_the_system_test_image_makes_the_same_user() -> None:
    script = (ROOT / "systemtest/build-image.sh").read_text()
    uid = int(next(ln for ln in dynexport_users() if ln.startswith("dynexport ")).split()[1])
    assert re.search(rf"groupadd --system --gid {uid} dynexport\n", script)
    assert re.search(rf"useradd --system --uid {uid} --gid dynexport\b", script)


# -- data-owners: the files of a card written under older IDs ---------------------------------

SCRIPT = LIBEXEC / "data-owners"
IDS = {"dynexport": 70, "systemd-timesync": 71}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other IDs needs root")


def _run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    cases = "\n".join(f"{u}) echo {i};;" for u, i in IDS.items())
    (bin_dir / "id").write_text(f'#!/bin/sh\ncase "$2" in\n{cases}\n*) exit 1;;\nesac\n')
    (bin_dir / "id").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DYNEXPORT_DATA": str(tmp_path / "data"),
    }
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def _owners(top: Path) -> set[tuple[int, int]]:
    return {(p.lstat().st_uid, p.lstat().st_gid) for p in [top, *top.rglob("*")]}


@needs_root
def test_a_card_written_under_older_ids_is_given_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    service, clock = data / "dynexport", data / "system/timesync"
    (service / "history").mkdir(parents=True)
    clock.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_text("root's")
    for path, mode in ((service / "config.json", 0o600), (service / "history/2026-12.csv", 0o600)):
        path.write_text("{}")
        path.chmod(mode)
    (service / "key.pem").symlink_to(outside)  # a link the service made: not followed
    (clock / "clock").write_text("")
    for p in [*service.parent.rglob("*")]:
        os.lchown(p, 105 if "dynexport" in str(p) else 104, 105 if "dynexport" in str(p) else 104)
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _owners(service) == {(70, 70)}
    assert _owners(clock) == {(71, 71)}
    assert outside.stat().st_uid == 0
    assert stat.S_IMODE((service / "config.json").stat().st_mode) == 0o600  # modes kept
    assert f"{service} belongs to 105:105, not dynexport (70:70)" in proc.stdout
    # the next boot: each folder's owner is right, nothing is walked or said
    (service / "new.json").write_text("{}")
    again = _run(tmp_path)
    assert again.returncode == 0 and again.stdout == ""
    assert (service / "new.json").stat().st_uid == 0


@needs_root
def test_missing_folders_and_unknown_users_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    proc = _run(tmp_path)  # a first boot: tmpfiles makes the folders afterwards
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_it_runs_once_data_is_mounted_without_failing_the_mount() -> None:
    data = unit(UNITS / "dynexport-data.service")
    assert data["Service.ExecStart"] == ["/usr/libexec/dynexport/mount-data"]
    assert data["Service.ExecStartPost"] == ["-/usr/libexec/dynexport/data-owners"]
    assert os.access(SCRIPT, os.X_OK)
