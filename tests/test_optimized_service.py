"""The service runs with ``PYTHONOPTIMIZE=2`` (its systemd unit): no docstrings, no asserts.

``-OO`` bytecode leaves out every docstring (about 1.5 MiB of the service's resident memory:
docs/decisions.md, "Docstrings and asserts: the service runs -OO") and every ``assert``. So a
rule that must hold at run time is an explicit check that raises, never an assert, and nothing
the service or the CLI runs may need a docstring. Each check runs in a fresh interpreter with
``-OO`` (a subprocess), as the unit starts the service, so an assert that guards a rule, or a
module that reads ``__doc__``, fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.control.limits import EffectiveLimits
from dynexport.sep2.controls import ControlBase, ControlType, DERControlEvent
from dynexport.sep2.schedule import _active
from tests.test_imports import run_fresh
from tests.test_lazy_imports import SERVICE, site_files  # noqa: F401 (a fixture)

SRC = Path(__file__).resolve().parents[1] / "src" / "dynexport"

# Checks that must survive -OO; each prints the error it raised. argv: none.
EXPLICIT_CHECKS = """
import json, sys
from dynexport.control.limits import EffectiveLimits
from dynexport.sep2.controls import ControlBase, DERControlEvent
from dynexport.sep2.schedule import _active

class Broken:
    def event_at(self, kind, now):
        return DERControlEvent(mrid="AB01", creation_time=0, start=0, duration=60,
                               base=ControlBase(), primacy=1)

found = {"optimize": sys.flags.optimize, "asserts_run": False}
try:
    assert False
except AssertionError:
    found["asserts_run"] = True
for name, call in (
    ("schedule", lambda: _active(Broken(), (), 10)),
    ("limit", lambda: EffectiveLimits(export_w=None, sources={}).power("sources")),
):
    try:
        call()
        found[name] = None
    except Exception as exc:
        found[name] = [type(exc).__name__, str(exc)]
print(json.dumps(found))
"""


class _EventWithout:
    """A resolution whose event in force sets none of the control types (a broken invariant)."""

    def event_at(self, kind: ControlType, now: int) -> DERControlEvent:
        return DERControlEvent(
            mrid="AB01", creation_time=0, start=0, duration=60, base=ControlBase(), primacy=1
        )


def test_an_event_in_force_without_its_value_is_an_error_not_a_missing_limit() -> None:
    """The app's fallback (fail closed) catches it: a stripped assert would have let the event
    through as a control with no value."""
    with pytest.raises(ValueError, match="AB01"):
        _active(_EventWithout(), (), 10)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.floats(allow_nan=False),
        st.integers(),
        st.booleans(),
        st.text(max_size=5),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    )
)
def test_a_power_limit_that_is_not_a_number_stops_the_law(value: object) -> None:
    """Whatever a bug puts in a power limit, ``power`` returns a number or None, or raises (the
    controller's fault hook then commands the fail-safe): a bool or a text is never compared
    as a number. Built with ``object.__setattr__``: the type checker refuses it otherwise."""
    limits = EffectiveLimits()
    object.__setattr__(limits, "export_w", value)
    number = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    if number:
        assert limits.power("export_w") == value
    else:
        with pytest.raises(TypeError, match="export_w"):
            limits.power("export_w")


def test_the_explicit_checks_hold_under_minus_oo() -> None:
    report = run_fresh(EXPLICIT_CHECKS, flags=("-OO",))
    assert report["optimize"] == 2 and report["asserts_run"] is False  # really stripped
    assert report["schedule"][0] == "ValueError" and "AB01" in report["schedule"][1]
    assert report["limit"][0] == "TypeError" and "sources" in report["limit"][1]


def test_no_module_of_the_service_or_cli_reads_a_docstring() -> None:
    """``__doc__`` is None under -OO: code that reads it (argparse's ``description=__doc__``)
    would print nothing or fail. The simulators run on the development machine only."""
    readers = []
    for path in SRC.rglob("*.py"):
        if "sim" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = getattr(node, "attr", None) or getattr(node, "id", None)
            if isinstance(node, ast.Attribute | ast.Name) and name == "__doc__":
                readers.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert readers == []


def test_the_service_runs_under_minus_oo(site_files: Path) -> None:  # noqa: F811
    """The real service (web page and API, two inverters, the controller, the utility link)
    in an interpreter started with -OO: trio, h11, pymodbus, lxml and dynexport all work
    without docstrings and asserts."""
    report = run_fresh(SERVICE, str(site_files), str(site_files.parent / "data"), flags=("-OO",))
    assert report["codes"] == [200, 200, 200, 200]
    assert "dynexport.sep2.client" in report["modules"]


def test_the_cli_help_works_from_optimized_bytecode() -> None:
    """The CLI is not started with -OO, but an image that ships only -OO bytecode (Buildroot's
    sourceless .pyc) runs it so: its help comes from explicit strings, not docstrings."""
    for argv in (["--help"], ["run", "--help"], ["sep2", "--help"], ["config", "--help"]):
        result = subprocess.run(
            [sys.executable, "-OO", "-m", "dynexport", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, (argv, result.stderr[-2000:])
        assert result.stdout.startswith("usage: dynexport"), argv
        assert len(result.stdout.splitlines()) > 3, argv
    result = subprocess.run(
        [sys.executable, "-OO", "-m", "dynexport", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for group in ("sunspec", "cert", "sep2", "run", "demo", "config", "update"):
        assert f"    {group}" in result.stdout
