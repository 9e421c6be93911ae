"""Where job tasks run: in this process, a local worker pool, or a Dask cluster.

Tasks are plain picklable callables applied to small items (paths and settings);
results are small records.  Submission is bounded (a few tasks per worker in flight),
so memory stays flat whatever the size of the input stream.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Generator, Iterable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from typing import Any, TypeVar

from ..errors import WorkerError
from ..ingest.memory import keep_freed_memory
from ..ingest.workers import forkserver_context, stop_worker

__all__ = ["run_tasks"]

T = TypeVar("T")
R = TypeVar("R")


_END: Any = object()
_READY = "ready"
"""A worker's first message: it started (imported what it runs).  A worker that dies
before sending it could not start, which says nothing about the items sent to it."""


def _serve(conn: Connection, fn: Callable[[Any], Any], inherited: list[Connection]) -> None:
    """Worker loop: :data:`_READY`, then an item in, ``fn(item)`` out (or the text of an
    error raised by ``fn``, which tasks are written never to do); ``None`` or the
    parent's end stops it.  ``inherited``: parent-side pipe ends a forked child got a
    copy of; closed first, or the child would keep its own pipe open and outlive a
    killed parent."""
    for end in inherited:
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    keep_freed_memory()
    with contextlib.suppress(EOFError, KeyboardInterrupt, BrokenPipeError):
        conn.send(_READY)
        while (item := conn.recv()) is not None:
            try:
                conn.send((True, fn(item)))
            except Exception as exc:  # catch-all on purpose: a worker's boundary, reported
                # for this item (the job goes on), the traceback logged on stderr
                logging.getLogger(__name__).exception("a job task failed")
                conn.send((False, f"{type(exc).__name__}: {exc}"))


class _Worker:
    """One worker process, its pipe, and the items sent to it in order (with the number
    of workers that already died on each)."""

    def __init__(self, ctx: Any, fn: Callable[[Any], Any], others: list[_Worker]):
        self.conn: Connection
        self.conn, child = ctx.Pipe()
        forked = ctx.get_start_method() == "fork"
        inherited = [self.conn, *(w.conn for w in others)] if forked else []
        self.process = ctx.Process(target=_serve, args=(child, fn, inherited), daemon=True,
                                   name="pacscore-job")
        self.process.start()
        child.close()
        self.queue: collections.deque[tuple[Any, int]] = collections.deque()
        self.ready = False

    def send(self, item: Any, deaths: int = 0) -> None:
        self.queue.append((item, deaths))
        with contextlib.suppress(OSError):  # died: the receive side sees it and requeues
            self.conn.send(item)

    def stop(self, *, kill: bool = False) -> None:
        stop_worker(self.process, self.conn, kill=kill)


def _context(fork_safe: bool) -> Any:
    """``fork`` when the caller holds nothing a child must not inherit (no LMDB
    environment, no other thread): the workers start with every module the parent
    imported (0.7 s of imports saved per job).  ``forkserver`` otherwise."""
    if fork_safe and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return forkserver_context()


def _local(fn: Callable[[T], R], items: Iterable[T], workers: int,  # noqa: C901
           on_error: Callable[[T, str], R], fork_safe: bool, depth: int = 2
           ) -> Generator[R, None, None]:
    """Worker processes on dedicated pipes, each kept ``depth`` items ahead so that it
    never waits for the parent; no pool threads in the parent (a
    ``multiprocessing.Pool`` spent a quarter of a core there on a 2-worker compress,
    and hangs when a worker dies).  A worker that dies is replaced and its items are
    sent to the new one; an item that was at the head of the queue of two workers that
    died (a file that crashes a codec) is reported through ``on_error``.  Workers that
    die before they are ready (an environment in which they cannot import what they
    run) raise :class:`~pacscore.errors.WorkerError` once ``max(2, workers)`` in a row
    did: every item not yielded is then the caller's to report."""
    source = iter(items)
    first = next(source, _END)
    if first is _END:  # nothing to do: no worker is started (an empty import, 14.2)
        return
    source = itertools.chain((first,), source)
    ctx = _context(fork_safe)
    pool: list[_Worker] = []
    for _ in range(workers):
        pool.append(_Worker(ctx, fn, pool))
    unready = 0  # workers that died before they were ready, since one was

    def feed(worker: _Worker) -> None:
        while len(worker.queue) < depth and (item := next(source, _END)) is not _END:
            worker.send(item)

    try:
        for worker in pool:
            feed(worker)
        while busy := [w for w in pool if w.queue]:
            for ready in connection_wait([w.conn for w in busy]):
                i = next(i for i, w in enumerate(pool) if w.conn is ready)
                worker = pool[i]
                try:
                    reply: tuple[bool, Any] | str = worker.conn.recv()
                except (EOFError, OSError):
                    worker.stop(kill=True)
                    queued = list(worker.queue)
                    if not worker.ready:  # it never ran any of them
                        unready += 1
                        if unready >= max(2, workers):
                            raise WorkerError(
                                f"worker processes could not start: {unready} in a row "
                                f"exited (code {worker.process.exitcode}) before they were "
                                f"ready") from None
                    elif queued[0][1]:  # the second worker to die on it: blame it
                        yield on_error(queued.pop(0)[0],
                                       f"worker processes stopped twice on this input "
                                       f"(exit code {worker.process.exitcode})")
                    else:
                        queued[0] = (queued[0][0], 1)
                    pool[i] = _Worker(ctx, fn, [w for w in pool if w is not worker])
                    for item, n in queued:
                        pool[i].send(item, n)
                    feed(pool[i])  # its queue may be empty: the source must go on
                    continue
                if isinstance(reply, str):  # _READY
                    worker.ready, unready = True, 0
                    continue
                item, _ = worker.queue.popleft()
                feed(worker)  # before yielding: the worker goes on while the caller works
                ok, value = reply
                yield value if ok else on_error(item, str(value))
    finally:
        for worker in pool:
            worker.stop(kill=bool(worker.queue))


def _dask(fn: Callable[[T], R], items: Iterable[T], address: str, window: int
          ) -> Generator[R, None, None]:
    from distributed import Client, as_completed

    with Client(address) as client:  # type: ignore[no-untyped-call]
        it = iter(items)
        first = [client.submit(fn, item, pure=False) for item, _ in zip(it, range(window),
                                                                         strict=False)]
        pending: Any = as_completed(first)  # type: ignore[no-untyped-call]
        for future in pending:
            yield future.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.add(client.submit(fn, nxt, pure=False))


def _raise(item: object, reason: str) -> Any:
    raise RuntimeError(f"task on {item!r} failed: {reason}")


def run_tasks(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
              dask_address: str | None = None, window: int | None = None,
              on_error: Callable[[T, str], R] = _raise, fork_safe: bool = False
              ) -> Generator[R, None, None]:
    """Apply ``fn`` to every item; yield results as they complete (unordered).

    ``close()`` stops the workers at once (busy ones are killed).  ``workers`` <= 0
    runs in this process; ``dask_address`` sends the tasks to a Dask
    distributed scheduler instead of the local workers (which must see the same paths).
    ``on_error(item, reason)`` makes the result of an item whose worker process died or
    whose task raised (the default raises).  ``fork_safe``: the caller holds no LMDB
    environment or thread, so workers may be forked from it directly.

    Raises
    ------
    WorkerError
        The local worker processes cannot start (from the iterator, after the results
        of the items that were done); the caller accounts for the other items.
    """
    if dask_address:
        # Room for a whole commit batch while the caller commits, plus work per worker.
        return _dask(fn, items, dask_address, window or 4 * max(workers, 1) + 32)
    if workers <= 0:
        return (fn(item) for item in items)
    return _local(fn, items, workers, on_error, fork_safe)
