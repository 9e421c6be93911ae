"""The pacscore exception tree.

Every error is a :class:`PacsError` *and* the builtin it resembles, so callers can
catch either (``except KeyError`` still works for a missing instance).  Each class
carries a ``hint`` telling the operator what to do about it; front ends map the
classes to their own status codes through one table each.
"""

from __future__ import annotations

__all__ = [
    "ERRORS_BY_NAME",
    "ArchiveBusyError",
    "ArchiveCorruptError",
    "ArchiveStorageError",
    "ConflictError",
    "InvalidDicomError",
    "InvalidUIDError",
    "LimitExceededError",
    "NotFoundError",
    "PacsError",
    "RenderError",
    "TruncatedFileError",
    "UnsupportedTransferSyntaxError",
]


class PacsError(Exception):
    """Base of every error pacscore raises on purpose."""

    hint: str = "see the message"

    def __init__(self, message: str, *, source: str | None = None, hint: str | None = None):
        self.source = source
        if hint is not None:
            self.hint = hint
        self.reason = message
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{message} (hint: {self.hint})")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidDicomError(PacsError, ValueError):
    """The input is not a readable DICOM Part-10 object or its header is inconsistent."""

    hint = "the sender must fix the object; nothing was stored"


class TruncatedFileError(InvalidDicomError):
    """The object ends before what its header declares."""

    hint = "the file is incomplete: send it again from the source; nothing was stored"


class InvalidUIDError(InvalidDicomError):
    """A UID breaks the PS3.5 9.1 grammar (digits and dots, at most 64 characters)."""

    hint = "UIDs must be digits and dots, no leading zeros, at most 64 characters"


class LimitExceededError(InvalidDicomError):
    """The object asks for more than the configured limits allow."""

    hint = "raise the limit in ArchiveConfig if the object is genuine"


class UnsupportedTransferSyntaxError(PacsError, ValueError):
    """No codec here can produce or read the requested transfer syntax."""

    hint = "ask for 'original', 'stored' or one of the syntaxes listed by pacscore.codecs"


class NotFoundError(PacsError, KeyError):
    """No such instance, series or study in the archive."""

    hint = "check the UID with `pacscore find`"


class ConflictError(PacsError, ValueError):
    """The SOP Instance UID is already stored with different content.

    Policy: the archive never overwrites an instance implicitly.  Delete the old one
    first if the new content is meant to replace it.
    """

    hint = "delete the stored instance first if the new content should replace it"


class ArchiveStorageError(PacsError, OSError):
    """The archive directory cannot be written (disk full, missing, read-only)."""

    hint = "free space or fix the archive directory, then retry; acknowledged data is safe"


class ArchiveBusyError(ArchiveStorageError):
    """Another process holds the archive open for writing (``pacscore serve``, an
    import): this one may read it but not write it."""

    hint = ("send the data through the running service (DIMSE, STOW-RS, gRPC), or stop "
            "the other process first")


class ArchiveCorruptError(PacsError, RuntimeError):
    """Stored data does not match its checksum."""

    hint = "restore the named instance from a replica or re-send it from the source"


class RenderError(PacsError, RuntimeError):
    """A stored image cannot be shown as an 8-bit picture: its pixel data does not
    decode, or its photometric interpretation or lookup tables are not usable."""

    hint = ("retrieve the object as application/dicom; if it should render, check it "
            "with `pacscore verify` and report the named instance")


ERRORS_BY_NAME: dict[str, type[PacsError]] = {
    cls.__name__: cls for cls in (
        PacsError, InvalidDicomError, TruncatedFileError, InvalidUIDError, LimitExceededError,
        UnsupportedTransferSyntaxError, NotFoundError, ConflictError, ArchiveStorageError,
        ArchiveBusyError, ArchiveCorruptError, RenderError)
}
"""Error classes by name, to re-raise what a worker process reported."""
