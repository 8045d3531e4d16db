"""The admin login: a scrypt password hash on the data folder, sessions, CSRF tokens, rate limits.

There is one account (the installer/owner). Its password is stored as a scrypt hash in
``admin.json`` (mode 0600) on the data folder; sessions live in memory (a restart logs everybody
out). The session cookie is HttpOnly and SameSite=Strict; every state-changing request must also
carry the session's CSRF token in ``X-CSRF-Token``.

Password checks cost 16 MiB and ~50 ms of scrypt each, so they run one at a time with a short
queue (:class:`HashQueue`); they are counted when they start, per client address and in total
(:class:`LoginLimiter`). The total bound slows guessing from many addresses to one check every
few seconds but never refuses the owner's correct password outright (docs/web.md).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
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
    """Password checks allowed per client address, and in total at a bounded rate.

    A check counts when it starts (parallel attempts cannot overrun the bound) and is forgiven
    for its address when it succeeds. Each address may make ``per_client`` checks in
    ``window_s``; then it waits until the oldest ages out. Beyond ``total`` checks in the window
    from all addresses, checks go on for any address that is not itself blocked, but at most
    one every ``slow_s``: guessing from many addresses is slowed to that rate, while the owner,
    from an address of their own, still gets a check within about ``slow_s`` and is never
    locked out by someone else's failures."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        per_client: int = 5,
        total: int = 20,
        window_s: float = 300.0,
        slow_s: float = 3.0,
        max_clients: int = 1024,
    ) -> None:
        self.clock = clock
        self.per_client = per_client
        self.total = total
        self.window_s = window_s
        self.slow_s = slow_s
        self.max_clients = max_clients
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._last_slow: float | None = None

    def _trim(self, q: deque[float], now: float) -> None:
        while q and now - q[0] >= self.window_s:
            q.popleft()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        now = self.clock()
        q = self._clients.get(client)
        if q is not None:
            self._trim(q, now)
            if not q:
                del self._clients[client]
            elif len(q) >= self.per_client:
                return q[0] + self.window_s - now
        self._trim(self._all, now)
        if (
            len(self._all) >= self.total
            and self._last_slow is not None
            and now - self._last_slow < self.slow_s
        ):
            return self._last_slow + self.slow_s - now
        return None

    def attempt(self, client: str) -> None:
        """Counts a check that starts now (call only when :meth:`retry_after` is None)."""
        now = self.clock()
        self._trim(self._all, now)
        if len(self._all) >= self.total:
            self._last_slow = now
        if client not in self._clients and len(self._clients) >= self.max_clients:
            # Too many addresses to remember: forget the quietest; the total bound still holds.
            quiet = min(self._clients, key=lambda c: self._clients[c][-1])
            del self._clients[quiet]
        self._clients.setdefault(client, deque()).append(now)
        self._all.append(now)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
