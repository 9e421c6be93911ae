"""Worker side of bulk ingest: one file in, one small outcome out.

Tasks run on the job engine (forkserver pool or Dask): no LMDB environment, thread
or socket of the parent is inherited; each task opens the FrameStore (staging only)
and returns a small result, so no pixel array crosses a process boundary.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ArchiveConfig
from ..dicom.scan import looks_like_dicom
from ..errors import PacsError
from ..store.zarr_store import ZarrFrameStore
from .prepare import Prepared, prepare

__all__ = ["Outcome", "Rejected", "Skipped", "prepare_file", "prepare_path", "run_pool"]


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

def prepare_path(path: str, config: ArchiveConfig, store: ZarrFrameStore, *,
                 flush: bool = False) -> Outcome:
    """Read and prepare one file (``flush``: see :func:`prepare`); never raises for bad
    input."""
    try:
        size = os.stat(path).st_size
        if size > config.limits.max_file_bytes:
            return Rejected(path, f"file of {size} bytes over the size limit", "LimitExceeded")
        with open(path, "rb") as f:
            data = f.read()
        if not looks_like_dicom(data[:132]):
            return Skipped(path, size)
        return prepare(data, path, config, store, flush=flush)
    except PacsError as exc:
        return Rejected(path, f"{exc.reason} (hint: {exc.hint})", type(exc).__name__)
    except OSError as exc:
        return Rejected(path, f"cannot read: {exc.strerror or exc}", type(exc).__name__)
    except Exception as exc:  # a library bug must not stop the import
        return Rejected(path, f"internal error while reading: {type(exc).__name__}: {exc}",
                        type(exc).__name__)


def prepare_file(path: str, source: str, config: ArchiveConfig,
                 store: ZarrFrameStore) -> Outcome:
    """Worker task of a single store: prepare ``path``, reported under ``source``."""
    outcome = prepare_path(path, config, store, flush=True)  # flushed here, in parallel
    if isinstance(outcome, Prepared):
        return replace(outcome, source=source)
    if isinstance(outcome, Rejected):
        return Rejected(source, outcome.reason, outcome.error)
    return outcome


def _prepare_task(config: ArchiveConfig, frames_root: str, path: str) -> Outcome:
    return prepare_path(path, config, ZarrFrameStore(frames_root, fsync=config.fsync))


def run_pool(paths: Iterable[str], config: ArchiveConfig, frames_root: Path,
             workers: int, dask_address: str | None = None) -> Iterator[Outcome]:
    """Prepare ``paths`` in ``workers`` processes (0: in this process), unordered, with
    a bounded number in flight (the job engine of :mod:`pacscore.jobs.engine`)."""
    from ..jobs.engine import run_tasks

    task = functools.partial(_prepare_task, config, str(frames_root))
    return run_tasks(task, paths, workers=workers, dask_address=dask_address,
                     on_error=_task_failed)


def _task_failed(path: str, reason: str) -> Outcome:
    return Rejected(path, f"{reason}; nothing of it was stored", "ArchiveStorageError")
