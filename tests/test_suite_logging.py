"""The suite's own hygiene: a test that sets up the CLI's logging does not break the next test's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INNER_TESTS = """
import logging

from dynexport.system.logs import setup_logging


def test_the_cli_logging_set_up_under_capsys(capsys):
    setup_logging()  # the root logger now writes to capsys's stream, closed after this test
    logging.getLogger("dynexport.probe").warning("first")


def test_the_next_test_logs():
    logging.getLogger("dynexport.probe").warning("second")
"""


def test_a_test_that_sets_up_the_cli_logging_leaves_the_next_tests_logging_working(
    tmp_path: Path,
) -> None:
    """Two tests in a fresh pytest run with the suite's conftest fixture: the second's warning
    is emitted without a "--- Logging error ---" (a write to the first test's closed stream)."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import _root_logging_restored\n")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "-o", "addopts=",
         str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    assert "Logging error" not in run.stdout + run.stderr, run.stdout
