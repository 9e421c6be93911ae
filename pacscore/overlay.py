"""Patient corrections applied on the way out: the overlay of :class:`pacscore.Archive`.

Corrections (ADT A08, ``pacscore patient correct``) and merges (ADT A40,
``pacscore patient merge``) are kept in the worklist's environment
(:mod:`pacscore.workflow.corrections`), never in the index or a stored object.  The
archive applies them above the :class:`~pacscore.index.Index` contract, so every index
back end serves them, and every door with it:

* :meth:`PatientOverlay.query` (``Archive.query``/``find``: C-FIND, QIDO-RS, FHIR, gRPC
  Find): answers carry the corrected values and the surviving Patient ID, and the
  patient keys match them.  A query by a corrected value finds the patient's studies
  and one by the value it replaced no longer does; a query by the surviving Patient ID
  finds the studies of the patients merged into it, and one by a merged (old) Patient
  ID still finds them, answered under the surviving ID (an EMR or a prior-study
  look-up holding the old ID keeps working; IHE PIR only asks that the old ID is no
  longer *shown*).  At the patient level the rows of merged patients are folded into
  the survivor's row (counts added).
* :meth:`PatientOverlay.patch` (``Archive.get`` in any syntax but ``original``, and
  ``Archive.header``, which series metadata and ``includefield`` read): the object
  with the corrected patient attributes written in (:mod:`pacscore.dicom.patch`).
  ``original`` stays the object as received, byte for byte.

Without any correction, a query costs one LMDB read of the correction stamp more (on a
PostgreSQL index: one read per second at most, :meth:`.Worklist.corrections`).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Limits
from .errors import NotFoundError
from .index.matching import Constraint, normalise, parse_constraint
from .workflow import corrections
from .workflow.corrections import CORRECTED, Correction, CorrectionTable, Served

if TYPE_CHECKING:
    from .index import InstanceRecord
    from .workflow import Worklist
    from .workflow.worklist import Changes

__all__ = ["PATIENT_KEYS", "PatientOverlay", "cli_user"]

PATIENT_KEYS = ("PatientID", *CORRECTED)
"""Query keys the overlay matches itself for corrected patients."""
_COUNTS = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
           "NumberOfPatientRelatedInstances")

Find = Callable[..., list[dict[str, Any]]]


def cli_user() -> str:
    """``cli:<user>``: who a command-line change is recorded as."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "cli"


class PatientOverlay:
    """The corrections of one archive, as its answers and objects show them.

    Parameters
    ----------
    root
        The archive directory (its ``workflow.lmdb`` holds the corrections).
    worklist
        Opens the archive's worklist (:attr:`pacscore.Archive.worklist`); called only
        once ``workflow.lmdb`` exists, so reading never creates it.
    find
        The index's :meth:`~pacscore.index.Index.find` (stored values).
    limits
        The parser's limits, for patching objects.
    shared
        The worklist is in the shared index (PostgreSQL): it always exists.
    """

    def __init__(self, root: Path, worklist: Callable[[], Worklist], find: Find,
                 limits: Limits, *, shared: bool = False):
        self._path, self._worklist, self._limits = root / "workflow.lmdb", worklist, limits
        self._find, self._shared = find, shared
        self._open = shared

    def _exists(self) -> bool:
        return self._shared or (self._path / "data.mdb").exists()

    # -- reading -----------------------------------------------------------------
    def table(self) -> CorrectionTable:
        """The corrections in force (empty without a worklist)."""
        if not self._open:
            if not self._exists():
                return corrections.EMPTY
            self._open = True
        return self._worklist().corrections()

    def stamp(self) -> int:
        """The correction stamp: changes with every correction, merge and undo (derived
        caches put it in their keys)."""
        return self.table().stamp

    def log(self) -> list[Correction]:
        """Every correction, merge and undo, oldest first."""
        return self._worklist().correction_log() if self._exists() else []

    def served(self, row: dict[str, Any], table: CorrectionTable) -> dict[str, Any]:
        """``row`` (an index answer) as it is served."""
        s = table.served.get(str(row.get("PatientID") or ""))
        if s is None:
            return row
        out = {**row, "PatientID": s.patient_id}
        out.update((k, v) for k, v in s.values.items() if k in row)
        return out

    def query(self, level: str, keys: Mapping[str, str], *, limit: int | None, offset: int,
              fuzzy: bool) -> list[dict[str, Any]]:
        """:meth:`Index.find` with the corrections applied (module doc)."""
        find, table = self._find, self.table()
        if not table:
            return find(level, keys, limit=limit, offset=offset, fuzzy=fuzzy)
        patient = {k: c for k in PATIENT_KEYS if k in keys
                   and (c := parse_constraint(k, keys[k], fuzzy=fuzzy)).kind != "universal"}
        if not patient and level != "patient":  # the index's page, shown corrected
            return [self.served(m, table)
                    for m in find(level, keys, limit=limit, offset=offset, fuzzy=fuzzy)]
        rows = find(level, keys, fuzzy=fuzzy)
        if patient:
            rows = [m for m in rows if str(m.get("PatientID") or "") not in table.served]
            for pid in _candidates(table, patient.get("PatientID")):
                rows.extend(self._rows_of(find, level, keys, patient, pid,
                                          table.served[pid], fuzzy))
        answer = [self.served(m, table) for m in rows]
        if level == "patient":
            answer = _fold(answer)
        return answer[offset: None if limit is None else offset + limit]

    @staticmethod
    def _rows_of(find: Find, level: str, keys: Mapping[str, str],
                 patient: Mapping[str, Constraint], pid: str, s: Served, fuzzy: bool
                 ) -> list[dict[str, Any]]:
        """The index's answers for the objects stored under ``pid``, when its served
        values meet the patient keys (those it does not correct: matched by the
        index on the stored values)."""
        query = dict(keys)
        for keyword, c in patient.items():
            if keyword == "PatientID":  # the surviving ID, or the old one (module doc)
                if not (c.test(s.patient_id) or c.test(pid)):
                    return []
            elif keyword in s.values:
                if not c.test(normalise(keyword, s.values[keyword])):
                    return []
            else:
                continue
            del query[keyword]
        query["PatientID"] = pid
        return [m for m in find(level, query, fuzzy=fuzzy) if m.get("PatientID") == pid]

    def patch(self, data: bytes, rec: InstanceRecord) -> bytes:
        """``data`` (the instance ``rec`` names, or its header) as served: with the
        corrected patient attributes, when its patient has any."""
        table = self.table()
        s = table.served.get(str(rec.attributes.get("PatientID") or "")) if table else None
        if s is None:
            return data
        from .dicom.patch import patch_attributes

        return patch_attributes(data, {"PatientID": s.patient_id, **s.values},
                                self._limits, rec.sop_instance_uid)

    # -- writing -----------------------------------------------------------------
    def correct(self, patient_id: str, values: Mapping[str, str], *, by: str = "api"
                ) -> int | None:
        """Serve ``values`` (PatientName, PatientBirthDate, PatientSex) for the objects
        of ``patient_id``; the log entry (None: nothing changed)."""
        return self._worklist().change(
            lambda c: corrections.correct(c, patient_id, values), by=by)

    def merge(self, prior: str, surviving: str, *, by: str = "api") -> int | None:
        """Serve the objects of ``prior`` as those of ``surviving``, with the
        survivor's demographics (as served: its corrections win).  NotFoundError,
        nothing changed, when either patient is nowhere: not in the index, not a
        patient others are merged into, not in the HL7 patient registry."""
        table = self.table()
        stored = {pid: self._find("patient", {"PatientID": pid}, limit=1) for pid in
                  (prior, surviving)}

        def run(c: Changes) -> int | None:
            for pid, what in ((prior, "prior"), (surviving, "surviving")):
                if not (stored[pid] or pid in table.aliases or c.patient(pid)):
                    raise NotFoundError(
                        f"the {what} patient {pid!r} is neither in the archive nor in the "
                        f"patient registry", hint="check the Patient ID with `pacscore "
                        "find --level patient PatientID=...`; nothing was changed")
            row = stored[surviving][0] if stored[surviving] else c.patient(surviving) or {}
            values = {k: str(row[k]) for k in CORRECTED if row.get(k) is not None}
            return corrections.merge(c, prior, surviving, values)

        return self._worklist().change(run, by=by)

    def undo(self, patient_id: str, *, by: str = "api") -> Correction:
        """Undo the newest correction or merge of ``patient_id``."""
        if not self._exists():
            raise NotFoundError(f"patient {patient_id!r} has no correction or merge to undo",
                                hint="list them with `pacscore patient corrections`")
        return self._worklist().change(lambda c: corrections.undo(c, patient_id), by=by)


def _candidates(table: CorrectionTable, by_id: Constraint | None) -> list[str]:
    """The corrected Patient IDs a query may find: with a single Patient ID, those
    served as it and itself (a look-up, not a pass over every correction)."""
    if by_id is None or by_id.kind != "single":
        return list(table.served)
    wanted = by_id.values[0]
    return [p for p in {*table.aliases.get(wanted, ()), wanted} if p in table.served]


def _fold(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Patient rows with the same served Patient ID (and issuer, or none) as one, their
    counts added: the rows of merged patients in their survivor's."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (str(row.get("PatientID") or ""), str(row.get("IssuerOfPatientID") or ""))
        if not key[0] or key not in out:
            out[key if key[0] else (f"\0{len(out)}", "")] = dict(row)
            continue
        kept = out[key]
        for name in _COUNTS:
            if isinstance(kept.get(name), int) and isinstance(row.get(name), int):
                kept[name] += row[name]
    return list(out.values())
