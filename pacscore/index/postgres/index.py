"""The Index on PostgreSQL: the same contract as :class:`~pacscore.index.LmdbIndex`,
for many processes (front ends on several hosts) writing one index.

Writers are kept apart by the database, not by a file lock:

* uniqueness by keys: an instance's SOP Instance UID is the primary key of ``instance``
  and its location is unique; a put inserts the instance rows first, so of two
  processes putting one instance at once exactly one stores it; the other's insert
  fails on the key, and its transaction is run again, finding it there (``duplicate``
  or ``conflict``, by SHA-256; :mod:`.put`);
* a put is two round trips (pipeline mode): BEGIN, the locks and the reads; then the
  writes and COMMIT;
* the hierarchy and its counters by transactions: each put or delete first takes
  transaction-level advisory locks on the Patient IDs, studies and series it touches,
  in one sorted order (so two writers never wait on each other in a cycle), then reads
  and updates their rows; writers of other patients run in parallel.  Totals are one
  row updated at the end of the transaction, in the same order by every writer;
* ``changed()`` stamps come from a sequence, drawn after the locks: a later change of
  a study, series or Patient ID always has a greater stamp;
* a deadlock or serialisation failure rolls the whole transaction back and it is run
  again; anything else is an error from :mod:`pacscore.errors` with a hint (a server
  that cannot be reached within the connect timeout is
  :class:`~pacscore.errors.IndexUnavailableError`; a statement has a timeout too);
* a server that goes silent (a network partition: no answer, no error) is given up on
  after ``statement_timeout + timeout`` seconds per read or write transaction
  (:mod:`.deadline`): IndexUnavailableError, never a client waiting forever.

A write whose connection breaks mid-commit is not retried: it may have committed (the
archive's commit asks the index again which locations it owns,
:meth:`pacscore.commit.Committer._resolve`; its recovery publishes what the index names).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import ArchiveStorageError, IndexUnavailableError
from ...kinds import PutStatus
from ..base import Index, PutOutcome
from ..records import InstanceRecord
from ..validate import record_problem
from .deadline import Deadlines
from .put import (
    INSTANCE_KEY,
    RECORD_ERRORS,
    Batch,
    BulkError,
    Conn,
    PgRow,
    RecordError,
    RetryError,
    Totals,
    lock_id,
    record_keys,
)
from .query import PgQueries, Row, pg_text
from .schema import MIGRATIONS, SCHEMA, migrate

__all__ = ["PgIndex"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRY = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_ATTEMPTS = 10
_DEADLINES = Deadlines()


def describe(dsn: str) -> str:
    """Where a DSN points, without its password: ``host:port/dbname``."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unreadable DSN)"
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


@contextmanager
def _pipelined(conn: Conn) -> Iterator[psycopg.Pipeline]:
    """A transaction in pipeline mode: BEGIN is sent with the block's first statements,
    so its round trips are only those where the block reads an answer (and its
    ``sync()``); the block sends COMMIT and syncs itself.  Whatever fails rolls it back
    (a statement that failed made the server skip the rest, COMMIT included)."""
    try:
        with conn.pipeline() as pipe:
            conn.execute(b"BEGIN")
            try:
                yield pipe
            except BaseException:
                _drain(pipe)
                raise
        if conn.info.transaction_status != TransactionStatus.IDLE:
            raise AssertionError("a pipelined transaction was left open")
    except BaseException:
        if not conn.closed and conn.info.transaction_status in (
                TransactionStatus.INTRANS, TransactionStatus.INERROR):
            with suppress(psycopg.Error):
                conn.execute(b"ROLLBACK")
        raise


def _drain(pipe: psycopg.Pipeline) -> None:
    """Read the answers a failed statement left queued (the server skipped what followed
    it: psycopg would log them as errors ignored when the pipeline ends)."""
    for _ in range(4):
        try:
            pipe.sync()
            return
        except pg_errors.PipelineAborted:
            continue
        except psycopg.Error:  # the connection broke: the block's error is the one raised
            return


class PgIndex(PgQueries, Index):
    """The index in a PostgreSQL database (schema ``pacscore``, created or upgraded at
    open).

    Parameters
    ----------
    dsn
        libpq connection string or URL (``postgresql://user@host:5432/db``).
    readonly
        Open for reading only: transactions are read-only, the schema is not upgraded.
    pool_size
        Most connections this process keeps.
    timeout
        Seconds to wait for a connection (connecting, or a free one in the pool).
    statement_timeout
        Seconds any statement may run (lock waits included).  A read or a write
        transaction whose server stays silent for ``statement_timeout + timeout``
        seconds is given up (its connection cut): IndexUnavailableError.
    """

    def __init__(self, dsn: str, *, readonly: bool = False, pool_size: int = 8,
                 timeout: float = 10.0, statement_timeout: float = 60.0,
                 migrations: tuple[tuple[int, str], ...] = MIGRATIONS):
        self.where = describe(dsn)
        self.timeout = timeout
        self.deadline = statement_timeout + timeout
        """Seconds a read or write transaction may go without its answer."""
        settings = [f"SET search_path TO {SCHEMA}",
                    f"SET statement_timeout = {int(statement_timeout * 1000)}"]
        if readonly:
            settings.append("SET default_transaction_read_only = on")

        def configure(conn: Conn) -> None:
            for sql in settings:
                conn.execute(sql.encode())

        self.pool: ConnectionPool[Conn] = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=False, timeout=timeout,
            # the pool's reconnection backs off exponentially until it gives up: after
            # an outage of T s it could wait about T s more before trying again; giving
            # up after `timeout` lets the next request try at once instead
            reconnect_timeout=timeout,
            configure=configure, name=f"pacscore-index {self.where}",
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout)),
                    "application_name": "pacscore"})
        try:
            self.pool.open(wait=True, timeout=timeout)
        except PoolTimeout as exc:
            self.pool.close()
            raise IndexUnavailableError(
                f"cannot connect to the PostgreSQL index at {self.where} within "
                f"{timeout:g} s") from exc
        try:
            with self._connection(deadline=False) as conn:  # an upgrade may take long
                applied = migrate(conn, where=self.where, migrations=migrations,
                                  readonly=readonly)
        except BaseException:
            self.pool.close()
            raise
        if applied:
            log.info("PostgreSQL index at %s: schema versions %s applied", self.where,
                     ", ".join(map(str, applied)))

    # -- plumbing -------------------------------------------------------------------
    def connection(self, *, deadline: bool = True) -> AbstractContextManager[Conn]:
        """A pooled connection of this index's database for the package's other tables
        (the workflow state: :mod:`.kv`), its failures as pacscore errors, within
        :attr:`deadline` seconds unless ``deadline`` is False."""
        return self._connection(deadline=deadline)

    @contextmanager
    def _connection(self, *, deadline: bool = True) -> Iterator[Conn]:
        """A pooled connection; the database's failures as pacscore errors.  With
        ``deadline``, the block is given :attr:`deadline` seconds (then the connection
        is cut: a server gone silent)."""
        try:
            with self.pool.connection() as conn:
                if not deadline:
                    yield conn
                    return
                with _DEADLINES.watch(conn.pgconn.socket, self.deadline) as cut:
                    try:
                        yield conn
                    except psycopg.OperationalError:
                        if not cut[0]:
                            raise
                        # not retried (another connection may be as silent): from None
                        raise IndexUnavailableError(
                            f"the PostgreSQL index at {self.where} did not answer within "
                            f"{self.deadline:g} s (the connection was given up)") from None
        except PoolTimeout as exc:
            raise IndexUnavailableError(
                f"no connection to the PostgreSQL index at {self.where} within "
                f"{self.timeout:g} s: {exc}") from exc
        except pg_errors.QueryCanceled as exc:
            raise ArchiveStorageError(
                f"a statement of the PostgreSQL index at {self.where} timed out: {exc}",
                hint="the database is overloaded or a lock is held too long; raise "
                     "statement_timeout if the index is very large") from exc
        except _RETRY:
            raise
        except psycopg.OperationalError as exc:
            raise IndexUnavailableError(
                f"the PostgreSQL index at {self.where} failed: {exc}") from exc
        except pg_errors.ReadOnlySqlTransaction as exc:
            raise ArchiveStorageError(
                f"the PostgreSQL index at {self.where} is open read-only",
                hint="open the archive for writing (not readonly=True), as a role that "
                     "may write the database") from exc
        except psycopg.Error as exc:
            raise ArchiveStorageError(
                f"the PostgreSQL index at {self.where} failed: {type(exc).__name__}: {exc}",
                hint="check the server's log; the transaction was rolled back") from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    return conn.execute(sql.encode(), params).fetchall()
            except IndexUnavailableError as exc:  # a connection the server dropped
                cause = exc.__cause__
                if attempt == 2 or isinstance(cause, PoolTimeout) \
                        or not isinstance(cause, psycopg.OperationalError):
                    raise
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one transaction, again after a deadlock or serialisation
        failure (which rolled it back)."""
        def run(conn: Conn) -> T:
            with conn.transaction():
                return fn(conn)
        return self._retried(run)

    def _write_pipelined(self, fn: Callable[[Conn, psycopg.Pipeline], T]) -> T:
        """:meth:`_write` for a ``fn`` that runs in pipeline mode, BEGIN sent with its
        first statements, COMMIT and the sync its own (:func:`_pipelined`)."""
        def run(conn: Conn) -> T:
            with _pipelined(conn) as pipe:
                return fn(conn, pipe)
        return self._retried(run)

    def _retried(self, run: Callable[[Conn], T]) -> T:
        for attempt in range(_ATTEMPTS):
            try:
                with self._connection() as conn:
                    return run(conn)
            except (*_RETRY, RetryError):
                time.sleep(random.uniform(0, 0.01 * 2 ** attempt))
        raise ArchiveStorageError(
            f"a write to the PostgreSQL index at {self.where} met deadlocks "
            f"{_ATTEMPTS} times", hint="retry; if it persists, fewer concurrent writers")

    @classmethod
    def _lock(cls, conn: Conn, keys: set[str]) -> int:
        """Take the advisory locks of ``keys`` (sorted: never a cycle) and draw the
        stamp of this transaction's changes."""
        return cls._stamp(cls._lock_sent(conn, keys))

    @staticmethod
    def _lock_sent(conn: Conn, keys: set[str]) -> psycopg.Cursor[Any]:
        """:meth:`_lock`'s statements sent, the stamp not read yet (in pipeline mode its
        answer then comes back with the reads sent after it: one round trip fewer)."""
        ids = sorted({lock_id(k) for k in keys})
        conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k", (ids,))
        return conn.execute("SELECT nextval('change_seq')")  # (after the locks)

    @staticmethod
    def _stamp(cursor: psycopg.Cursor[Any]) -> int:
        row = cursor.fetchone()
        assert row is not None
        return int(row[0])

    # -- pending --------------------------------------------------------------------
    def mark_pending(self, locations: Sequence[str]) -> None:
        if locations:
            self._write(lambda conn: conn.execute(
                "INSERT INTO pending (location) SELECT unnest(%s::text[]) ON CONFLICT DO "
                "NOTHING", ([pg_text(loc) for loc in locations],)))

    def clear_pending(self, locations: Sequence[str]) -> None:
        if locations:
            self._write(lambda conn: conn.execute(
                "DELETE FROM pending WHERE location = ANY(%s)",
                ([pg_text(loc) for loc in locations],)))

    # -- put ------------------------------------------------------------------------
    def put(self, items: Sequence[tuple[InstanceRecord, bytes]]) -> list[PutOutcome]:
        """Records are checked before the transaction opens; one that still fails in
        it is refused alone and the transaction run again without it (a set-based
        insert that fails is run again a row at a time to find which one)."""
        outcomes: list[PutOutcome | None] = [None] * len(items)
        rows: dict[int, PgRow] = {}
        for i, (rec, header) in enumerate(items):
            sop = rec.sop_instance_uid
            problem = record_problem(rec)
            if problem:
                outcomes[i] = PutOutcome(sop, PutStatus.INVALID, None,
                                         f"instance {sop}: {problem}")
                continue
            try:
                rows[i] = PgRow.of(rec, header)
            except (TypeError, ValueError, UnicodeError) as exc:
                outcomes[i] = _invalid(sop, exc)
        todo, one_by_one = list(rows), False
        commit_sent = [False]
        while todo:
            try:
                done = self._write_pipelined(functools.partial(
                    self._put_rows, rows=rows, todo=todo, one_by_one=one_by_one,
                    commit_sent=commit_sent))
            except IndexUnavailableError as exc:
                if not commit_sent[0]:
                    exc.committed = False
                raise
            except BulkError:
                one_by_one = True
                continue
            except RecordError as bad:
                outcomes[bad.position] = _invalid(items[bad.position][0].sop_instance_uid,
                                                  bad.error)
                todo = [i for i in todo if i != bad.position]
                continue
            for i, outcome in zip(todo, done, strict=True):
                outcomes[i] = outcome
            break
        return [o for o in outcomes if o is not None]

    def _put_rows(self, conn: Conn, pipe: psycopg.Pipeline, *, rows: dict[int, PgRow],
                  todo: list[int], one_by_one: bool, commit_sent: list[bool]
                  ) -> list[PutOutcome]:
        # two round trips (pipeline mode, :func:`_pipelined`): BEGIN, the locks, the
        # sequence and the three reads; then the instance rows, the writes and COMMIT
        # (an instance another writer stored meanwhile fails the insert: run again).
        # ``commit_sent``: whether a failure may have committed (the put's caller asks
        # the index again then, Committer._resolve)
        commit_sent[0] = False
        locked = self._lock_sent(conn, set().union(*(record_keys(rows[i].rec) for i in todo)))
        batch = Batch.read(conn, [rows[i] for i in todo])
        stamp = self._stamp(locked)  # (arrived with the reads)
        out = [batch.decide(i, rows[i]) for i in todo]
        try:
            batch.insert_instances(conn, one_by_one=one_by_one)
            batch.write(conn, stamp)
            commit_sent[0] = True
            conn.execute(b"COMMIT")
            pipe.sync()
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name == INSTANCE_KEY:
                raise RetryError from exc
            if one_by_one:
                raise
            raise BulkError from exc
        except RECORD_ERRORS as exc:
            if one_by_one:  # (the instance rows' own failures are RecordErrors)
                raise
            raise BulkError from exc
        return out

    # -- delete ---------------------------------------------------------------------
    def delete(self, sop_instance_uids: Sequence[str]) -> list[InstanceRecord]:
        sops = [pg_text(s) for s in dict.fromkeys(sop_instance_uids) if s]
        if not sops:
            return []
        return self._write(lambda conn: self._delete_all(conn, sops))

    def _delete_all(self, conn: Conn, sops: list[str]) -> list[InstanceRecord]:
        """Delete set-based: the instance rows, then each series, study and patient's
        counts once (those left empty go), under the locks of what the records name."""
        keys: set[str] = set()
        for (raw,) in conn.execute("SELECT record FROM instance WHERE sop_uid = ANY(%s)",
                                   (sops,)).fetchall():
            keys |= record_keys(InstanceRecord.from_json(raw.encode()))
        if not keys:
            return []
        stamp = self._lock(conn, keys)
        gone = {sop: InstanceRecord.from_json(raw.encode()) for sop, raw in conn.execute(
            "DELETE FROM instance WHERE sop_uid = ANY(%s) RETURNING sop_uid, record",
            (sops,)).fetchall()}
        if any(not record_keys(rec) <= keys for rec in gone.values()):
            raise RetryError  # put again under another study since it was read
        if not gone:
            return []
        conn.execute("INSERT INTO pending (location) SELECT unnest(%b::text[]) ON CONFLICT DO "
                     "NOTHING", ([pg_text(r.location) for r in gone.values()],))
        totals = Totals()
        series: dict[str, list[int]] = {}
        for rec in gone.values():
            totals.add(rec, -1)
            _minus(series, pg_text(rec.series_uid), rec)
        studies: dict[str, list[int]] = {}
        for rec in gone.values():
            _minus(studies, pg_text(rec.study_uid), rec)
        for _, left, study in _subtract(conn, "series", series, stamp):
            studies[study][3] += left <= 0  # a series gone
        patients: dict[str, list[int]] = {}
        for uid, left, pkey in _subtract(
                conn, "study", studies, stamp, extra=", series = s.series - t.c, modalities = "
                "ARRAY(SELECT DISTINCT m_modality FROM series AS e WHERE e.study_uid = "
                "s.study_uid AND m_modality <> '' ORDER BY 1)"):
            delta = patients.setdefault(pkey, [0, 0, 0, 0])
            for i in range(3):
                delta[i] += studies[uid][i]
            delta[3] += left <= 0  # a study gone
        _subtract(conn, "patient", patients, stamp, extra=", studies = s.studies - t.c")
        totals.write(conn)
        return [gone[s] for s in sops if s in gone]

    # -- shared by several front ends (issue 17.3; the SharedIndex protocol) ---------
    def archive_id(self, proposed: str | None) -> str | None:
        """The archive id recorded in the index; ``proposed`` is recorded when none is
        (the first front end to open it: concurrent first opens agree on one)."""
        if proposed is not None:
            self._write(lambda conn: conn.execute(
                "INSERT INTO archive (archive_id) VALUES (%s) ON CONFLICT DO NOTHING",
                (proposed,)))
        rows = self._read("SELECT archive_id FROM archive")
        return str(rows[0][0]) if rows else None

    @contextmanager
    def exclusive(self, task: str) -> Iterator[bool]:
        """Session advisory lock ``T<task>`` (``pg_try_advisory_lock``: never waits),
        held on one pooled connection while the block runs; the server releases it if
        this process dies, so a crashed front end never blocks the task."""
        key = lock_id("T" + task)
        with self._connection(deadline=False) as conn:  # held while the task runs
            with _DEADLINES.watch(conn.pgconn.socket, self.deadline):  # its statements:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            mine = bool(row and row[0])
            try:
                yield mine
            finally:
                if mine and not conn.closed:
                    with _DEADLINES.watch(conn.pgconn.socket, self.deadline):
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def close(self) -> None:
        self.pool.close()


_LEVEL_KEYS = {"series": ("series_uid", "study_uid"), "study": ("study_uid", "pkey"),
               "patient": ("pkey", "pkey")}
"""Key and parent columns of the level tables."""


def _minus(deltas: dict[str, list[int]], key: str, rec: InstanceRecord) -> None:
    """Count ``rec`` in the deltas (instances, bytes in, bytes stored, children) of ``key``."""
    delta = deltas.setdefault(key, [0, 0, 0, 0])
    delta[0] += 1
    delta[1] += rec.bytes_in
    delta[2] += rec.bytes_stored


def _subtract(conn: Conn, table: str, deltas: dict[str, list[int]], stamp: int,
              extra: str = "") -> list[Row]:
    """Take ``deltas`` off the rows of ``table`` (``extra``: more assignments, ``t.c``
    being the children gone), delete the rows left without instances; (key, instances
    left, parent) of every row changed."""
    if not deltas:
        return []
    key, parent = _LEVEL_KEYS[table]
    items = sorted(deltas.items())
    rows = conn.execute(
        f"UPDATE {table} AS s SET instances = s.instances - t.n, bytes_in = s.bytes_in - "
        f"t.bi, bytes_stored = s.bytes_stored - t.bs, changed = greatest(s.changed, %s)"
        f"{extra} FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[], "
        f"%b::int[]) AS t(u, n, bi, bs, c) WHERE s.{key} = t.u RETURNING s.{key}, "
        f"s.instances, s.{parent}",
        (stamp, [k for k, _ in items], *([d[i] for _, d in items] for i in range(4)))
    ).fetchall()
    empty = [r[0] for r in rows if r[1] <= 0]
    if empty:
        conn.execute(f"DELETE FROM {table} WHERE {key} = ANY(%b::text[])", (empty,))
    return rows


def _invalid(sop: str, error: BaseException) -> PutOutcome:
    return PutOutcome(sop, PutStatus.INVALID, None, f"the index cannot take instance {sop}: "
                      f"{type(error).__name__}: {error}")
