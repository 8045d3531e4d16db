"""Live updates over Server-Sent Events: one task builds the status document once a second and
every connected page gets the same bytes, however many are open.

Streams are held for as long as a page is open, so they are bounded: at most ``max_clients`` in
all and ``max_per_address`` from one client address. When all are taken, a page from an address
holding fewer streams than another takes the oldest stream of the address holding the most (that
page reconnects or falls back to polling); so held streams from a few addresses cannot keep every
other dashboard from live updates (docs/web.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

log = logging.getLogger("dynexport.web")

KEEPALIVE_S = 15.0


class _Client:
    __slots__ = ("address", "ended", "order")

    def __init__(self, address: str, order: int) -> None:
        self.address = address
        self.order = order
        self.ended = False

    def done(self) -> bool:
        """Whether the stream was ended to make room (read through a call: it changes while the
        stream waits)."""
        return self.ended


class Broadcaster:
    def __init__(
        self,
        snapshot: Callable[[], dict[str, Any]],
        *,
        every_s: float = 1.0,
        max_clients: int = 16,
        max_per_address: int = 4,
    ) -> None:
        self.snapshot = snapshot
        self.every_s = every_s
        self.max_clients = max_clients
        self.max_per_address = max_per_address
        self.seq = 0
        self._opened = 0
        self._clients: list[_Client] = []
        self._latest: bytes | None = None
        self._changed = trio.Event()
        self._failing = False  # the last publish failed (logged once until one succeeds)

    @property
    def clients(self) -> int:
        return len(self._clients)

    def count(self, address: str) -> int:
        return sum(1 for c in self._clients if c.address == address)

    def publish(self) -> None:
        """Builds the current message and wakes every waiting client. A status that cannot be
        built or sent as JSON (a NaN reading, a value JSON has no form for) is logged, once until
        a publish succeeds again, and skipped: the clients keep the last message they got."""
        try:
            data = json.dumps(self.snapshot(), separators=(",", ":"), allow_nan=False)
        except Exception:
            if not self._failing:
                log.exception("live updates: the status cannot be sent, skipped until it can")
            self._failing = True
            return
        if self._failing:
            log.info("live updates: the status can be sent again")
            self._failing = False
        self.seq += 1
        self._latest = f"id: {self.seq}\nevent: status\ndata: {data}\n\n".encode()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        while True:
            if self._clients:
                self.publish()
            await trio.sleep(self.every_s)

    def refusal(self, address: str) -> str | None:
        """Why a new stream from ``address`` cannot open now, or None when it can."""
        if self.count(address) >= self.max_per_address:
            return f"at most {self.max_per_address} live connections per address"
        if len(self._clients) >= self.max_clients and self._displaceable(address) is None:
            return "too many live connections"
        return None

    def full(self, address: str = "") -> bool:
        return self.refusal(address) is not None

    def _displaceable(self, address: str) -> _Client | None:
        """The oldest stream of the address holding the most, if it holds more than ``address``
        would after opening one."""
        counts: dict[str, int] = {}
        for c in self._clients:
            counts[c.address] = counts.get(c.address, 0) + 1
        if not counts:
            return None
        busiest = max(counts, key=lambda a: counts[a])
        if counts[busiest] <= counts.get(address, 0) + 1:
            return None
        return min((c for c in self._clients if c.address == busiest), key=lambda c: c.order)

    def open(self, address: str) -> AsyncIterator[bytes]:
        """A stream for a page at ``address``; call only when :meth:`refusal` is None. The slot
        is taken now, not when the server starts reading the stream."""
        if len(self._clients) >= self.max_clients:
            victim = self._displaceable(address)
            if victim is not None:
                victim.ended = True
                self._clients.remove(victim)
                self._wake()
        self._opened += 1
        client = _Client(address, self._opened)
        self._clients.append(client)
        return _Stream(self, client)

    def _remove(self, client: _Client) -> None:
        if client in self._clients:
            self._clients.remove(client)

    async def _stream(self, client: _Client) -> AsyncIterator[bytes]:
        """One client's event stream; a comment line now and then notices a gone client."""
        try:
            yield b"retry: 3000\n\n"
            self.publish()
            seen = self.seq
            if self._latest is not None:  # None: no status could be sent yet
                yield self._latest
            while not client.done():
                with trio.move_on_after(KEEPALIVE_S):
                    while self.seq == seen and not client.done():
                        await self._changed.wait()
                if client.done():
                    break
                if self.seq == seen:
                    yield b": keep-alive\n\n"
                    continue
                seen = self.seq
                assert self._latest is not None
                yield self._latest
        finally:
            self._remove(client)


class _Stream:
    """The stream handed to the server: closing it frees the slot even if it never started."""

    def __init__(self, broadcaster: Broadcaster, client: _Client) -> None:
        self._broadcaster = broadcaster
        self._client = client
        self._events = broadcaster._stream(client)

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> bytes:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()  # type: ignore[attr-defined]
        finally:
            self._broadcaster._remove(self._client)
