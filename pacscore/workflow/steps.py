"""The worklist's model: the statuses a step may have, the identifiers and matching
keys it is indexed by, :class:`WorklistItem` and :class:`WorkflowEvent`, and the
helpers that turn an item into its index entries (:mod:`.worklist` keeps them)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ..errors import InvalidRequestError
from ..kinds import StepStatus
from .encoding import values as _values
from .matching import SPS, check_identifier, text_of
from .textitem import TextItem

__all__ = ["IDENTIFIERS", "INDEXED", "INDEXED_BYTES", "KEY_DIGITS", "LISTED", "SPS_STATUS",
           "WorkflowEvent", "WorklistItem", "accession", "answer_of", "asks_status",
           "check_item", "entries", "identifiers", "text_key", "with_status"]

LISTED: frozenset[StepStatus] = frozenset({StepStatus.SCHEDULED, StepStatus.IN_PROGRESS})
"""Statuses a Modality Worklist query lists (a step a modality started stays listed, so
the same or another modality can pick it up again after a failure)."""

SPS_STATUS: dict[StepStatus, str] = {
    # Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10 defined terms: what the
    # item's data set says (and a worklist C-FIND answers) for each status.
    StepStatus.SCHEDULED: "SCHEDULED",
    StepStatus.IN_PROGRESS: "STARTED",
    StepStatus.COMPLETED: "COMPLETED",
    StepStatus.DISCONTINUED: "DISCONTINUED",
    StepStatus.CANCELLED: "CANCELED",
}
_SPS_STATUS_TAG = 0x00400020

# Index field -> (where its values are: top level or each SPS item, keyword); the
# matching index (``match``) of listed items.  Fields are one character in keys.
INDEXED: dict[str, tuple[bool, str, bytes]] = {
    "station": (True, "ScheduledStationAETitle", b"a"),
    "modality": (True, "Modality", b"m"),
    "date": (True, "ScheduledProcedureStepStartDate", b"d"),
    "sps_id": (True, "ScheduledProcedureStepID", b"s"),
    "patient_id": (False, "PatientID", b"p"),
    "patient_name": (False, "PatientName", b"n"),
    "accession": (False, "AccessionNumber", b"c"),
}
IDENTIFIERS: dict[str, tuple[bool, str, bytes]] = {
    "accession": (False, "AccessionNumber", b"c"),
    "sps_id": (True, "ScheduledProcedureStepID", b"s"),
    "patient_id": (False, "PatientID", b"p"),
    "study_uid": (False, "StudyInstanceUID", b"u"),
    "requested_procedure_id": (False, "RequestedProcedureID", b"r"),
}
"""Order and patient identity: looked up by :meth:`Worklist.lookup` (every item)."""

INDEXED_BYTES = 200
"""Index values are cut at this length (every lookup is confirmed by the matcher)."""
_KEY_BYTES = 500  # LMDB keys are at most 511 bytes
KEY_DIGITS = 12
"""Items' keys are decimal counters of this many digits (they sort in the order added)."""


@dataclass(frozen=True, slots=True)
class WorklistItem:
    """One scheduled procedure step."""

    key: str
    """Its key in the worklist (12 digits, in the order items were added)."""
    status: StepStatus
    """Where it stands."""
    dataset: Dataset
    """Its attributes (a Modality Worklist item, PS3.4 K.6.1.2.2)."""


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """A change of the worklist, for the audit trail (see :meth:`Worklist.on_change`)."""

    action: str
    """``C`` created, ``U`` changed: status or attributes (PS3.15 A.5.1
    EventActionCode)."""
    key: str
    """The item."""
    status: StepStatus
    """Its status after the change."""
    accession: str
    """Its Accession Number (no patient data goes to the audit trail)."""
    by: str
    """Who asked (``cli``, ``DIMSE AE@host``, ...)."""


def entries(ds: Dataset | TextItem, table: dict[str, tuple[bool, str, bytes]]) -> set[bytes]:
    return {char + b"\0" + v.encode("utf-8", "surrogateescape")[:INDEXED_BYTES]
            for sps_level, keyword, char in table.values()
            for v in _values(ds, sps_level, keyword)}


def with_status(ds: Dataset, status: StepStatus) -> Dataset:
    """``ds`` with Scheduled Procedure Step Status (0040,0020) set to what ``status``
    is called in every SPS item (so a worklist C-FIND answers where the step stands)."""
    for sps in ds.get(SPS).value if SPS in ds and ds[SPS].VR == "SQ" else []:
        sps.add_new(_SPS_STATUS_TAG, "CS", SPS_STATUS[status])
    return ds


def asks_status(query: Dataset) -> bool:
    """The identifier names a Scheduled Procedure Step Status to match (not only a
    return key): then every step is a candidate, not only the listed ones."""
    seq = query.get(SPS)
    items = seq.value if seq is not None and seq.VR == "SQ" else []
    return any(text_of(i[_SPS_STATUS_TAG].value).strip("*? ")
               for i in items if _SPS_STATUS_TAG in i)


def check_item(ds: Dataset) -> None:
    """Refuse what cannot be a worklist item: keys of a wrong VR, no SPS."""
    check_identifier(ds)
    sps = ds.get(SPS)
    if sps is None or sps.VR != "SQ" or len(sps.value) == 0:
        raise InvalidRequestError(
            "a worklist item needs a Scheduled Procedure Step Sequence (0040,0100) with "
            "an item", hint="give at least Modality, Scheduled Station AE Title and the "
                            "Scheduled Procedure Step Start Date in it (PS3.4 K.6.1.2.2)")



def answer_of(raw: bytes) -> tuple[int, bytes]:
    """(when, answer) of a ``message`` record; records of before the time stamp (an
    answer starts with ``MSH``) are of time 0."""
    if raw[:1] == b"T" and raw[11:12] == b"\n":
        return int(raw[1:11]), raw[12:]
    return 0, raw


def text_key(text: str) -> bytes:
    """An LMDB key for ``text`` (cut to :data:`_KEY_BYTES`; long ones end in a hash)."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= _KEY_BYTES:
        return raw
    return raw[: _KEY_BYTES - 32] + hashlib.sha256(raw).hexdigest()[:32].encode()


def identifiers(ds: Dataset | TextItem) -> dict[str, list[str]]:
    return {k: sorted(_values(ds, lvl, kw)) for k, (lvl, kw, _) in IDENTIFIERS.items()}


def accession(ds: Dataset | TextItem) -> str:
    if isinstance(ds, TextItem):
        return ds.get("AccessionNumber")
    return text_of(ds.AccessionNumber) if "AccessionNumber" in ds else ""
