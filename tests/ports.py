"""A port on 127.0.0.1 that refuses connections, for the tests of what a refused connection says."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port that refuses connections for as long as the block lasts: bound, never listening.
    A port found free and closed again can be handed to the next server that binds port 0 (this
    test's own, or another pytest worker's), which would then accept the connection meant to be
    refused; a port held bound is given to nobody else."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
