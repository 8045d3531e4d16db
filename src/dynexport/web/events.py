"""Live updates over Server-Sent Events: one task builds the status document once a second and
every connected page gets the same bytes, however many are open (up to ``max_clients``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

KEEPALIVE_S = 15.0


class Broadcaster:
    def __init__(
        self, snapshot: Callable[[], dict[str, Any]], *, every_s: float = 1.0, max_clients: int = 16
    ) -> None:
        self.snapshot = snapshot
        self.every_s = every_s
        self.max_clients = max_clients
        self.clients = 0
        self.seq = 0
        self._latest: bytes | None = None
        self._changed = trio.Event()

    def publish(self) -> None:
        """Builds the current message and wakes every waiting client."""
        data = json.dumps(self.snapshot(), separators=(",", ":"), allow_nan=False)
        self.seq += 1
        self._latest = f"id: {self.seq}\nevent: status\ndata: {data}\n\n".encode()
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        while True:
            if self.clients:
                self.publish()
            await trio.sleep(self.every_s)

    def full(self) -> bool:
        return self.clients >= self.max_clients

    async def stream(self) -> AsyncIterator[bytes]:
        """One client's event stream; a comment line now and then notices a gone client."""
        self.clients += 1
        try:
            yield b"retry: 3000\n\n"
            self.publish()
            seen = self.seq
            assert self._latest is not None
            yield self._latest
            while True:
                with trio.move_on_after(KEEPALIVE_S):
                    while self.seq == seen:
                        await self._changed.wait()
                if self.seq == seen:
                    yield b": keep-alive\n\n"
                    continue
                seen = self.seq
                assert self._latest is not None
                yield self._latest
        finally:
            self.clients -= 1
