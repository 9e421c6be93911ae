"""Which index an archive opens: a small spec, as :mod:`pacscore.store.spec` names a
frame store.

Implementations are named by import path in :data:`INDEX_KINDS` and imported when a
spec is opened, so an optional back end (PostgreSQL: the ``postgresql`` extra) costs
nothing to an archive that does not use it.  ``IndexSpec.parse`` turns what a user
types (``postgresql://user@host/db``) into a spec.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArchiveStorageError, UnknownIndexError
from .base import Index

__all__ = ["INDEX_FILE", "INDEX_KINDS", "IndexSpec", "Setting", "remember_index",
           "remembered_index"]

Setting = str | int | float | bool | None
"""An index setting: plain values only, so a spec pickles small and compares equal."""

INDEX_KINDS: dict[str, str] = {
    "lmdb": "pacscore.index.lmdb_index:LmdbIndex",
    "postgresql": "pacscore.index.postgres:PgIndex",
}
"""Index kinds: name -> implementation (``module:Class``, an Index whose constructor
takes the spec's settings and ``readonly`` as keyword arguments)."""

_SCHEMES: dict[str, tuple[str, str]] = {
    "postgresql://": ("postgresql", "dsn"),
    "postgres://": ("postgresql", "dsn"),
}
"""URL prefixes :meth:`IndexSpec.parse` knows: prefix -> (kind, setting the URL goes to)."""
_URL_SETTINGS: dict[str, dict[str, type[float] | type[int]]] = {
    "postgresql": {"timeout": float, "statement_timeout": float, "pool_size": int},
}
"""Query parameters of an index URL that are pacscore's settings, not the server's
(``postgresql://host/db?statement_timeout=5``: libpq refuses parameters it does not
know, so they are taken out of the URL): kind -> name -> type."""
_KEYWORDS = re.compile(r"\s*(host|hostaddr|port|dbname|user|service)\s*=")
"""A libpq keyword/value connection string."""
_EXTRAS = {"postgresql": "pip install 'pacscore[postgresql]'"}
_IDENTITY: dict[str, str] = {"postgresql": "dsn"}
"""The setting that says which index it is (the others say how to use it: time-outs,
pool size): kind -> setting."""

INDEX_FILE = "index.json"
"""In an archive's folder whose index is elsewhere (PostgreSQL): which one, so every
later command on the folder (``find``, ``verify``, ``export``, ``serve``, ...) opens
that index and not an empty LMDB index of its own.  Private (0600: a URL may hold a
password)."""


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """Which Index to open and how (small, hashable, picklable)."""

    kind: str
    """A key of :data:`INDEX_KINDS`."""
    settings: tuple[tuple[str, Setting], ...] = ()
    """Keyword arguments of its constructor, as sorted pairs."""

    @classmethod
    def of(cls, kind: str, **settings: Setting) -> IndexSpec:
        """The spec of an index of ``kind`` (a key of :data:`INDEX_KINDS`)."""
        if kind not in INDEX_KINDS:
            raise UnknownIndexError(f"unknown index kind {kind!r} (known: "
                                    f"{', '.join(sorted(INDEX_KINDS))})")
        return cls(kind, tuple(sorted(settings.items())))

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        """The spec of a URL: ``postgresql://[user[:password]@]host[:port]/database``
        (libpq's URL, query parameters included), or of a libpq keyword string
        (``host=db port=5432 dbname=pacs``).  A URL's ``timeout``, ``statement_timeout``
        (seconds) and ``pool_size`` parameters are the index's settings of those names
        (:class:`~pacscore.index.postgres.PgIndex`)."""
        for prefix, (kind, setting) in _SCHEMES.items():
            if text.startswith(prefix):
                url, settings = _url_settings(kind, text)
                return cls.of(kind, **{setting: url}, **settings)
        if _KEYWORDS.match(text):
            return cls.of("postgresql", dsn=text)
        raise UnknownIndexError(
            f"cannot tell which index {_redact(text)!r} names",
            hint="give a URL such as postgresql://user@host:5432/database, or leave the "
                 "index out for the archive's own LMDB index")

    def open(self, *, readonly: bool = False) -> Index:
        """A new index object of this spec (in the calling process)."""
        module, _, name = INDEX_KINDS[self.kind].partition(":")
        try:
            implementation = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise UnknownIndexError(
                f"cannot load the {self.kind} index: {exc}",
                hint=_EXTRAS.get(self.kind, "install the package it needs")) from exc
        if not (isinstance(implementation, type) and issubclass(implementation, Index)):
            raise UnknownIndexError(f"{INDEX_KINDS[self.kind]!r} is not an Index")
        factory: Any = implementation  # an Index subclass: its own constructor
        index: Index = factory(**dict(self.settings), readonly=readonly)
        return index

    def __str__(self) -> str:
        """The spec without passwords (for messages and logs)."""
        shown = ", ".join(f"{k}={_redact(str(v))}" for k, v in self.settings)
        return f"{self.kind}({shown})"


def _url_settings(kind: str, url: str) -> tuple[str, dict[str, Setting]]:
    """``url`` without the query parameters that are pacscore's settings; those."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    known = _URL_SETTINGS.get(kind, {})
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    settings: dict[str, Setting] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            kept.append((name, value))
            continue
        try:
            number = known[name](value)
        except ValueError:
            number = -1
        if number <= 0:
            raise UnknownIndexError(f"index URL parameter {name}={value!r} is not a "
                                    f"positive number", hint=f"give {name} in "
                                    f"{'seconds' if known[name] is float else 'connections'}")
        settings[name] = number
    return urlunsplit(parts._replace(query=urlencode(kept))), settings


def _redact(text: str) -> str:
    """A URL or DSN without its password."""
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"
    if "password=" in text:
        return re.sub(r"password=\S*", "password=***", text)
    return text


def remembered_index(root: Path, given: IndexSpec | None) -> IndexSpec | None:
    """The index of the archive at ``root``: ``given``, else the one its
    :data:`INDEX_FILE` names, else None (its own LMDB index).

    Raises
    ------
    ArchiveStorageError
        ``given`` names another index than the one the folder remembers (other than in
        its time-outs or pool size), or the file is unreadable.
    """
    path = root / INDEX_FILE
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
        spec = None if saved is None else IndexSpec.of(
            saved["kind"], **{k: v for k, v in saved["settings"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError,
            UnknownIndexError) as exc:
        raise ArchiveStorageError(f"cannot read {path}: {exc}",
                                  hint="restore it from a backup or fix its JSON") from exc
    if spec is None or given is None:
        return given or spec
    if _identity(given) != _identity(spec):
        raise ArchiveStorageError(
            f"{root} is the archive of index {spec}, not of {given}",
            hint=f"leave --index out, or delete {path} if the index has moved to "
                 "another server (the same database)")
    return given


def remember_index(root: Path, spec: IndexSpec) -> None:
    """Keep ``spec`` in ``root``'s :data:`INDEX_FILE` (atomically, 0600), unless it holds
    it already."""
    path = root / INDEX_FILE
    text = json.dumps({"kind": spec.kind, "settings": dict(spec.settings)}, indent=1)
    try:
        if path.is_file() and path.read_text() == text:
            return
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise ArchiveStorageError(f"cannot write {path}: {exc}",
                                  hint="check the archive folder's permissions and free "
                                       "space") from exc


def _identity(spec: IndexSpec) -> tuple[str, object]:
    """What says which index ``spec`` is: for PostgreSQL the server and database its
    connection string names, in URL or keyword form alike (not password, options or
    pacscore's time-outs)."""
    value = dict(spec.settings).get(_IDENTITY.get(spec.kind, ""))
    if spec.kind == "postgresql" and isinstance(value, str):
        try:
            from psycopg.conninfo import conninfo_to_dict
            parts = conninfo_to_dict(value)
        except Exception:  # noqa: BLE001 - not parsable: compared as written
            return spec.kind, value
        return spec.kind, tuple(str(parts.get(k) or "") for k in
                                ("host", "hostaddr", "port", "dbname", "user", "service"))
    return spec.kind, value
