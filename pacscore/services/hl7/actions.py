"""What each HL7 message does to the workflow state: tables keyed by message type and
trigger event, and by order control code, over :class:`pacscore.workflow.Changes`.

Orders (ORM^O01, OMI^O23) become scheduled procedure steps by :data:`ORDER_FIELDS`
(IHE RAD TF-2 4.4 "Procedure Scheduled" and Appendix B, HL7 order → DICOM Modality
Worklist), one step per order group (an ORC with its OBR, TQ1, IPC, ZDS).  Decisions
where the standard or the issue leaves a choice:

* An order for a patient the archive has no ADT record of is **accepted**, and the
  patient is registered from the order's PID: in IHE SWF the order filler sends the
  order with full demographics, and refusing it would leave the modality without its
  worklist entry until someone resends; the PID of the order is what the step shows.
* An order is found again (XO, CA, DC, SC) by its Accession Number (IPC-1, else
  OBR-18), which SWF requires; an order without one is refused (AE, 101).
* NW for an Accession Number that has a listed step already: AE, 205 (send XO).
* CA/DC for an order with no listed step: AE, 204 (nothing to cancel).
* XO replaces the step's attributes with the order's; a Study Instance UID the new
  order lacks is kept.  SC sets the status of ORC-5 (:data:`ORDER_STATUS`).
* ADT A01/A04/A08 keep the patient's demographics and apply them to the patient's
  listed steps; A40 moves every step of the prior patient (MRG-1) to the surviving one
  (PID-3), marks the prior record merged, and refuses a merge into itself (AE, 205)
  and one where either patient is unknown (AE, 204).
* A08 and A40 also record a patient correction (name, birth date, sex of the PID) and
  a merge in the corrections overlay (:mod:`pacscore.workflow.corrections`), in the
  same transaction: the archive serves the images of the patient so from then on,
  the stored objects unchanged.  A01/A04 (registration) do not: they describe a
  patient the images do not know yet.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cache
from typing import Any

import hl7
from pydicom.uid import generate_uid

from ...errors import ConflictError, HL7MessageError, NotFoundError
from ...kinds import StepStatus
from ...workflow import LISTED, corrections
from ...workflow.textitem import TextItem
from ...workflow.worklist import Changes
from .messages import Incoming, field

__all__ = ["HANDLERS", "ORDER_CONTROL", "ORDER_FIELDS", "ORDER_STATUS", "PATIENT_FIELDS",
           "handle"]

# (DICOM keyword, in the SPS item, conversion, HL7 sources tried in order).  Sources are
# SEG-field[.component[.subcomponent]] of the first repetition; the first non-empty
# value wins (IPC for OMI^O23 / v2.5, OBR for ORM^O01 / v2.3.1).
ORDER_FIELDS: tuple[tuple[str, bool, str, tuple[str, ...]], ...] = (
    ("PatientID", False, "text", ("PID-3.1",)),
    ("IssuerOfPatientID", False, "text", ("PID-3.4",)),
    ("PatientName", False, "pn", ("PID-5",)),
    ("PatientBirthDate", False, "date", ("PID-7.1",)),
    ("PatientSex", False, "sex", ("PID-8",)),
    ("AdmissionID", False, "text", ("PV1-19.1",)),
    ("ReferringPhysicianName", False, "pn", ("PV1-8",)),
    ("RequestingPhysician", False, "pn", ("ORC-12", "OBR-16")),
    ("PlacerOrderNumberImagingServiceRequest", False, "text", ("ORC-2.1", "OBR-2.1")),
    ("FillerOrderNumberImagingServiceRequest", False, "text", ("ORC-3.1", "OBR-3.1")),
    ("AccessionNumber", False, "text", ("IPC-1.1", "OBR-18")),
    ("RequestedProcedureID", False, "text", ("IPC-2", "OBR-19")),
    ("StudyInstanceUID", False, "uid", ("IPC-3", "ZDS-1.1")),
    ("RequestedProcedureDescription", False, "text", ("OBR-4.2",)),
    ("ScheduledProcedureStepID", True, "text", ("IPC-4", "OBR-20")),
    ("Modality", True, "text", ("IPC-5", "OBR-24")),
    ("ScheduledStationName", True, "text", ("IPC-7",)),
    ("ScheduledProcedureStepLocation", True, "text", ("IPC-8",)),
    # No SWF v2.3.1 field carries the station AE; OBR-21 (filler field 2) is where
    # RIS that send one put it.
    ("ScheduledStationAETitle", True, "text", ("IPC-9", "OBR-21")),
    ("ScheduledProcedureStepStartDate", True, "date", ("TQ1-7.1", "OBR-27.4", "OBR-7.1")),
    ("ScheduledProcedureStepStartTime", True, "time", ("TQ1-7.1", "OBR-27.4", "OBR-7.1")),
    ("ScheduledProcedureStepDescription", True, "text", ("OBR-4.2",)),
)
"""HL7 order → worklist item (IHE RAD TF-2 Table B-1 and 4.4-x)."""

PATIENT_FIELDS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate",
                  "PatientSex")
"""The keywords of :data:`ORDER_FIELDS` an ADT message changes (kept per patient)."""

ORDER_STATUS: dict[str, StepStatus] = {
    # ORC-5 order status (HL7 Table 0038) of an SC -> step status
    "SC": StepStatus.SCHEDULED, "IP": StepStatus.IN_PROGRESS, "CM": StepStatus.COMPLETED,
    "DC": StepStatus.DISCONTINUED, "CA": StepStatus.CANCELLED,
}

_SOURCE = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?(?:\.(\d+))?\Z")
_SEX = {"M": "M", "F": "F", "O": "O", "U": "O", "A": "O", "N": "O"}


def _pn(segment: hl7.Segment, number: int) -> str:
    """XPN (family^given^middle^suffix^prefix) → PN (family^given^middle^prefix^suffix)."""
    parts = [field(segment, number, c) for c in (1, 2, 3, 5, 4)]
    return "^".join(parts).rstrip("^")


_CONVERT: dict[str, Callable[[str], str]] = {
    "text": lambda v: v,
    "uid": lambda v: v if re.fullmatch(r"[0-9]+(\.[0-9]+)*", v) and len(v) <= 64 else "",
    "date": lambda v: v[:8] if re.match(r"\d{8}", v) else "",
    "time": lambda v: v[8:14] if re.match(r"\d{10}", v) else "",
    "sex": lambda v: _SEX.get(v.upper()[:1], ""),
}


@cache
def _source(source: str) -> tuple[str, int, int, int]:
    """``SEG-field[.component[.subcomponent]]`` -> (segment, field, component, sub)."""
    m = _SOURCE.match(source)
    if m is None:  # pragma: no cover - the table is checked by a test
        raise ValueError(source)
    return m.group(1), int(m.group(2)), int(m.group(3) or 1), int(m.group(4) or 1)


@dataclass(slots=True)
class _Group:
    """The segments an order group sees: its own, then the message's before it."""

    own: dict[str, hl7.Segment]
    common: dict[str, hl7.Segment]
    seen: dict[tuple[str, str], str] = dataclass_field(default_factory=dict)
    """(source, kind) -> value, read once per group (sources repeat in the table)."""

    def value(self, source: str, kind: str) -> str:
        known = self.seen.get((source, kind))
        if known is not None:
            return known
        name, number, comp, sub = _source(source)
        segment = self.own.get(name) or self.common.get(name)
        if segment is None:
            value = ""
        elif kind == "pn":
            value = _pn(segment, number)
        else:
            value = _CONVERT[kind](field(segment, number, comp, sub))
        self.seen[source, kind] = value
        return value


def _groups(message: hl7.Message) -> tuple[dict[str, hl7.Segment], list[_Group]]:
    """The segments before the first ORC, and one group per ORC (first of each name)."""
    common: dict[str, hl7.Segment] = {}
    groups: list[_Group] = []
    for segment in message:
        name = str(segment[0])
        if name == "ORC":
            groups.append(_Group({}, common))
        target = groups[-1].own if groups else common
        target.setdefault(name, segment)
    return common, groups


def _item(group: _Group, fields: tuple[tuple[str, bool, str, tuple[str, ...]], ...]
          ) -> TextItem:
    """The values ``fields`` take from ``group`` (the worklist writes them as a data set:
    :class:`~pacscore.workflow.textitem.TextItem`)."""
    top: dict[str, str] = {}
    sps: dict[str, str] = {}
    for keyword, in_sps, kind, sources in fields:
        for source in sources:
            value = group.value(source, kind)
            if value:
                (sps if in_sps else top)[keyword] = value
                break
    return TextItem(top, sps)


def _order_item(group: _Group) -> TextItem:
    item = _item(group, ORDER_FIELDS)
    for keyword, where in (("PatientID", "PID-3"), ("AccessionNumber", "OBR-18 or IPC-1")):
        if keyword not in item:
            raise HL7MessageError(f"{where} ({keyword}) is missing", code=101,
                                  location=where.split(" ")[0])
    return TextItem(item.top, {**item.sps, "ScheduledProcedureStepStatus": "SCHEDULED"})


def _listed(changes: Changes, accession: str) -> list[str]:
    return [k for k in changes.lookup("accession", accession) if changes.status(k) in LISTED]


def _known_order(changes: Changes, accession: str) -> list[str]:
    keys = _listed(changes, accession)
    if not keys:
        raise NotFoundError(f"no scheduled order has the Accession Number {accession!r}")
    return keys


def _new(changes: Changes, item: TextItem, group: _Group) -> None:
    accession = item.get("AccessionNumber")
    if _listed(changes, accession):
        raise ConflictError(f"order {accession} is scheduled already",
                            hint="change it with order control XO")
    if "StudyInstanceUID" not in item:
        item = item.with_values(StudyInstanceUID=generate_uid())
    _register(changes, item, replace=False)
    changes.add(item)


def _change(changes: Changes, item: TextItem, group: _Group) -> None:
    for key in _known_order(changes, item.get("AccessionNumber")):
        ds = item.dataset()
        if "StudyInstanceUID" not in ds:
            ds.StudyInstanceUID = changes.get(key).dataset.StudyInstanceUID
        changes.replace(key, ds)


def _status_to(status: StepStatus) -> Callable[[Changes, TextItem, _Group], None]:
    def apply(changes: Changes, item: TextItem, group: _Group) -> None:
        for key in _known_order(changes, item.get("AccessionNumber")):
            changes.set_status(key, status)
    return apply


def _status_changed(changes: Changes, item: TextItem, group: _Group) -> None:
    code = group.value("ORC-5", "text").upper()
    status = ORDER_STATUS.get(code)
    if status is None:
        raise HL7MessageError(f"order status {code!r} (ORC-5) is not one of "
                              f"{', '.join(ORDER_STATUS)}", code=103, location="ORC-5")
    accession = item.get("AccessionNumber")
    keys = changes.lookup("accession", accession)
    if not keys:
        raise NotFoundError(f"no order has the Accession Number {accession!r}")
    for key in keys:
        changes.set_status(key, status)


ORDER_CONTROL: dict[str, Callable[[Changes, TextItem, _Group], None]] = {
    # ORC-1 (HL7 Table 0119) -> what it does
    "NW": _new, "XO": _change, "CA": _status_to(StepStatus.CANCELLED),
    "DC": _status_to(StepStatus.DISCONTINUED), "SC": _status_changed,
}


def _orders(changes: Changes, incoming: Incoming) -> None:
    _, groups = _groups(incoming.message)
    if not groups:
        raise HL7MessageError("an order message needs an ORC segment", code=100,
                              location="ORC")
    for group in groups:
        control = group.value("ORC-1", "text").upper()
        action = ORDER_CONTROL.get(control)
        if action is None:
            raise HL7MessageError(f"order control {control!r} (ORC-1) is not one of "
                                  f"{', '.join(ORDER_CONTROL)}", code=103, location="ORC-1")
        action(changes, _order_item(group), group)


# -- patients --------------------------------------------------------------------
def _demographics(item: TextItem) -> dict[str, Any]:
    return {k: item.get(k) for k in PATIENT_FIELDS if k in item}


def _apply(changes: Changes, patient_id: str, record: dict[str, Any],
           statuses: frozenset[StepStatus]) -> None:
    """Write ``record`` into the steps of ``patient_id`` that have ``statuses``."""
    for key in changes.lookup("patient_id", patient_id):
        item = changes.get(key)
        if item.status not in statuses:
            continue
        ds = item.dataset
        for keyword in PATIENT_FIELDS:
            if keyword in record:
                setattr(ds, keyword, record[keyword])
            elif keyword in ds:
                del ds[keyword]
        if not record.get("PatientName", "").isascii():
            ds.SpecificCharacterSet = "ISO_IR 192"
        changes.replace(key, ds)


def _register(changes: Changes, item: TextItem, *, replace: bool) -> None:
    patient_id = item.get("PatientID")
    if replace or changes.patient(patient_id) is None:
        changes.put_patient(patient_id, _demographics(item))


def _patient(changes: Changes, incoming: Incoming) -> None:
    common, _ = _groups(incoming.message)
    item = _item(_Group({}, common), ORDER_FIELDS)
    if "PatientID" not in item:
        raise HL7MessageError("PID-3 (Patient ID) is missing", code=101, location="PID-3")
    _register(changes, item, replace=True)
    _apply(changes, item.get("PatientID"), _demographics(item), LISTED)
    if incoming.event == "A08":  # what the archive serves of the patient's images
        corrections.correct(changes, item.get("PatientID"), _corrected(item))


def _known(changes: Changes, patient_id: str) -> bool:
    record = changes.patient(patient_id)
    return (record is not None and "merged_into" not in record) \
        or bool(changes.lookup("patient_id", patient_id))


def _merge(changes: Changes, incoming: Incoming) -> None:
    common, _ = _groups(incoming.message)
    item = _item(_Group({}, common), ORDER_FIELDS)
    surviving = item.get("PatientID")
    mrg = common.get("MRG")
    prior = field(mrg, 1) if mrg is not None else ""
    for value, where in ((surviving, "PID-3"), (prior, "MRG-1")):
        if not value:
            raise HL7MessageError(f"{where} is missing", code=101, location=where)
    if prior == surviving:
        raise HL7MessageError(f"patient {prior!r} cannot be merged into itself", code=205,
                              location="MRG-1", hint="MRG-1 names the patient that goes "
                                                     "away, PID-3 the one that stays")
    for value, where in ((surviving, "PID-3"), (prior, "MRG-1")):
        if not _known(changes, value):
            raise HL7MessageError(f"patient {value!r} ({where}) is not known", code=204,
                                  location=where, hint="register it first (ADT A01/A04)")
    record = changes.patient(surviving) or _demographics(item)
    record.setdefault("PatientID", surviving)
    _apply(changes, prior, record, frozenset(StepStatus))
    changes.put_patient(surviving, record)
    changes.put_patient(prior, {"merged_into": surviving})
    corrections.merge(changes, prior, surviving, _corrected(item))


def _corrected(item: TextItem) -> dict[str, str]:
    """The PID values the corrections overlay serves (:mod:`pacscore.workflow.corrections`);
    one a DICOM object cannot carry (a name with a backslash) is left out, not refused:
    the worklist takes the message as before."""
    values = {k: item.get(k) for k in corrections.CORRECTED if k in item}
    return {k: v for k, v in values.items() if corrections.servable(k, v)}


HANDLERS: dict[tuple[str, str], Callable[[Changes, Incoming], None]] = {
    ("ADT", "A01"): _patient, ("ADT", "A04"): _patient, ("ADT", "A08"): _patient,
    ("ADT", "A40"): _merge,
    ("ORM", "O01"): _orders, ("OMI", "O23"): _orders,
}
"""(MSH-9.1, MSH-9.2) -> what the message does."""


def handle(changes: Changes, incoming: Incoming) -> None:
    """Apply ``incoming`` through :data:`HANDLERS`; HL7MessageError (200/201) for a
    message type or event it has no handler for."""
    handler = HANDLERS.get((incoming.kind, incoming.event))
    if handler is None:
        known = incoming.kind in {kind for kind, _ in HANDLERS}
        raise HL7MessageError(
            f"{incoming.kind}^{incoming.event} is not handled", code=201 if known else 200,
            location="MSH-9",
            hint="send " + ", ".join(f"{k}^{e}" for k, e in HANDLERS))
    handler(changes, incoming)
