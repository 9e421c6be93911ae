"""Worker processes for single stores from network front ends.

Each worker owns one pipe; the calling thread (a DIMSE association, an HTTP request)
takes an idle worker, sends it a file path, or an open file's descriptor (a received
C-STORE data set: never a name that could be swapped in between), and waits on the
pipe for the small outcome.  Compared with a ``ProcessPoolExecutor`` there is no
manager thread and no feeder thread in the parent between the caller and the worker:
two hops fewer for each instance and much less time holding the parent's GIL, which the protocol
stacks need (profiled with ``py-spy --gil`` on C-STORE from 4 associations).

A worker that dies (killed, or a codec library crashing on an input) is replaced and
the file is tried once more; a second death fails that store with
:class:`~pacscore.errors.ArchiveStorageError` and nothing of it becomes visible (its
staged files are removed at the next start).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import queue
import signal
import threading
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..config import ArchiveConfig
from ..errors import ArchiveStorageError
from ..store.zarr_store import ZarrFrameStore
from .memory import keep_freed_memory
from .pool import Outcome, prepare_descriptor, prepare_file

__all__ = ["PrepareWorkers", "forkserver_context", "stop_worker"]


def forkserver_context() -> Any:
    """Worker processes forked from a server process that imported the ingest pipeline
    once (none of the caller's threads, LMDB environment or sockets is inherited).

    The server process is ``python -c ...``, which puts the current directory first on
    ``sys.path`` (and Python 3.11's forkserver ignores the parent's path): a folder
    named ``pacscore`` or a ``numpy.py`` where the operator runs a command would be
    imported instead of the installed package.  It is started here with
    ``PYTHONSAFEPATH`` (``-P``, no unsafe path first), which its workers inherit."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pacscore.ingest.prepare"])
    with _lock:
        before = os.environ.get("PYTHONSAFEPATH")
        os.environ["PYTHONSAFEPATH"] = "1"
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if before is None:
                del os.environ["PYTHONSAFEPATH"]
            else:
                os.environ["PYTHONSAFEPATH"] = before
    return ctx


_lock = threading.Lock()


def _serve(conn: Connection, config: ArchiveConfig, frames_root: str) -> None:
    """Worker loop: ``(path, source, strict)`` or ``(None, source, strict, offset)``
    followed by an open file's descriptor (SCM_RIGHTS) in, :data:`Outcome` out, ``None``
    to stop (``strict``: see :func:`~pacscore.ingest.prepare.prepare`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    keep_freed_memory()
    store = ZarrFrameStore(frames_root, fsync=config.fsync)
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        while (job := conn.recv()) is not None:
            path, source, strict, *offset = job
            if path is None:
                fd = reduction.recv_handle(conn)
                conn.send(prepare_descriptor(fd, offset[0], source, config, store,
                                             strict_identity=strict))
            else:
                conn.send(prepare_file(path, source, config, store, strict_identity=strict))


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    conn: Connection


class PrepareWorkers:
    """``count`` prepare processes shared by the caller threads."""

    def __init__(self, count: int, config: ArchiveConfig, frames_root: str):
        self._ctx = forkserver_context()
        self._config, self._frames_root = config, frames_root
        self._count = count
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for _ in range(count):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve, name="pacscore-prepare", daemon=True,
                                    args=(child, self._config, self._frames_root))
        process.start()
        child.close()
        return _Worker(process, parent)

    def _replace(self, worker: _Worker) -> _Worker:
        stop_worker(worker.process, worker.conn, kill=True)
        return self._spawn()

    def pids(self) -> list[int]:
        """Process IDs of the idle workers (for tests and monitoring)."""
        workers = [self._idle.get() for _ in range(self._count)]
        for w in workers:
            self._idle.put(w)
        return [w.process.pid for w in workers if w.process.pid is not None]

    def prepare(self, path: str | int, source: str, offset: int = 0, *,
                strict_identity: bool = False) -> Outcome:
        """Prepare ``path`` in a worker; the outcome is reported under ``source``.  An
        ``int`` is an open file's descriptor instead: the worker gets a duplicate of it
        (the caller keeps and closes its own) and reads from ``offset``, so it reads
        what the caller wrote, not whatever a name may point to meanwhile.

        A worker found dead is replaced and the file tried once more on the new one
        (preparing has no visible effect, so a retry is safe); a second death fails
        the store: the file itself probably crashes a codec library."""
        worker = self._idle.get()
        try:
            for attempt in (1, 2):
                try:
                    if not worker.process.is_alive():
                        worker = self._replace(worker)
                    if isinstance(path, int):
                        worker.conn.send((None, source, strict_identity, offset))
                        reduction.send_handle(worker.conn, path, worker.process.pid or 0)
                    else:
                        worker.conn.send((path, source, strict_identity))
                    outcome: Outcome = worker.conn.recv()
                    return outcome
                except BaseException as exc:
                    worker = self._replace(worker)  # its reply may still be unread
                    if not isinstance(exc, EOFError | OSError):
                        raise
                    if attempt == 2:
                        raise ArchiveStorageError(
                            f"two worker processes stopped while preparing {source} "
                            f"({exc or 'no reply'}); nothing of it was stored (hint: the "
                            f"file probably crashes a codec library: report it with the "
                            f"file)") from exc
            raise AssertionError("unreachable")
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop the workers once the running stores have finished."""
        for _ in range(self._count):
            worker = self._idle.get()
            stop_worker(worker.process, worker.conn)


def stop_worker(process: BaseProcess, conn: Connection, *, kill: bool = False) -> None:
    """Ask a worker to stop (``None`` on its pipe), wait a while, kill it if it is still
    there (or at once with ``kill``), reap it and close the pipe."""
    if not kill:
        with contextlib.suppress(OSError):
            conn.send(None)
        process.join(timeout=30)
    if process.is_alive():
        process.kill()
    process.join()
    conn.close()
