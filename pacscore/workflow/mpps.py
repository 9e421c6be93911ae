"""Modality Performed Procedure Steps (MPPS, PS3.4 Annex F): what a modality reports
it did, kept in the worklist's environment (``mpps`` and ``mpps_state`` of
``workflow.lmdb``), and the scheduled steps it drives.

:class:`PerformedSteps` over a :class:`~pacscore.workflow.worklist.Worklist`:
:meth:`~PerformedSteps.create` (N-CREATE) and :meth:`~PerformedSteps.update` (N-SET)
each check the request against PS3.4 Table F.7.2-1 and run in **one** worklist
transaction with the status changes of the scheduled steps they drive: committed
whole before the door answers, or not at all.

Decisions where the standard leaves a choice:

* Type 1 attributes of N-CREATE are required (absent: :class:`MissingAttributeError`,
  0x0120; empty: :class:`MissingAttributeValueError`, 0x0121).  Type 2 attributes a
  modality leaves out are kept zero-length instead of refusing the step: many
  modalities omit some, and refusing would lose the step's status altogether.
* N-SET of an attribute Table F.7.2-1 marks "Not allowed" is refused
  (:class:`InvalidAttributeValueError`, 0x0106) only when it would change the stored
  value; a modality that sends the same value again is answered Success.
* The final state (COMPLETED or DISCONTINUED) needs End Date and End Time (Type 1 in
  the final state); COMPLETED also a Performed Series Sequence item with its Series
  Instance UID (a step stopped before any series may be DISCONTINUED without one).
* The scheduled steps a performed step drives are found at N-CREATE from each item
  of its Scheduled Step Attributes Sequence: the worklist items whose SPS ID,
  Accession Number and Requested Procedure ID are those given (the ones given, all of
  them); an item with none of the three (an unscheduled step) names the Study
  Instance UID.  None found: the performed step is kept, driving nothing.
* :data:`TRANSITIONS`: IN PROGRESS starts scheduled (or discontinued, restarted)
  steps; COMPLETED completes scheduled and started ones; DISCONTINUED stops started
  ones.  A cancelled or completed step is never reopened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ..dicom.header import validate_uid
from ..errors import (
    DuplicateInstanceError,
    InvalidAttributeValueError,
    MissingAttributeError,
    MissingAttributeValueError,
    NotFoundError,
    ProcedureStepFinalError,
)
from ..kinds import StepStatus
from .encoding import decode_dataset, encode_dataset
from .matching import text_of
from .worklist import Changes, Worklist

__all__ = ["CREATE_TYPE1", "CREATE_TYPE2", "FINAL", "MPPS_SOP_CLASS", "SET_NOT_ALLOWED",
           "TRANSITIONS", "PerformedStep", "PerformedSteps"]

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
"""Modality Performed Procedure Step SOP Class UID (PS3.4 F.7.1)."""

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
FINAL = frozenset({COMPLETED, DISCONTINUED})
"""Performed Procedure Step Status (0040,0252) values after which no N-SET is taken
(PS3.4 F.7.2.2.2)."""

_SSAS = "ScheduledStepAttributesSequence"
# PS3.4 Table F.7.2-1, N-CREATE requirement type 1 (SCU), at the top level.
CREATE_TYPE1: tuple[str, ...] = (
    _SSAS, "PerformedProcedureStepID", "PerformedStationAETitle",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus", "Modality")
# Type 2 (present, may be empty): kept zero-length when absent (module docstring).
CREATE_TYPE2: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferencedPatientSequence",
    "PerformedStationName", "PerformedLocation", "PerformedProcedureStepDescription",
    "PerformedProcedureTypeDescription", "ProcedureCodeSequence",
    "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", "StudyID",
    "PerformedProtocolCodeSequence", "PerformedSeriesSequence")
_SSAS_TYPE2 = ("ReferencedStudySequence", "AccessionNumber", "RequestedProcedureID",
               "RequestedProcedureDescription", "ScheduledProcedureStepID",
               "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence")
# Table F.7.2-1, N-SET "Not allowed".
SET_NOT_ALLOWED: frozenset[str] = frozenset({
    _SSAS, "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "ReferencedPatientSequence", "PerformedProcedureStepID",
    "PerformedStationAETitle", "PerformedStationName", "PerformedLocation",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "Modality",
    "StudyID", "SOPClassUID", "SOPInstanceUID"})
_SERIES_UID = 0x0020000E
_FINAL_TYPE1 = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")

TRANSITIONS: dict[str, dict[StepStatus, StepStatus]] = {
    # Performed Procedure Step Status -> {scheduled step's status: its new status}
    IN_PROGRESS: {StepStatus.SCHEDULED: StepStatus.IN_PROGRESS,
                  StepStatus.DISCONTINUED: StepStatus.IN_PROGRESS},
    COMPLETED: {StepStatus.SCHEDULED: StepStatus.COMPLETED,
                StepStatus.IN_PROGRESS: StepStatus.COMPLETED},
    DISCONTINUED: {StepStatus.IN_PROGRESS: StepStatus.DISCONTINUED},
}
# (identifier of Worklist IDENTIFIERS, keyword in a Scheduled Step Attributes item)
_ORDER_KEYS = (("sps_id", "ScheduledProcedureStepID"), ("accession", "AccessionNumber"),
               ("requested_procedure_id", "RequestedProcedureID"))


@dataclass(frozen=True, slots=True)
class PerformedStep:
    """One Modality Performed Procedure Step."""

    uid: str
    """Its SOP Instance UID."""
    status: str
    """Performed Procedure Step Status: ``IN PROGRESS``, ``COMPLETED``, ``DISCONTINUED``."""
    dataset: Dataset
    """Its attributes (as created, with every N-SET applied)."""
    steps: tuple[str, ...]
    """Keys of the worklist items (scheduled steps) it drives."""


def _has_value(elem: DataElement | None) -> bool:
    if elem is None or elem.value is None:
        return False
    if elem.VR == "SQ":
        return len(elem.value) > 0
    return text_of(elem.value).strip() != ""


def _tag(keyword: str) -> int:
    found = tag_for_keyword(keyword)
    if found is None:  # only this module's tables' keywords come here
        raise KeyError(keyword)
    return int(found)


def _require(ds: Dataset, keywords: tuple[str, ...], where: str) -> None:
    """Type 1 ``keywords`` of ``ds``: present (else 0x0120) and with a value (0x0121)."""
    absent = [k for k in keywords if k not in ds]
    if absent:
        raise MissingAttributeError(f"{where} lacks {', '.join(absent)} (PS3.4 Table "
                                    f"F.7.2-1, Type 1)", tags=tuple(map(_tag, absent)))
    empty = [k for k in keywords if not _has_value(ds[k])]
    if empty:
        raise MissingAttributeValueError(f"{where} has no value for {', '.join(empty)} "
                                         f"(PS3.4 Table F.7.2-1, Type 1)",
                                         tags=tuple(map(_tag, empty)))


def _fill_type2(ds: Dataset, keywords: tuple[str, ...]) -> None:
    for k in keywords:
        if k not in ds:
            tag = _tag(k)
            ds.add_new(tag, dictionary_VR(tag), [] if dictionary_VR(tag) == "SQ" else None)


def _status_of(ds: Dataset) -> str:
    return text_of(ds.get("PerformedProcedureStepStatus", "")).strip().upper()


def check_create(ds: Dataset) -> None:
    """Refuse an N-CREATE attribute list PS3.4 F.7.2.1 does not allow (see the
    module's decisions)."""
    _require(ds, CREATE_TYPE1, "the N-CREATE")
    if _status_of(ds) != IN_PROGRESS:
        raise InvalidAttributeValueError(
            f"Performed Procedure Step Status is {_status_of(ds)!r}: an N-CREATE must "
            f"give IN PROGRESS (PS3.4 F.7.2.1.2)", tags=(0x00400252,))
    seq = ds[_SSAS]
    if seq.VR != "SQ":
        raise InvalidAttributeValueError(f"{_SSAS} is not a sequence", tags=(0x00400270,))
    for i, item in enumerate(seq.value):
        _require(item, ("StudyInstanceUID",), f"item {i + 1} of {_SSAS}")


def _same(a: DataElement, b: DataElement | None) -> bool:
    if b is None:
        return not _has_value(a)
    one, two = Dataset(), Dataset()
    one.add(a)
    two.add(b)
    return encode_dataset(one) == encode_dataset(two)


def _linked(c: Changes, ds: Dataset) -> list[str]:
    """Keys of the scheduled steps the performed step ``ds`` names (module docstring)."""
    keys: set[str] = set()
    for item in ds[_SSAS].value:
        given = [(field, text_of(item[kw].value).strip()) for field, kw in _ORDER_KEYS
                 if kw in item and _has_value(item[kw])]
        if not given:
            given = [("study_uid", text_of(item.StudyInstanceUID).strip())]
        found = set(c.lookup(*given[0]))
        for field, value in given[1:]:
            found &= set(c.lookup(field, value))
        keys |= found
    return sorted(keys)


def _drive(c: Changes, keys: list[str], pps_status: str) -> list[str]:
    """Move the steps ``keys`` as :data:`TRANSITIONS` says; the keys that moved."""
    moved = []
    for key in keys:
        new = TRANSITIONS[pps_status].get(c.status(key))
        if new is not None and c.set_status(key, new):
            moved.append(key)
    return moved


class PerformedSteps:
    """The performed procedure steps of one worklist (see the module docstring)."""

    def __init__(self, worklist: Worklist):
        self.worklist = worklist
        self.dbs = worklist.dbs

    def create(self, uid: str | None, attributes: Dataset, *, by: str = "api"
               ) -> tuple[PerformedStep, list[str]]:
        """N-CREATE: a new step ``uid`` (None: a new UID), IN PROGRESS; the scheduled
        steps it names start.  The step and the keys of the scheduled steps that
        changed.  Raises the :class:`~pacscore.errors.ProcedureStepError` of a request
        Table F.7.2-1 refuses, InvalidUIDError for a UID that is none; nothing is kept
        then."""
        uid = uid or generate_uid()
        validate_uid(uid, "Affected SOP Instance UID")
        ds = decode_dataset(encode_dataset(attributes))  # a copy of what will be read back
        check_create(ds)
        _fill_type2(ds, CREATE_TYPE2)
        for item in ds[_SSAS].value:
            _fill_type2(item, _SSAS_TYPE2)

        def apply(c: Changes) -> tuple[PerformedStep, list[str]]:
            if c.txn.get(uid.encode(), db=self.dbs[b"mpps_state"]) is not None:
                raise DuplicateInstanceError(f"a performed procedure step {uid} exists "
                                             f"already (PS3.7 10.1.5: duplicate SOP Instance)")
            steps = _linked(c, ds)
            moved = _drive(c, steps, IN_PROGRESS)
            now = time.time()
            state = {"status": IN_PROGRESS, "steps": steps, "created": now, "updated": now,
                     "by": by}
            c.txn.put(uid.encode(), encode_dataset(ds), db=self.dbs[b"mpps"])
            c.txn.put(uid.encode(), json.dumps(state).encode(), db=self.dbs[b"mpps_state"])
            return PerformedStep(uid, IN_PROGRESS, ds, tuple(steps)), moved

        return self.worklist.change(apply, by=by)

    def update(self, uid: str, modifications: Dataset, *, by: str = "api"
               ) -> tuple[PerformedStep, list[str]]:
        """N-SET: apply ``modifications`` to step ``uid`` while it is IN PROGRESS;
        COMPLETED or DISCONTINUED drive its scheduled steps.  The step and the keys of
        the scheduled steps that changed.  NotFoundError (no such step),
        ProcedureStepFinalError (it is final already) or another ProcedureStepError;
        nothing is changed then."""
        mods = decode_dataset(encode_dataset(modifications))

        def apply(c: Changes) -> tuple[PerformedStep, list[str]]:
            raw = c.txn.get(uid.encode(), db=self.dbs[b"mpps_state"])
            if raw is None:
                raise NotFoundError(f"no performed procedure step {uid}",
                                    hint="N-CREATE it first, with this SOP Instance UID")
            state = json.loads(bytes(raw))
            if state["status"] in FINAL:
                raise ProcedureStepFinalError(
                    f"performed procedure step {uid} is {state['status']}: it may no "
                    f"longer be updated (PS3.4 F.7.2.2.2)")
            ds = decode_dataset(self.worklist._value(c.txn, uid.encode(), b"mpps"))
            changed = [e.keyword or f"({e.tag.group:04X},{e.tag.element:04X})"
                       for e in mods if e.keyword in SET_NOT_ALLOWED
                       and not _same(e, ds.get(e.tag))]
            if changed:
                raise InvalidAttributeValueError(
                    f"N-SET may not change {', '.join(changed)} (PS3.4 Table F.7.2-1)",
                    tags=tuple(_tag(k) for k in changed))
            for elem in mods:
                if elem.keyword == "SpecificCharacterSet" and "SpecificCharacterSet" in ds:
                    terms = [*ds.SpecificCharacterSet] if ds["SpecificCharacterSet"].VM > 1 \
                        else [ds.SpecificCharacterSet]
                    new = elem.value if elem.VM > 1 else [elem.value]
                    ds.SpecificCharacterSet = list(dict.fromkeys([*terms, *new]))
                    continue  # combined, not replaced (PS3.4 F.7.2.2.3)
                ds[elem.tag] = elem
            status = _status_of(ds)
            if status not in TRANSITIONS:
                raise InvalidAttributeValueError(
                    f"Performed Procedure Step Status {status!r} is none of IN PROGRESS, "
                    f"COMPLETED, DISCONTINUED (PS3.3 C.4.14)", tags=(0x00400252,))
            if status in FINAL:
                _final(ds, status)
            moved = _drive(c, state["steps"], status) if status != IN_PROGRESS else []
            state.update(status=status, updated=time.time())
            c.txn.put(uid.encode(), encode_dataset(ds), db=self.dbs[b"mpps"])
            c.txn.put(uid.encode(), json.dumps(state).encode(), db=self.dbs[b"mpps_state"])
            return PerformedStep(uid, status, ds, tuple(state["steps"])), moved

        return self.worklist.change(apply, by=by)

    def get(self, uid: str) -> PerformedStep:
        """One step (NotFoundError if none)."""
        with self.worklist.env.begin() as txn:
            raw = txn.get(uid.encode(), db=self.dbs[b"mpps_state"])
            data = txn.get(uid.encode(), db=self.dbs[b"mpps"])
            if raw is None or data is None:
                raise NotFoundError(f"no performed procedure step {uid}")
            state = json.loads(bytes(raw))
            return PerformedStep(uid, state["status"], decode_dataset(bytes(data)),
                                 tuple(state["steps"]))

    def states(self) -> Iterator[tuple[str, str, tuple[str, ...]]]:
        """(UID, status, scheduled step keys) of every performed step, by UID."""
        with self.worklist.env.begin() as txn:
            rows = [(bytes(k).decode(), json.loads(bytes(v)))
                    for k, v in txn.cursor(db=self.dbs[b"mpps_state"])]
        for uid, state in rows:
            yield uid, state["status"], tuple(state["steps"])

    def check(self) -> list[str]:
        """Consistency problems (none expected, even after a crash): a step without its
        data set or the reverse, a data set whose status is not the recorded one, a
        scheduled step it drives that does not exist."""
        problems: list[str] = []
        with self.worklist.env.begin() as txn:
            states = {bytes(k): json.loads(bytes(v))
                      for k, v in txn.cursor(db=self.dbs[b"mpps_state"])}
            datas = {bytes(k): bytes(v) for k, v in txn.cursor(db=self.dbs[b"mpps"])}
            items = self.dbs[b"state"]
            if set(states) != set(datas):
                problems.append(f"performed step without data set or the reverse: "
                                f"{sorted(set(states) ^ set(datas))[:5]}")
            for uid, state in states.items():
                if uid in datas and _status_of(decode_dataset(datas[uid])) != state["status"]:
                    problems.append(f"performed step {uid.decode()}: data set and state "
                                    f"disagree on the status")
                missing = [k for k in state["steps"] if txn.get(k.encode(), db=items) is None]
                if missing:
                    problems.append(f"performed step {uid.decode()} drives missing items "
                                    f"{missing}")
        return problems

    def __len__(self) -> int:
        with self.worklist.env.begin() as txn:
            return int(txn.stat(self.dbs[b"mpps_state"])["entries"])


def _final(ds: Dataset, status: str) -> None:
    """The final state's Type 1 attributes (module docstring)."""
    missing = [k for k in _FINAL_TYPE1 if k not in ds or not _has_value(ds[k])]
    series = ds.get(0x00400340)  # Performed Series Sequence: the element
    items = series.value if series is not None and series.VR == "SQ" else []
    if status == COMPLETED and (not items or not all(_has_value(i.get(_SERIES_UID))
                                                     for i in items)):
        missing.append("PerformedSeriesSequence")
    if missing:
        raise MissingAttributeValueError(
            f"{status} needs a value for {', '.join(missing)} (PS3.4 Table F.7.2-1, "
            f"Type 1 in the final state)", tags=tuple(map(_tag, missing)))
