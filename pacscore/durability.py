"""Making writes durable: a batch with one call (``syncfs``), or one path at a time."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from .errors import ArchiveStorageError

__all__ = ["fsync_path", "sync_filesystem"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def sync_filesystem(path: Path) -> None:
    """Flush every dirty page of the file system holding ``path``."""
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise ArchiveStorageError(f"syncfs failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """fsync one file or directory (a directory: its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
