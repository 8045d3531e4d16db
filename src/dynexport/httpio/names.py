"""Host names given to name lookups and TLS as ASCII bytes, so the ``idna`` codec never loads.

CPython's ``socket.getaddrinfo`` encodes a ``str`` host with the ``idna`` codec, and so does
``ssl`` for a ``str`` ``server_hostname``; the codec imports ``encodings.idna`` and ``stringprep``
(about 0.5 MiB of resident memory), for nothing when the host is an address or an ASCII name,
which is every host a site is configured with. Bytes are taken as they are (the codec's ASCII
path gives the same bytes). A name that is not ASCII is passed on as ``str``, encoded as before
(trio's lookup with IDNA 2008, ``ssl`` with the codec).
"""

from __future__ import annotations


def lookup_host(host: str) -> str | bytes:
    """``host`` as ASCII bytes when it is ASCII (addresses, ordinary names), else unchanged."""
    return host.encode("ascii") if host.isascii() else host
