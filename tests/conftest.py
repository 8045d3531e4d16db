"""Fixtures for the whole suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.ports import refusing_port


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Tests that run ``dynexport.cli.main`` in-process have ``setup_logging`` point the root
    logger at the test's captured stderr, which pytest closes after the test: every later record
    on that worker was then lost with a "--- Logging error ---" traceback (hundreds of lines in a
    failing test's report). The root logger's handlers and level, and the pymodbus logger's level
    that ``setup_logging`` also sets, are put back after each test."""
    root, pymodbus = logging.getLogger(), logging.getLogger("pymodbus")
    handlers, level, pymodbus_level = root.handlers[:], root.level, pymodbus.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    pymodbus.setLevel(pymodbus_level)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """``tests.ports.refusing_port`` for the whole test."""
    with refusing_port() as port:
        yield port
