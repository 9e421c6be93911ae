"""pacscore: a DICOM archive engine with verified lossless transcoding.

The public API is :class:`Archive`; everything else is reached through it.  The
archive engine (numba kernels, zarr, pydicom, the codecs) is imported on first use of
a name below, not by ``import pacscore``.
"""

from typing import TYPE_CHECKING

from ._lazy import attributes
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

if TYPE_CHECKING:
    from .archive import Archive, StoreResult, VerifyReport
    from .config import ArchiveConfig, Limits

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

__getattr__, __dir__ = attributes(__name__, {
    "Archive": ".archive", "StoreResult": ".archive", "VerifyReport": ".archive",
    "ArchiveConfig": ".config", "Limits": ".config",
})
