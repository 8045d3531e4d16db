"""The utility link's files on ``/data`` damaged (a torn write, a bad SD card, a bad edit): each
loader sets the file aside and starts without it, whatever the damage; nothing escapes to the
service's start.

A value of the wrong type deep inside ``schedule.json`` raised AttributeError out of the loader
at every start: the service exited before writing any limit, and systemd's start limit rebooted
the appliance over and over. An infinite number in ``telemetry.json`` (OverflowError), or JSON
nested too deep for the decoder (RecursionError), kept the utility link from starting for good.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynexport.sep2 import responses
from dynexport.sep2.controls import ControlBase
from dynexport.sep2.responses import ResponseTracker
from dynexport.sep2.schedule import ScheduleSnapshot
from dynexport.sep2.state import KEEP_CORRUPT, LinkStore
from dynexport.sep2.telemetry import IntervalReading, Outbox
from tests.sep2.test_schedule import SEED, T0, ev, prog

REPLY: dict[str, Any] = {"response_required": 3, "reply_to": "/rsp"}

WRONG: tuple[Any, ...] = (None, True, 0, -1, 1.5, float("inf"), 10**400, "x", "", [], {}, [[]])
"""What a damaged file may hold where a value was."""


def good_files() -> dict[str, bytes]:
    """Real files of each kind, with every part filled (events, defaults, the memory of
    finished events, pending responses, telemetry readings)."""
    programs = [
        prog(
            "/derp/1",
            1,
            ev("A1", T0, 600, export=0.0, **REPLY),
            default=ControlBase(export_limit_w=5e3),
        ),
        prog("/derp/2", 2, ev("B2", T0 + 60, 60, import_=100.0, connect=False, **REPLY)),
    ]
    first = ScheduleSnapshot.first(programs, T0 - 10, 3, SEED)
    snap = first.successor(programs[1:], T0 + 900, 3, SEED)  # A1 finished: remembered
    tracker = responses.update(ResponseTracker(), programs, T0 + 30, SEED)
    box = Outbox()
    box.extend([IntervalReading("site", "W", T0, 60, 1.0, 0.5, 2.0, 12, phase="B")])
    return {
        "schedule.json": snap.to_json().encode(),
        "responses.json": tracker.to_json().encode(),
        "telemetry.json": json.dumps(box.to_json()).encode(),
    }


LOADERS: dict[str, Callable[[LinkStore], object]] = {
    "schedule.json": lambda s: s.load_schedule(),
    "responses.json": lambda s: s.load_responses(),
    "telemetry.json": lambda s: s.load_outbox(),
}
EMPTY: dict[str, object] = {
    "schedule.json": None,
    "responses.json": ResponseTracker(),
    "telemetry.json": [],
}


def paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*at, i))


def replaced(doc: Any, at: tuple[Any, ...], value: Any) -> bytes:
    if not at:
        doc = value
    else:
        doc = copy.deepcopy(doc)
        node = doc
        for k in at[:-1]:
            node = node[k]
        node[at[-1]] = value
    return json.dumps(doc, allow_nan=True).replace("Infinity", "1e400").encode()


def load(directory: Path, name: str, data: bytes) -> object:
    """Writes ``data`` as the file, loads it as the service does at start (never raising: the
    test fails if anything escapes) and checks the outcome: the file loaded, or set aside."""
    for old in directory.iterdir():
        old.unlink()
    (directory / name).write_bytes(data)
    loaded = LOADERS[name](LinkStore(directory))
    if name == "telemetry.json":
        assert isinstance(loaded, Outbox)
        loaded = list(loaded.pending)
    if not (directory / name).exists():  # set aside: it started empty, and kept the damage
        assert loaded == EMPTY[name]
        aside = list(directory.glob(f"{name}.*.corrupt"))
        assert len(aside) == 1 and aside[0].read_bytes() == data
    return loaded


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_every_torn_write_and_garbage_is_set_aside_and_the_link_starts_empty(
    tmp_path: Path, name: str
) -> None:
    raw = good_files()[name]
    garbage = [b"", b"\x00" * 512, bytes(range(256)), b"\xff\xfe" + raw, b"[" * 100_000, b"NaN"]
    for data in [raw[:n] for n in range(len(raw))] + garbage + [b"null", b"[]", b'"x"']:
        assert load(tmp_path, name, data) == EMPTY[name], data[:40]
        assert not (tmp_path / name).exists()


PARSERS = {
    "schedule.json": (ScheduleSnapshot, "_from_json"),
    "responses.json": (ResponseTracker, "_from_json"),
    "telemetry.json": (Outbox, "_from_json"),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_running_out_of_memory_once_is_not_damage_and_the_file_loads(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception from the parser meant a damaged file, so one MemoryError set a good
    schedule aside for good. The file is parsed again, loads, and stays."""
    raw = good_files()[name]
    (tmp_path / name).write_bytes(raw)
    owner, attribute = PARSERS[name]
    real = getattr(owner, attribute)
    calls: list[int] = []

    def out_of_memory_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, out_of_memory_once)
    loaded = LOADERS[name](LinkStore(tmp_path))
    assert calls == [1, 1]
    if name == "telemetry.json":
        loaded = list(loaded.pending)  # type: ignore[attr-defined]
    assert loaded != EMPTY[name]  # the good file's content, not a fresh start
    assert (tmp_path / name).read_bytes() == raw
    assert list(tmp_path.glob("*.corrupt")) == []


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_file_that_runs_out_of_memory_every_time_is_set_aside(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Linux, which overcommits, a MemoryError that comes back is the file's doing (a
    damaged length asking for an absurd allocation): raised out of the loader it kept the
    link down for good; it is set aside as any damage, and the link starts without it."""
    raw = good_files()[name]
    (tmp_path / name).write_bytes(raw)

    def out_of_memory(*args: object, **kwargs: object) -> object:
        raise MemoryError

    owner, attribute = PARSERS[name]
    monkeypatch.setattr(owner, attribute, out_of_memory)
    loaded = LOADERS[name](LinkStore(tmp_path))
    if name == "telemetry.json":
        loaded = list(loaded.pending)  # type: ignore[attr-defined]
    assert loaded == EMPTY[name]
    assert not (tmp_path / name).exists()
    assert [p.read_bytes() for p in tmp_path.glob(f"{name}.*.corrupt")] == [raw]


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_any_value_of_the_wrong_type_anywhere_never_escapes_the_loader(
    tmp_path: Path, name: str
) -> None:
    """Every value of the file, in turn, replaced by each of `WRONG`: the loader returns (the
    file loaded as it is, or set aside) and never raises."""
    doc = json.loads(good_files()[name])
    for at in paths(doc):
        for value in WRONG:
            load(tmp_path, name, replaced(doc, at, value))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damage_drawn_at_random_never_escapes_the_loader(
    tmp_path: Path, data: st.DataObject
) -> None:
    """The property, over combinations the loop above does not try: several values replaced at
    once by any JSON hypothesis can build."""
    name = data.draw(st.sampled_from(sorted(LOADERS)))
    doc = json.loads(good_files()[name])
    junk = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=6,
    )
    where = list(paths(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.sampled_from(where))
        try:
            doc = json.loads(replaced(doc, at, data.draw(junk)))
        except (KeyError, IndexError, TypeError):  # an earlier replacement removed that path
            continue
        where = list(paths(doc))
    load(tmp_path, name, json.dumps(doc, allow_nan=True).encode())


def test_damaged_copies_are_kept_newest_first_up_to_a_bound(tmp_path: Path) -> None:
    """Each damaged copy is kept under its own name (a second one overwrote the first), up to
    `KEEP_CORRUPT` of them."""
    for i in range(KEEP_CORRUPT + 2):
        (tmp_path / "schedule.json").write_bytes(b"{damaged %d" % i)
        assert LinkStore(tmp_path).load_schedule() is None
    kept = sorted(tmp_path.glob("schedule.json.*.corrupt"))
    assert len(kept) == KEEP_CORRUPT
    assert {p.read_bytes() for p in kept} == {
        b"{damaged %d" % i for i in range(2, KEEP_CORRUPT + 2)
    }


def test_the_good_files_load_as_they_were_written(tmp_path: Path) -> None:
    """The fixture is real: undamaged, each file loads, with its content."""
    files = good_files()
    snap = load(tmp_path, "schedule.json", files["schedule.json"])
    assert isinstance(snap, ScheduleSnapshot) and len(snap.programs) == 1 and snap.memory.fates
    tracker = load(tmp_path, "responses.json", files["responses.json"])
    assert isinstance(tracker, ResponseTracker) and tracker.pending
    assert len(load(tmp_path, "telemetry.json", files["telemetry.json"])) == 1  # type: ignore[arg-type]
