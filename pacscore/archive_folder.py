"""The archive's folder: its writer lock, the check that a folder holds an archive, and
the descriptor of a stream that is a regular file (out of :mod:`pacscore.archive`)."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import ArchiveStorageError

__all__ = ["file_descriptor", "require_archive", "writer_lock"]


def writer_lock(root: Path) -> int | None:
    """Take the archive's writer lock (``flock`` on ``root/archive.lock``, released by
    the kernel if the process dies); ``None`` when another process holds it.  Only the
    writer recovers at open: a second process cleaning up the first one's staged or
    pending frames mid-commit would lose acknowledged data."""
    fd = os.open(root / "archive.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def require_archive(root: Path, *, own_index: bool = True) -> None:
    """Raise unless ``root`` holds an archive (``index.lmdb/data.mdb``; with an index
    elsewhere, ``own_index=False``: the folder): a reader never creates one, so a
    mistyped path is an error rather than an empty archive."""
    found = (root / "index.lmdb" / "data.mdb").is_file() if own_index else root.is_dir()
    if not found:
        what = "does not exist" if not root.exists() else "is not a pacscore archive " \
            "(it has no index.lmdb/data.mdb)"
        raise ArchiveStorageError(
            f"{root} {what}",
            hint="check the path; an archive is created by `pacscore import FILES "
                 "--archive DIR` or `pacscore serve --archive DIR` (or Archive(DIR) in "
                 "Python)")


def file_descriptor(stream: BinaryIO) -> int | None:
    """The descriptor of ``stream`` when it is an open regular file, else None."""
    try:
        fd = stream.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
