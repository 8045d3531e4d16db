"""Model definitions are read from pysunspec2's JSON files on demand, one model at a time."""

from __future__ import annotations

from dynexport.sunspec import models


def test_every_official_model_is_listed() -> None:
    ids = models.known_model_ids()
    assert {1, 101, 103, 123, 160, 203, 704} <= set(ids)
    assert ids == sorted(ids)


def test_a_model_is_read_once_and_then_served_from_the_cache() -> None:
    first = models.model_def(103)
    assert first is not None and first.id == 103 and first.has_point("W")
    assert models.model_def(103) is first


def test_a_model_without_an_official_definition_is_none() -> None:
    assert models.model_def(64999) is None
