"""The named values of the public API: levels, statuses and kinds.

``StrEnum`` members are strings (``Level.STUDY == "study"``, ``json.dumps`` writes
``"study"``), so callers that pass or compare plain strings, JSON reports and journals
keep working; typed code gets the closed set of values.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CODECS", "CODEC_NAMES", "FileStatus", "Level", "PutStatus", "StepStatus", "StoreKind",
           "StoreStatus", "StudyStatus"]

CODECS: dict[str, tuple[str, str]] = {
    # name: (module of pacscore.codecs, transfer syntax UID)
    "htj2k": ("htj2k", "1.2.840.10008.1.2.4.202"),
    "jpegls": ("jpegls", "1.2.840.10008.1.2.4.80"),
    "j2k": ("j2k", "1.2.840.10008.1.2.4.90"),
    "rle": ("rle", "1.2.840.10008.1.2.5"),
}
"""The codecs pacscore encodes with (:mod:`pacscore.codecs` imports each module on first
use); here, not there, so that the command line lists them without loading numpy."""

CODEC_NAMES: tuple[str, ...] = tuple(CODECS)
"""Names accepted by ``ArchiveConfig.codec`` and ``--codec`` (besides ``keep``)."""


class Level(StrEnum):
    """Query/retrieve levels of the index (PS3.4 C.6.1 Patient Root model; ``instance``
    is the IMAGE level)."""

    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class StoreKind(StrEnum):
    """How an instance's pixels are kept."""

    FRAMES = "frames"
    """Re-encoded frames in a Zarr array, plus the original header bytes."""
    BLOB = "blob"
    """The whole object exactly as received."""


class StoreStatus(StrEnum):
    """What :meth:`pacscore.Archive.store` did with an acknowledged instance."""

    STORED = "stored"
    """Stored now."""
    DUPLICATE = "duplicate"
    """Identical content was already stored (nothing changed)."""


class PutStatus(StrEnum):
    """What :meth:`pacscore.index.Index.put` did with one record."""

    STORED = "stored"
    """Committed."""
    DUPLICATE = "duplicate"
    """The same SHA-256 is already stored under this UID."""
    CONFLICT = "conflict"
    """The UID is stored with other content."""
    REFUSED = "refused"
    """It contradicts the hierarchy (a series under another study, ...)."""
    INVALID = "invalid"
    """A value the index cannot take (e.g. a Patient ID longer than LO allows)."""


class FileStatus(StrEnum):
    """What a bulk compress job did with one file."""

    COMPRESSED = "compressed"
    """Re-encoded losslessly and verified."""
    COPIED = "copied"
    """Kept unchanged (lossy, non-image, ...)."""
    FAILED = "failed"
    """Refused by the archive rules; copied unchanged."""
    OTHER = "other"
    """Not DICOM; copied."""
    UNFINISHED = "unfinished"
    """No output: it could not be read or written (not journalled)."""


class StepStatus(StrEnum):
    """Where a scheduled procedure step of the worklist stands (:mod:`pacscore.workflow`).

    Which of them a Modality Worklist query lists is the table
    :data:`pacscore.workflow.worklist.LISTED`."""

    SCHEDULED = "scheduled"
    """Ordered, not started: listed to the modalities."""
    IN_PROGRESS = "in_progress"
    """A modality started it (MPPS N-CREATE IN PROGRESS)."""
    COMPLETED = "completed"
    """Done (MPPS COMPLETED)."""
    DISCONTINUED = "discontinued"
    """Started and stopped before the end (MPPS DISCONTINUED)."""
    CANCELLED = "cancelled"
    """Withdrawn before it started (``pacscore worklist cancel``, an order cancel)."""


class StudyStatus(StrEnum):
    """Where an ordered study stands (:mod:`pacscore.workflow.studies`), derived from
    its worklist items, the performed procedure steps that drove them, and what the
    archive holds for it."""

    SCHEDULED = "scheduled"
    """Ordered; nothing performed, no image stored."""
    ARRIVED = "arrived"
    """Images are stored for it, no procedure step reported started."""
    IN_PROGRESS = "in_progress"
    """A step is started (MPPS IN PROGRESS), or some are done and others not."""
    COMPLETED = "completed"
    """Every step done (MPPS COMPLETED; discontinued ones aside)."""
    REPORTED = "reported"
    """A structured report (Modality SR) is stored for it."""
    DISCONTINUED = "discontinued"
    """Every step stopped before the end, nothing stored."""
    CANCELLED = "cancelled"
    """Every step cancelled, nothing stored."""
    UNRECONCILED = "unreconciled"
    """A study in the archive that matches no order (Study Instance UID, Accession
    Number)."""
