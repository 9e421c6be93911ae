"""Study status (scheduled → arrived → in progress → completed → reported) and the
reconciliation of stored studies with orders, derived on every call from three
sources: the worklist items (orders and their steps), the performed procedure steps
that drove them (:mod:`.mpps`), and the studies the archive holds (through a query
function, ``Archive.query``: this module does not import the archive).

Derived, not stored: the status can never disagree with the sources (a crash between
a store and a status update cannot leave them apart); the cost is one pass over the
worklist, the performed steps and the archive's study level per call.

How a stored study is linked to an order (IHE SWF; the first that applies):

1. its Study Instance UID is an order's (the modality took it from the worklist);
2. its Study Instance UID is one a performed procedure step names in its Scheduled
   Step Attributes Sequence, and that step drives an order's items (the modality made
   its own Study Instance UID but reported the step);
3. its Accession Number (not empty) is an order's;
4. a Requested Procedure ID in the Request Attributes Sequence (0040,0275) of its series
   (PS3.3 C.7.3.1) is the Requested Procedure ID of exactly one order, of the study's
   patient when the study has a Patient ID (the modality sent neither the order's
   Study Instance UID nor its Accession Number; an ID that two such orders share
   links nothing).

Rule 4 needs the instances' headers (the index does not keep the sequence): it is
read only for the studies rules 1-3 leave unlinked, one instance per series, when the
caller gives :func:`requested_procedures` (every door does).  A stored study linked to
no order is :attr:`StudyStatus.UNRECONCILED`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol

from pydicom import dcmread

from ..errors import InvalidRequestError
from ..kinds import StepStatus, StudyStatus
from .matching import text_of
from .mpps import PerformedSteps
from .worklist import Worklist

__all__ = ["Query", "Requested", "StudyState", "parse_status", "requested_procedures",
           "study_states"]

Query = Callable[[str, Mapping[str, str]], list[dict[str, Any]]]
"""``Archive.query``: (level, keys) -> matches."""

Requested = Callable[[str], set[str]]
"""Study Instance UID -> the Requested Procedure IDs its series were made for."""

_REQUEST_ATTRIBUTES = 0x00400275  # Request Attributes Sequence
_REQUESTED_PROCEDURE_ID = 0x00401001


class _Headers(Protocol):
    """What :func:`requested_procedures` reads (an :class:`~pacscore.Archive`)."""

    def query(self, level: str, keys: Mapping[str, str]) -> list[dict[str, Any]]: ...

    def instances(self, level: str, uid: str) -> list[str]: ...

    def header(self, sop_instance_uid: str) -> bytes: ...


def requested_procedures(archive: _Headers) -> Requested:
    """Rule 4's reader: the Requested Procedure IDs of a stored study, from the Request
    Attributes Sequence of the first instance of each of its series."""
    def ids(study_uid: str) -> set[str]:
        found: set[str] = set()
        for series in archive.query("series", {"StudyInstanceUID": study_uid}):
            sops = archive.instances("series", str(series.get("SeriesInstanceUID") or ""))
            if not sops:
                continue
            ds = dcmread(BytesIO(archive.header(sops[0])), force=True,
                         specific_tags=[_REQUEST_ATTRIBUTES])
            seq = ds.get(_REQUEST_ATTRIBUTES)
            for item in seq.value if seq is not None and seq.VR == "SQ" else []:
                value = item.get(_REQUESTED_PROCEDURE_ID)
                if value is not None and text_of(value.value).strip():
                    found.add(text_of(value.value).strip())
        return found
    return ids

_REPORT_MODALITY = "SR"  # Basic/Enhanced/Comprehensive Text SR series (PS3.3 C.17)


@dataclass(slots=True)
class StudyState:
    """One ordered study, or one stored study that matches no order."""

    study_uid: str
    """The order's Study Instance UID (or the stored study's, when unreconciled)."""
    accession: str
    """Accession Number."""
    patient_id: str
    """Patient ID of the order (or of the stored study)."""
    status: StudyStatus
    """Where it stands (:class:`~pacscore.kinds.StudyStatus`)."""
    steps: dict[str, str] = field(default_factory=dict)
    """Worklist item key -> its status (:class:`~pacscore.kinds.StepStatus`)."""
    performed: list[str] = field(default_factory=list)
    """SOP Instance UIDs of the performed procedure steps that drive its items."""
    stored: list[str] = field(default_factory=list)
    """Study Instance UIDs of the stored studies linked to it."""
    instances: int = 0
    """Instances stored in those studies."""

    def as_json(self) -> dict[str, Any]:
        """A plain dict (the CLI's ``--json``, the DICOMweb workflow endpoint)."""
        return {"study_uid": self.study_uid, "accession": self.accession,
                "patient_id": self.patient_id, "status": str(self.status),
                "steps": dict(self.steps), "performed": list(self.performed),
                "stored": list(self.stored), "instances": self.instances}


def parse_status(text: str) -> StudyStatus:
    """A :class:`StudyStatus` from its name; InvalidRequestError naming the choices."""
    try:
        return StudyStatus(text.strip().lower().replace(" ", "_"))
    except ValueError:
        raise InvalidRequestError(f"unknown study status {text!r}",
                                  hint=f"use one of {', '.join(StudyStatus)}") from None


def _from_steps(statuses: Iterable[StepStatus]) -> StudyStatus:
    """The status the steps of one order give (before what the archive holds)."""
    live = [s for s in statuses if s != StepStatus.CANCELLED]
    if not live:
        return StudyStatus.CANCELLED
    done = {StepStatus.COMPLETED, StepStatus.DISCONTINUED}
    if all(s in done for s in live):
        return StudyStatus.COMPLETED if StepStatus.COMPLETED in live \
            else StudyStatus.DISCONTINUED
    if any(s == StepStatus.IN_PROGRESS or s in done for s in live):
        return StudyStatus.IN_PROGRESS
    return StudyStatus.SCHEDULED


def _status(steps: Iterable[StepStatus], images: bool, report: bool) -> StudyStatus:
    """Steps first; stored images make a scheduled (or stopped) order ARRIVED; a stored
    report makes any order REPORTED."""
    if report:
        return StudyStatus.REPORTED
    from_steps = _from_steps(steps)
    if images and from_steps not in (StudyStatus.IN_PROGRESS, StudyStatus.COMPLETED):
        return StudyStatus.ARRIVED
    return from_steps


def _orders(worklist: Worklist) -> tuple[dict[str, StudyState], dict[str, str],
                                        dict[str, set[str]]]:
    """The ordered studies by Study Instance UID (their items grouped), the Study
    Instance UID of each Accession Number, and those of each Requested Procedure ID."""
    orders: dict[str, StudyState] = {}
    by_accession: dict[str, str] = {}
    by_requested: dict[str, set[str]] = {}
    for key, status, ids in worklist.identities():
        uid = (ids["study_uid"] or [f"item:{key}"])[0]
        acc = ids["accession"][0] if ids["accession"] else ""
        patient = ids["patient_id"][0] if ids["patient_id"] else ""
        state = orders.setdefault(uid, StudyState(uid, acc, patient, StudyStatus.SCHEDULED))
        state.steps[key] = str(status)
        if acc:
            by_accession.setdefault(acc, uid)
        for rp in ids.get("requested_procedure_id", []):
            by_requested.setdefault(rp, set()).add(uid)
    return orders, by_accession, by_requested


def _by_requested(requested: Requested | None, by_requested: dict[str, set[str]],
                  orders: dict[str, StudyState], study_uid: str, patient: str) -> str | None:
    """Rule 4: the one order a Requested Procedure ID of the study names, or None."""
    if requested is None or not by_requested:
        return None
    owners = {uid for rp in requested(study_uid) for uid in by_requested.get(rp, ())
              if not patient or orders[uid].patient_id in ("", patient)}
    return owners.pop() if len(owners) == 1 else None


def _performed(worklist: Worklist, orders: dict[str, StudyState]) -> dict[str, str]:
    """Note on each order the performed steps that drive its items; the order of each
    Study Instance UID those steps name (rule 2 of the module docstring)."""
    order_of_key = {key: uid for uid, s in orders.items() for key in s.steps}
    by_performed: dict[str, str] = {}
    performed = PerformedSteps(worklist)
    for pps_uid, _, keys in performed.states():
        linked = sorted({order_of_key[k] for k in keys if k in order_of_key})
        for uid in linked:
            orders[uid].performed.append(pps_uid)
        if linked:
            ds = performed.get(pps_uid).dataset
            for sched in ds.get("ScheduledStepAttributesSequence", []):
                by_performed.setdefault(text_of(sched.get("StudyInstanceUID", "")).strip(),
                                        linked[0])
    return by_performed


def study_states(worklist: Worklist, query: Query, *, status: StudyStatus | None = None,
                 requested: Requested | None = None) -> list[StudyState]:
    """Every ordered study, then every stored study no order matches (UNRECONCILED);
    only those of ``status`` when given.  Orders in the order they were added; stored
    studies by Study Instance UID.  ``requested``: rule 4's reader
    (:func:`requested_procedures`), without which rule 4 is not applied."""
    orders, by_accession, by_requested = _orders(worklist)
    by_performed = _performed(worklist, orders)
    reports: set[str] = set()
    unreconciled: list[StudyState] = []
    for study in sorted(query("study", {}), key=lambda m: str(m.get("StudyInstanceUID"))):
        uid = str(study.get("StudyInstanceUID") or "")
        acc = text_of(study.get("AccessionNumber") or "").strip()
        owner = uid if uid in orders else by_performed.get(uid) or by_accession.get(acc) \
            or _by_requested(requested, by_requested, orders, uid,
                             str(study.get("PatientID") or ""))
        count = int(study.get("NumberOfStudyRelatedInstances") or 0)
        modalities = text_of(study.get("ModalitiesInStudy") or "").split("\\")
        if owner is None:
            unreconciled.append(StudyState(uid, acc, str(study.get("PatientID") or ""),
                                           StudyStatus.UNRECONCILED, stored=[uid],
                                           instances=count))
            continue
        orders[owner].stored.append(uid)
        orders[owner].instances += count
        if _REPORT_MODALITY in modalities:
            reports.add(owner)
    for uid, state in orders.items():
        state.status = _status((StepStatus(s) for s in state.steps.values()),
                               state.instances > 0, uid in reports)
    found = [*orders.values(), *unreconciled]
    return [s for s in found if status is None or s.status == status]
