"""Safe XML in and ordered XML out for IEEE 2030.5 / CSIP-AUS bodies.

Server bodies are untrusted: they are size-capped, parsed with entity resolution, network access
and DTDs off (entity-expansion and external-entity attacks stay inert, then are refused), and every
problem surfaces as one `Sep2ParseError` naming the resource. Nothing here does I/O.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from lxml import etree

NS = "urn:ieee:std:2030.5:ns"
CSIPAUS_NS = "https://csipaus.org/ns"
"""CSIP-AUS v1.1a / 1.2 namespace: the one we write until the server shows another."""
CSIPAUS_NS_13 = "https://csipaus.org/ns/v1.3"
"""CSIP-AUS v1.3 namespace (the storage extension): written to a server that uses it."""
CSIPAUS_NAMESPACES = frozenset({CSIPAUS_NS, CSIPAUS_NS_13})
CSIPAUS_VERSIONS: dict[str, str] = {"1.2": CSIPAUS_NS, "1.3": CSIPAUS_NS_13}
"""``utility.csipAusVersion`` → the namespace its CSIP-AUS elements are written in."""
CSIPAUS_13_ONLY = frozenset(
    {
        "csipaus:opModStorageTargetW",
        "csipaus:vppModesSupported",
        "csipaus:vppModesEnabled",
        "csipaus:setMinWh",
    }
)
"""Elements the v1.3 storage extension added (BSGIP envoy-schema 2.7.0 models them in
``https://csipaus.org/ns/v1.3``). They mean something only in that namespace: the same name in
the 1.2 namespace is not read as them, and a 1.2 server's XSD would refuse them if written."""
# lxml-stubs do not allow the None (default namespace) key that lxml itself accepts.
NSMAP: dict[str, str] = {None: NS, "csipaus": CSIPAUS_NS}  # type: ignore[dict-item]


def nsmap_for(csipaus_ns: str = CSIPAUS_NS) -> dict[str, str]:
    """The root's namespace map when CSIP-AUS elements are written in ``csipaus_ns``."""
    if csipaus_ns not in CSIPAUS_NAMESPACES:
        raise ValueError(f"{csipaus_ns!r} is not a CSIP-AUS namespace")
    return {None: NS, "csipaus": csipaus_ns}  # type: ignore[dict-item]


_CSIPAUS_DECLARATION = re.compile(
    rb"""xmlns(?::[A-Za-z_][\w.-]*)?\s*=\s*(["'])https://csipaus\.org/ns(/v1\.3)?\1"""
)


def declared_csipaus_namespace(data: bytes) -> str | None:
    """The CSIP-AUS namespace a server body declares (``xmlns:csipaus="..."`` or any prefix),
    or None when it declares neither: how the client learns which version the server speaks.

    A body declaring v1.3 anywhere is v1.3 (a v1.3 server may still declare the old one for
    compatibility; a 1.2 server never declares the new one). A byte scan, not a parse: it runs
    on every body, and the body is parsed (and checked) by the resource reader anyway."""
    if b"csipaus.org" not in data:
        return None
    found = {m.group(2) is not None for m in _CSIPAUS_DECLARATION.finditer(data)}
    if True in found:
        return CSIPAUS_NS_13
    if False in found:
        return CSIPAUS_NS
    return None


DEFAULT_MAX_BYTES = 1 << 20
"""Largest body accepted (1 MiB): a full DERControlList page is a few tens of kB."""

_INT_RE = re.compile(r"[+-]?[0-9]+")
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})+")


class Sep2ParseError(ValueError):
    """A server body we cannot use, with the resource it was meant to be and why."""

    def __init__(self, resource: str, problem: str) -> None:
        super().__init__(f"{resource}: {problem}")
        self.resource = resource
        self.problem = problem


def parse_xml(data: bytes, resource: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """Parse an untrusted body into its root element, or raise `Sep2ParseError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{resource}: expected bytes, got {type(data).__name__}")
    size = len(data)
    if size > max_bytes:
        raise Sep2ParseError(resource, f"body of {size} bytes exceeds the {max_bytes}-byte limit")
    raw = bytes(data)
    if not raw.strip():
        raise Sep2ParseError(resource, "empty body")
    if b"<!DOCTYPE" in raw:
        # Refused before parsing, so that not even a local external DTD file is opened.
        raise Sep2ParseError(resource, "a DOCTYPE/DTD is not accepted in IEEE 2030.5 bodies")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )
    try:
        root = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        raise Sep2ParseError(resource, f"malformed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.doctype:
        raise Sep2ParseError(resource, "a DOCTYPE/DTD is not accepted in IEEE 2030.5 bodies")
    return root


def split_tag(tag: str) -> tuple[str, str]:
    """``{ns}local`` → (ns, local); no namespace gives an empty ns."""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


WRONG_NAMESPACE = "@" + CSIPAUS_NS
"""Suffix of the key of a v1.3-only element found in the 1.2 namespace
(``csipaus:opModStorageTargetW@https://csipaus.org/ns``): kept apart, never read as the v1.3
element, so a DERControl carrying it is answered as one we cannot perform."""


def key_of(element: etree._Element) -> str | None:
    """The name fields are looked up by: ``local`` (IEEE), ``csipaus:local`` (either CSIP-AUS
    version; the v1.3-only elements in the v1.3 namespace only, see `WRONG_NAMESPACE`), or None
    for comments and foreign namespaces (ignored, as extensions may be)."""
    tag: object = element.tag  # entity references and PIs have a non-str tag
    if not isinstance(tag, str):
        return None
    ns, local = split_tag(tag)
    if ns == NS:
        return local
    if ns in CSIPAUS_NAMESPACES:
        key = "csipaus:" + local
        if ns == CSIPAUS_NS and key in CSIPAUS_13_ONLY:
            return key + WRONG_NAMESPACE
        return key
    return None


def qname(key: str, csipaus_ns: str = CSIPAUS_NS) -> str:
    """The Clark name we write for a field key, CSIP-AUS elements in ``csipaus_ns``; a v1.3-only
    element in the 1.2 namespace is a ValueError (a 1.2 server's XSD refuses it)."""
    if key.startswith("csipaus:"):
        if key in CSIPAUS_13_ONLY and csipaus_ns != CSIPAUS_NS_13:
            raise ValueError(f"{key} exists only in CSIP-AUS v1.3 ({CSIPAUS_NS_13})")
        return f"{{{csipaus_ns}}}{key[8:]}"
    return f"{{{NS}}}{key}"


# --- scalar text ------------------------------------------------------------------------------


MAX_INT_DIGITS = 20
"""Significant digits of the widest SEP2 integer (64-bit: UInt64 has 20, Int64 19). Longer text
is refused before int() sees it: Python refuses over 4,300 digits, and converting a huge one
costs quadratic time."""


def parse_int(text: str | None, resource: str, name: str, lo: int, hi: int) -> int:
    """An XSD integer within [lo, hi]; Python's looser int() forms (``1_0``) are refused."""
    raw = (text or "").strip()
    if not _INT_RE.fullmatch(raw):
        raise Sep2ParseError(resource, f"{name}: not an integer: {raw[:40]!r}")
    digits = raw.lstrip("+-").lstrip("0") or "0"
    if len(digits) > MAX_INT_DIGITS:
        raise Sep2ParseError(
            resource,
            f"{name}: integer of {len(digits)} digits is out of range {lo}..{hi}",
        )
    value = int(raw[0] + digits if raw[0] in "+-" else digits)
    if not lo <= value <= hi:
        raise Sep2ParseError(resource, f"{name}: {value} out of range {lo}..{hi}")
    return value


def parse_bool(text: str | None, resource: str, name: str) -> bool:
    raw = (text or "").strip()
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise Sep2ParseError(resource, f"{name}: not a boolean: {raw[:40]!r}")


def parse_hex_int(text: str | None, resource: str, name: str, max_bytes: int) -> int:
    """A hexBinary flag field (e.g. roleFlags ``49``) as an integer."""
    raw = (text or "").strip()
    if not _HEX_RE.fullmatch(raw) or len(raw) > 2 * max_bytes:
        raise Sep2ParseError(resource, f"{name}: not hexBinary of ≤{max_bytes} bytes: {raw[:40]!r}")
    return int(raw, 16)


def format_hex_int(value: int, max_bytes: int) -> str:
    """Uppercase hexBinary with the fewest whole bytes (``3`` → ``03``), as servers expect."""
    if value < 0 or value >= 1 << (8 * max_bytes):
        raise ValueError(f"{value} does not fit hexBinary of {max_bytes} bytes")
    digits = f"{value:X}"
    return digits.zfill(len(digits) + len(digits) % 2)


def normalize_id(text: str | None) -> str:
    """mRID / LFDI as read: stripped and uppercased, so comparisons ignore the server's case.

    Not rejected when not hex: one malformed identifier of *another* device must not make a whole
    EndDeviceList unreadable. Output is checked strictly by `format_id`.
    """
    return (text or "").strip().upper()


def format_id(value: str, max_bytes: int) -> str:
    """mRID / LFDI for output: uppercase hexBinary, or ValueError."""
    out = value.strip().upper()
    if not _HEX_RE.fullmatch(out) or len(out) > 2 * max_bytes:
        raise ValueError(f"identifier {value!r} is not hexBinary of ≤{max_bytes} bytes")
    return out


# --- links and paging ------------------------------------------------------------------------


def resolve_href(base_url: str, href: str) -> str:
    """An href as the server meant it: relative to the URL of the resource it appeared in."""
    return urljoin(base_url, href.strip())


def page_query(url: str, start: int, limit: int) -> str:
    """``url`` with its list paging query set to ``?s=start&l=limit`` (other parameters kept)."""
    if start < 0 or limit < 1:
        raise ValueError(f"bad page start={start} limit={limit}")
    parts = urlsplit(url)
    params = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("s", "l")
    ]
    params += [("s", str(start)), ("l", str(limit))]
    return urlunsplit(parts._replace(query=urlencode(params)))


def next_page_start(start: int, results: int, all_: int) -> int | None:
    """Where the next page starts, or None when this page (from ``start``) reached the end.

    A page with zero results ends the walk even if ``all`` claims more, so a server that
    miscounts cannot make the client loop.
    """
    if results <= 0:
        return None
    following = start + results
    return following if following < all_ else None
