"""Worker side of ingest: one file in, one small outcome out.

Tasks run in worker processes (:mod:`pacscore.workers`: the long-lived pool of single
stores, a bulk job's pool, or Dask): no LMDB environment, thread or socket of the
parent is inherited.  A task carries the settings and a :class:`StoreSpec`, opens the
FrameStore it names once in the process that runs it and stages through the
FrameStore contract only; it returns a small result, so no pixel array crosses a
process boundary.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Generator, Iterable
from dataclasses import replace

from ..config import ArchiveConfig
from ..dicom.scan import looks_like_dicom
from ..errors import ArchiveStorageError, LimitExceededError, PacsError, WorkerError
from ..store.base import FrameStore
from ..store.spec import StoreSpec
from ..workers import Handed, run_tasks
from .outcomes import Failed, Prepared, Rejected, Skipped

__all__ = ["Failed", "Outcome", "PrepareTask", "Rejected", "SingleStoreTask", "Skipped",
           "not_dicom_reason", "prepare_descriptor", "prepare_file", "prepare_path",
           "read_descriptor", "run_pool"]

Outcome = Prepared | Rejected | Skipped | Failed


def not_dicom_reason(head: bytes, size: int) -> str:
    """Why :func:`looks_like_dicom` refused ``head`` (PS3.10 7.1: a 128-byte preamble
    and "DICM", or, tolerated, a data set starting with a group 0002 or 0008 element)."""
    if not size:
        return "not DICOM: empty file"
    return (f"not DICOM: no 'DICM' prefix at byte 128 and no data set start (group "
            f"0002 or 0008) at byte 0 (first bytes: {head[:8].hex(' ')})")


def prepare_path(path: str, config: ArchiveConfig, store: FrameStore, *,
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


def _prepare_data(data: bytes, source: str, config: ArchiveConfig, store: FrameStore,
                  flush: bool, strict_identity: bool) -> Outcome:
    if not looks_like_dicom(data[:132]):
        return Skipped(source, len(data), not_dicom_reason(data[:132], len(data)))
    from .prepare import prepare  # the kernels and codecs: preloaded where workers fork
    # (the parent of a pooled import never needs them: 0.9 s of its start-up)
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


def prepare_file(path: str, source: str, config: ArchiveConfig, store: FrameStore,
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
                       store: FrameStore, *, strict_identity: bool = False) -> Outcome:
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


class _StoreTask:
    """A picklable task: the settings and the spec of the store; the store itself is
    opened on first use in the process that runs the task, then kept there."""

    __slots__ = ("_store", "config", "remote", "spec")

    def __init__(self, config: ArchiveConfig, spec: StoreSpec):
        self.config, self.spec = config, spec
        self._store: FrameStore | None = None
        self.remote = False
        """Unpickled in another process than the one that commits its outcomes."""

    def __getstate__(self) -> tuple[ArchiveConfig, StoreSpec]:
        return self.config, self.spec

    def __setstate__(self, state: tuple[ArchiveConfig, StoreSpec]) -> None:
        from . import prepare  # noqa: F401 - in the worker, before it says it is ready:
        # one that cannot import the pipeline dies unready (a broken installation)
        self.config, self.spec = state
        self._store = None
        self.remote = True

    @property
    def store(self) -> FrameStore:
        if self._store is None:
            self._store = self.spec.open()
        return self._store


class PrepareTask(_StoreTask):
    """Task of a bulk import: a path in, its outcome out (flushed by the caller, a
    batch at a time)."""

    __slots__ = ()

    def __call__(self, path: str) -> Outcome:
        outcome = prepare_path(path, self.config, self.store)
        if self.remote and isinstance(outcome, Prepared):  # its writes end here
            try:
                self.store.handoff(outcome.record.location)
            except ArchiveStorageError as exc:
                with contextlib.suppress(ArchiveStorageError):  # else: gc, next start
                    self.store.discard([outcome.record.location])
                return Failed(path, str(exc), type(exc))
        return outcome


class SingleStoreTask(_StoreTask):
    """Task of a single store from a front end, flushed here (in parallel): ``(path,
    source, strict)``, or an open file as ``Handed((source, strict, offset), fd)``
    (``strict``: see :func:`~pacscore.ingest.prepare.prepare`)."""

    __slots__ = ()

    def __call__(self, item: tuple[str, str, bool] | Handed) -> Outcome:
        if isinstance(item, Handed):
            source, strict, offset = item.payload
            return prepare_descriptor(item.fd, offset, source, self.config, self.store,
                                      strict_identity=strict)
        path, source, strict = item
        return prepare_file(path, source, self.config, self.store, strict_identity=strict)


def run_pool(paths: Iterable[str], config: ArchiveConfig, store: StoreSpec,
             workers: int, dask_address: str | None = None
             ) -> Generator[Outcome, None, None]:
    """Prepare ``paths`` in ``workers`` processes (0: in this process), unordered, with
    a bounded number in flight, staging into the store ``store`` names."""
    return run_tasks(PrepareTask(config, store), paths, workers=workers,
                     dask_address=dask_address, on_error=_task_failed)


def _task_failed(path: str, reason: str) -> Outcome:
    """Outcome of a file on which two worker processes died (or whose task raised)."""
    return Rejected(path, f"{reason}; nothing of it was stored (hint: the file probably "
                          f"crashes a codec library: report it with the file; a resumed "
                          f"job tries it again)", WorkerError)
