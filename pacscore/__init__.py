"""pacscore: a DICOM archive engine with verified lossless transcoding.

The public API is :class:`Archive`; everything else is reached through it.
"""

from .archive import Archive, StoreResult, VerifyReport
from .config import ArchiveConfig, Limits
from .errors import (
    ArchiveBusyError,
    ArchiveCorruptError,
    ArchiveStorageError,
    ConflictError,
    InvalidDicomError,
    InvalidUIDError,
    LimitExceededError,
    NotFoundError,
    PacsError,
    TruncatedFileError,
    UnsupportedTransferSyntaxError,
)

__all__ = [
    "Archive",
    "ArchiveConfig",
    "ArchiveBusyError",
    "ArchiveCorruptError",
    "ArchiveStorageError",
    "ConflictError",
    "InvalidDicomError",
    "InvalidUIDError",
    "LimitExceededError",
    "Limits",
    "NotFoundError",
    "PacsError",
    "StoreResult",
    "TruncatedFileError",
    "UnsupportedTransferSyntaxError",
    "VerifyReport",
]
__version__ = "0.1.0"
