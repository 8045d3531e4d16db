"""The admin login: a scrypt password hash on the data folder, sessions, CSRF tokens, rate limits.

There is one account (the installer/owner). Its password is stored as a scrypt hash in
``admin.json`` (mode 0600) on the data folder; sessions live in memory (a restart logs everybody
out). The session cookie is HttpOnly and SameSite=Strict; every state-changing request must also
carry the session's CSRF token in ``X-CSRF-Token``.

Password checks cost 16 MiB and ~50 ms of scrypt each, so they run one at a time with a short
queue (:class:`HashQueue`); they are counted when they start, per client address and in total
(:class:`LoginLimiter`). The total bound slows guessing from many addresses to one check every
few seconds, handed out by turns: the owner's correct password is checked within a bound set by
the number of addresses waiting, not by how fast they poll (docs/web.md).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from dynexport.system.storage import read_json, write_json

T = TypeVar("T")

PASSWORD_FILE = "admin.json"
MIN_PASSWORD = 8
MAX_PASSWORD = 256
# scrypt cost: n=2**14, r=8 takes ~50 ms and 16 MiB on a Raspberry Pi 3, which is plenty against
# guessing from a leaked SD card while keeping a login quick.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SESSION_IDLE_S = 12 * 3600.0
MAX_SESSIONS = 32
COOKIE = "dynexport_session"


class PasswordError(ValueError):
    """A new password that is not acceptable (too short, too long)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> dict[str, object]:
    """The stored form of ``password``: scrypt parameters, salt and hash."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return {
        "scheme": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": _b64(salt),
        "hash": _b64(digest),
    }


def verify_password(password: str, stored: dict[str, object]) -> bool:
    """True when ``password`` matches the stored hash (constant-time comparison)."""
    try:
        n, r, p = int(str(stored["n"])), int(str(stored["r"])), int(str(stored["p"]))
        salt = base64.b64decode(str(stored["salt"]), validate=True)
        expected = base64.b64decode(str(stored["hash"]), validate=True)
        if stored.get("scheme") != "scrypt" or n > 2**20 or r > 32 or p > 4:
            return False
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=n,
            r=r,
            p=p,
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_new_password(password: object) -> str:
    """``password`` if it is acceptable as the admin password, else PasswordError."""
    if not isinstance(password, str):
        raise PasswordError("password must be a string")
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordError(f"password must have at most {MAX_PASSWORD} characters")
    return password


class PasswordStore:
    """The admin password hash in ``<data>/admin.json`` (mode 0600)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / PASSWORD_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict[str, object] | None:
        try:
            value = read_json(self.path)
        except (FileNotFoundError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def problem(self) -> str | None:
        """Why a password file that exists cannot be checked against (None: it can, or there
        is none). A damaged one made every password look wrong, with nothing naming the file."""
        try:
            value = read_json(self.path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return f"{self.path.name} is damaged or unreadable ({exc})"
        if not isinstance(value, dict) or not {"scheme", "salt", "hash"} <= value.keys():
            return f"{self.path.name} is damaged (not a password hash)"
        return None

    def set(self, password: str) -> None:
        write_json(self.path, hash_password(check_new_password(password)), mode=0o600)

    def create(self, password: str) -> bool:
        """Stores the first password; False (and nothing written) when one exists already.

        The file appears whole or not at all, and only once: it is written under a temporary
        name and hard-linked into place, which fails if any other request got there first."""
        data = json.dumps(hash_password(check_new_password(password))).encode()
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return True

    def verify(self, password: str) -> bool:
        stored = self.load()
        return stored is not None and verify_password(password, stored)


@dataclass
class Session:
    token: str
    csrf: str
    last_used: float


class Sessions:
    """Logged-in sessions by cookie token; idle ones expire."""

    def __init__(self, clock: Callable[[], float], idle_s: float = SESSION_IDLE_S) -> None:
        self.clock = clock
        self.idle_s = idle_s
        self._by_token: dict[str, Session] = {}

    def create(self) -> Session:
        self._expire()
        while len(self._by_token) >= MAX_SESSIONS:  # the oldest makes room
            oldest = min(self._by_token.values(), key=lambda s: s.last_used)
            del self._by_token[oldest.token]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.clock())
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        self._expire()
        session = self._by_token.get(token)
        if session is not None:
            session.last_used = self.clock()
        return session

    def drop(self, token: str) -> None:
        self._by_token.pop(token, None)

    def clear(self) -> None:
        self._by_token.clear()

    def _expire(self) -> None:
        now = self.clock()
        for token in [t for t, s in self._by_token.items() if now - s.last_used > self.idle_s]:
            del self._by_token[token]


def csrf_ok(session: Session, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(session.csrf.encode(), header.encode())


class Busy(Exception):
    """The password checker's queue is full: try again in a moment."""


class HashQueue:
    """Runs scrypt (hashing or checking a password) in a worker thread, one at a time.

    Each run takes 16 MiB and ~50 ms; parallel requests would take one thread and 16 MiB each,
    which a 512 MB Pi cannot give. At most ``max_waiting`` more wait their turn; beyond that
    :meth:`run` raises :class:`Busy` at once (the caller answers 429)."""

    def __init__(self, max_waiting: int = 4) -> None:
        self.max_waiting = max_waiting
        self._limiter = trio.CapacityLimiter(1)
        self.pending = 0

    def full(self) -> bool:
        return self.pending > self.max_waiting

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.full():
            raise Busy
        self.pending += 1
        try:
            # Not abandoned on cancel: the thread holds the limiter until scrypt is done, so
            # the bound holds even for requests that time out.
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        finally:
            self.pending -= 1


class LoginLimiter:
    """Password checks allowed per address, and in total at a bounded rate handed out by turns.

    A check counts when it starts (parallel attempts cannot overrun the bound) and is forgiven
    for its address when it succeeds. Each address may make ``per_client`` checks in
    ``window_s``; then it waits until the oldest ages out.

    Beyond ``total`` checks in the window from all addresses, at most one check starts every
    ``slow_s`` (each costs a scrypt on a Pi). These slow slots go by turn, not to whoever polls
    fastest: a refused address joins a queue (first refusal first) and the slot is held for the
    address at its head. An address keeps its place while it asks again within ``patience_s``;
    the head has ``patience_s`` from the start of its turn to take the slot, else it loses its
    place (it may join again at the back). While anybody waits, newcomers queue behind them even
    if the window has room again. So an address that keeps asking with ``k`` others ahead of it
    is checked within ``(k + 1) * (slow_s + patience_s)`` of its first refusal
    (:meth:`turn_bound_s`), however fast the others poll; the queue holds at most
    ``max_clients`` addresses. An address just checked waits ``slow_s`` before it queues again
    (post_login asks once more after a wrong password, and that must not queue it ahead of
    others)."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        per_client: int = 5,
        total: int = 20,
        window_s: float = 300.0,
        slow_s: float = 3.0,
        patience_s: float | None = None,
        max_clients: int = 1024,
    ) -> None:
        self.clock = clock
        self.per_client = per_client
        self.total = total
        self.window_s = window_s
        self.slow_s = slow_s
        # A waiting address is told to come back within slow_s (rounded up to whole seconds by
        # Retry-After); the default allows a round trip of another slow_s on top of that.
        self.patience_s = 2 * slow_s + 1 if patience_s is None else patience_s
        self.max_clients = max_clients
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._last_slow: float | None = None
        # Waiting addresses in turn order (dicts keep insertion order) -> when each last asked.
        self._queue: dict[str, float] = {}
        self._head_since = 0.0  # when the head of the queue became the head
        self._purged = -math.inf

    def turn_bound_s(self, ahead: int) -> float:
        """The longest an address that keeps asking (within ``patience_s`` each time) waits for
        its check after its first refusal, with ``ahead`` addresses queued before it."""
        return (ahead + 1) * (self.slow_s + self.patience_s)

    def _trim(self, q: deque[float], now: float) -> None:
        while q and now - q[0] >= self.window_s:
            q.popleft()

    def _turn_start(self) -> float:
        """When the head of the queue may take the slot: the slot is open and it is the head."""
        slot = -math.inf if self._last_slow is None else self._last_slow + self.slow_s
        return max(slot, self._head_since)

    def _advance(self, now: float) -> None:
        """Drops heads that missed their turn or stopped asking, each at the time it happened,
        so the next head's turn starts then (not whenever somebody next asks)."""
        while self._queue:
            head, seen = next(iter(self._queue.items()))
            leave = max(self._head_since, min(self._turn_start(), seen) + self.patience_s)
            if now <= leave:
                return
            del self._queue[head]
            self._head_since = leave

    def _soon(self, when: float, now: float) -> float:
        """A slow-lane wait: never above ``slow_s`` nor zero, whatever the float rounding."""
        return min(self.slow_s, max(when - now, 1e-6))

    def _leave(self, client: str, now: float) -> None:
        if client in self._queue:
            head = next(iter(self._queue)) == client
            del self._queue[client]
            if head:
                self._head_since = now

    def _purge(self, now: float) -> None:
        """Forgets waiting addresses that stopped asking (only needed for room: a stale one that
        reaches the head is dropped at no cost). At most once a second, as it reads them all."""
        if now - self._purged < 1.0 or not self._queue:
            return
        self._purged = now
        head = next(iter(self._queue))
        self._queue = {
            c: seen for c, seen in self._queue.items() if c == head or now - seen <= self.patience_s
        }

    def blocked(self, client: str) -> bool:
        """True while ``client`` has used up its own checks (no side effects, for logging)."""
        q = self._clients.get(client)
        if q is None:
            return False
        now = self.clock()
        return sum(1 for t in q if now - t < self.window_s) >= self.per_client

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now. Beyond the total,
        a refused address is queued (or keeps its place) until its turn."""
        now = self.clock()
        q = self._clients.get(client)
        if q is not None:
            self._trim(q, now)
            if not q:
                del self._clients[client]
            elif len(q) >= self.per_client:
                return q[0] + self.window_s - now
        self._trim(self._all, now)
        self._advance(now)
        if not self._queue and len(self._all) < self.total:
            return None
        if client not in self._queue:
            if q and now - q[-1] < self.slow_s:
                # Just checked (or asked again within the same request, as post_login does to
                # log): no slot can be its before slow_s, so it queues when it comes back.
                return self._soon(q[-1] + self.slow_s, now)
            if len(self._queue) >= self.max_clients:
                self._purge(now)
            if len(self._queue) >= self.max_clients:
                return self.slow_s  # no room: the bound holds for those already waiting
            if not self._queue:
                self._head_since = now
        self._queue[client] = now  # an address already waiting keeps its place
        if next(iter(self._queue)) != client:
            return self.slow_s  # its turn is at least one slot away: ask again by then
        slot_open = self._last_slow is None or now - self._last_slow >= self.slow_s
        if slot_open and now >= self._head_since:
            return None
        return self._soon(self._turn_start(), now)

    def attempt(self, client: str) -> None:
        """Counts a check that starts now (call only when :meth:`retry_after` is None)."""
        now = self.clock()
        self._trim(self._all, now)
        self._advance(now)
        if len(self._all) >= self.total or self._queue:
            self._last_slow = now  # a slow slot taken: the next opens slow_s from now
        self._leave(client, now)
        if client not in self._clients and len(self._clients) >= self.max_clients:
            # Too many addresses to remember: forget the quietest; the total bound still holds.
            quiet = min(self._clients, key=lambda c: self._clients[c][-1])
            del self._clients[quiet]
        self._clients.setdefault(client, deque()).append(now)
        self._all.append(now)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
        self._leave(client, self.clock())
