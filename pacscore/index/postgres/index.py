"""The Index on PostgreSQL: the same contract as :class:`~pacscore.index.LmdbIndex`,
for many processes (front ends on several hosts) writing one index.

Writers are kept apart by the database, not by a file lock:

* uniqueness by keys: an instance's SOP Instance UID is the primary key of ``instance``
  and its location is unique; a put inserts the instance row first (``INSERT ... ON
  CONFLICT DO NOTHING``), so of two processes putting one instance at once exactly one
  stores it and the other finds it there (``duplicate`` or ``conflict``, by SHA-256);
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
  :class:`~pacscore.errors.IndexUnavailableError`; a statement has a timeout too).

A write whose connection breaks mid-commit is not retried: it may have committed (the
archive's recovery then publishes what the index names).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import ArchiveStorageError, IndexUnavailableError
from ...kinds import PutStatus
from ..base import Index, PutOutcome
from ..keys import patient_key, patient_label, patient_of_key
from ..lmdb_query import instance_view, level_attrs
from ..matching import normalise
from ..records import InstanceRecord
from ..validate import record_problem, same_patient, variant
from .query import PgQueries, Row, pg_text
from .schema import MIGRATIONS, SCHEMA, migrate

__all__ = ["PgIndex"]

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Row]
T = TypeVar("T")

# Errors one record raises inside a write transaction: it alone is refused (``invalid``)
# and the transaction is run again without it.
_RECORD_ERRORS = (psycopg.DataError, psycopg.IntegrityError, pg_errors.ProgramLimitExceeded,
                  UnicodeError, ValueError, TypeError)
_RETRY = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_ATTEMPTS = 10


class _RecordError(Exception):
    """A record of a batch failed inside the write transaction (rolled back)."""

    def __init__(self, position: int, error: BaseException):
        super().__init__(str(error))
        self.position, self.error = position, error


class _RelockError(Exception):
    """A delete met a record whose locks it did not take: run it again."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))  # ASCII: text-safe (\\u0000 escaped)


def _lock_id(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(slots=True)
class _Row:
    """One record as the tables take it (built before the transaction opens)."""

    rec: InstanceRecord
    header: bytes | None
    record: str
    view: str
    pkey: str
    patient_id: str

    @classmethod
    def of(cls, rec: InstanceRecord, header: bytes) -> _Row:
        record = rec.to_json().decode()
        attrs = rec.attributes
        pkey = patient_key(attrs.get("PatientID"), attrs.get("IssuerOfPatientID"),
                           rec.study_uid)
        return cls(rec, header or None, record, _dumps(instance_view(json.loads(record))),
                   pkey, str(attrs.get("PatientID") or ""))

    def lock_keys(self) -> set[str]:
        """What a put of this record may change: its Patient ID's patients (every
        issuer's), its study (and a patient of that study alone) and its series."""
        keys = {"S" + self.rec.study_uid, "E" + self.rec.series_uid}
        if self.patient_id:
            keys.add("P" + self.patient_id)
        return keys

    def m(self, keyword: str) -> str:
        """The matching column value of ``keyword``."""
        return pg_text(normalise(keyword, self.rec.attributes.get(keyword)))


def _record_keys(rec: InstanceRecord) -> set[str]:
    pid = str(rec.attributes.get("PatientID") or "")
    return {"S" + rec.study_uid, "E" + rec.series_uid} | ({"P" + pid} if pid else set())


@dataclass(slots=True)
class _Totals:
    """Changes of the totals in one transaction, written once at its end."""

    instances: int = 0
    compressed: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0
    syntaxes: Counter[str] = field(default_factory=Counter)

    def add(self, rec: InstanceRecord, sign: int) -> None:
        self.instances += sign
        self.compressed += sign * int(rec.compressed)
        self.bytes_in += sign * rec.bytes_in
        self.bytes_stored += sign * rec.bytes_stored
        self.syntaxes[pg_text(rec.stored_syntax)] += sign

    def write(self, conn: Conn) -> None:
        if not any(self.syntaxes.values()):
            return
        conn.execute("UPDATE stats SET instances = instances + %s, compressed_instances = "
                     "compressed_instances + %s, bytes_in = bytes_in + %s, bytes_stored = "
                     "bytes_stored + %s",
                     (self.instances, self.compressed, self.bytes_in, self.bytes_stored))
        for syntax in sorted(self.syntaxes):
            if self.syntaxes[syntax] < 0:  # (a CHECK holds for an INSERT's row first)
                conn.execute("UPDATE syntax_count SET instances = instances + %s WHERE "
                             "syntax = %s", (self.syntaxes[syntax], syntax))
            elif self.syntaxes[syntax]:
                conn.execute("INSERT INTO syntax_count AS c (syntax, instances) VALUES (%s, %s) "
                             "ON CONFLICT (syntax) DO UPDATE SET instances = c.instances + "
                             "EXCLUDED.instances", (syntax, self.syntaxes[syntax]))
        if any(v < 0 for v in self.syntaxes.values()):
            conn.execute("DELETE FROM syntax_count WHERE instances = 0")


def describe(dsn: str) -> str:
    """Where a DSN points, without its password: ``host:port/dbname``."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unreadable DSN)"
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


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
        Seconds any statement may run (lock waits included).
    """

    def __init__(self, dsn: str, *, readonly: bool = False, pool_size: int = 8,
                 timeout: float = 10.0, statement_timeout: float = 60.0,
                 migrations: tuple[tuple[int, str], ...] = MIGRATIONS):
        self.where = describe(dsn)
        self.timeout = timeout
        settings = [f"SET search_path TO {SCHEMA}",
                    f"SET statement_timeout = {int(statement_timeout * 1000)}"]
        if readonly:
            settings.append("SET default_transaction_read_only = on")

        def configure(conn: Conn) -> None:
            for sql in settings:
                conn.execute(sql.encode())

        self.pool: ConnectionPool[Conn] = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=False, timeout=timeout,
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
            with self._connection() as conn:
                applied = migrate(conn, where=self.where, migrations=migrations,
                                  readonly=readonly)
        except BaseException:
            self.pool.close()
            raise
        if applied:
            log.info("PostgreSQL index at %s: schema versions %s applied", self.where,
                     ", ".join(map(str, applied)))

    # -- plumbing -------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[Conn]:
        """A pooled connection; the database's failures as pacscore errors."""
        try:
            with self.pool.connection() as conn:
                yield conn
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
        for attempt in range(_ATTEMPTS):
            try:
                with self._connection() as conn, conn.transaction():
                    return fn(conn)
            except (*_RETRY, _RelockError):
                time.sleep(random.uniform(0, 0.01 * 2 ** attempt))
        raise ArchiveStorageError(
            f"a write to the PostgreSQL index at {self.where} met deadlocks "
            f"{_ATTEMPTS} times", hint="retry; if it persists, fewer concurrent writers")

    @staticmethod
    def _lock(conn: Conn, keys: set[str]) -> int:
        """Take the advisory locks of ``keys`` (sorted: never a cycle) and draw the
        stamp of this transaction's changes."""
        ids = sorted({_lock_id(k) for k in keys})
        conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k", (ids,))
        row = conn.execute("SELECT nextval('change_seq')").fetchone()
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
        it is refused alone and the transaction run again without it."""
        outcomes: list[PutOutcome | None] = [None] * len(items)
        rows: dict[int, _Row] = {}
        for i, (rec, header) in enumerate(items):
            sop = rec.sop_instance_uid
            problem = record_problem(rec)
            if problem:
                outcomes[i] = PutOutcome(sop, PutStatus.INVALID, None,
                                         f"instance {sop}: {problem}")
                continue
            try:
                rows[i] = _Row.of(rec, header)
            except (TypeError, ValueError, UnicodeError) as exc:
                outcomes[i] = _invalid(sop, exc)
        todo = list(rows)
        while todo:
            try:
                done = self._write(functools.partial(self._put_rows, rows=rows, todo=todo))
            except _RecordError as bad:
                outcomes[bad.position] = _invalid(items[bad.position][0].sop_instance_uid,
                                                  bad.error)
                todo = [i for i in todo if i != bad.position]
                continue
            for i, outcome in zip(todo, done, strict=True):
                outcomes[i] = outcome
            break
        return [o for o in outcomes if o is not None]

    def _put_rows(self, conn: Conn, *, rows: dict[int, _Row], todo: list[int]
                  ) -> list[PutOutcome]:
        stamp = self._lock(conn, set().union(*(rows[i].lock_keys() for i in todo)))
        totals = _Totals()
        out = []
        for i in todo:
            try:
                out.append(self._put_one(conn, rows[i], stamp, totals))
            except _RECORD_ERRORS as exc:
                raise _RecordError(i, exc) from exc
        totals.write(conn)
        return out

    def _put_one(self, conn: Conn, row: _Row, stamp: int, totals: _Totals) -> PutOutcome:
        rec, sop = row.rec, pg_text(row.rec.sop_instance_uid)
        for _ in range(3):  # the instance row first: its key decides between writers
            if conn.execute(
                    "INSERT INTO instance (sop_uid, series_uid, study_uid, location, record, "
                    "view, header, m_sop_class, m_patient_id) VALUES (%s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s) ON CONFLICT (sop_uid) DO NOTHING RETURNING 1",
                    (sop, pg_text(rec.series_uid), pg_text(rec.study_uid),
                     pg_text(rec.location), row.record, row.view, row.header,
                     row.m("SOPClassUID"), row.m("PatientID"))).fetchone():
                break
            found = conn.execute("SELECT record FROM instance WHERE sop_uid = %s",
                                 (sop,)).fetchone()
            if found is not None:  # (else deleted meanwhile: insert again)
                existing = InstanceRecord.from_json(found[0].encode())
                status = (PutStatus.DUPLICATE if existing.same_instance(rec)
                          else PutStatus.CONFLICT)
                return PutOutcome(rec.sop_instance_uid, status, existing)
        parents = conn.execute(
            "SELECT (SELECT pkey FROM study WHERE study_uid = %s), "
            "(SELECT study_uid FROM series WHERE series_uid = %s)",
            (pg_text(rec.study_uid), pg_text(rec.series_uid))).fetchone()
        assert parents is not None
        study_pkey, series_study = parents
        pkey, clash = row.pkey, None
        if study_pkey is not None:
            if not same_patient(study_pkey, pkey):
                clash = (f"study {rec.study_uid} belongs to the patient "
                         f"{patient_label(study_pkey)}, this instance names the patient "
                         f"{patient_label(pkey)}")
            pkey = study_pkey
        if series_study is not None and series_study != pg_text(rec.study_uid):
            clash = f"series {rec.series_uid} belongs to study {series_study}"
        if clash:
            conn.execute("DELETE FROM instance WHERE sop_uid = %s", (sop,))
            return PutOutcome(rec.sop_instance_uid, PutStatus.REFUSED, None,
                              f"instance {rec.sop_instance_uid} contradicts the archive: "
                              f"{clash} (hint: correct the patient/study identifiers at the "
                              "source)")
        self._link(conn, row, pkey, stamp, study_pkey is None, series_study is None)
        conn.execute("DELETE FROM pending WHERE location = %s", (pg_text(rec.location),))
        totals.add(rec, +1)
        return PutOutcome(rec.sop_instance_uid, PutStatus.STORED)

    @staticmethod
    def _link(conn: Conn, row: _Row, pkey: str, stamp: int, new_study: bool,
              new_series: bool) -> None:
        """Count the instance in its patient, study and series rows (creating them)."""
        rec, attrs = row.rec, row.rec.attributes
        size = (rec.bytes_in, rec.bytes_stored)
        ident = patient_of_key(pkey)
        conn.execute(
            "INSERT INTO patient AS p (pkey, patient_id, studies, instances, bytes_in, "
            "bytes_stored, changed) VALUES (%s, %s, %s, 1, %s, %s, %s) ON CONFLICT (pkey) DO "
            "UPDATE SET studies = p.studies + EXCLUDED.studies, instances = p.instances + 1, "
            "bytes_in = p.bytes_in + EXCLUDED.bytes_in, bytes_stored = p.bytes_stored + "
            "EXCLUDED.bytes_stored, changed = greatest(p.changed, EXCLUDED.changed)",
            (pg_text(pkey), pg_text(ident[0] if ident else ""), int(new_study), *size, stamp))
        modality = pg_text(str(attrs.get("Modality") or ""))
        study, series = pg_text(rec.study_uid), pg_text(rec.series_uid)
        if new_study:
            conn.execute(
                "INSERT INTO study (study_uid, pkey, view, patient_view, m_patient_id, "
                "m_patient_name, m_accession, m_study_date, modalities, series, instances, "
                "bytes_in, bytes_stored, changed) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                "%s::text[], %s, 1, %s, %s, %s)",
                (study, pg_text(pkey), _dumps(level_attrs("study", attrs)),
                 _dumps(variant(attrs)), row.m("PatientID"), row.m("PatientName"),
                 row.m("AccessionNumber"), row.m("StudyDate"),
                 [modality] if modality else [], int(new_series), *size, stamp))
        else:
            conn.execute(
                "UPDATE study SET series = series + %s, instances = instances + 1, "
                "bytes_in = bytes_in + %s, bytes_stored = bytes_stored + %s, "
                "changed = greatest(changed, %s), modalities = CASE WHEN %s = '' OR "
                "%s = ANY(modalities) THEN modalities ELSE ARRAY(SELECT m FROM "
                "unnest(modalities || %s::text) AS m ORDER BY m COLLATE \"C\") END "
                "WHERE study_uid = %s",
                (int(new_series), *size, stamp, modality, modality, modality, study))
        if new_series:
            conn.execute(
                "INSERT INTO series (series_uid, study_uid, view, m_modality, m_patient_id, "
                "instances, bytes_in, bytes_stored, changed) VALUES (%s, %s, %s, %s, %s, 1, "
                "%s, %s, %s)",
                (series, study, _dumps(level_attrs("series", attrs)), row.m("Modality"),
                 row.m("PatientID"), *size, stamp))
        else:
            conn.execute(
                "UPDATE series SET instances = instances + 1, bytes_in = bytes_in + %s, "
                "bytes_stored = bytes_stored + %s, changed = greatest(changed, %s) "
                "WHERE series_uid = %s", (*size, stamp, series))

    # -- delete ---------------------------------------------------------------------
    def delete(self, sop_instance_uids: Sequence[str]) -> list[InstanceRecord]:
        sops = [pg_text(s) for s in dict.fromkeys(sop_instance_uids) if s]
        if not sops:
            return []
        return self._write(lambda conn: self._delete_all(conn, sops))

    def _delete_all(self, conn: Conn, sops: list[str]) -> list[InstanceRecord]:
        keys: set[str] = set()
        for (raw,) in conn.execute("SELECT record FROM instance WHERE sop_uid = ANY(%s)",
                                   (sops,)).fetchall():
            keys |= _record_keys(InstanceRecord.from_json(raw.encode()))
        if not keys:
            return []
        stamp = self._lock(conn, keys)
        totals = _Totals()
        out = [rec for sop in sops if (rec := self._delete_one(conn, sop, stamp, totals, keys))]
        totals.write(conn)
        return out

    @staticmethod
    def _delete_one(conn: Conn, sop: str, stamp: int, totals: _Totals, locked: set[str]
                    ) -> InstanceRecord | None:
        found = conn.execute("DELETE FROM instance WHERE sop_uid = %s RETURNING record",
                             (sop,)).fetchone()
        if found is None:
            return None
        rec = InstanceRecord.from_json(found[0].encode())
        if not _record_keys(rec) <= locked:
            raise _RelockError  # put again under another study since it was read
        size = (rec.bytes_in, rec.bytes_stored)
        conn.execute("INSERT INTO pending (location) VALUES (%s) ON CONFLICT DO NOTHING",
                     (pg_text(rec.location),))
        study, series = pg_text(rec.study_uid), pg_text(rec.series_uid)
        left = conn.execute(
            "UPDATE series SET instances = instances - 1, bytes_in = bytes_in - %s, "
            "bytes_stored = bytes_stored - %s, changed = greatest(changed, %s) "
            "WHERE series_uid = %s RETURNING instances", (*size, stamp, series)).fetchone()
        gone = left is not None and left[0] <= 0
        if gone:
            conn.execute("DELETE FROM series WHERE series_uid = %s", (series,))
        left = conn.execute(
            "UPDATE study SET instances = instances - 1, bytes_in = bytes_in - %s, "
            "bytes_stored = bytes_stored - %s, series = series - %s, "
            "changed = greatest(changed, %s), modalities = ARRAY(SELECT DISTINCT m_modality "
            "FROM series WHERE study_uid = %s AND m_modality <> '' ORDER BY 1) "
            "WHERE study_uid = %s RETURNING instances, pkey",
            (*size, int(gone), stamp, study, study)).fetchone()
        gone = left is not None and left[0] <= 0
        if left is not None:
            if gone:
                conn.execute("DELETE FROM study WHERE study_uid = %s", (study,))
            left = conn.execute(
                "UPDATE patient SET instances = instances - 1, bytes_in = bytes_in - %s, "
                "bytes_stored = bytes_stored - %s, studies = studies - %s, "
                "changed = greatest(changed, %s) WHERE pkey = %s RETURNING instances, pkey",
                (*size, int(gone), stamp, left[1])).fetchone()
            if left is not None and left[0] <= 0:
                conn.execute("DELETE FROM patient WHERE pkey = %s", (left[1],))
        totals.add(rec, -1)
        return rec

    def close(self) -> None:
        self.pool.close()


def _invalid(sop: str, error: BaseException) -> PutOutcome:
    return PutOutcome(sop, PutStatus.INVALID, None, f"the index cannot take instance {sop}: "
                      f"{type(error).__name__}: {error}")
