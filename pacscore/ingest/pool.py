"""Worker side of bulk ingest: one file in, one small outcome out.

Tasks run on the job engine (forkserver pool or Dask): no LMDB environment, thread
or socket of the parent is inherited; each task opens the FrameStore (staging only)
and returns a small result, so no pixel array crosses a process boundary.
"""

from __future__ import annotations

import errno
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

__all__ = ["Outcome", "Rejected", "Skipped", "prepare_descriptor", "prepare_file", "prepare_path",
           "read_descriptor", "run_pool"]


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
                 flush: bool = False, strict_identity: bool = False) -> Outcome:
    """Read and prepare one file (``flush``, ``strict_identity``: see :func:`prepare`);
    never raises for bad input."""
    try:
        size = os.stat(path).st_size
        if size > config.limits.max_file_bytes:
            return Rejected(path, f"file of {size} bytes over the size limit", "LimitExceeded")
        with open(path, "rb") as f:
            data = f.read()
        return _prepare_data(data, path, config, store, flush, strict_identity)
    except OSError as exc:
        return Rejected(path, f"cannot read: {exc.strerror or exc}", type(exc).__name__)


def _prepare_data(data: bytes, source: str, config: ArchiveConfig, store: ZarrFrameStore,
                  flush: bool, strict_identity: bool) -> Outcome:
    try:
        if not looks_like_dicom(data[:132]):
            return Skipped(source, len(data))
        return prepare(data, source, config, store, flush=flush,
                       strict_identity=strict_identity)
    except PacsError as exc:
        return Rejected(source, f"{exc.reason} (hint: {exc.hint})", type(exc).__name__)
    except OSError as exc:
        return Rejected(source, f"cannot read: {exc.strerror or exc}", type(exc).__name__)
    except Exception as exc:  # a library bug must not stop the import
        return Rejected(source, f"internal error while reading: {type(exc).__name__}: {exc}",
                        type(exc).__name__)


def prepare_file(path: str, source: str, config: ArchiveConfig,
                 store: ZarrFrameStore) -> Outcome:
    """Worker task of a single store: prepare ``path``, reported under ``source``."""
    outcome = prepare_path(path, config, store, flush=True,  # flushed here, in parallel
                           strict_identity=True)
    if isinstance(outcome, Prepared):
        return replace(outcome, source=source)
    if isinstance(outcome, Rejected):
        return Rejected(source, outcome.reason, outcome.error)
    return outcome


def read_descriptor(fd: int, offset: int, limit: int) -> bytes:
    """The bytes of the open file ``fd`` from ``offset`` to its end (``pread``: the
    file position, shared with the process that handed the descriptor over, does not
    move); OSError for more than ``limit`` bytes."""
    size = os.fstat(fd).st_size - offset
    if size > limit:
        raise OSError(errno.EFBIG, f"file of {size} bytes over the size limit")
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, min(size - done, 1 << 30), offset + done)
        if not chunk:
            break  # cut short meanwhile: what is there is scanned (and refused)
        chunks.append(chunk)
        done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def prepare_descriptor(fd: int, offset: int, source: str, config: ArchiveConfig,
                       store: ZarrFrameStore) -> Outcome:
    """Worker task of a single store handed over as an open file (``fd``, read from
    ``offset``; closed here): the object read is the one that was received, whatever
    happens meanwhile to the name it had in a folder."""
    try:
        data = read_descriptor(fd, offset, config.limits.max_file_bytes)
    except OSError as exc:
        return Rejected(source, f"cannot read: {exc.strerror or exc}", type(exc).__name__)
    finally:
        os.close(fd)
    outcome = _prepare_data(data, source, config, store, True, True)
    return replace(outcome, source=source) if isinstance(outcome, Prepared) else outcome


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
