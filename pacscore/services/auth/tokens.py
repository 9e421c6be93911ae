"""Bearer tokens with scopes for the HTTP and gRPC front ends.

Tokens look like ``pcs_<id>_<secret>``; only a SHA-256 of the secret is kept, in
``<archive>/security/tokens.json``.  Scopes: ``read``, ``write``, ``delete``,
``admin``; ``admin`` grants everything, ``write`` and ``delete`` include ``read``.

A token may also be bound to one study and end at a time (a share link, issue 20.3:
``pacscore share``): its scope then covers that study only (the HTTP door confines
every route to it, :meth:`..access.HttpAccess.requires`; gRPC refuses it), and after
``expires`` it is refused.  A revoked share stays listed, marked ``revoked``, so that
its link says why it no longer opens.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import PacsError
from .jsonfile import JsonFile

__all__ = ["SCOPES", "Grant", "TokenStore", "granted"]

SCOPES: tuple[str, ...] = ("read", "write", "delete", "admin")
_GRANTS = {"read": {"read"}, "write": {"read", "write"}, "delete": {"read", "delete"},
           "admin": set(SCOPES)}


def granted(scope: str | None, needed: str) -> bool:
    """A token with ``scope`` may do what ``needed`` allows."""
    return scope is not None and needed in _GRANTS.get(scope, set())


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token sent with a request may do, with one lookup."""

    scope: str | None
    """Its scope; None when it is not valid (unknown, wrong secret, expired, revoked)."""
    name: str
    """Who it is, for the audit trail (``token <id> (name)``, ``share <id> (name)``,
    ``invalid token``); never the secret."""
    study: str | None = None
    """The one study it opens (a share link), or None: every study."""
    problem: str | None = None
    """Why it is not valid, when the holder may be told (it knew the secret)."""
    id: str | None = None
    """The token's id (None: no such token)."""
    expires: float | None = None
    """The Unix time it ends, if it does."""


class TokenStore:
    """Tokens of one archive (re-read when the file changes, so revocations apply)."""

    def __init__(self, archive_dir: Path):
        self.path = archive_dir / "security" / "tokens.json"
        self.admin_file = archive_dir / "security" / "admin-token"
        self._lock = threading.Lock()
        self._file = JsonFile(self.path, indent=2)

    def _load(self) -> dict[str, dict[str, Any]]:
        return self._file.load()

    def _save(self, tokens: dict[str, dict[str, Any]]) -> None:
        self._file.save(tokens)

    def create(self, scope: str, name: str = "", *, study: str | None = None,
               expires: float | None = None) -> str:
        """A new token with ``scope``; the secret is shown only now.  ``study``: it
        opens that study only; ``expires``: the Unix time it ends (a share link)."""
        if scope not in SCOPES:
            raise PacsError(f"unknown scope {scope!r}", hint=f"use one of {', '.join(SCOPES)}")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        entry: dict[str, Any] = {"scope": scope, "name": name, "sha256": _digest(secret),
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if study is not None:
            entry["study"] = study
        if expires is not None:
            entry["expires"] = expires
        with self._lock:
            tokens = dict(self._load())
            tokens[token_id] = entry
            self._save(tokens)
        return f"pcs_{token_id}_{secret}"

    def revoke(self, token_or_id: str) -> bool:
        """Revoke by token or by id; False if unknown (or a share revoked already).
        A share stays listed, marked revoked (its link then says so); a token is
        removed."""
        token_id = token_or_id.split("_")[1] if token_or_id.startswith("pcs_") else token_or_id
        with self._lock:
            tokens = dict(self._load())
            entry = tokens.get(token_id)
            if entry is None or "revoked" in entry:
                return False
            if "study" in entry:
                tokens[token_id] = {**entry, "revoked": time.time()}
            else:
                del tokens[token_id]
            self._save(tokens)
        return True

    def list(self) -> dict[str, dict[str, Any]]:
        """Token ids with scope, name and creation time (no secrets); shares with their
        study, end and revocation."""
        return {k: {kk: vv for kk, vv in v.items() if kk != "sha256"}
                for k, v in self._load().items()}

    def _entry(self, token: str) -> tuple[str, dict[str, Any]] | None:
        """The id and entry of a valid token, or None."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "pcs":
            return None
        entry = self._load().get(parts[1])
        if entry is None or not hmac.compare_digest(entry["sha256"], _digest(parts[2])):
            return None
        return parts[1], entry

    def scope(self, token: str) -> str | None:
        """The scope of a valid token, or None."""
        return self.check(token).scope

    def user(self, token: str) -> str:
        """Who a token is, for the audit trail: ``token <id>`` and its name if it has
        one (never the secret); ``anonymous`` for no token, ``invalid token`` else."""
        return self.identify(token)[1] if token else "anonymous"

    def identify(self, token: str) -> tuple[str | None, str]:
        """The scope of ``token`` (None unless valid) and who it is (:meth:`user`),
        with one lookup."""
        grant = self.check(token)
        return grant.scope, grant.name

    def check(self, token: str) -> Grant:
        """What ``token`` may do (:class:`Grant`), with one lookup."""
        found = self._entry(token)
        if found is None:
            return Grant(None, "invalid token")
        return self._grant(*found)

    def check_id(self, token_id: str) -> Grant:
        """What the token ``token_id`` may do now (a session opened by a share link
        lasts while its share does)."""
        entry = self._load().get(token_id)
        if entry is None:
            return Grant(None, "invalid token", problem="this link is unknown")
        return self._grant(token_id, entry)

    @staticmethod
    def _grant(token_id: str, entry: dict[str, Any]) -> Grant:
        study = entry.get("study")
        kind = "share" if study is not None else "token"
        name = f"{kind} {token_id}" + (f" ({entry['name']})" if entry.get("name") else "")
        expires = entry.get("expires")
        if "revoked" in entry:
            return Grant(None, name, study, "this link was revoked", token_id, expires)
        if expires is not None and expires <= time.time():
            ended = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(expires))
            return Grant(None, name, study, f"this link expired on {ended}", token_id,
                         expires)
        return Grant(entry["scope"], name, study, None, token_id, expires)

    @staticmethod
    def grants(scope: str | None, needed: str) -> bool:
        """``scope`` covers ``needed``."""
        return granted(scope, needed)

    def ensure_admin(self) -> Path | None:
        """At start: when no token with the ``admin`` scope exists (a first start, also
        after ``token create`` of narrower ones, or after every admin token was
        revoked), create one, write it to ``admin-token`` (0600) and return that path;
        None when an admin token exists.  The secret is never returned: it is not to
        be printed (service logs keep stdout)."""
        with self._lock:
            if any(entry.get("scope") == "admin" for entry in self._load().values()):
                return None
        token = self.create("admin", "first start")
        tmp = self.admin_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        os.replace(tmp, self.admin_file)
        return self.admin_file
