"""Worker side of bulk ingest: one file in, one small outcome out.

Tasks run on the job engine (forkserver pool or Dask): no LMDB environment, thread
or socket of the parent is inherited; each task opens the FrameStore (staging only)
and returns a small result, so no pixel array crosses a process boundary.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Generator, Iterable
from dataclasses import replace
from pathlib import Path

from ..config import ArchiveConfig
from ..dicom.scan import looks_like_dicom
from ..errors import ArchiveStorageError, LimitExceededError, PacsError, WorkerError
from ..store.zarr_store import ZarrFrameStore
from .outcomes import Failed, Rejected, Skipped
from .prepare import Prepared, prepare

__all__ = ["Failed", "Outcome", "Rejected", "Skipped", "not_dicom_reason",
           "prepare_descriptor", "prepare_file", "prepare_path", "read_descriptor", "run_pool"]

Outcome = Prepared | Rejected | Skipped | Failed


def not_dicom_reason(head: bytes, size: int) -> str:
    """Why :func:`looks_like_dicom` refused ``head`` (PS3.10 7.1: a 128-byte preamble
    and "DICM", or, tolerated, a data set starting with a group 0002 or 0008 element)."""
    if not size:
        return "not DICOM: empty file"
    return (f"not DICOM: no 'DICM' prefix at byte 128 and no data set start (group "
            f"0002 or 0008) at byte 0 (first bytes: {head[:8].hex(' ')})")


def prepare_path(path: str, config: ArchiveConfig, store: ZarrFrameStore, *,
                 flush: bool = False, strict_identity: bool = False) -> Outcome:
    """Read and prepare one file (``flush``, ``strict_identity``: see :func:`prepare`);
    never raises for bad input.  What the file contains is refused with
    :class:`Rejected`; an archive that cannot be written or an input that cannot be read
    gives :class:`Failed`."""
    try:
        size = os.stat(path).st_size
        if size > config.limits.max_file_bytes:
            return Rejected(path, f"file of {size} bytes over the size limit", LimitExceededError)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return Failed(path, f"cannot read: {exc.strerror or exc} (hint: check the file and "
                            f"its permissions, then retry)", type(exc))
    return _prepare_data(data, path, config, store, flush, strict_identity)


def _prepare_data(data: bytes, source: str, config: ArchiveConfig, store: ZarrFrameStore,
                  flush: bool, strict_identity: bool) -> Outcome:
    if not looks_like_dicom(data[:132]):
        return Skipped(source, len(data), not_dicom_reason(data[:132], len(data)))
    try:
        return prepare(data, source, config, store, flush=flush,
                       strict_identity=strict_identity)
    except ArchiveStorageError as exc:
        return Failed(source, str(exc), type(exc))
    except PacsError as exc:
        return Rejected(source, f"{exc.reason} (hint: {exc.hint})", type(exc))
    except OSError as exc:  # the staging area, written outside the store's own wrapping
        return Failed(source, f"cannot write the archive: {exc} (hint: "
                              f"{ArchiveStorageError.hint})", ArchiveStorageError)
    except Exception as exc:  # catch-all on purpose: a worker's boundary, a library bug
        # must not stop the import; the file is rejected with it, the traceback logged
        import logging  # (here: the only use)
        logging.getLogger(__name__).exception("internal error while reading %s", source)
        return Rejected(source, f"internal error while reading: {type(exc).__name__}: {exc}",
                        type(exc))


def prepare_file(path: str, source: str, config: ArchiveConfig, store: ZarrFrameStore,
                 *, strict_identity: bool = False) -> Outcome:
    """Worker task of a single store: prepare ``path``, reported under ``source``."""
    outcome = prepare_path(path, config, store, flush=True,  # flushed here, in parallel
                           strict_identity=strict_identity)
    return replace(outcome, source=source)


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
                       store: ZarrFrameStore, *, strict_identity: bool = False) -> Outcome:
    """Worker task of a single store handed over as an open file (``fd``, read from
    ``offset``; closed here): the object read is the one that was received, whatever
    happens meanwhile to the name it had in a folder."""
    try:
        data = read_descriptor(fd, offset, config.limits.max_file_bytes)
    except OSError as exc:
        return Failed(source, f"cannot read: {exc.strerror or exc}", type(exc))
    finally:
        os.close(fd)
    return replace(_prepare_data(data, source, config, store, True, strict_identity),
                   source=source)


def _prepare_task(config: ArchiveConfig, frames_root: str, path: str) -> Outcome:
    return prepare_path(path, config, ZarrFrameStore(frames_root, fsync=config.fsync))


def run_pool(paths: Iterable[str], config: ArchiveConfig, frames_root: Path,
             workers: int, dask_address: str | None = None
             ) -> Generator[Outcome, None, None]:
    """Prepare ``paths`` in ``workers`` processes (0: in this process), unordered, with
    a bounded number in flight (the job engine of :mod:`pacscore.jobs.engine`)."""
    from ..jobs.engine import run_tasks

    task = functools.partial(_prepare_task, config, str(frames_root))
    return run_tasks(task, paths, workers=workers, dask_address=dask_address,
                     on_error=_task_failed)


def _task_failed(path: str, reason: str) -> Outcome:
    """Outcome of a file on which two worker processes died (or whose task raised)."""
    return Rejected(path, f"{reason}; nothing of it was stored (hint: the file probably "
                          f"crashes a codec library: report it with the file; a resumed "
                          f"job tries it again)", WorkerError)
