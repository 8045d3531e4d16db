"""The ``ControlBase.types`` memo never keeps a base alive (issue #15: RSS grew with traffic).

Every poll parses new bases; when the memo held them strongly it grew for hours, up to 20,000
bases nobody used any more. It now holds them weakly, so it is as large as the live bases."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.sep2 import controls
from dynexport.sep2.controls import ControlBase, ControlType

_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "export_limit_w": st.floats(0, 1e6),
    "import_limit_w": st.floats(0, 1e6),
    "generation_limit_w": st.floats(0, 1e6),
    "load_limit_w": st.floats(0, 1e6),
    "max_limit_pct": st.floats(0, 100),
    "connect": st.booleans(),
    "energize": st.booleans(),
}
fields = st.fixed_dictionaries({}, optional=_VALUES)
"""Any combination of the modelled fields set or left unset, as ``ControlBase`` keywords."""


def _expected(base: ControlBase) -> frozenset[ControlType]:
    return frozenset(t for t in ControlType if getattr(base, t.value) is not None)


def test_a_base_nobody_holds_is_freed_and_leaves_the_memo() -> None:
    base = ControlBase(export_limit_w=1500.0)
    assert base.types() == frozenset({ControlType.EXPORT_LIMIT_W})
    key, alive = id(base), weakref.ref(base)
    assert key in controls._TYPES
    del base
    gc.collect()
    assert alive() is None  # the memo did not keep it
    assert key not in controls._TYPES


def test_the_memo_does_not_grow_with_the_number_of_polls() -> None:
    gc.collect()
    before = len(controls._TYPES)
    for i in range(5000):  # 5000 polls' worth of freshly parsed bases, each asked and dropped
        base = ControlBase(export_limit_w=float(i), connect=i % 2 == 0)
        assert ControlType.EXPORT_LIMIT_W in base.types()
    del base
    gc.collect()
    assert len(controls._TYPES) <= before


def test_live_bases_are_answered_from_the_memo() -> None:
    kept = [ControlBase(generation_limit_w=float(i)) for i in range(100)]
    first = [b.types() for b in kept]
    assert all(b.types() is f for b, f in zip(kept, first, strict=True))  # the memoized object


@settings(max_examples=200, deadline=None)
@given(st.lists(fields, min_size=1, max_size=30), st.integers(0, 29))
def test_types_is_always_what_the_base_sets_even_when_ids_are_reused(
    batch_fields: list[dict[str, Any]], keep: int
) -> None:
    """Bases are created and dropped so CPython reuses their ids: a stale entry is never
    answered for the new base at the same address."""
    batch = [ControlBase(**kw) for kw in batch_fields]  # made here, so only this test holds them
    for base in batch:
        assert base.types() == _expected(base)
    survivors = batch[: keep % len(batch)]
    dropped = [weakref.ref(b) for b in batch[len(survivors) :]]
    del batch, base
    # Freed by reference counting at once (a base holds no cycle), its memo entry with it:
    # the next bases made are likely to be given the same addresses.
    assert all(ref() is None for ref in dropped)
    fresh = [ControlBase(**kw) for kw in reversed(batch_fields)]
    fresh += [ControlBase(load_limit_w=1.0), ControlBase()]
    for base in [*survivors, *fresh]:
        assert base.types() == _expected(base)
