"""A put of a batch into the PostgreSQL index, in a constant number of statements.

Under the advisory locks of the batch's Patient IDs, studies and series (taken by
:class:`~pacscore.index.postgres.index.PgIndex`), nobody else changes those rows until
the transaction ends, so the batch is decided here, in Python, in input order, with
exactly the LMDB index's rules (``duplicate`` / ``conflict`` against an instance
already stored or earlier in the batch, ``refused`` against the hierarchy), after one
read of what the database holds; then it is written with a few set-based statements.
The instance rows go in first: an instance another writer stored meanwhile under other
locks (another study) makes the insert fail on its key, and the whole transaction is
run again (:class:`RetryError`), now seeing it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from ...kinds import PutStatus
from ..base import PutOutcome
from ..keys import patient_key, patient_label, patient_of_key
from ..lmdb_query import instance_view, level_attrs
from ..matching import normalise
from ..records import InstanceRecord
from ..validate import same_patient, variant
from .query import Row, pg_text

__all__ = ["INSTANCE_KEY", "RECORD_ERRORS", "Batch", "BulkError", "Conn", "PgRow",
           "RecordError", "RetryError", "Totals", "dumps", "lock_id", "record_keys"]

Conn = psycopg.Connection[Row]

RECORD_ERRORS = (psycopg.DataError, psycopg.IntegrityError, pg_errors.ProgramLimitExceeded,
                 UnicodeError, ValueError, TypeError)
"""Errors one record may raise inside a write transaction: it alone is refused
(``invalid``) and the transaction is run again without it."""


class RecordError(Exception):
    """A record of a batch failed inside the write transaction (rolled back)."""

    def __init__(self, position: int, error: BaseException):
        super().__init__(str(error))
        self.position, self.error = position, error


class BulkError(Exception):
    """A set-based insert failed: run the batch again a row at a time, to find the
    record that fails."""


class RetryError(Exception):
    """Another writer changed what this transaction decided on: run it again."""


def dumps(value: Any) -> str:
    """Compact JSON, ASCII only (``\\u0000`` escaped: text columns take it)."""
    return json.dumps(value, separators=(",", ":"))


def lock_id(key: str) -> int:
    """The advisory lock number of a Patient ID (``P``), study (``S``), series (``E``)
    or background task (``T``, :meth:`PgIndex.exclusive`)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def record_keys(rec: InstanceRecord) -> set[str]:
    """What a put or delete of ``rec`` may change: its Patient ID's patients (every
    issuer's), its study (and the patient of that study alone) and its series."""
    pid = str(rec.attributes.get("PatientID") or "")
    return {"S" + rec.study_uid, "E" + rec.series_uid} | ({"P" + pid} if pid else set())


@dataclass(slots=True)
class PgRow:
    """One record as the tables take it (built before the transaction opens)."""

    rec: InstanceRecord
    header: bytes | None
    record: str
    view: str
    pkey: str

    @classmethod
    def of(cls, rec: InstanceRecord, header: bytes) -> PgRow:
        record = rec.to_json().decode()
        attrs = rec.attributes
        pkey = patient_key(attrs.get("PatientID"), attrs.get("IssuerOfPatientID"),
                           rec.study_uid)
        return cls(rec, header or None, record, dumps(instance_view(json.loads(record))),
                   pg_text(pkey))

    def m(self, keyword: str) -> str:
        """The matching column value of ``keyword``."""
        return pg_text(normalise(keyword, self.rec.attributes.get(keyword)))

    def columns(self) -> tuple[Any, ...]:
        """The ``instance`` row (in :data:`_INSTANCE` order)."""
        rec = self.rec
        return (pg_text(rec.sop_instance_uid), pg_text(rec.series_uid),
                pg_text(rec.study_uid), pg_text(rec.location), self.record, self.view,
                self.header, self.m("SOPClassUID"), self.m("PatientID"))


_INSTANCE = ("INSERT INTO instance (sop_uid, series_uid, study_uid, location, record, view, "
             "header, m_sop_class, m_patient_id) {} RETURNING sop_uid")
INSTANCE_KEY = "instance_pkey"
"""The constraint an instance row another writer stored meanwhile fails: the
transaction is run again (:class:`RetryError`), now seeing it."""
_INSTANCE_TYPES = ("text", "text", "text", "text", "text", "text", "bytea", "text", "text")


@dataclass(slots=True)
class Totals:
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
        """Add the changes (the stats row, then syntaxes in order: every writer takes
        these row locks in the same order, last)."""
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


@dataclass(slots=True)
class _Node:
    """What a batch adds to one patient, study or series."""

    parent: str
    new: bool
    first: PgRow | None = None
    children: int = 0
    instances: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0
    modalities: list[str] = field(default_factory=list)

    def add(self, rec: InstanceRecord) -> None:
        self.instances += 1
        self.bytes_in += rec.bytes_in
        self.bytes_stored += rec.bytes_stored


@dataclass
class Batch:
    """One batch decided against what the database holds (read under the locks)."""

    stored: dict[str, InstanceRecord]
    """Instances stored, by (text-safe) SOP Instance UID: in the database or earlier in
    this batch."""
    study_patient: dict[str, str]
    """Patient key of every study the batch names that exists (or is new in it)."""
    series_study: dict[str, str]
    """Study of every series the batch names that exists (or is new in it)."""
    study_modalities: dict[str, list[str]]
    patients: dict[str, _Node] = field(default_factory=dict)
    studies: dict[str, _Node] = field(default_factory=dict)
    series: dict[str, _Node] = field(default_factory=dict)
    rows: list[tuple[int, PgRow]] = field(default_factory=list)
    """(position, row) of the instances to insert."""
    totals: Totals = field(default_factory=Totals)

    @classmethod
    def read(cls, conn: Conn, rows: list[PgRow]) -> Batch:
        # each once: a list of 1,000 copies of one series UID is planned as a scan
        sops = sorted({pg_text(r.rec.sop_instance_uid) for r in rows})
        studies = sorted({pg_text(r.rec.study_uid) for r in rows})
        series = sorted({pg_text(r.rec.series_uid) for r in rows})
        # the three sent before any answer is read (one round trip in pipeline mode)
        cursors = [conn.cursor() for _ in range(3)]
        cursors[0].execute("SELECT sop_uid, record FROM instance WHERE sop_uid = ANY(%s)",
                           (sops,))
        cursors[1].execute("SELECT study_uid, pkey, modalities FROM study WHERE study_uid = "
                           "ANY(%s)", (studies,))
        cursors[2].execute("SELECT series_uid, study_uid FROM series WHERE series_uid = "
                           "ANY(%s)", (series,))
        stored = {s: InstanceRecord.from_json(raw.encode()) for s, raw in cursors[0]}
        found = cursors[1].fetchall()
        return cls(stored, {s: p for s, p, _ in found}, dict(cursors[2].fetchall()),
                   {s: list(m) for s, _, m in found})

    def decide(self, position: int, row: PgRow) -> PutOutcome:
        """The outcome of one record, in input order (the LMDB index's rules)."""
        rec = row.rec
        sop, study, series = (pg_text(rec.sop_instance_uid), pg_text(rec.study_uid),
                              pg_text(rec.series_uid))
        existing = self.stored.get(sop)
        if existing is not None:
            status = PutStatus.DUPLICATE if existing.same_instance(rec) else PutStatus.CONFLICT
            return PutOutcome(rec.sop_instance_uid, status, existing)
        pkey, clash = row.pkey, None
        study_pkey, series_study = self.study_patient.get(study), self.series_study.get(series)
        if study_pkey is not None:
            if not same_patient(study_pkey, pkey):
                clash = (f"study {rec.study_uid} belongs to the patient "
                         f"{patient_label(study_pkey)}, this instance names the patient "
                         f"{patient_label(pkey)}")
            pkey = study_pkey
        if series_study is not None and series_study != study:
            clash = f"series {rec.series_uid} belongs to study {series_study}"
        if clash:
            return PutOutcome(rec.sop_instance_uid, PutStatus.REFUSED, None,
                              f"instance {rec.sop_instance_uid} contradicts the archive: "
                              f"{clash} (hint: correct the patient/study identifiers at the "
                              "source)")
        self._link(row, pkey, study, series, study_pkey is None, series_study is None)
        self.stored[sop] = rec
        self.rows.append((position, row))
        self.totals.add(rec, +1)
        return PutOutcome(rec.sop_instance_uid, PutStatus.STORED)

    def _link(self, row: PgRow, pkey: str, study: str, series: str, new_study: bool,
              new_series: bool) -> None:
        rec = row.rec
        patient = self.patients.setdefault(pkey, _Node("", False))
        patient.children += int(new_study)
        patient.add(rec)
        if new_study:
            self.study_patient[study] = pkey
            self.study_modalities[study] = []
        node = self.studies.setdefault(study, _Node(pkey, new_study, row if new_study else None))
        node.children += int(new_series)
        node.add(rec)
        modality = pg_text(str(rec.attributes.get("Modality") or ""))
        if modality and modality not in self.study_modalities[study]:
            self.study_modalities[study] = sorted([*self.study_modalities[study], modality])
        if new_series:
            self.series_study[series] = study
        self.series.setdefault(series, _Node(study, new_series, row if new_series else None)
                               ).add(rec)

    # -- writing ------------------------------------------------------------------
    def insert_instances(self, conn: Conn, *, one_by_one: bool) -> None:
        """Insert the instance rows (first: their keys decide between writers).  Set-based,
        the statement is only sent (pipeline mode: its failure comes with the COMMIT's
        answer); ``one_by_one``, each row's answer is read, to find one that fails."""
        if not self.rows:
            return
        if one_by_one:
            for position, row in self.rows:
                try:
                    conn.execute(_INSTANCE.format("VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"),
                                 row.columns()).fetchone()
                except pg_errors.UniqueViolation as exc:
                    if exc.diag.constraint_name == INSTANCE_KEY:
                        raise RetryError from exc
                    raise RecordError(position, exc) from exc
                except RECORD_ERRORS as exc:
                    raise RecordError(position, exc) from exc
            return
        columns = list(zip(*(row.columns() for _, row in self.rows), strict=True))
        unnest = ", ".join(f"%b::{t}[]" for t in _INSTANCE_TYPES)
        conn.execute(_INSTANCE.format(f"SELECT * FROM unnest({unnest})"),
                     [list(c) for c in columns])

    def write(self, conn: Conn, stamp: int) -> None:
        """Create the new patients, studies and series, add the counts to every one the
        batch touched, clear the pending marks of the stored locations, add the totals."""
        if not self.rows:
            return
        patients = sorted(self.patients.items())
        conn.execute(
            "INSERT INTO patient AS p (pkey, patient_id, studies, instances, bytes_in, "
            "bytes_stored, changed) SELECT k, i, c, n, b, s, %s FROM unnest(%b::text[], "
            "%b::text[], %b::int[], %b::bigint[], %b::bigint[], %b::bigint[]) AS "
            "d(k, i, c, n, b, s) ON CONFLICT (pkey) DO UPDATE SET studies = p.studies + "
            "EXCLUDED.studies, instances = p.instances + EXCLUDED.instances, bytes_in = "
            "p.bytes_in + EXCLUDED.bytes_in, bytes_stored = p.bytes_stored + "
            "EXCLUDED.bytes_stored, changed = greatest(p.changed, EXCLUDED.changed)",
            (stamp, [k for k, _ in patients], [_patient_id(k) for k, _ in patients],
             *_counts(n for _, n in patients)))
        self._write_studies(conn, stamp)
        self._write_series(conn, stamp)
        conn.execute("DELETE FROM pending WHERE location = ANY(%s)",
                     ([pg_text(row.rec.location) for _, row in self.rows],))
        self.totals.write(conn)

    def _write_studies(self, conn: Conn, stamp: int) -> None:
        new = [(k, n) for k, n in sorted(self.studies.items()) if n.new]
        old = [(k, n) for k, n in sorted(self.studies.items()) if not n.new]
        if new:
            firsts = [n.first for _, n in new if n.first is not None]
            attrs = [f.rec.attributes for f in firsts]
            conn.execute(
                "INSERT INTO study (study_uid, pkey, view, patient_view, m_patient_id, "
                "m_patient_name, m_accession, m_study_date, modalities, series, instances, "
                "bytes_in, bytes_stored, changed) SELECT u, k, v, pv, a, b, c, d, "
                "ARRAY(SELECT json_array_elements_text(m::json)), e, n, bi, bs, %s FROM "
                "unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], "
                "%b::text[], %b::text[], %b::text[], %b::text[], %b::int[], %b::bigint[], "
                "%b::bigint[], %b::bigint[]) AS t(u, k, v, pv, a, b, c, d, m, e, n, bi, bs)",
                (stamp, [k for k, _ in new], [n.parent for _, n in new],
                 [dumps(level_attrs("study", a)) for a in attrs],
                 [dumps(variant(a)) for a in attrs],
                 *([f.m(kw) for f in firsts]
                   for kw in ("PatientID", "PatientName", "AccessionNumber", "StudyDate")),
                 [dumps(self.study_modalities[k]) for k, _ in new],
                 *_counts(n for _, n in new)))
        if old:
            conn.execute(
                "UPDATE study AS s SET series = s.series + t.e, instances = s.instances + "
                "t.n, bytes_in = s.bytes_in + t.bi, bytes_stored = s.bytes_stored + t.bs, "
                "modalities = ARRAY(SELECT json_array_elements_text(t.m::json)), "
                "changed = greatest(s.changed, %s) FROM unnest(%b::text[], %b::text[], "
                "%b::int[], %b::bigint[], %b::bigint[], %b::bigint[]) AS t(u, m, e, n, bi, bs) "
                "WHERE s.study_uid = t.u",
                (stamp, [k for k, _ in old], [dumps(self.study_modalities[k]) for k, _ in old],
                 *_counts(n for _, n in old)))

    def _write_series(self, conn: Conn, stamp: int) -> None:
        new = [(k, n) for k, n in sorted(self.series.items()) if n.new]
        old = [(k, n) for k, n in sorted(self.series.items()) if not n.new]
        if new:
            firsts = [n.first for _, n in new if n.first is not None]
            conn.execute(
                "INSERT INTO series (series_uid, study_uid, view, m_modality, m_patient_id, "
                "instances, bytes_in, bytes_stored, changed) SELECT u, s, v, a, b, n, bi, bs, "
                "%s FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], "
                "%b::bigint[], %b::bigint[], %b::bigint[]) AS t(u, s, v, a, b, n, bi, bs)",
                (stamp, [k for k, _ in new], [n.parent for _, n in new],
                 [dumps(level_attrs("series", f.rec.attributes)) for f in firsts],
                 [f.m("Modality") for f in firsts], [f.m("PatientID") for f in firsts],
                 *_counts(n for _, n in new)[1:]))
        if old:
            conn.execute(
                "UPDATE series AS s SET instances = s.instances + t.n, bytes_in = s.bytes_in "
                "+ t.bi, bytes_stored = s.bytes_stored + t.bs, changed = greatest(s.changed, "
                "%s) FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[]) AS "
                "t(u, n, bi, bs) WHERE s.series_uid = t.u",
                (stamp, [k for k, _ in old], *_counts(n for _, n in old)[1:]))


def _patient_id(pkey: str) -> str:
    ident = patient_of_key(pkey)
    return ident[0] if ident else ""


def _counts(nodes: Any) -> tuple[list[int], list[int], list[int], list[int]]:
    """Children, instances, bytes in and bytes stored of ``nodes``, as columns."""
    ns = list(nodes)
    return ([n.children for n in ns], [n.instances for n in ns], [n.bytes_in for n in ns],
            [n.bytes_stored for n in ns])
