"""Python modules that Buildroot's python3 builds only when asked must be selected by the package.

A stdlib module missing from the image fails only on the device, at import time: the web server's
history needs sqlite3 (BR2_PACKAGE_PYTHON3_SQLITE), the utility link ssl, the site time zone the
zone database. This test reads every import in src/ and checks the package's Config.in selects
what each optional module needs.
"""

from __future__ import annotations

import ast

from tests.image.helpers import EXT, ROOT

OPTIONAL_STDLIB = {
    "sqlite3": "BR2_PACKAGE_PYTHON3_SQLITE",
    "ssl": "BR2_PACKAGE_PYTHON3_SSL",
    "zlib": "BR2_PACKAGE_PYTHON3_ZLIB",
    "gzip": "BR2_PACKAGE_PYTHON3_ZLIB",
    "bz2": "BR2_PACKAGE_PYTHON3_BZIP2",
    "lzma": "BR2_PACKAGE_PYTHON3_XZ",
    "curses": "BR2_PACKAGE_PYTHON3_CURSES",
    "readline": "BR2_PACKAGE_PYTHON3_READLINE",
    "decimal": "BR2_PACKAGE_PYTHON3_DECIMAL",
    "uuid": "BR2_PACKAGE_PYTHON3_UUID",
    "unicodedata": "BR2_PACKAGE_PYTHON3_UNICODEDATA",
    "zoneinfo": "BR2_TARGET_TZ_INFO",
}


def _imported_modules() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src" / "dynexport").rglob("*.py"):
        if "sim" in path.relative_to(ROOT / "src" / "dynexport").parts:
            continue  # simulators run on the development machine, never on the appliance
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def _selected() -> set[str]:
    text = (EXT / "package" / "dynexport" / "Config.in").read_text()
    return {line.split()[1] for line in text.splitlines() if line.strip().startswith("select ")}


def test_every_optional_stdlib_module_the_service_imports_is_selected() -> None:
    used = _imported_modules() & set(OPTIONAL_STDLIB)
    assert {"sqlite3", "ssl", "zoneinfo"} <= used  # the check sees real imports
    missing = {m: OPTIONAL_STDLIB[m] for m in used if OPTIONAL_STDLIB[m] not in _selected()}
    assert missing == {}


def test_certificates_for_public_https_are_on_the_image() -> None:
    assert "BR2_PACKAGE_CA_CERTIFICATES" in _selected()
