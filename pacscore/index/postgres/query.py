"""Reads of the PostgreSQL index: matching (PS3.4 C.2.2.2) in SQL where a constraint
translates exactly, with :mod:`pacscore.index.matching` having the last word.

Every active constraint on a column of :data:`COLUMNS` becomes a WHERE clause (plus,
for long-valued columns, bounds on ``left(column, INDEXED_CHARS)`` that the B-tree
indexes answer); each row found is then tested with the same matcher the LMDB index
uses, so both indexes give the same answers.  When every constraint was translated
exactly, ``limit`` and ``offset`` go to SQL; otherwise the rows are matched and sliced
here.  Results come in the order of their level's key (code-point order, the ``C``
collation), so pages are stable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidRequestError, NotFoundError
from ..base import LEVELS
from ..matching import Constraint, parse_constraint, view_matches
from ..records import InstanceRecord
from .schema import INDEXED_CHARS

__all__ = ["COLUMNS", "FindPlan", "PgQueries", "like_pattern", "pg_text", "plan_find", "successor"]

Row = tuple[Any, ...]

COLUMNS: dict[str, dict[str, tuple[str, bool]]] = {
    # patient-level queries match the patient-level values of one of its studies
    "patient": {"PatientID": ("m_patient_id", True), "PatientName": ("m_patient_name", True)},
    "study": {"StudyInstanceUID": ("study_uid", False), "PatientID": ("m_patient_id", True),
              "PatientName": ("m_patient_name", True), "AccessionNumber": ("m_accession", True),
              "StudyDate": ("m_study_date", True)},
    "series": {"SeriesInstanceUID": ("series_uid", False),
               "StudyInstanceUID": ("study_uid", False), "Modality": ("m_modality", True),
               "PatientID": ("m_patient_id", True)},
    "instance": {"SOPInstanceUID": ("sop_uid", False), "SeriesInstanceUID": ("series_uid", False),
                 "StudyInstanceUID": ("study_uid", False), "SOPClassUID": ("m_sop_class", True),
                 "PatientID": ("m_patient_id", True)},
}
"""Matching keys with a column per level: keyword -> (column, long-valued).  A
long-valued column holds any length and is indexed by its first INDEXED_CHARS
characters; the others (UIDs, at most 511 bytes: ``validate.record_problem``) whole."""

_KEY = {"patient": "pkey", "study": "study_uid", "series": "series_uid",
        "instance": "sop_uid"}
_FROM = {
    "study": "SELECT view, modalities, series, instances FROM study",
    "series": "SELECT view, instances FROM series",
    "instance": "SELECT view FROM instance",
}
_PATIENT = (
    "SELECT p.studies, p.instances, (SELECT array_agg(s2.patient_view ORDER BY s2.sid) "
    "FROM study s2 WHERE s2.pkey = p.pkey) FROM patient p WHERE p.pkey IN "
    "(SELECT pkey FROM study {where}) ORDER BY p.pkey")


def pg_text(value: str) -> str:
    """``value`` as PostgreSQL text can hold it: no NUL, no lone surrogates (each
    becomes U+FFFD; the matcher still compares the true value)."""
    if not value.isascii() and any("\ud800" <= c <= "\udfff" for c in value):
        value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value.replace("\x00", "\ufffd")


def like_pattern(value: str) -> str:
    """A PS3.4 wildcard value (``*``, ``?``) as a LIKE pattern (escape ``\\``)."""
    out = []
    for c in value:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def successor(text: str) -> str | None:
    """The least string greater than every string whose first ``len(text)``
    characters are ``<= text`` (code-point order): ``v[:len(text)] <= text`` exactly
    when ``v < successor(text)``.  None when there is none (a last character of
    U+10FFFF)."""
    if not text:
        return None
    nxt = ord(text[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:
        nxt = 0xE000  # surrogates never occur in stored text
    return None if nxt > 0x10FFFF else text[:-1] + chr(nxt)


@dataclass(slots=True)
class _Where:
    """WHERE clauses and their parameters; ``exact``: they select exactly the matches."""

    clauses: list[str]
    params: list[Any]
    exact: bool = True

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def sql(self) -> str:
        return "WHERE " + " AND ".join(self.clauses) if self.clauses else ""


def _single(c: Constraint, column: str, short: str | None, where: _Where) -> None:
    where.add(f"{column} = %s", c.values[0])
    if short:
        where.add(f"{short} = %s", c.values[0][:INDEXED_CHARS])


def _list(c: Constraint, column: str, short: str | None, where: _Where) -> None:
    where.add(f"{column} = ANY(%s)", list(c.values))
    if short:
        where.add(f"{short} = ANY(%s)", [v[:INDEXED_CHARS] for v in c.values])


def _wildcard(c: Constraint, column: str, short: str | None, where: _Where) -> None:
    where.add(f"{column} LIKE %s", like_pattern(c.values[0]))
    prefix = c.prefix[:INDEXED_CHARS]
    _bounds(where, short or column, prefix, successor(prefix))


def _range(c: Constraint, column: str, short: str | None, where: _Where) -> None:
    """``a-b`` as :func:`~pacscore.index.matching.parse_constraint` tests it: a value,
    not below ``a``, whose first ``len(b)`` characters are not above ``b``."""
    low, high = c.values
    above = successor(high)
    where.add(f"{column} <> ''")
    if low:
        where.add(f"{column} >= %s", low)
    if above:
        where.add(f"{column} < %s", above)
    elif high:  # a last character of U+10FFFF
        where.add(f"left({column}, %s) <= %s", len(high), high)
    if short:
        _bounds(where, short, low[:INDEXED_CHARS], above)


_TRANSLATE = {"single": _single, "list": _list, "wildcard": _wildcard, "range": _range}
"""Constraint kinds with an exact SQL form (``fuzzy`` has none: the matcher decides)."""


def _translate(c: Constraint, column: str, long: bool, where: _Where) -> None:
    """Add the clauses of one constraint on ``column`` (or mark ``where`` inexact).  A
    long-valued column also gets bounds on its indexed prefix, which the exact clauses
    imply (``v >= a`` implies ``v[:n] >= a[:n]``; ``v < b`` implies ``v[:n] < b``)."""
    translate = _TRANSLATE.get(c.kind)
    if translate is None or any(v != pg_text(v) for v in c.values):
        where.exact = False  # fuzzy, or a value text cannot hold: the matcher decides
        return
    translate(c, column, f"left({column}, {INDEXED_CHARS})" if long else None, where)


def _bounds(where: _Where, expression: str, low: str, above: str | None) -> None:
    if low:
        where.add(f"{expression} >= %s", low)
    if above:
        where.add(f"{expression} < %s", above)


class PgQueries:
    """The read side of :class:`~pacscore.index.postgres.PgIndex`."""

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    # -- single records -------------------------------------------------------------
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        if not sop_instance_uid:
            return None
        rows = self._read("SELECT record FROM instance WHERE sop_uid = %s",
                          (pg_text(sop_instance_uid),))
        return InstanceRecord.from_json(rows[0][0].encode()) if rows else None

    def get_many(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRecord]:
        asked = {pg_text(u): u for u in dict.fromkeys(sop_instance_uids) if u}
        if not asked:
            return {}
        rows = self._read("SELECT sop_uid, record FROM instance WHERE sop_uid = ANY(%s)",
                          (list(asked),))
        return {asked[sop]: InstanceRecord.from_json(raw.encode()) for sop, raw in rows}

    def headers(self, sop_instance_uids: Sequence[str]) -> dict[str, bytes]:
        asked = {pg_text(u): u for u in dict.fromkeys(sop_instance_uids) if u}
        if not asked:
            return {}
        rows = self._read("SELECT sop_uid, header FROM instance WHERE sop_uid = ANY(%s) "
                          "AND header IS NOT NULL", (list(asked),))
        return {asked[sop]: bytes(raw) for sop, raw in rows}

    def header(self, sop_instance_uid: str) -> bytes:
        rows = self._read("SELECT header FROM instance WHERE sop_uid = %s",
                          (pg_text(sop_instance_uid),))
        if not rows or rows[0][0] is None:
            raise NotFoundError(f"no header stored for {sop_instance_uid}")
        return bytes(rows[0][0])

    def records(self) -> Iterator[InstanceRecord]:
        """Every record, in pages of 1,000 (no connection is held between pages)."""
        last = ""
        while True:
            rows = self._read("SELECT sop_uid, record FROM instance WHERE sop_uid > %s "
                              "ORDER BY sop_uid LIMIT 1000", (last,))
            for _, raw in rows:
                yield InstanceRecord.from_json(raw.encode())
            if len(rows) < 1000:
                return
            last = rows[-1][0]

    def location_owner(self, location: str) -> str | None:
        rows = self._read("SELECT sop_uid FROM instance WHERE location = %s",
                          (pg_text(location),))
        return str(rows[0][0]) if rows else None

    def pending(self) -> list[str]:
        return [str(r[0]) for r in self._read("SELECT location FROM pending ORDER BY 1")]

    def stats(self) -> dict[str, Any]:
        rows = self._read(
            "SELECT instances, compressed_instances, bytes_in, bytes_stored, "
            "(SELECT coalesce(json_object_agg(syntax, instances), '{}') FROM syntax_count "
            "WHERE instances > 0) FROM stats")
        n, compressed, bytes_in, bytes_stored, syntaxes = rows[0]
        return {"instances": int(n), "compressed_instances": int(compressed),
                "bytes_in": int(bytes_in), "bytes_stored": int(bytes_stored),
                "transfer_syntaxes": {k: int(v) for k, v in dict(syntaxes).items()}}

    def changed(self, level: str, uid: str) -> int | None:
        if level == "instance":
            raise ValueError("changed() is kept for patients, studies and series")
        if level not in LEVELS:
            raise InvalidRequestError(f"unknown level {level!r}; use one of "
                                      f"{', '.join(LEVELS)}")
        if not uid:
            return None
        if level == "patient":
            sql = "SELECT max(changed) FROM patient WHERE patient_id = %s"
        else:
            sql = f"SELECT changed FROM {level} WHERE {_KEY[level]} = %s"
        rows = self._read(sql, (pg_text(uid),))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def instances(self, level: str, uid: str) -> list[str]:
        if level not in LEVELS:
            raise InvalidRequestError(f"unknown level {level!r}; use one of "
                                      f"{', '.join(LEVELS)}")
        if not uid:
            return []
        sql = {
            "patient": "SELECT i.sop_uid FROM patient p JOIN study s ON s.pkey = p.pkey "
                       "JOIN instance i ON i.study_uid = s.study_uid WHERE p.patient_id = %s "
                       "ORDER BY s.study_uid, i.series_uid, i.sop_uid",
            "study": "SELECT sop_uid FROM instance WHERE study_uid = %s "
                     "ORDER BY series_uid, sop_uid",
            "series": "SELECT sop_uid FROM instance WHERE series_uid = %s ORDER BY sop_uid",
            "instance": "SELECT sop_uid FROM instance WHERE sop_uid = %s",
        }[level]
        return [str(r[0]) for r in self._read(sql, (pg_text(uid),))]

    # -- matching -------------------------------------------------------------------
    def find(self, level: str, query: Mapping[str, str], *, limit: int | None = None,
             offset: int = 0, fuzzy: bool = False) -> list[dict[str, Any]]:
        plan = plan_find(level, query, limit=limit, offset=offset, fuzzy=fuzzy)
        out = []
        for row in self._read(plan.sql, plan.params):
            view = next((v for v in _views(level, row)
                         if all(view_matches(c, v) for c in plan.active)), None)
            if view is not None:
                out.append(view)
        if plan.exact:
            return out
        end = None if limit is None else offset + limit
        return out[offset:end]


@dataclass(frozen=True, slots=True)
class FindPlan:
    """The statement of a :meth:`PgQueries.find`."""

    sql: str
    """The SELECT."""
    params: list[Any]
    """Its parameters."""
    active: list[Constraint]
    """The constraints every row is tested against."""
    exact: bool
    """The statement selects exactly the matches, and pages them."""


def plan_find(level: str, query: Mapping[str, str], *, limit: int | None = None,
              offset: int = 0, fuzzy: bool = False) -> FindPlan:
    """The statement that finds the matches of ``query`` at ``level``."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    if level == "study" and "Modality" in query:  # C-FIND: ModalitiesInStudy
        query = {("ModalitiesInStudy" if k == "Modality" else k): v for k, v in query.items()}
    active = [c for k, v in query.items()
              if (c := parse_constraint(k, v, fuzzy=fuzzy)).kind != "universal"]
    where = _where(level, active)
    if level == "patient":
        sql = _PATIENT.format(where=where.sql())
    else:
        sql = f"{_FROM[level]} {where.sql()} ORDER BY {_KEY[level]}"
    params = list(where.params)
    if where.exact:  # the database pages
        sql += " LIMIT %s OFFSET %s"
        params += [limit, offset]  # LIMIT NULL: all
    return FindPlan(sql, params, active, where.exact)


def _where(level: str, active: list[Constraint]) -> _Where:
    where = _Where([], [])
    for c in active:
        if level == "study" and c.keyword == "ModalitiesInStudy" \
                and c.kind in ("single", "list"):
            where.add("modalities && %s::text[]", list(c.values))
        elif c.keyword in COLUMNS[level]:
            _translate(c, *COLUMNS[level][c.keyword], where)
        else:
            where.exact = False
    return where


def _views(level: str, row: Row) -> list[dict[str, Any]]:
    """The attribute dicts a result row can match as (a patient: one per distinct set
    of patient-level values among its studies, oldest study first)."""
    if level == "patient":
        studies, instances, variants = row
        counts = {"NumberOfPatientRelatedStudies": studies,
                  "NumberOfPatientRelatedInstances": instances}
        return [{**json.loads(v), **counts} for v in dict.fromkeys(variants or ())]
    view: dict[str, Any] = json.loads(row[0])
    if level == "study":
        view.update(ModalitiesInStudy="\\".join(row[1]), NumberOfStudyRelatedSeries=row[2],
                    NumberOfStudyRelatedInstances=row[3])
    elif level == "series":
        view["NumberOfSeriesRelatedInstances"] = row[1]
    return [view]

