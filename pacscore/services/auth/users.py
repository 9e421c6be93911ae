"""People who log in to the viewer: names, scopes and password hashes, with lock-out.

Kept in ``<archive>/security/users.json`` (0600, replaced atomically, re-read when it
changes, so ``pacscore user add/remove`` apply to a running server).  Passwords are
hashed with scrypt (RFC 7914) from the standard library (``hashlib.scrypt``, OpenSSL's
implementation): a memory-hard KDF with no new dependency to keep up to date; the
parameters are OWASP's (N=2^17, r=8, p=1: 128 MiB, ~0.6 s here) and are stored with
each hash, so raising them later keeps old hashes valid.  At most two hashes run at
once in a process (:data:`_KDF_SLOTS`; the login page also queues in its event loop
and refuses a flood): logins cannot take the server's memory.

After :attr:`UserStore.max_failures` wrong passwords in a row a name is locked for
:attr:`UserStore.lockout_seconds` (also a name nobody has: the answer never tells
whether a name exists).  The counts are kept in ``security/lockouts.json`` beside the
sessions (0600, replaced atomically, counted under an advisory file lock): a restart
does not forgive them, and every process serving the archive counts the same failures.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InvalidRequestError
from ...private import make_private_dir
from .jsonfile import JsonFile
from .tokens import SCOPES

__all__ = ["LoginResult", "UserStore", "hash_password", "check_password"]

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_SCRYPT = {"n": 2**17, "r": 8, "p": 1}
_MAXMEM = 256 * 1024**2
_KDF_SLOTS = threading.BoundedSemaphore(2)
_REMEMBERED = 10_000
MAX_PASSWORD = 1024
"""Longest password accepted (bytes of UTF-8)."""


def hash_password(password: str, params: dict[str, int] | None = None) -> dict[str, Any]:
    """A new scrypt record of ``password`` (salt, parameters, hash)."""
    params = dict(params or _SCRYPT)
    salt = secrets.token_bytes(16)
    with _KDF_SLOTS:
        digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=_MAXMEM, dklen=32,
                                **params)
    return {"kdf": "scrypt", **params, "salt": salt.hex(), "hash": digest.hex()}


def check_password(password: str, record: dict[str, Any]) -> bool:
    """``password`` matches ``record`` (compared in constant time)."""
    if record.get("kdf") != "scrypt":
        return False
    with _KDF_SLOTS:
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(record["salt"]),
                                n=record["n"], r=record["r"], p=record["p"],
                                maxmem=_MAXMEM, dklen=32)
    return hmac.compare_digest(digest.hex(), record["hash"])


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What a login attempt came to."""

    user: str | None
    """The name logged in, or None."""
    scope: str | None
    """Its scope (``read``, ``write``, ``delete``, ``admin``)."""
    locked: float = 0.0
    """Seconds the name stays locked (0: not locked)."""
    locked_now: bool = False
    """This attempt locked it."""


class UserStore:
    """The viewer's users of one archive."""

    def __init__(self, archive_dir: Path, *, max_failures: int = 5,
                 lockout_seconds: float = 900.0, kdf: dict[str, int] | None = None):
        self.path = archive_dir / "security" / "users.json"
        self.max_failures, self.lockout_seconds = max_failures, lockout_seconds
        self.kdf = kdf or _SCRYPT
        self._lock = threading.Lock()
        self._file = JsonFile(self.path, indent=2)
        # name -> {"failures": consecutive failures, "until": locked until (Unix time)},
        # for names that exist and names that do not alike.
        self._counts = JsonFile(self.path.parent / "lockouts.json", indent=None)
        self._dummy: dict[str, Any] | None = None  # hashed for unknown names (timing)

    def _load(self) -> dict[str, dict[str, Any]]:
        return self._file.load()

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        self._file.save(users)

    def add(self, name: str, password: str, scope: str = "read") -> None:
        """Add or replace user ``name``."""
        if not _NAME.match(name):
            raise InvalidRequestError(f"user name {name!r} is not allowed",
                                      hint="use 1-64 letters, digits and . _ @ -")
        if scope not in SCOPES:
            raise InvalidRequestError(f"unknown scope {scope!r}",
                                      hint=f"use one of {', '.join(SCOPES)}")
        if not 8 <= len(password.encode()) <= MAX_PASSWORD:
            raise InvalidRequestError("the password must be 8 to 1024 bytes long",
                                      hint="choose a longer password (a passphrase)")
        record = hash_password(password, self.kdf)
        with self._lock:
            users = dict(self._load())
            users[name] = {"scope": scope, "password": record,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self._save(users)

    def ensure_admin(self) -> Path | None:
        """At a first start (no user yet): add ``admin`` with a random password, write
        it to ``security/admin-password`` (0600) and return that path; None when users
        exist.  The password is never printed (service logs keep stdout)."""
        if self._load():
            return None
        password = secrets.token_urlsafe(15)
        self.add("admin", password, "admin")
        target = self.path.parent / "admin-password"
        tmp = target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        os.replace(tmp, target)
        return target

    def remove(self, name: str) -> bool:
        """Remove user ``name``; False if unknown."""
        with self._lock:
            users = dict(self._load())
            if users.pop(name, None) is None:
                return False
            self._save(users)
        return True

    def list(self) -> dict[str, dict[str, str]]:
        """User names with scope and creation time (no hashes)."""
        return {k: {"scope": v["scope"], "created": v.get("created", "")}
                for k, v in self._load().items()}

    def scope(self, name: str) -> str | None:
        """The scope of an existing user, or None."""
        entry = self._load().get(name)
        return None if entry is None else str(entry["scope"])

    @contextlib.contextmanager
    def _counting(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The lock-out counts to change in place, saved on leaving; one process' thread
        at a time, and one process at a time (``flock`` on ``lockouts.lock``)."""
        make_private_dir(self.path.parent)
        with self._lock:
            fd = os.open(self.path.parent / "lockouts.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                counts = dict(self._counts.load())
                before = dict(counts)
                yield counts
                if counts != before:
                    self._counts.save(counts)
            finally:
                os.close(fd)  # releases the flock

    def login(self, name: str, password: str, now: float | None = None) -> LoginResult:
        """Check ``name`` and ``password``; count failures, lock after too many.
        A locked name is refused without checking the password."""
        now = time.time() if now is None else now
        key = name[:64]
        until = float(self._counts.load().get(key, {}).get("until", 0.0))
        if until > now:
            return LoginResult(None, None, locked=until - now)
        entry = self._load().get(name)
        if entry is None and self._dummy is None:
            self._dummy = hash_password(secrets.token_hex(8), self.kdf)
        record = entry["password"] if entry is not None else self._dummy
        assert record is not None
        ok = check_password(password, record) and entry is not None
        with self._counting() as counts:
            if ok:
                counts.pop(key, None)
                assert entry is not None
                return LoginResult(name, str(entry["scope"]))
            count = counts.get(key, {})
            until = float(count.get("until", 0.0))
            if until > now:  # locked by another request meanwhile
                return LoginResult(None, None, locked=until - now)
            failures = int(count.get("failures", 0)) + 1
            if failures >= self.max_failures:
                counts[key] = {"failures": 0, "until": now + self.lockout_seconds}
                return LoginResult(None, None, locked=self.lockout_seconds, locked_now=True)
            if len(counts) > _REMEMBERED:  # many made-up names: forget idle ones
                for idle in [k for k, v in counts.items() if v.get("until", 0.0) <= now]:
                    del counts[idle]
            counts[key] = {"failures": failures, "until": 0.0}
        return LoginResult(None, None)
