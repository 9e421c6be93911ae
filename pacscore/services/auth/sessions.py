"""Browser sessions of the viewer: a cookie that the HTTP door accepts beside bearer tokens.

A session cookie is ``<id>.<secret>``; only a SHA-256 of the secret is kept, in
``<archive>/security/sessions.json`` (0600), with the user, its scope, when it
expires and its CSRF token.  Logging out (or removing the user) deletes the entry, so
a copied cookie stops working at once; an expired one is refused and dropped at the
next write.  A cookie that is not exactly a known id and its secret is unknown: a
tampered cookie is no session.

The cookie is ``HttpOnly`` (scripts cannot read it), ``SameSite=Strict`` (no other
site's page sends it) and ``Secure`` when the server speaks TLS.  Requests that change
state and authenticate by cookie must also come from this server's pages: an
``Origin`` header naming this host, or (a browser that sends none) the session's CSRF
token in the ``X-CSRF-Token`` header or a ``csrf`` form field (synchronizer token);
checked by :meth:`..access.HttpAccess.requires`.  SameSite alone does not cover old
browsers nor same-site subdomains.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .jsonfile import JsonFile

__all__ = ["COOKIE", "CSRF_HEADER", "Session", "SessionStore"]

COOKIE = "pacscore_session"
"""Name of the session cookie."""
CSRF_HEADER = "x-csrf-token"
"""Header carrying the CSRF token of a cookie-authenticated request that changes state."""
_MAX_COOKIE = 200


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A valid session."""

    id: str
    """Its id (the part of the cookie before the dot; also in the audit trail)."""
    user: str
    """Who logged in."""
    scope: str
    """The user's scope when they logged in."""
    csrf: str
    """Its CSRF token."""
    expires: float
    """Unix time it ends."""
    study: str | None = None
    """The one study it may see (opened by a share link), or None: every study."""
    share: str | None = None
    """The id of the share link that opened it (it lasts while the share does)."""


class SessionStore:
    """The sessions of one archive (re-read when the file changes)."""

    def __init__(self, archive_dir: Path, lifetime: float = 8 * 3600.0):
        self.path = archive_dir / "security" / "sessions.json"
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._file = JsonFile(self.path, indent=None)

    def _load(self) -> dict[str, dict[str, Any]]:
        return self._file.load()

    def _save(self, sessions: dict[str, dict[str, Any]]) -> None:
        now = time.time()
        sessions = {k: v for k, v in sessions.items() if v["expires"] > now}
        self._file.save(sessions)

    def create(self, user: str, scope: str, *, study: str | None = None,
               share: str | None = None, ends: float | None = None) -> tuple[str, Session]:
        """A new session of ``user``: the cookie value (shown only now) and the session.
        A share link's session sees ``study`` only and ends with the share (``ends``)
        if that comes before its lifetime."""
        sid, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        expires = time.time() + self.lifetime
        session = Session(sid, user, scope, secrets.token_urlsafe(24),
                          expires if ends is None else min(expires, ends), study, share)
        with self._lock:
            sessions = dict(self._load())
            sessions[sid] = {"user": user, "scope": scope, "sha256": _digest(secret),
                             "csrf": session.csrf, "expires": session.expires}
            if study is not None:
                sessions[sid].update(study=study, share=share)
            self._save(sessions)
        return f"{sid}.{secret}", session

    def get(self, cookie: str) -> Session | None:
        """The valid, unexpired session of a cookie value, or None."""
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        sid, _, secret = cookie.partition(".")
        entry = self._load().get(sid)
        if entry is None or not hmac.compare_digest(entry["sha256"], _digest(secret)):
            return None
        if entry["expires"] <= time.time():
            return None
        return Session(sid, entry["user"], entry["scope"], entry["csrf"], entry["expires"],
                       entry.get("study"), entry.get("share"))

    def end(self, sid: str) -> bool:
        """End session ``sid`` (logout); False if it was not there."""
        with self._lock:
            sessions = dict(self._load())
            if sessions.pop(sid, None) is None:
                return False
            self._save(sessions)
        return True

    def end_share(self, share: str) -> int:
        """End every session a share link opened (revoked); how many ended."""
        with self._lock:
            sessions = dict(self._load())
            kept = {k: v for k, v in sessions.items() if v.get("share") != share}
            self._save(kept)
        return len(sessions) - len(kept)

    def end_user(self, user: str) -> int:
        """End every session of ``user`` (removed); how many ended."""
        with self._lock:
            sessions = dict(self._load())
            kept = {k: v for k, v in sessions.items() if v["user"] != user}
            self._save(kept)
        return len(sessions) - len(kept)
