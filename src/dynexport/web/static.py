"""The page's files (``dynexport/web/static/``), read once and served from memory.

They are read from the package's folder with ``pathlib``, not ``importlib.resources`` (which
costs the service 0.1 MiB of modules for what is a plain folder on the appliance).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

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
    folder = Path(__file__).with_name("static")
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
