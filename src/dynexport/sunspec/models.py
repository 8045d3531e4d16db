"""SunSpec model definitions, loaded from the official JSON that ships with pysunspec2.

Register maps are never typed by hand: the SunSpec Alliance publishes every model as JSON
(``sunspec2/models/json/model_<id>.json``) and a typo in a hand-written map would silently scale
or misplace a power value. This module turns that JSON into small frozen dataclasses with each
point's register offset precomputed, so decoding and polling never re-parse JSON.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# Registers each point type occupies; strings (and a few others) take their size from the JSON.
TYPE_SIZES: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "count": 1,
    "acc16": 1,
    "enum16": 1,
    "bitfield16": 1,
    "pad": 1,
    "sunssf": 1,
    "int32": 2,
    "uint32": 2,
    "acc32": 2,
    "enum32": 2,
    "bitfield32": 2,
    "ipaddr": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "acc64": 4,
    "float64": 4,
    "eui48": 4,
    "ipv6addr": 8,
}

END_MODEL_ID = 0xFFFF


class ModelDefinitionError(ValueError):
    """A model's JSON definition is missing or not something this decoder understands."""


@dataclass(frozen=True)
class PointDef:
    """One point: where it sits in its group instance and how to turn registers into a value."""

    name: str
    type: str
    size: int
    """Registers the point occupies."""
    offset: int
    """Register offset from the start of the group instance (the model's ID register for the
    top-level group)."""
    sf: str | int | None = None
    """Scale factor: the name of a ``sunssf`` point, a constant exponent, or None."""
    units: str | None = None
    access: str = "R"
    mandatory: bool = False
    static: bool = False
    symbols: tuple[tuple[str, int], ...] = ()
    label: str = ""

    @property
    def writable(self) -> bool:
        return self.access == "RW"

    def symbol(self, value: int) -> str | None:
        """The symbolic name of an enum value (e.g. Conn 1 -> ``CONNECT``), if the JSON has one."""
        for name, v in self.symbols:
            if v == value:
                return name
        return None


@dataclass(frozen=True)
class GroupDef:
    """A group of points, possibly with nested groups.

    ``count`` says how many instances a nested group has: None = exactly one; an int > 0 = that
    many; 0 = as many as fit in the rest of the model (legacy repeating blocks, e.g. model 160 in
    old definitions); a str = the name of a top-level point holding the count (``N``, ``NPt``).
    """

    name: str
    points: tuple[PointDef, ...]
    groups: tuple[GroupDef, ...] = ()
    count: int | str | None = None
    label: str = ""

    @property
    def points_len(self) -> int:
        """Registers taken by this group's own points (nested groups not included)."""
        return sum(p.size for p in self.points)

    def point(self, name: str) -> PointDef:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"group {self.name!r} has no point {name!r}")

    def has_point(self, name: str) -> bool:
        return any(p.name == name for p in self.points)


@dataclass(frozen=True)
class ModelDef:
    """A model definition; the top-level group's first two points are always ID and L."""

    id: int
    name: str
    label: str
    group: GroupDef

    @property
    def fixed_len(self) -> int:
        """Registers of the top-level points including ID and L."""
        return self.group.points_len

    def point(self, name: str) -> PointDef:
        """A top-level point (offset relative to the register holding the model id)."""
        return self.group.point(name)

    def has_point(self, name: str) -> bool:
        return self.group.has_point(name)


def _point(raw: dict[str, Any], offset: int, where: str) -> PointDef:
    ptype = raw.get("type")
    name = raw.get("name")
    if not isinstance(name, str) or not isinstance(ptype, str):
        raise ModelDefinitionError(f"{where}: point without a name or type")
    size = raw.get("size")
    if ptype == "string":
        if not isinstance(size, int) or size <= 0:
            raise ModelDefinitionError(f"{where}.{name}: string without a size")
    elif ptype in TYPE_SIZES:
        size = TYPE_SIZES[ptype]
    else:
        raise ModelDefinitionError(f"{where}.{name}: unknown point type {ptype!r}")
    sf = raw.get("sf")
    if isinstance(sf, str):
        with contextlib.suppress(ValueError):
            sf = int(sf)
    symbols = tuple(
        (str(s["name"]), int(s["value"])) for s in raw.get("symbols", ()) if "value" in s
    )
    return PointDef(
        name=name,
        type=ptype,
        size=size,
        offset=offset,
        sf=sf if isinstance(sf, int | str) else None,
        units=raw.get("units"),
        access=raw.get("access", "R"),
        mandatory=raw.get("mandatory") == "M",
        static=raw.get("static") == "S",
        symbols=symbols,
        label=raw.get("label", ""),
    )


def _group(raw: dict[str, Any], where: str) -> GroupDef:
    name = raw.get("name")
    if not isinstance(name, str):
        raise ModelDefinitionError(f"{where}: group without a name")
    points: list[PointDef] = []
    offset = 0
    for p in raw.get("points", ()):
        pd = _point(p, offset, f"{where}.{name}")
        points.append(pd)
        offset += pd.size
    groups = tuple(_group(g, f"{where}.{name}") for g in raw.get("groups", ()))
    count = raw.get("count")
    if isinstance(count, str):
        with contextlib.suppress(ValueError):
            count = int(count)
    if count is not None and not isinstance(count, int | str):
        raise ModelDefinitionError(f"{where}.{name}: bad group count {count!r}")
    return GroupDef(
        name=name, points=tuple(points), groups=groups, count=count, label=raw.get("label", "")
    )


def parse_model_def(raw: dict[str, Any]) -> ModelDef:
    """Build a ModelDef from one model's JSON object (the shape pysunspec2 ships)."""
    mid = raw.get("id")
    graw = raw.get("group")
    if not isinstance(mid, int) or not isinstance(graw, dict):
        raise ModelDefinitionError("model definition needs an integer 'id' and a 'group'")
    group = _group(graw, f"model {mid}")
    names = [p.name for p in group.points[:2]]
    if names != ["ID", "L"]:
        raise ModelDefinitionError(f"model {mid}: first points must be ID and L, found {names}")
    return ModelDef(id=mid, name=group.name, label=str(graw.get("label", "")), group=group)


@cache
def _models_folder() -> Path | None:
    """pysunspec2's ``models/json`` folder, found without importing the package.

    ``importlib.resources`` would import ``sunspec2`` and, through its readers, ``zipfile``:
    0.4 MiB the service keeps for nothing, since pysunspec2 is always installed as files.
    """
    spec = importlib.util.find_spec("sunspec2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "json"


@cache
def model_def(model_id: int) -> ModelDef | None:
    """The definition of a model, or None when pysunspec2 has no JSON for it (vendor models).

    Read on demand, one file per model id, and cached: definitions are immutable, a poll loop
    asks for the same few over and over, and a site uses a handful of the hundred or so models.
    """
    folder = _models_folder()
    if folder is None:
        return None
    try:
        text = (folder / f"model_{model_id}.json").read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return parse_model_def(json.loads(text))


def known_model_ids() -> list[int]:
    """Every model id with an official definition."""
    folder = _models_folder()
    ids: list[int] = []
    for entry in folder.iterdir() if folder is not None else ():
        name = entry.name
        if name.startswith("model_") and name.endswith(".json"):
            try:
                ids.append(int(name[6:-5]))
            except ValueError:
                continue
    return sorted(ids)
