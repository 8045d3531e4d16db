"""The page's files (``dynexport/web/static/``), read once and served from memory."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "json": "application/json",
}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    content_type: str
    etag: str


@functools.cache
def assets() -> dict[str, Asset]:
    folder = resources.files("dynexport.web") / "static"
    found: dict[str, Asset] = {}
    for entry in folder.iterdir():
        ext = entry.name.rsplit(".", 1)[-1]
        if not entry.is_file() or ext not in TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        found[entry.name] = Asset(entry.name, body, TYPES[ext], etag)
    return found


def get(name: str) -> Asset | None:
    return assets().get(name)
