"""The pacscore exception tree.

Every error is a :class:`PacsError` *and* the builtin it resembles, so callers can
catch either (``except KeyError`` still works for a missing instance).  Each class
carries a ``hint`` telling the operator what to do about it; front ends map the
classes to their own status codes through one table each.
"""

from __future__ import annotations

__all__ = [
    "ArchiveBusyError",
    "ArchiveCorruptError",
    "ArchiveStorageError",
    "ConflictError",
    "DuplicateInstanceError",
    "HL7MessageError",
    "IdentityMismatchError",
    "InvalidAttributeValueError",
    "IndexUnavailableError",
    "InvalidDicomError",
    "InvalidRequestError",
    "InvalidUIDError",
    "LimitExceededError",
    "MissingAttributeError",
    "MissingAttributeValueError",
    "NoSuchFrameError",
    "NotFoundError",
    "ObjectStorageError",
    "PacsError",
    "ProcedureStepError",
    "ProcedureStepFinalError",
    "RenderError",
    "TruncatedFileError",
    "UndecodablePixelDataError",
    "UnknownIndexError",
    "UnknownStoreError",
    "UnsafeFolderError",
    "UnsupportedTransferSyntaxError",
    "WorkerError",
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


class IdentityMismatchError(InvalidDicomError):
    """What announces an object (the File Meta's Media Storage SOP Class/Instance UIDs,
    a C-STORE request's Affected SOP Class/Instance UIDs) names another object than
    its data set is (PS3.10 7.1, PS3.4 C.4.2.1.4.2): acknowledging the one and storing
    the other would lose an instance."""

    hint = ("the sender must announce the SOP Class and Instance UIDs of the data set it "
            "sends (fix its File Meta or request); nothing was stored")


class LimitExceededError(InvalidDicomError):
    """The object asks for more than the configured limits allow."""

    hint = "raise the limit in ArchiveConfig if the object is genuine"


class InvalidRequestError(PacsError, ValueError):
    """The client's request is malformed: a parameter, query key, frame list, path or
    body that the standard (or pacscore) does not define, or that names what the
    object has not.  Front ends answer it as the client's error (HTTP 400, gRPC
    INVALID_ARGUMENT, a DIMSE refusal); a bare ``ValueError`` is never taken for one.

    Also a ``ValueError``, as every class here is also the builtin it resembles: API
    callers that catch ``ValueError`` (an unknown level, a bad window) keep working.
    The status tables look up the raised class's own ancestry, so a library's bare
    ``ValueError`` does not match this class and stays an internal error.
    """

    hint = "fix the request as the message says; nothing was changed"


class HL7MessageError(InvalidRequestError):
    """An HL7 v2 message the archive refuses (the MLLP door answers it with an ACK
    whose ERR segment carries :attr:`code` and :attr:`location`).

    ``code`` is from HL7 Table 0357 (100 segment sequence error, 101 required field
    missing, 102 data type error, 103 table value not found, 200 unsupported message
    type, 201 unsupported event code, 202 unsupported processing id, 203 unsupported
    version id, 204 unknown key identifier, 205 duplicate key identifier, 207
    application internal error); ``location`` names the segment and field
    (``PID-3``, ``MSH-12``)."""

    hint = "fix the message as the ERR segment says and send it again"

    def __init__(self, message: str, *, code: int = 207, location: str = "",
                 source: str | None = None, hint: str | None = None):
        self.code, self.location = code, location
        super().__init__(message, source=source, hint=hint)


class ProcedureStepError(InvalidRequestError):
    """A Modality Performed Procedure Step request the workflow refuses (PS3.4 F.7.2);
    the DIMSE door answers each subclass with its own N-CREATE/N-SET status.
    :attr:`tags` name the attributes at fault (the response's Attribute Identifier
    List)."""

    hint = "fix the attributes the message names and send the request again"

    def __init__(self, message: str, *, tags: tuple[int, ...] = (),
                 source: str | None = None, hint: str | None = None):
        self.tags = tags
        super().__init__(message, source=source, hint=hint)


class MissingAttributeError(ProcedureStepError):
    """An attribute the request must hold (Type 1 or 2 of PS3.4 Table F.7.2-1) is
    absent."""

    hint = "send the attributes PS3.4 Table F.7.2-1 requires for this request"


class MissingAttributeValueError(MissingAttributeError):
    """A Type 1 attribute is present without a value (at N-CREATE, or in the final
    state COMPLETED/DISCONTINUED)."""

    hint = "give the attributes the message names a value"


class InvalidAttributeValueError(ProcedureStepError):
    """A value the procedure step cannot take (a status other than IN PROGRESS at
    N-CREATE, an unknown status, a change to an attribute N-SET may not change)."""


class DuplicateInstanceError(ProcedureStepError):
    """A Performed Procedure Step with this SOP Instance UID exists already."""

    hint = "create the step with a new SOP Instance UID, or N-SET the existing one"


class ProcedureStepFinalError(ProcedureStepError):
    """The Performed Procedure Step is COMPLETED or DISCONTINUED: it may no longer be
    updated (PS3.4 F.7.2.2.2)."""

    hint = "create a new Performed Procedure Step for further work"


class UnsupportedTransferSyntaxError(PacsError, ValueError):
    """No codec here can produce or read the requested transfer syntax."""

    hint = "ask for 'original', 'stored' or one of the syntaxes listed by pacscore.codecs"


class UndecodablePixelDataError(UnsupportedTransferSyntaxError):
    """A stored object's pixel data does not decode (a copy kept before pacscore
    decoded what it keeps, or damaged since): it exists only as received."""

    hint = ("retrieve it in its original transfer syntax; to replace it, delete it and "
            "send a good copy")


class NotFoundError(PacsError, KeyError):
    """No such instance, series or study in the archive."""

    hint = "check the UID with `pacscore find`"


class NoSuchFrameError(InvalidRequestError, NotFoundError):
    """A frame number the instance does not have.  The client's error (HTTP 400 as
    PS3.18 8.3.2.x asks, gRPC INVALID_ARGUMENT), and a :class:`NotFoundError` for API
    callers that catch that: the one error every way of asking for frames raises
    (:func:`pacscore.retrieve.check_frames`)."""

    hint = "frame numbers run from 1 to the instance's Number of Frames"


class ConflictError(PacsError, ValueError):
    """The SOP Instance UID is already stored with different content.

    Policy: the archive never overwrites an instance implicitly.  Delete the old one
    first if the new content is meant to replace it.
    """

    hint = "delete the stored instance first if the new content should replace it"


class ArchiveStorageError(PacsError, OSError):
    """The archive directory cannot be written (disk full, missing, read-only)."""

    hint = "free space or fix the archive directory, then retry; acknowledged data is safe"


class ObjectStorageError(ArchiveStorageError):
    """The object store (S3) did not answer, or refused a request, after its retries."""

    hint = ("check that the S3 endpoint answers and that the bucket and the credentials "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) are right, then send or run it "
            "again: nothing of a failed store was acknowledged")


class IndexUnavailableError(ArchiveStorageError, ConnectionError):
    """The index's database server cannot be reached (down, refusing, or not answering
    within the timeout)."""

    hint = ("check that the PostgreSQL server named by the index DSN is running and "
            "reachable from this host (pg_isready), then retry; acknowledged data is safe")

    committed: bool | None = None
    """Of a failed write: False when it certainly did not take place (it failed before
    its COMMIT was sent), None when it may have (the connection was lost after)."""


class UnsafeFolderError(PacsError, PermissionError):
    """A folder pacscore would keep received data in belongs to another user, or other
    users may write to it (they could read, add or swap what is received)."""

    hint = ("give a folder that belongs to the user pacscore runs as and that no one else "
            "may write to (chmod 700), or leave the setting out")


class ArchiveBusyError(ArchiveStorageError):
    """Another process holds the archive open for writing (``pacscore serve``, an
    import): this one may read it but not write it."""

    hint = ("send the data through the running service (DIMSE, STOW-RS, gRPC), or stop "
            "the other process first")


class ArchiveCorruptError(PacsError, RuntimeError):
    """Stored data does not match its checksum."""

    hint = "restore the named instance from a replica or re-send it from the source"


class WorkerError(PacsError, RuntimeError):
    """Worker processes of a bulk job could not start, or died on an input."""

    hint = ("fix the Python environment the worker processes start in (their error is "
            "printed on stderr: a broken or partial installation, PYTHONPATH, a "
            "sitecustomize), or run with --workers 0; then run the job again with --resume")


class UnknownStoreError(PacsError, LookupError):
    """A frame store spec names no known :class:`~pacscore.store.FrameStore`."""

    hint = ("use one of the kinds in pacscore.store.spec.STORE_KINDS, or register the "
            "implementation there as 'module:Class'")


class UnknownIndexError(PacsError, LookupError):
    """An index spec names no known :class:`~pacscore.index.Index`, or its package is
    not installed."""

    hint = ("use one of the kinds in pacscore.index.spec.INDEX_KINDS (a PostgreSQL index: "
            "postgresql://user@host:5432/database)")


class RenderError(PacsError, RuntimeError):
    """A stored image cannot be shown as an 8-bit picture: its pixel data does not
    decode, or its photometric interpretation or lookup tables are not usable."""

    hint = ("retrieve the object as application/dicom; if it should render, check it "
            "with `pacscore verify` and report the named instance")
