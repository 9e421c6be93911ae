"""The Index contract: patients, studies, series, instances and where their data is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .records import InstanceRecord

__all__ = ["LEVELS", "LEVEL_ATTRIBUTES", "Index", "PutOutcome"]

LEVELS: tuple[str, ...] = ("patient", "study", "series", "instance")
"""Query/retrieve levels (PS3.4 C.3)."""

LEVEL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "patient": ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"),
    "study": ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
              "StudyDescription", "ReferringPhysicianName", "StudyID"),
    "series": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "SeriesDate"),
    "instance": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "NumberOfFrames"),
}
"""Attributes that belong to each level (a level's records also carry its parents')."""


@dataclass(frozen=True, slots=True)
class PutOutcome:
    """What happened to one record handed to :meth:`Index.put`."""

    sop_instance_uid: str
    """The instance."""
    status: str
    """``stored``, ``duplicate`` (same SHA-256 already stored), ``conflict`` (same UID,
    other content) or ``refused`` (contradicts the hierarchy)."""
    existing: InstanceRecord | None = None
    """The record already stored, for duplicates and conflicts."""
    reason: str = ""
    """Why it was refused."""


class Index(ABC):
    """Hierarchy, matching keys, locations and checksums of stored instances.

    One writer at a time; readers never block.  Every method that writes is atomic.
    """

    @abstractmethod
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The record of one instance."""

    @abstractmethod
    def header(self, sop_instance_uid: str) -> bytes:
        """Original header bytes of an instance stored as frames."""

    @abstractmethod
    def put(self, items: Sequence[tuple[InstanceRecord, bytes]]) -> list[PutOutcome]:
        """Insert records (with their header bytes) in one transaction.

        A record whose SOP Instance UID is already stored is not inserted: its outcome
        says ``duplicate`` (same SHA-256) or ``conflict``.  Pending marks of the
        inserted records' locations are cleared in the same transaction.
        """

    @abstractmethod
    def delete(self, sop_instance_uids: Sequence[str]) -> list[InstanceRecord]:
        """Remove instances in one transaction and mark their locations pending."""

    @abstractmethod
    def instances(self, level: str, uid: str) -> list[str]:
        """SOP Instance UIDs under a patient ID, study, series, or one instance."""

    @abstractmethod
    def find(self, level: str, query: Mapping[str, str], *, limit: int | None = None,
             offset: int = 0, fuzzy: bool = False) -> list[dict[str, Any]]:
        """Matches at ``level``: attribute dicts keyed by DICOM keyword (``fuzzy``:
        person names match loosely, see :func:`~pacscore.index.matching.parse_constraint`)."""

    @abstractmethod
    def changed(self, level: str, uid: str) -> int | None:
        """A number that grows whenever anything below this patient, study or series
        changes (the write transaction's ID); ``None`` when it does not exist.  Caches
        of derived data (DICOMweb series metadata) compare it to stay exact."""

    @abstractmethod
    def mark_pending(self, locations: Sequence[str]) -> None:
        """Record (durably) that these locations may exist without being indexed."""

    @abstractmethod
    def pending(self) -> list[str]:
        """Locations marked pending."""

    @abstractmethod
    def clear_pending(self, locations: Sequence[str]) -> None:
        """Forget pending marks."""

    @abstractmethod
    def location_owner(self, location: str) -> str | None:
        """SOP Instance UID stored at ``location``, if any."""

    @abstractmethod
    def records(self) -> Iterator[InstanceRecord]:
        """Every instance record."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Totals kept in step with every write."""

    @abstractmethod
    def close(self) -> None:
        """Release the index."""
