"""The layering in docs/architecture.md, checked on the imports of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dynexport"

# package -> dynexport packages (or top-level modules) it must never import
FORBIDDEN: dict[str, set[str]] = {
    "modbus": {"sunspec", "sep2", "control", "system", "web", "sim", "app", "demo", "cli"},
    "control": {"sunspec", "sep2", "modbus", "httpio", "web", "sim", "app", "demo", "system"},
    "sep2": {"sunspec", "modbus", "web", "sim", "app", "demo", "cli"},
    "sunspec": {"sep2", "httpio", "web", "sim", "app", "demo"},
    "httpio": {"sep2", "sunspec", "modbus", "control", "web", "sim", "app", "demo"},
    "sim": {"app", "demo", "web", "cli", "app_cli"},
    "system": {"app", "demo", "web", "sim", "cli"},
}


def _imports(path: Path) -> set[str]:
    """The first component after ``dynexport.`` of every module ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "dynexport" and len(parts) > 1:
                names.add(parts[1])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_domain_package_imports_nothing_above_it(package: str) -> None:
    offences = {
        str(path.relative_to(SRC)): sorted(_imports(path) & FORBIDDEN[package])
        for path in sorted((SRC / package).rglob("*.py"))
    }
    assert {k: v for k, v in offences.items() if v} == {}


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from dynexport.app import App\nimport dynexport.sim.demo as d\n")
    assert _imports(module) == {"app", "sim"}
