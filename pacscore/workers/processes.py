"""One worker process on its own pipe, how it starts, and what its death means.

Both shapes of pool (:mod:`pacscore.workers.pool`: the long-lived workers of single
stores and the per-job workers of bulk jobs) are built from :class:`Worker` and share
:class:`DeathPolicy`:

- **start**: ``fork`` when the caller holds nothing a child must not inherit, else a
  forkserver that imported the ingest pipeline once, started with ``PYTHONSAFEPATH``;
- **ready handshake**: a worker's first message is :data:`READY` (it imported and
  unpickled what it runs);
- **death**: the pipe's end of file; the dead worker's items go to its replacement;
- **blame**: an item at the head of the queue of two ready workers that died (a file
  that crashes a codec) is reported through the caller's ``on_error``;
  ``max(2, workers)`` workers in a row that die before they are ready (an environment
  in which they cannot import what they run) raise
  :class:`~pacscore.errors.WorkerError`.

This module imports nothing of the ingest pipeline or of the jobs: both import it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..errors import WorkerError
from .memory import keep_freed_memory

__all__ = ["READY", "DeathPolicy", "Handed", "Worker", "forkserver_context", "start_context",
           "stop_worker"]

READY = "ready"
"""A worker's first message: it started (imported what it runs).  A worker that dies
before sending it could not start, which says nothing about the items sent to it."""

PRELOAD = ("pacscore.ingest.prepare",)
"""What the forkserver imports once for all its workers (the kernels and codecs); a
name, not an import: this module stays below the ingest pipeline."""

_EXITING = 5.0
"""Seconds a worker whose pipe closed gets to exit by itself before it is killed."""

_lock = threading.Lock()


def forkserver_context() -> Any:
    """Worker processes forked from a server process that imported the ingest pipeline
    once (none of the caller's threads, LMDB environment or sockets is inherited).

    The server process is ``python -c ...``, which puts the current directory first on
    ``sys.path`` (and Python 3.11's forkserver ignores the parent's path): a folder
    named ``pacscore`` or a ``numpy.py`` where the operator runs a command would be
    imported instead of the installed package.  It is started here with
    ``PYTHONSAFEPATH`` (``-P``, no unsafe path first), which its workers inherit."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
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


def start_context(fork_safe: bool) -> Any:
    """``fork`` when the caller holds nothing a child must not inherit (no LMDB
    environment, no other thread): the workers start with every module the parent
    imported (0.7 s of imports saved per job).  ``forkserver`` otherwise."""
    if fork_safe and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return forkserver_context()


@dataclass(frozen=True, slots=True)
class Handed:
    """An item that travels with an open file (SCM_RIGHTS): the worker's task gets it
    with ``fd`` replaced by the worker's own duplicate (which the task closes); the
    sender keeps and closes its own."""

    payload: Any
    """What the task needs besides the file (picklable)."""
    fd: int
    """The open file's descriptor, in the process that holds this object."""


def _serve(conn: Connection, fn: Callable[[Any], Any], inherited: list[Connection]) -> None:
    """Worker loop: :data:`READY`, then an item in (a :class:`Handed` one followed by
    its descriptor), ``(True, fn(item))`` out, or ``(False, text)`` of an error raised
    by ``fn`` (which tasks are written never to do); ``None`` or the parent's end stops
    it.  ``inherited``: parent-side pipe ends a forked child got a copy of; closed
    first, or the child would keep its own pipe open and outlive a killed parent."""
    for end in inherited:
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    keep_freed_memory()
    with contextlib.suppress(EOFError, KeyboardInterrupt, BrokenPipeError):
        conn.send(READY)
        while (item := conn.recv()) is not None:
            if isinstance(item, Handed):
                item = Handed(item.payload, reduction.recv_handle(conn))
            try:
                conn.send((True, fn(item)))
            except Exception as exc:  # catch-all on purpose: a worker's boundary, reported
                # for this item (the caller goes on), the traceback logged on stderr
                logging.getLogger(__name__).exception("a worker task failed")
                conn.send((False, f"{type(exc).__name__}: {exc}"))


class Worker:
    """One worker process, its pipe, and the items sent to it in order (with the number
    of ready workers that already died on each)."""

    def __init__(self, ctx: Any, fn: Callable[[Any], Any], others: Sequence[Worker] = (),
                 name: str = "pacscore-worker"):
        self.conn: Connection
        self.conn, child = ctx.Pipe()
        forked = ctx.get_start_method() == "fork"
        inherited = [self.conn, *(w.conn for w in others)] if forked else []
        self.process: BaseProcess = ctx.Process(target=_serve, args=(child, fn, inherited),
                                                daemon=True, name=name)
        self.process.start()
        child.close()
        self.queue: collections.deque[tuple[Any, int]] = collections.deque()
        self.ready = False

    def send(self, item: Any, deaths: int = 0) -> None:
        """Queue ``item`` on this worker (``deaths``: workers that died on it so far)."""
        self.queue.append((item, deaths))
        with contextlib.suppress(OSError):  # died: the receive side sees it and requeues
            self.conn.send(item)
            if isinstance(item, Handed):
                reduction.send_handle(self.conn, item.fd, self.process.pid or 0)

    def receive(self) -> tuple[bool, Any] | str:
        """The next message: :data:`READY` (then :attr:`ready` is set) or ``(ok,
        value)`` for the item at the head of :attr:`queue`.  EOFError or OSError: the
        worker died."""
        reply: tuple[bool, Any] | str = self.conn.recv()
        if reply == READY:
            self.ready = True
        return reply

    def stop(self, *, kill: bool = False) -> None:
        stop_worker(self.process, self.conn, kill=kill)

    def reap(self) -> None:
        """After its pipe closed: let the process exit by itself for a moment (one that
        could not start may still be printing its error on stderr), then kill and
        reap it."""
        self.process.join(timeout=_EXITING)
        self.stop(kill=True)


class DeathPolicy:
    """What the death of a worker means for its items (shared by every caller of one
    pool; thread-safe)."""

    def __init__(self, workers: int):
        self._limit = max(2, workers)
        self._unready = 0  # workers that died before they were ready, since one was
        self._lock = threading.Lock()

    def ready(self) -> None:
        """A worker got ready: the environment can start workers."""
        with self._lock:
            self._unready = 0

    def died(self, worker: Worker) -> tuple[list[tuple[Any, int]], list[tuple[Any, str]]]:
        """The items of the dead ``worker`` to send to its replacement, with their death
        counts, and the items to report through ``on_error``, with the reason.

        Raises
        ------
        WorkerError
            ``max(2, workers)`` workers in a row died before they were ready.
        """
        queued = list(worker.queue)
        worker.queue.clear()
        if not worker.ready:  # it never ran any of them
            with self._lock:
                self._unready += 1
                unready = self._unready
            if unready >= self._limit:
                raise WorkerError(f"worker processes could not start: {unready} in a row "
                                  f"exited (code {worker.process.exitcode}) before they "
                                  f"were ready")
            return queued, []
        if not queued:
            return [], []
        (head, deaths), rest = queued[0], queued[1:]
        if deaths:  # the second worker to die on it: blame it
            return rest, [(head, f"worker processes stopped twice on this input "
                                 f"(exit code {worker.process.exitcode})")]
        return [(head, deaths + 1), *rest], []


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
