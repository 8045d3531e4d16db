"""What the link's stored files (schedule, responses, telemetry) share when they are read back."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def parsed_or_value_error(parse: Callable[[], _T], what: str) -> _T:
    """``parse()``, with whatever a damaged file makes a parser raise (a value of the wrong type
    deep inside, nesting too deep for the decoder) turned into the ValueError the ``from_json``
    methods promise: the caller sets the file aside and starts without it. An AttributeError
    escaping once stopped the service at every start. MemoryError goes on as it is: the loader
    tries once more (``sep2/state.py``)."""
    try:
        return parse()
    except (ValueError, MemoryError):
        raise
    except Exception as exc:
        raise ValueError(f"malformed {what}: {type(exc).__name__}: {exc}") from exc


def parsed_twice(parse: Callable[..., _T], *args: object) -> _T:
    """``parse(*args)``, tried once more after a MemoryError (and a collection).

    Running out of memory once says nothing about the file: a good schedule set aside for it
    was lost. On Linux, which overcommits, memory pressure brings the OOM killer rather than a
    MemoryError, so one that comes back is the file's own doing (a damaged count or length
    asking for an absurd allocation): raised again, the caller sets the file aside as any
    damage. Raised out of the loader instead, it kept the link down for good."""
    try:
        return parse(*args)
    except MemoryError:
        gc.collect()
        return parse(*args)
