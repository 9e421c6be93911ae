"""The :class:`~pacscore.kv.KvEnv` of an archive whose index is on PostgreSQL: the
worklist, the performed procedure steps, the patient corrections, the HL7 message
dedup and the HL7 outbox in the index's database, shared by every front end
(issue 17.3; tables ``kv`` and ``kv_dup`` of :mod:`.schema` version 4).

How py-lmdb's semantics are kept:

* a database is rows of one ``db`` value (``<env>/<name>``: ``workflow/state``); a
  dupsort database is in ``kv_dup``, keyed by (db, key, value), the others in ``kv``,
  keyed by (db, key); ``bytea`` sorts as LMDB's keys do (bytes, then length);
* a write transaction (:meth:`PgKv.write`) first takes the environment's
  transaction-level advisory lock (``pg_advisory_xact_lock``): the writers of every
  front end are serialised as LMDB serialises the writers of one folder, so a
  read-modify-write (a counter, an MPPS state check) never races.  Its statements run
  in READ COMMITTED after the lock: they see every commit before it.  A front end that
  dies in the middle leaves nothing: the server rolls the transaction back and frees
  the lock when the connection goes;
* a nested write transaction is a SAVEPOINT (released on commit, rolled back to on
  abort);
* a read transaction is a REPEATABLE READ, READ ONLY one: one snapshot, as LMDB's;
* a cursor reads pages of :data:`PAGE` rows in its direction from its position and
  reads again after any write of its transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .index import PgIndex
from .put import Conn, lock_id

__all__ = ["PAGE", "PgDb", "PgKv"]

T = TypeVar("T")
PAGE = 256
"""Rows a cursor reads at once."""
_ON_CONFLICT = {  # a put of a key already there: replaced (plain, overwrite) or kept
    True: "ON CONFLICT (db, key) DO UPDATE SET value = EXCLUDED.value",
    False: "ON CONFLICT DO NOTHING",  # a dupsort pair there already, or overwrite=False
}


@dataclass(frozen=True, slots=True)
class PgDb:
    """The handle of one named database."""

    name: str
    """Its ``db`` value (``<env>/<name>``)."""
    dupsort: bool
    """Several values per key (``kv_dup``)."""

    @property
    def table(self) -> str:
        return "kv_dup" if self.dupsort else "kv"


class _State:
    """What the transactions nested in one share: the connection, the savepoint
    counter and a write generation (cursors read again after a write)."""

    def __init__(self, conn: Conn, write: bool):
        self.conn, self.write, self.gen, self.savepoints = conn, write, 0, 0


class PgTxn:
    """A transaction of :class:`PgKv` (py-lmdb's ``Transaction`` subset)."""

    def __init__(self, state: _State, *, savepoint: str | None = None,
                 finish: Callable[[bool, BaseException | None], None] | None = None):
        self._s, self._savepoint, self._finish = state, savepoint, finish
        self._done = False

    def __enter__(self) -> PgTxn:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.commit()
        else:
            self._end(False, exc)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._s.conn.execute(sql.encode(), params)
        return cur.fetchall() if cur.description is not None else []

    def _changed(self) -> None:
        self._s.gen += 1

    def get(self, key: bytes, default: Any = None, *, db: PgDb) -> Any:
        rows = self._run(f"SELECT value FROM {db.table} WHERE db = %s AND key = %s "
                         f"ORDER BY value LIMIT 1", (db.name, key))
        return bytes(rows[0][0]) if rows else default

    def put(self, key: bytes, value: bytes, *, db: PgDb, dupdata: bool = True,
            overwrite: bool = True) -> bool:
        self._changed()
        conflict = _ON_CONFLICT[not db.dupsort and overwrite]
        cur = self._s.conn.execute(
            f"INSERT INTO {db.table} (db, key, value) VALUES (%s, %s, %s) {conflict}".encode(),
            (db.name, key, value))
        return cur.rowcount > 0

    def delete(self, key: bytes, value: bytes = b"", *, db: PgDb) -> bool:
        self._changed()
        if db.dupsort and value:
            cur = self._s.conn.execute(
                b"DELETE FROM kv_dup WHERE db = %s AND key = %s AND value = %s",
                (db.name, key, value))
        else:
            cur = self._s.conn.execute(
                f"DELETE FROM {db.table} WHERE db = %s AND key = %s".encode(), (db.name, key))
        return cur.rowcount > 0

    def cursor(self, db: PgDb) -> PgCursor:
        return PgCursor(self, db)

    def stat(self, db: PgDb) -> dict[str, int]:
        rows = self._run(f"SELECT count(*) FROM {db.table} WHERE db = %s", (db.name,))
        return {"entries": int(rows[0][0])}

    def commit(self) -> None:
        self._end(True, None)

    def abort(self) -> None:
        self._end(False, None)

    def _end(self, commit: bool, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        if self._savepoint is not None:  # nested: the outer transaction goes on
            if commit:
                self._s.conn.execute(f"RELEASE SAVEPOINT {self._savepoint}".encode())
            else:
                self._s.conn.execute(f"ROLLBACK TO SAVEPOINT {self._savepoint}".encode())
                self._changed()
        elif self._finish is not None:
            self._finish(commit, exc)


class PgCursor:
    """A position (key, value) in one database, read :data:`PAGE` rows at a time."""

    def __init__(self, txn: PgTxn, db: PgDb):
        self._txn, self._db = txn, db
        self._pos: tuple[bytes, bytes] | None = None
        self._ahead: list[tuple[bytes, bytes]] = []  # the next rows in _step's direction
        self._step, self._gen = 0, -1

    def _rows(self, after: tuple[bytes, bytes] | None, *, forward: bool,
              inclusive: bool = False, low: bytes | None = None) -> list[tuple[bytes, bytes]]:
        db, op = self._db, (">" if forward else "<") + ("=" if inclusive else "")
        where = "db = %s"
        params: list[Any] = [db.name]
        if low is not None:
            where += " AND key >= %s"
            params.append(low)
        elif after is not None and db.dupsort:
            where += f" AND (key, value) {op} (%s, %s)"
            params += [after[0], after[1]]
        elif after is not None:
            where += f" AND key {op} %s"
            params.append(after[0])
        order = "" if forward else " DESC"
        rows = self._txn._run(f"SELECT key, value FROM {db.table} WHERE {where} ORDER BY "
                              f"key{order}, value{order} LIMIT {PAGE}", params)
        return [(bytes(k), bytes(v)) for k, v in rows]

    def _land(self, rows: list[tuple[bytes, bytes]], step: int) -> bool:
        self._pos = rows[0] if rows else None
        self._ahead, self._step, self._gen = rows[1:], step, self._txn._s.gen
        return self._pos is not None

    def _move(self, step: int) -> bool:
        if self._pos is None:
            return self.first() if step > 0 else self.last()
        if self._step == step and self._gen == self._txn._s.gen and self._ahead:
            self._pos = self._ahead.pop(0)
            return True
        return self._land(self._rows(self._pos, forward=step > 0), step)

    def first(self) -> bool:
        return self._land(self._rows(None, forward=True), 1)

    def last(self) -> bool:
        return self._land(self._rows(None, forward=False), -1)

    def set_range(self, key: bytes) -> bool:
        return self._land(self._rows(None, forward=True, low=key), 1)

    def set_key(self, key: bytes) -> bool:
        if self.set_range(key) and self.key() == key:
            return True
        self._pos = None
        return False

    def next(self) -> bool:
        return self._move(1)

    def prev(self) -> bool:
        return self._move(-1)

    def key(self) -> bytes:
        return self._pos[0] if self._pos is not None else b""

    def value(self) -> bytes:
        return self._pos[1] if self._pos is not None else b""

    def delete(self) -> bool:
        """Delete the current record and move to the next one (past the last: no
        position, an empty :meth:`key`), as py-lmdb does."""
        if self._pos is None:
            return False
        pos = self._pos
        self._txn.delete(pos[0], pos[1], db=self._db)
        return self._land(self._rows(pos, forward=True), 1)

    def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]:
        ok = self._pos is not None or self.first()
        while ok:
            yield (self.key(), self.value()) if keys and values else \
                self.key() if keys else self.value()
            ok = self.next()

    def iternext_dup(self) -> Iterator[bytes]:
        key = self.key()
        ok = self._pos is not None
        while ok and self.key() == key:
            yield self.value()
            ok = self.next()

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self.iternext()


class PgKv:
    """:class:`~pacscore.kv.KvEnv` ``name`` in the database of ``index``."""

    def __init__(self, index: PgIndex, name: str, names: Sequence[bytes], *,
                 dupsort: Sequence[bytes] | frozenset[bytes] = ()):
        self.index, self.name = index, name
        self.where = f"the PostgreSQL index at {index.where} ({name})"
        self.dbs: Mapping[bytes, PgDb] = {
            n: PgDb(f"{name}/{n.decode()}", n in dupsort) for n in names}
        self._lock = lock_id("K" + name)

    def begin(self, *, write: bool = False, parent: PgTxn | None = None) -> PgTxn:
        if parent is not None:  # nested: a savepoint of the parent's transaction
            state = parent._s
            state.savepoints += 1
            name = f"kv{state.savepoints}"
            state.conn.execute(f"SAVEPOINT {name}".encode())
            return PgTxn(state, savepoint=name)
        if write:
            raise TypeError("a write transaction of PgKv is run by PgKv.write")
        return self._open(write=False)

    def _open(self, *, write: bool) -> PgTxn:
        stack = contextlib.ExitStack()
        conn = stack.enter_context(self.index.connection())  # its errors as pacscore's
        try:
            if write:
                conn.execute(b"BEGIN")
                conn.execute(b"SELECT pg_advisory_xact_lock(%s)", (self._lock,))
            else:
                conn.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except BaseException as exc:
            _close(stack, conn, exc)
            raise

        def finish(commit: bool, exc: BaseException | None) -> None:
            try:
                conn.execute(b"COMMIT" if commit else b"ROLLBACK")
            except BaseException as failed:
                _close(stack, conn, failed)
                raise
            _close(stack, conn, exc)

        return PgTxn(_State(conn, write), finish=finish)

    def write(self, fn: Callable[[PgTxn], T]) -> T:
        """Run ``fn`` in one write transaction under the environment's advisory lock
        (module docstring): committed when it returns, rolled back when it raises."""
        txn = self._open(write=True)
        try:
            result = fn(txn)
        except BaseException as exc:
            txn._end(False, exc)
            raise
        txn.commit()
        return result

    def get(self, key: bytes, *, db: PgDb) -> bytes | None:
        """One value read outside any transaction (one statement)."""
        with self.index.connection() as conn:
            row = conn.execute(f"SELECT value FROM {db.table} WHERE db = %s AND key = %s "
                               f"ORDER BY value LIMIT 1".encode(), (db.name, key)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        """Nothing to close: the connections are the index's."""


def _close(stack: contextlib.ExitStack, conn: Conn, exc: BaseException | None) -> None:
    """Give the connection back (rolled back if a transaction is still open), through
    the index's context so that a database error is told as pacscore's."""
    if exc is not None and not conn.closed:
        with contextlib.suppress(Exception):
            conn.execute(b"ROLLBACK")
    if exc is None:
        stack.close()
    elif not stack.__exit__(type(exc), exc, exc.__traceback__):
        return
