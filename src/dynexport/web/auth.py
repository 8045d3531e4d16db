"""The admin login: a scrypt password hash on the data folder, sessions, CSRF tokens, rate limits.

There is one account (the installer/owner). Its password is stored as a scrypt hash in
``admin.json`` (mode 0600) on the data folder; sessions live in memory (a restart logs everybody
out). The session cookie is HttpOnly and SameSite=Strict; every state-changing request must also
carry the session's CSRF token in ``X-CSRF-Token``. Failed logins are rate-limited per client
address and in total, so neither one phone nor many can guess the password quickly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dynexport.system.storage import read_json, write_json

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

    def set(self, password: str) -> None:
        write_json(self.path, hash_password(check_new_password(password)), mode=0o600)

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


class LoginLimiter:
    """Failed logins allowed per client address and in total within a sliding window."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        per_client: int = 5,
        total: int = 20,
        window_s: float = 300.0,
        max_clients: int = 1024,
    ) -> None:
        self.clock = clock
        self.per_client = per_client
        self.total = total
        self.window_s = window_s
        self.max_clients = max_clients
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def _trim(self, q: deque[float], now: float) -> None:
        while q and now - q[0] >= self.window_s:
            q.popleft()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        now = self.clock()
        self._trim(self._all, now)
        waits = []
        if len(self._all) >= self.total:
            waits.append(self._all[0] + self.window_s - now)
        q = self._clients.get(client)
        if q is not None:
            self._trim(q, now)
            if not q:
                del self._clients[client]
            elif len(q) >= self.per_client:
                waits.append(q[0] + self.window_s - now)
        return max(waits) if waits else None

    def failed(self, client: str) -> None:
        now = self.clock()
        if client not in self._clients and len(self._clients) >= self.max_clients:
            # Too many addresses to remember: forget the quietest; the total bound still holds.
            quiet = min(self._clients, key=lambda c: self._clients[c][-1])
            del self._clients[quiet]
        self._clients.setdefault(client, deque()).append(now)
        self._all.append(now)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
