"""Patient corrections: an overlay of demographics and merges over what the archive
serves, kept beside the worklist (``workflow.lmdb``) and never written into a stored
object.

Two named databases of the worklist's environment, written in the transaction of the
change that causes them (an HL7 ADT A08/A40 with the worklist change and the ACK it
answers, or ``pacscore patient``)::

    correction      Patient ID -> JSON: the values served instead of the stored ones
                    (PatientName, PatientBirthDate, PatientSex) and ``merged_into``
    correction_log  12-digit number -> JSON: one entry per change (correct, merge,
                    undo) with the record before and after it, who and when

``meta`` ``b"corrections"`` holds the number of the last entry: the *correction stamp*
that readers compare to reload their table (:class:`CorrectionTable`) and that derived
caches (series metadata) put in their keys.

A correction is keyed by the Patient ID as the objects carry it, whatever their Issuer
of Patient ID (the HL7 door's patient registry is keyed so too).  A merge (A40: MRG-1
merged into PID-3) is followed along its chain (A into B, B into C: A's objects are
served as C's); a merge that would close a cycle, or of a patient into itself, is
refused and changes nothing.  Every entry can be undone, newest first per patient: the
record before it comes back, and with it what was served before.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from ..errors import ConflictError, InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from ..kv import Txn
    from .worklist import Changes

__all__ = ["CORRECTED", "CORRECTION_DATABASES", "STAMP", "Correction", "CorrectionTable",
           "PatientEvent", "Served", "correct", "entries", "load_table", "merge", "servable",
           "served_item", "stamp", "undo"]

CORRECTED: tuple[str, ...] = ("PatientName", "PatientBirthDate", "PatientSex")
"""Attributes a correction may give a patient (ADT A08 PID-5, PID-7, PID-8)."""

CORRECTION_DATABASES = (b"correction", b"correction_log")
"""The worklist databases this module writes (absent in a worklist of before them)."""

STAMP = b"corrections"
"""The key in ``meta`` of the correction stamp."""
_DIGITS = 12
_MAX_CHAIN = 64  # merges followed before a chain is taken for damaged
# Values as the index keeps them: PN (64 chars per component group), DA, CS.
_CHECK: dict[str, tuple[re.Pattern[str], str]] = {
    "PatientName": (re.compile(r"[^\\\x00-\x1f]{0,320}\Z"), "a person name (PN) of at "
                    "most 320 characters, no backslash or control character"),
    "PatientBirthDate": (re.compile(r"(\d{8})?\Z"), "a date YYYYMMDD (or empty)"),
    "PatientSex": (re.compile(r"[MFO]?\Z"), "M, F or O (or empty)"),
}
_ID = re.compile(r"[^\\\x00-\x1f]{1,64}\Z")


@dataclass(frozen=True, slots=True)
class Correction:
    """One entry of the correction log."""

    number: int
    """Its number (the correction stamp after it)."""
    patient_id: str
    """The Patient ID it changed (as the stored objects carry it)."""
    action: str
    """``correct``, ``merge`` or ``undo``."""
    before: dict[str, str] | None
    """The patient's correction record before (None: it had none)."""
    after: dict[str, str] | None
    """Its record after."""
    by: str
    """Who asked (``cli:<user>``, ``HL7 <host>``, ``api``)."""
    at: float
    """When (seconds since the epoch)."""
    undoes: int | None = None
    """For an undo: the entry it undid."""
    undone_by: int | None = None
    """The undo entry that undid this one, if any."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``pacscore patient corrections --json``)."""
        return {"number": self.number, "patient_id": self.patient_id,
                "action": self.action, "before": self.before, "after": self.after,
                "by": self.by, "at": self.at, "undoes": self.undoes,
                "undone_by": self.undone_by}


@dataclass(frozen=True, slots=True)
class PatientEvent:
    """A correction, merge or undo, for the audit trail (Patient Record, PS3.15
    A.5.3.12); names the log entry, no patient data."""

    action: str
    """``U`` (a correction or merge: the patient record changed) or ``D`` (undone)."""
    number: int
    """The log entry."""
    what: str
    """``correct``, ``merge`` or ``undo``, and the attributes it changed."""
    by: str
    """Who asked."""


@dataclass(frozen=True, slots=True)
class Served:
    """What is served for the objects of one stored Patient ID."""

    patient_id: str
    """The Patient ID served (the end of its merge chain; itself when not merged)."""
    values: dict[str, str] = field(default_factory=dict)
    """Corrected attributes (of :data:`CORRECTED`), by keyword."""
    merged: bool = False
    """It is merged into another patient."""


@dataclass(frozen=True, slots=True)
class CorrectionTable:
    """Every stored Patient ID with a correction, resolved (chains followed)."""

    stamp: int
    """The correction stamp it was read at."""
    served: dict[str, Served]
    """Stored Patient ID -> what is served for it."""
    aliases: dict[str, frozenset[str]]
    """Served Patient ID -> the stored Patient IDs served as it (itself included)."""

    def __bool__(self) -> bool:
        return bool(self.served)


EMPTY = CorrectionTable(0, {}, {})


def servable(keyword: str, value: str) -> bool:
    """Whether ``value`` can be served as ``keyword`` (of :data:`CORRECTED`)."""
    check = _CHECK.get(keyword)
    return check is not None and check[0].match(value) is not None


def served_item(ds: Dataset, table: CorrectionTable) -> Dataset:
    """A worklist item as the Modality Worklist serves it: the Patient ID it is merged
    into and the corrected demographics of its patient (the item as kept otherwise).
    A value beyond ASCII makes it UTF-8 (the values are decoded text here)."""
    served = table.served.get(str(ds.get("PatientID", "") or "")) if table else None
    if served is None:
        return ds
    ds.PatientID = served.patient_id
    for keyword, value in served.values.items():
        setattr(ds, keyword, value)
    if not all(v.isascii() for v in served.values.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


# -- reading --------------------------------------------------------------------
def stamp(txn: Txn, dbs: Mapping[bytes, Any]) -> int:
    """The number of the last correction entry (0: none ever)."""
    raw = txn.get(STAMP, db=dbs[b"meta"])
    return 0 if raw is None else int(bytes(raw))


def _records(txn: Txn, dbs: Mapping[bytes, Any]) -> dict[str, dict[str, str]]:
    if b"correction" not in dbs:
        return {}
    return {bytes(k).decode("utf-8", "surrogateescape"): json.loads(bytes(v))
            for k, v in txn.cursor(db=dbs[b"correction"])}


def _resolve(records: Mapping[str, Mapping[str, str]], patient_id: str) -> list[str]:
    """The merge chain from ``patient_id`` (itself first); ConflictError on a cycle."""
    chain = [patient_id]
    while (nxt := records.get(chain[-1], {}).get("merged_into")) is not None:
        if nxt in chain or len(chain) > _MAX_CHAIN:
            raise ConflictError(f"patient {patient_id!r}: the merges {' -> '.join(chain)} "
                                f"-> {nxt} form a cycle", hint="undo one of the merges "
                                "(`pacscore patient undo PATIENT_ID`)")
        chain.append(nxt)
    return chain


def load_table(txn: Txn, dbs: Mapping[bytes, Any]) -> CorrectionTable:
    """The corrections as of ``txn``, resolved: a patient's values are its own, then
    those of each patient it is merged into, the survivor's last (they win)."""
    records = _records(txn, dbs)
    served: dict[str, Served] = {}
    aliases: dict[str, set[str]] = {}
    for pid in records:
        chain = _resolve(records, pid)
        values: dict[str, str] = {}
        for link in chain:
            values.update((k, v) for k, v in records.get(link, {}).items() if k in CORRECTED)
        served[pid] = Served(chain[-1], values, len(chain) > 1)
        aliases.setdefault(chain[-1], {chain[-1]}).add(pid)
    return CorrectionTable(stamp(txn, dbs), served,
                           {k: frozenset(v) for k, v in aliases.items()})


def _entry(number: int, raw: bytes) -> Correction:
    d = json.loads(raw)
    return Correction(number, d["patient_id"], d["action"], d["before"], d["after"],
                      d["by"], d["at"], d.get("undoes"), d.get("undone_by"))


def entries(txn: Txn, dbs: Mapping[bytes, Any]) -> Iterator[Correction]:
    """Every log entry, oldest first."""
    if b"correction_log" not in dbs:
        return
    for k, v in txn.cursor(db=dbs[b"correction_log"]):
        yield _entry(int(bytes(k)), bytes(v))


# -- writing --------------------------------------------------------------------
def _key(patient_id: str) -> bytes:
    return patient_id.encode("utf-8", "surrogateescape")


def _check_id(patient_id: str, what: str) -> None:
    if not _ID.match(patient_id):
        raise InvalidRequestError(f"{what} {patient_id!r} is no Patient ID (LO: 1 to 64 "
                                  f"characters, no backslash or control character)")


def _log(changes: Changes, patient_id: str, action: str, before: dict[str, str] | None,
         after: dict[str, str] | None, **extra: int) -> int:
    txn, dbs = changes.txn, changes.dbs
    number = stamp(txn, dbs) + 1
    txn.put(STAMP, str(number).encode(), db=dbs[b"meta"])
    entry = {"patient_id": patient_id, "action": action, "before": before, "after": after,
             "by": changes.by, "at": time.time(), **extra}
    txn.put(f"{number:0{_DIGITS}d}".encode(), json.dumps(entry).encode(),
            db=dbs[b"correction_log"])
    if after is None:
        txn.delete(_key(patient_id), db=dbs[b"correction"])
    else:
        txn.put(_key(patient_id), json.dumps(after).encode(), db=dbs[b"correction"])
    return number


def _record(changes: Changes, patient_id: str) -> dict[str, str] | None:
    raw = changes.txn.get(_key(patient_id), db=changes.dbs[b"correction"])
    return None if raw is None else dict(json.loads(bytes(raw)))


def correct(changes: Changes, patient_id: str, values: Mapping[str, str]) -> int | None:
    """Serve ``values`` (keywords of :data:`CORRECTED`) for the objects of
    ``patient_id`` (and of the patients merged into it); the log entry's number, or
    None when nothing changes.  InvalidRequestError for a value its VR cannot hold."""
    _check_id(patient_id, "Patient ID")
    for keyword, value in values.items():
        check = _CHECK.get(keyword)
        if check is None:
            raise InvalidRequestError(f"{keyword} cannot be corrected; only "
                                      f"{', '.join(CORRECTED)}")
        if not check[0].match(value):
            raise InvalidRequestError(f"{keyword} {value!r} is not {check[1]}")
    before = _record(changes, patient_id)
    after = {**(before or {}), **values}
    if after == before or not values:
        return None
    number = _log(changes, patient_id, "correct", before, after)
    changes.events.append(PatientEvent("U", number, "correct " + ", ".join(sorted(values)),
                                       changes.by))
    return number


def merge(changes: Changes, prior: str, surviving: str,
          values: Mapping[str, str] | None = None) -> int | None:
    """Serve the objects of ``prior`` as ``surviving``'s (ADT A40: MRG-1 into PID-3),
    with ``values`` (the survivor's demographics, when the sender gave them); the log
    entry's number (None when it is merged so already).  Refused, nothing changed:
    a patient into itself (InvalidRequestError), a merge that would close a cycle
    (ConflictError).  Whether both patients exist is the caller's to check."""
    _check_id(prior, "prior Patient ID")
    _check_id(surviving, "surviving Patient ID")
    if prior == surviving:
        raise InvalidRequestError(f"patient {prior!r} cannot be merged into itself",
                                  hint="name the patient that goes away first, then the "
                                       "one that stays")
    records = _records(changes.txn, changes.dbs)
    chain = _resolve(records, surviving)
    if prior in chain:
        raise ConflictError(f"merging {prior!r} into {surviving!r} would close a cycle "
                            f"({' -> '.join(chain)})", hint="undo the merge of "
                            f"{surviving!r} first (`pacscore patient undo {chain[-2]}`)")
    for keyword, value in (values or {}).items():
        if keyword not in _CHECK or not _CHECK[keyword][0].match(value):
            raise InvalidRequestError(f"{keyword} {value!r} cannot be served")
    before = _record(changes, prior)
    after = {**(before or {}), **(values or {}), "merged_into": surviving}
    if after == before:
        return None
    number = _log(changes, prior, "merge", before, after)
    changes.events.append(PatientEvent("U", number, "merge", changes.by))
    return number


def undo(changes: Changes, patient_id: str) -> Correction:
    """Undo the newest correction or merge of ``patient_id`` not undone yet: its record
    before comes back (and with it what was served before); the undo entry.
    NotFoundError when there is nothing to undo; ConflictError when undoing would
    close a merge cycle (undo the later merge first)."""
    txn, dbs = changes.txn, changes.dbs
    target: Correction | None = None
    cur = txn.cursor(db=dbs[b"correction_log"])
    ok = cur.last()
    while ok:
        e = _entry(int(bytes(cur.key())), bytes(cur.value()))
        if e.patient_id == patient_id and e.action != "undo" and e.undone_by is None:
            target = e
            break
        ok = cur.prev()
    if target is None:
        raise NotFoundError(f"patient {patient_id!r} has no correction or merge to undo",
                            hint="list them with `pacscore patient corrections`")
    records = _records(txn, dbs)
    if target.before is None:
        records.pop(patient_id, None)
    else:
        records[patient_id] = target.before
    _resolve(records, patient_id)  # ConflictError: a cycle it would restore
    current = _record(changes, patient_id)
    number = _log(changes, patient_id, "undo", current, target.before, undoes=target.number)
    key = f"{target.number:0{_DIGITS}d}".encode()
    raw = json.loads(bytes(txn.get(key, b"{}", db=dbs[b"correction_log"])))
    raw["undone_by"] = number
    txn.put(key, json.dumps(raw).encode(), db=dbs[b"correction_log"])
    changes.events.append(PatientEvent("D", number, f"undo {target.number}", changes.by))
    return Correction(number, patient_id, "undo", current, target.before, changes.by,
                      time.time(), target.number)
