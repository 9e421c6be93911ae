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
3. its Accession Number (not empty) is an order's.

A stored study linked to no order is :attr:`StudyStatus.UNRECONCILED`.  Requested
Procedure ID is not used for images: the archive's index does not keep it (it is in
the Request Attributes Sequence of each instance); MPPS links by it (:mod:`.mpps`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError
from ..kinds import StepStatus, StudyStatus
from .matching import text_of
from .mpps import PerformedSteps
from .worklist import Worklist

__all__ = ["StudyState", "Query", "parse_status", "study_states"]

Query = Callable[[str, Mapping[str, str]], list[dict[str, Any]]]
"""``Archive.query``: (level, keys) -> matches."""

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


def _orders(worklist: Worklist) -> tuple[dict[str, StudyState], dict[str, str]]:
    """The ordered studies by Study Instance UID (their items grouped), and the Study
    Instance UID of each Accession Number."""
    orders: dict[str, StudyState] = {}
    by_accession: dict[str, str] = {}
    for key, status, ids in worklist.identities():
        uid = (ids["study_uid"] or [f"item:{key}"])[0]
        acc = ids["accession"][0] if ids["accession"] else ""
        patient = ids["patient_id"][0] if ids["patient_id"] else ""
        state = orders.setdefault(uid, StudyState(uid, acc, patient, StudyStatus.SCHEDULED))
        state.steps[key] = str(status)
        if acc:
            by_accession.setdefault(acc, uid)
    return orders, by_accession


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


def study_states(worklist: Worklist, query: Query, *,
                 status: StudyStatus | None = None) -> list[StudyState]:
    """Every ordered study, then every stored study no order matches (UNRECONCILED);
    only those of ``status`` when given.  Orders in the order they were added; stored
    studies by Study Instance UID."""
    orders, by_accession = _orders(worklist)
    by_performed = _performed(worklist, orders)
    reports: set[str] = set()
    unreconciled: list[StudyState] = []
    for study in sorted(query("study", {}), key=lambda m: str(m.get("StudyInstanceUID"))):
        uid = str(study.get("StudyInstanceUID") or "")
        acc = text_of(study.get("AccessionNumber") or "").strip()
        owner = uid if uid in orders else by_performed.get(uid) or by_accession.get(acc)
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
