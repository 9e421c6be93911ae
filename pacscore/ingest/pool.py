"""Worker processes for bulk ingest.

Workers come from a forkserver whose only preloaded module is the prepare step, so
no LMDB environment, thread or socket of the parent is ever inherited.  Each worker
opens its own FrameStore (staging only) and returns small results: no pixel array
crosses a process boundary.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import ArchiveConfig
from ..dicom.scan import looks_like_dicom
from ..errors import PacsError
from ..store.zarr_store import ZarrFrameStore
from .prepare import Prepared, prepare

__all__ = ["Outcome", "Rejected", "Skipped", "prepare_path", "run_pool"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input refused, with the reason."""

    source: str
    """File path or client description."""
    reason: str
    """What is wrong, and the hint."""
    error: str
    """Exception class name."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file that is not DICOM (folder imports count and skip these)."""

    source: str
    """File path."""
    size: int
    """Its size in bytes."""


Outcome = Prepared | Rejected | Skipped

_worker: tuple[ArchiveConfig, ZarrFrameStore] | None = None


def prepare_path(path: str, config: ArchiveConfig, store: ZarrFrameStore) -> Outcome:
    """Read and prepare one file; never raises for bad input."""
    try:
        size = os.stat(path).st_size
        if size > config.limits.max_file_bytes:
            return Rejected(path, f"file of {size} bytes over the size limit", "LimitExceeded")
        with open(path, "rb") as f:
            data = f.read()
        if not looks_like_dicom(data[:132]):
            return Skipped(path, size)
        return prepare(data, path, config, store)
    except PacsError as exc:
        return Rejected(path, f"{exc.reason} (hint: {exc.hint})", type(exc).__name__)
    except OSError as exc:
        return Rejected(path, f"cannot read: {exc.strerror or exc}", type(exc).__name__)
    except Exception as exc:  # a library bug must not stop the import
        return Rejected(path, f"internal error while reading: {type(exc).__name__}: {exc}",
                        type(exc).__name__)


def _init(config: ArchiveConfig, frames_root: str) -> None:
    global _worker
    _worker = (config, ZarrFrameStore(frames_root, fsync=config.fsync))


def _work(path: str) -> Outcome:
    assert _worker is not None
    return prepare_path(path, *_worker)


def run_pool(paths: Iterable[str], config: ArchiveConfig, frames_root: Path,
             workers: int) -> Iterator[Outcome]:
    """Prepare ``paths`` in ``workers`` processes (0: in this process), unordered."""
    if workers <= 0:
        store = ZarrFrameStore(frames_root, fsync=config.fsync)
        for path in paths:
            yield prepare_path(path, config, store)
        return
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pacscore.ingest.prepare"])
    with ctx.Pool(workers, initializer=_init, initargs=(config, str(frames_root))) as pool:
        yield from pool.imap_unordered(_work, paths, chunksize=2)
