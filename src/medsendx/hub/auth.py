"""Who may use the hub: users with argon2 password hashes in a file, server-side sessions,
CSRF tokens for the forms that change state, or a trusted reverse proxy's user header.

The users file has one ``name:hash`` line per user (argon2id, argon2-cffi's defaults),
mode 0600, written atomically. Sessions live in the hub's memory: a restart signs everybody
out, and signing out really ends a session (the cookie is a random token, nothing more).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

SESSION_COOKIE = "msx_session"
LOGIN_CSRF_COOKIE = "msx_login_csrf"
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_hasher = PasswordHasher()
# Verified when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class AuthError(ValueError):
    """A user name or password that cannot be used (our words)."""


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise AuthError("a user name is 1-64 letters, digits or . _ @ -")
    return name


class UserStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, str] = {}

    def _load(self) -> dict[str, str]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:  # re-read after `medsendx hub adduser`, no restart needed
            users = {}
            for line in self.path.read_text().splitlines():
                name, sep, hashed = line.strip().partition(":")
                if sep and _NAME.match(name):
                    users[name] = hashed
            self._users, self._stamp = users, stamp
        return self._users

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._load())

    def set_password(self, name: str, password: str) -> None:
        """Add a user or change a password."""
        check_name(name)
        if len(password) < 8:
            raise AuthError("a password needs at least 8 characters")
        from medsendx.fsutil import atomic_write_bytes

        with self._lock:
            users = dict(self._load())
            users[name] = _hasher.hash(password)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(f"{n}:{h}\n" for n, h in sorted(users.items()))
            atomic_write_bytes(self.path, text.encode(), mode=0o600)
            self._stamp = None

    def remove(self, name: str) -> bool:
        from medsendx.fsutil import atomic_write_bytes

        with self._lock:
            users = dict(self._load())
            if users.pop(name, None) is None:
                return False
            atomic_write_bytes(self.path, "".join(f"{n}:{h}\n" for n, h in sorted(users.items())).encode(), mode=0o600)
            self._stamp = None
            return True

    def verify(self, name: str, password: str) -> bool:
        with self._lock:
            hashed = self._load().get(name) if _NAME.match(name or "") else None
        try:
            return _hasher.verify(hashed or _DUMMY_HASH, password) and hashed is not None
        except (VerificationError, InvalidHashError):
            return False


@dataclass
class Session:
    user: str
    csrf: str
    expires: float


class SessionStore:
    def __init__(self, lifetime_seconds: float) -> None:
        self.lifetime = lifetime_seconds
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()  # the raw token is only in the cookie

    def create(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            for key in [k for k, s in self._sessions.items() if s.expires < now]:
                del self._sessions[key]
            self._sessions[self._key(token)] = Session(user, secrets.token_urlsafe(32), now + self.lifetime)
        return token

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(self._key(token))
            if session is None or session.expires < time.time():
                return None
            return session

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(self._key(token), None)


class FailureLimiter:
    """At most ``limit`` wrong sign-ins per user name and client address in ``window``
    seconds; beyond that the address is refused until the window has passed (slows down
    password guessing; argon2 already makes each guess cost the hub ~50 ms)."""

    def __init__(self, limit: int = 10, window: float = 300.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def blocked(self, user: str, address: str) -> bool:
        with self._lock:
            return len(self._recent((user, address), time.time())) >= self.limit

    def failed(self, user: str, address: str) -> None:
        with self._lock:
            now = time.time()
            self._recent((user, address), now)
            self._failures.setdefault((user, address), []).append(now)
            if len(self._failures) > 10_000:  # bounded memory under a flood of names
                self._failures.clear()


def tokens_equal(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def new_password() -> str:
    """A random password for a user made by a program (the demo's one-time login)."""
    return secrets.token_urlsafe(12)


def default_users_file(state_dir: Path) -> Path:
    return Path(state_dir) / "hub-users.txt"


def file_mode_ok(path: Path) -> bool:
    """The users file must not be readable by others (hashes are still secrets)."""
    try:
        return (os.stat(path).st_mode & 0o077) == 0
    except FileNotFoundError:
        return True
