"""The Index contract: patients, studies, series, instances and where their data is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..errors import NotFoundError
from ..kinds import Level, PutStatus
from .records import InstanceRecord

__all__ = ["LEVELS", "LEVEL_ATTRIBUTES", "Index", "PutOutcome", "SharedIndex"]

LEVELS: tuple[Level, ...] = tuple(Level)
"""Query/retrieve levels (PS3.4 C.3)."""

LEVEL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "patient": ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate",
                "PatientSex"),
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
    status: PutStatus
    """``stored``, ``duplicate`` (same SHA-256 already stored), ``conflict`` (same UID,
    other content), ``refused`` (contradicts the hierarchy) or ``invalid`` (a value the
    index cannot take, e.g. a Patient ID longer than LO allows)."""
    existing: InstanceRecord | None = None
    """The record already stored, for duplicates and conflicts."""
    reason: str = ""
    """Why it was refused or invalid."""


class Index(ABC):
    """Hierarchy, matching keys, locations and checksums of stored instances.

    One writer at a time; readers never block.  Every method that writes is atomic.

    A patient is identified by Patient ID and Issuer of Patient ID (an instance without
    an issuer joins a study whose patient has one); objects without a Patient ID are
    never merged: each study of them is its own patient, listed with an empty Patient
    ID.  A patient matches a query when the patient-level values of one of its studies
    do (names and birth dates may differ between studies of one ID).
    """

    @abstractmethod
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The record of one instance."""

    def get_many(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRecord]:
        """The records of those of ``sop_instance_uids`` that are stored, by UID (an
        index over a network answers in one round trip)."""
        found = {uid: self.get(uid) for uid in dict.fromkeys(sop_instance_uids)}
        return {uid: rec for uid, rec in found.items() if rec is not None}

    @abstractmethod
    def header(self, sop_instance_uid: str) -> bytes:
        """Original header bytes of an instance stored as frames."""

    def headers(self, sop_instance_uids: Sequence[str]) -> dict[str, bytes]:
        """:meth:`header` of those of ``sop_instance_uids`` that have one, by UID (an
        index over a network answers in one round trip)."""
        found: dict[str, bytes] = {}
        for uid in dict.fromkeys(sop_instance_uids):
            try:
                found[uid] = self.header(uid)
            except NotFoundError:
                continue
        return found

    @abstractmethod
    def put(self, items: Sequence[tuple[InstanceRecord, bytes]]) -> list[PutOutcome]:
        """Insert records (with their header bytes) in one transaction.

        A record whose SOP Instance UID is already stored is not inserted: its outcome
        says ``duplicate`` (same SHA-256) or ``conflict``.  A record the index cannot
        take is ``invalid`` and fails alone: the others are inserted.  Pending marks of
        the inserted records' locations are cleared in the same transaction.
        """

    @abstractmethod
    def delete(self, sop_instance_uids: Sequence[str]) -> list[InstanceRecord]:
        """Remove instances in one transaction and mark their locations pending."""

    @abstractmethod
    def instances(self, level: str, uid: str) -> list[str]:
        """SOP Instance UIDs under a Patient ID (every issuer's patient with that ID;
        none for an empty one), a study, a series, or one instance."""

    @abstractmethod
    def find(self, level: str, query: Mapping[str, str], *, limit: int | None = None,
             offset: int = 0, fuzzy: bool = False) -> list[dict[str, Any]]:
        """Matches at ``level``: attribute dicts keyed by DICOM keyword (``fuzzy``:
        person names match loosely, see :func:`~pacscore.index.matching.parse_constraint`)."""

    @abstractmethod
    def changed(self, level: str, uid: str) -> int | None:
        """A number that grows whenever anything below this patient, study or series
        changes (the write transaction's ID; for a Patient ID, the latest of its
        patients); ``None`` when it does not exist.  Caches
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


@runtime_checkable
class SharedIndex(Protocol):
    """An index several processes on several hosts write at once (PostgreSQL): the
    archive's front ends share it, so it also names the archive and runs each
    background task on one front end at a time (issue 17.3)."""

    def archive_id(self, proposed: str | None) -> str | None:
        """The id of the archive this index belongs to: the recorded one, or
        ``proposed`` (recorded now) when none is; None when none is and none proposed."""

    def exclusive(self, task: str) -> AbstractContextManager[bool]:
        """Hold the cluster-wide lock of ``task`` while the block runs and yield True,
        or yield False at once when another process holds it (it is running the task)."""
