"""An archive's index opened by a reader (``Archive(..., readonly=True)``), beside a
writer when LMDB allows it, with a shared lock on ``archive.lock`` when it does not."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import ArchiveBusyError, ArchiveStorageError
from .lmdb_index import LmdbIndex

__all__ = ["open_readonly"]


def open_readonly(root: Path, map_size: int) -> tuple[LmdbIndex, int | None]:
    """The index opened read-only, and the descriptor of a shared lock on
    ``archive.lock`` (or None).  A reader that may write LMDB's ``lock.mdb`` registers
    in its reader table and runs beside a writer.  One that may not (a read-only mount,
    another user's archive) opens without LMDB's lock: it cannot tell a writer which
    pages it reads, so it holds a shared ``flock`` on ``archive.lock`` instead, which
    keeps a writer from starting meanwhile and fails while one runs."""
    path = root / "index.lmdb"
    lock_file = path / "lock.mdb"
    if os.access(lock_file if lock_file.exists() else path, os.W_OK):
        return LmdbIndex(path, map_size=map_size, readonly=True), None
    fd = None
    try:
        fd = os.open(root / "archive.lock", os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        fd = None  # an archive no writer ever locked: none runs
    except BlockingIOError:
        os.close(fd)  # type: ignore[arg-type]
        raise ArchiveBusyError(
            f"{root} is being written by another process, and this user cannot write "
            f"{lock_file} to read beside it safely",
            hint="read it when the writer has stopped, or as a user who may write "
                 "index.lmdb/lock.mdb") from None
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        raise ArchiveStorageError(f"cannot open {root / 'archive.lock'}: {exc}") from exc
    try:
        return LmdbIndex(path, map_size=map_size, readonly=True,
                         lock=False), fd
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
