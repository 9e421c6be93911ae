"""What became of an input: acknowledged (:class:`StoreResult`), or refused, skipped or
failed.

Small frozen values that cross process boundaries (a worker returns them): the error
travels as its class, which pickles by reference, so the parent re-raises exactly the
class the worker met (no lookup by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import (
    ArchiveStorageError,
    ConflictError,
    InvalidDicomError,
    PacsError,
    UnsupportedTransferSyntaxError,
)
from ..kinds import StoreKind, StoreStatus

if TYPE_CHECKING:
    from ..index.records import InstanceRecord

__all__ = ["Failed", "Prepared", "Rejected", "Skipped", "StoreResult", "result"]

_CONTENT_ERRORS = (InvalidDicomError, UnsupportedTransferSyntaxError, ConflictError)
"""Refusals of what a file contains: the same file is refused again, whenever it is
tried (a bulk job's journal records them as done)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """An instance staged and ready to be committed (small: no pixels), as
    :func:`~pacscore.ingest.prepare.prepare` returns it."""

    record: InstanceRecord
    """What goes into the index."""
    header: bytes
    """Packed :class:`~pacscore.dicom.part10.HeaderParts` (empty for blobs)."""
    source: str
    """Where it came from (file path or client description)."""
    durable: bool = False
    """Its staged data is on disk already (:meth:`~pacscore.store.FrameStore.make_durable`)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input refused, with the reason."""

    source: str
    """File path or client description."""
    reason: str
    """What is wrong, and the hint."""
    error: type[Exception]
    """The exception class met: a :class:`~pacscore.errors.PacsError` subclass, or for
    an internal error (a library bug) the class the library raised."""

    @property
    def permanent(self) -> bool:
        """Refused for what the file contains (trying it again gives the same answer);
        False for an internal error or a file on which worker processes died, which a
        later run may store."""
        return issubclass(self.error, _CONTENT_ERRORS)

    def exception(self, source: str | None = None) -> PacsError:
        """The error to raise for it (:class:`~pacscore.errors.InvalidDicomError` for an
        internal error), under ``source`` (default: :attr:`source`)."""
        cls = self.error if issubclass(self.error, PacsError) else InvalidDicomError
        return cls(self.reason, source=self.source if source is None else source)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file that is not DICOM (folder imports count and skip these)."""

    source: str
    """File path."""
    size: int
    """Its size in bytes."""
    reason: str = "not DICOM"
    """Why it was taken for something else than DICOM."""


@dataclass(frozen=True, slots=True)
class Failed:
    """An input not stored for a reason outside the file: the archive could not be
    written (no space, an I/O error), the input could not be read, or the worker
    processes failed.  Nothing of it is visible; trying it again later may store it
    (a bulk job does not journal it, so ``--resume`` retries it)."""

    source: str
    """File path."""
    reason: str
    """What failed, and the hint."""
    error: type[Exception]
    """The exception class met (:class:`~pacscore.errors.ArchiveStorageError` when the
    archive could not be written; an :class:`OSError` class when the input could not
    be read)."""

    @property
    def storage(self) -> bool:
        """The archive could not be written: nothing more can be stored until the
        operator frees space or fixes the disk."""
        return issubclass(self.error, ArchiveStorageError)

    def exception(self, source: str | None = None) -> PacsError:
        """The error to raise for it (:class:`~pacscore.errors.ArchiveStorageError`
        unless it is a PacsError), under ``source`` (default: :attr:`source`)."""
        cls = self.error if issubclass(self.error, PacsError) else ArchiveStorageError
        return cls(self.reason, source=self.source if source is None else source)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """An acknowledged instance."""

    sop_instance_uid: str
    """SOP Instance UID."""
    study_uid: str
    """Study Instance UID."""
    series_uid: str
    """Series Instance UID."""
    status: StoreStatus
    """``stored``, or ``duplicate`` when identical content was already stored."""
    original_syntax: str
    """Transfer syntax as received."""
    stored_syntax: str
    """Transfer syntax stored."""
    bytes_in: int
    """Size as received."""
    bytes_stored: int
    """Bytes kept by the archive."""
    verified: bool
    """Every frame was re-encoded and decoded back bit for bit (False when kept as is)."""
    kept_reason: str | None
    """Why the object was kept as received, if it was."""
    source: str
    """Where it came from."""
    warnings: tuple[str, ...] = ()
    """Tolerated non-conformances."""
    sop_class_uid: str = ""
    """SOP Class UID."""


def result(rec: InstanceRecord, status: StoreStatus, source: str) -> StoreResult:
    """The acknowledgement of ``rec``, stored or found a duplicate, for ``source``."""
    return StoreResult(
        rec.sop_instance_uid, rec.study_uid, rec.series_uid, status, rec.original_syntax,
        rec.stored_syntax, rec.bytes_in, rec.bytes_stored, rec.kind == StoreKind.FRAMES,
        rec.kept_reason, source, rec.warnings, rec.sop_class_uid,
    )
