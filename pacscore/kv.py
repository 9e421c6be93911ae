"""The key-value environment the workflow state and the HL7 outbox are kept in.

The worklist (:mod:`pacscore.workflow`: its items, MPPS, corrections overlay and HL7
message dedup) and the HL7 outbox use a small subset of py-lmdb: read and write
transactions, named databases (two of them dupsort), ``get``/``put``/``delete``,
cursors, nested write transactions and ``stat``.  :class:`KvEnv` names that subset,
with two implementations:

* :class:`LmdbKv`: an LMDB environment in the archive's folder (the embedded default,
  one writer per folder);
* :class:`pacscore.index.postgres.kv.PgKv`: tables of the archive's PostgreSQL
  database, when its index is there: every front end of that archive then shares the
  worklist, the performed steps, the corrections and the outbox (issue 17.3).

Keys and values are bytes; keys sort as bytes (memcmp, then length) in both.  The
handles of :attr:`KvEnv.dbs` are passed as ``db=`` to every call, as in py-lmdb.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import lmdb

from .lmdb_env import open_env, write

log = logging.getLogger(__name__)

__all__ = ["STORE_FAILURES", "Cursor", "KvEnv", "LmdbKv", "Txn", "adopt", "shared_env"]

T = TypeVar("T")


def _failures() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:  # the postgresql extra is not installed: no PgKv either
        return (lmdb.MapFullError,)
    return (lmdb.MapFullError, psycopg.Error)


STORE_FAILURES: tuple[type[Exception], ...] = _failures()
"""Failures of a nested transaction that are the whole transaction's (a full LMDB map,
a database error or lost connection): not one change's own failure."""


class Cursor(Protocol):
    """A position in one database (py-lmdb's ``Cursor`` subset)."""

    def set_key(self, key: bytes) -> bool: ...

    def set_range(self, key: bytes) -> bool: ...

    def first(self) -> bool: ...

    def last(self) -> bool: ...

    def next(self) -> bool: ...

    def prev(self) -> bool: ...

    def key(self) -> bytes: ...

    def value(self) -> bytes: ...

    def delete(self) -> bool: ...

    def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]: ...

    def iternext_dup(self) -> Iterator[bytes]: ...

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]: ...


class Txn(Protocol):
    """One transaction (py-lmdb's ``Transaction`` subset)."""

    def get(self, key: bytes, default: Any = None, *, db: Any) -> Any: ...

    def put(self, key: bytes, value: bytes, *, db: Any, dupdata: bool = True,
            overwrite: bool = True) -> bool: ...

    def delete(self, key: bytes, value: bytes = b"", *, db: Any) -> bool: ...

    def cursor(self, db: Any) -> Cursor: ...

    def stat(self, db: Any) -> Mapping[str, int]: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class KvEnv(Protocol):
    """An environment of named databases."""

    @property
    def dbs(self) -> Mapping[bytes, Any]:
        """Name -> the handle passed as ``db=``."""

    @property
    def where(self) -> str:
        """Where it is, for messages."""

    def begin(self, *, write: bool = False, parent: Any = None) -> Any:
        """A transaction (a context manager committing on success): read (a snapshot)
        or, with ``parent``, a write transaction nested in ``parent``."""

    def write(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` in one write transaction: committed whole when it returns, rolled
        back when it raises (the writers of all processes are serialised)."""

    def get(self, key: bytes, *, db: Any) -> bytes | None:
        """One value, read in a transaction of its own."""

    def close(self) -> None:
        """Close (idempotent)."""


class LmdbKv:
    """:class:`KvEnv` on an LMDB environment (:func:`pacscore.lmdb_env.open_env`)."""

    def __init__(self, path: Path, names: Sequence[bytes], *, what: str,
                 dupsort: Collection[bytes] = (), sync: bool = True, readonly: bool = False,
                 map_size: int = 1 << 30, optional: Collection[bytes] = ()):
        self.path, self.what, self.where = path, what, str(path)
        self.env, self.dbs = open_env(path, names, what=what, dupsort=dupsort, sync=sync,
                                      readonly=readonly, map_size=map_size,
                                      optional=optional)

    def begin(self, *, write: bool = False, parent: Any = None) -> lmdb.Transaction:
        return self.env.begin(write=write, parent=parent)

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """The map grows when full; a failure is ArchiveStorageError (``lmdb_env.write``)."""
        return write(self.env, self.path, fn, what=f"{self.what} write",
                     hint="free space on the archive's disk, then retry")

    def get(self, key: bytes, *, db: Any) -> bytes | None:
        with self.env.begin() as txn:
            raw = txn.get(key, db=db)
        return None if raw is None else bytes(raw)

    def close(self) -> None:
        self.env.close()


def shared_env(index: object, name: str, names: Sequence[bytes], *,
               dupsort: Collection[bytes] = ()) -> KvEnv | None:
    """Environment ``name`` in the database of ``index`` when that is an index several
    front ends share (PostgreSQL: :class:`~pacscore.index.postgres.kv.PgKv`); None
    otherwise (the caller opens its LMDB environment in the archive's folder)."""
    from .index.base import SharedIndex

    if not isinstance(index, SharedIndex):
        return None
    from .index.postgres.kv import PgKv

    return PgKv(index, name, names, dupsort=frozenset(dupsort))  # type: ignore[arg-type,return-value]


def adopt(shared: KvEnv, path: Path, *, what: str, dupsort: Collection[bytes] = (),
          marker: tuple[bytes, bytes, bytes]) -> int:
    """Open ``shared`` for its first user: when it has no ``marker`` (db, key, value)
    yet, write it, with every record of the LMDB environment at ``path`` that this
    folder kept before its index was shared (a worklist, an outbox of before), in one
    transaction; how many records were copied.  When it has one and ``path`` holds
    records, they are another history than the shared one: left in place, and a
    warning names them (two histories are not merged: their keys would collide)."""
    names = list(shared.dbs)
    local = LmdbKv(path, names, what=what, dupsort=dupsort, readonly=True,
                   optional=names) if (path / "data.mdb").exists() else None
    db, key, value = marker
    try:
        def run(txn: Any) -> int:
            if txn.get(key, db=shared.dbs[db]) is not None:
                return -1
            copied = 0
            if local is not None:
                with local.begin() as old:
                    for name, handle in local.dbs.items():
                        for k, v in old.cursor(db=handle):
                            txn.put(bytes(k), bytes(v), db=shared.dbs[name], dupdata=True)
                            copied += 1
            txn.put(key, value, db=shared.dbs[db])
            return copied
        copied = shared.write(run)
        if copied > 0:
            log.warning("%s: the %d records of %s were copied to %s (kept there from now "
                        "on; the folder's copy is no longer read)", what, copied, path,
                        shared.where)
        elif copied < 0 and local is not None:
            with local.begin() as old:
                left = sum(old.stat(h)["entries"] for h in local.dbs.values())
            if left:
                log.warning("%s: %s holds %d records of this folder from before its index "
                            "was shared; they are not served (%s has its own)", what, path,
                            left, shared.where)
        return max(copied, 0)
    finally:
        if local is not None:
            local.close()
