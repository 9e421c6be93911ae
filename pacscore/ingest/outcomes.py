"""What became of an input that was not stored: refused, skipped or failed.

Small frozen values that cross process boundaries (a worker returns them): the error
travels as its class, which pickles by reference, so the parent re-raises exactly the
class the worker met (no lookup by name).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import (
    ArchiveStorageError,
    ConflictError,
    InvalidDicomError,
    PacsError,
    UnsupportedTransferSyntaxError,
)

__all__ = ["Failed", "Rejected", "Skipped"]

_CONTENT_ERRORS = (InvalidDicomError, UnsupportedTransferSyntaxError, ConflictError)
"""Refusals of what a file contains: the same file is refused again, whenever it is
tried (a bulk job's journal records them as done)."""


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
