"""Which index an archive opens: a small spec, as :mod:`pacscore.store.spec` names a
frame store.

Implementations are named by import path in :data:`INDEX_KINDS` and imported when a
spec is opened, so an optional back end (PostgreSQL: the ``postgresql`` extra) costs
nothing to an archive that does not use it.  ``IndexSpec.parse`` turns what a user
types (``postgresql://user@host/db``) into a spec.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownIndexError
from .base import Index

__all__ = ["INDEX_KINDS", "IndexSpec", "Setting"]

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
