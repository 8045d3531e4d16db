"""Service discovery: which DeviceCapability URL a CSIP-AUS server offers for our version.

CSIP-AUS v1.3 servers publish ``/.well-known/csipaus``, a JSON document naming, per CSIP-AUS
version (the namespace URI), the DeviceCapability paths they serve for it::

    {"supportedSchemaVersions": {
        "https://csipaus.org/ns/v1.3": {"dcap": ["/api/v13/dcap"]},
        "https://csipaus.org/ns/v1.2": {"dcap": []}}}

A client takes the entry of a version it speaks and nothing else: an unknown version
(``v99.99``) or a key that is no version at all is never followed (the official procedure
SDVN-01 fails a client that reads their paths, or the default ``/dcap``). v1.2 does not
guarantee the file: a 404 or 410 means "use the configured path". Pure: the client fetches,
this decides (docs/sep2.md, "Service discovery").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from dynexport.httpio.client import InvalidUrl, origin_of
from dynexport.sep2.xml import CSIPAUS_NS, CSIPAUS_NS_13

WELL_KNOWN_PATH = "/.well-known/csipaus"

CSIPAUS_NS_12 = "https://csipaus.org/ns/v1.2"
"""How the well-known file names v1.2 (its XML namespace is ``CSIPAUS_NS``, without a version)."""

MAX_DOCUMENT_BYTES = 64 * 1024
"""A larger well-known document is refused (it names a handful of paths)."""


class DiscoveryError(ValueError):
    """The well-known document is not one (not JSON, or not the shape CSIP-AUS gives it)."""


@dataclass(frozen=True)
class Discovered:
    """The DeviceCapability path a server offers for ``version``."""

    version: str
    path: str


def versions_for(csipaus_version: str) -> tuple[str, ...]:
    """The version keys to look for, best first, for ``utility.csipAusVersion``."""
    if csipaus_version == "1.3":
        return (CSIPAUS_NS_13,)
    if csipaus_version == "1.2":
        return (CSIPAUS_NS_12, CSIPAUS_NS)
    return (CSIPAUS_NS_13, CSIPAUS_NS_12, CSIPAUS_NS)


def choose_dcap(
    body: bytes, versions: Sequence[str], origin: tuple[str, str, int]
) -> Discovered | None:
    """The first DeviceCapability path listed for the first of ``versions`` that has one;
    None when none of them has one (the server speaks none of our versions here).

    Raises `DiscoveryError` for a body that is not the CSIP-AUS document: not JSON, no
    ``supportedSchemaVersions`` object, an entry of ours whose ``dcap`` is not a list of
    strings. Entries of other versions are not looked into (their content is not ours to
    judge). A path is usable when absolute (``/...``), or a full ``https`` URL on ``origin``
    (the server's, as `origin_of` gives it); another path is passed over for the next one (a URL
    on another host listed first had hidden a usable path after it)."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise DiscoveryError(f"the document is {len(body)} bytes, over {MAX_DOCUMENT_BYTES}")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DiscoveryError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("supportedSchemaVersions"), dict):
        raise DiscoveryError('no "supportedSchemaVersions" object')
    entries = doc["supportedSchemaVersions"]
    for version in versions:
        entry = entries.get(version)
        if entry is None:
            continue
        paths = entry.get("dcap") if isinstance(entry, dict) else None
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise DiscoveryError(f'{version}: "dcap" is not a list of paths')
        for path in paths:
            path = path.strip()
            if path.startswith("/") and not path.startswith("//"):
                return Discovered(version, path)
            if path.lower().startswith("https://") and _origin(path) == origin:
                return Discovered(version, path)
        # listed with no usable path (an empty list): the next version may have one
    return None


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        return origin_of(url)
    except (InvalidUrl, ValueError):
        return None
