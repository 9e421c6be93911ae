"""The two shapes of worker pool, on :mod:`pacscore.workers.processes`.

- :class:`WorkerPool`: long-lived workers shared by caller threads (single stores from
  the network front ends, :class:`~pacscore.ingest.workers.PrepareWorkers`): a caller
  takes an idle worker, sends it one item and waits on its pipe.  Compared with a
  ``ProcessPoolExecutor`` there is no manager thread and no feeder thread in the parent
  between the caller and the worker: two hops fewer for each instance and much less
  time holding the parent's GIL, which the protocol stacks need (profiled with
  ``py-spy --gil`` on C-STORE from 4 associations).
- :func:`run_tasks`: the workers of one bulk job (import, compress), fed from an
  iterable, results yielded as they complete; or in this process, or on a Dask cluster
  (:mod:`pacscore.workers.dask`).

Both replace a worker that dies, send its items to the replacement, and report an item
two workers died on through ``on_error`` (:class:`~.processes.DeathPolicy`).
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import Callable, Generator, Iterable
from multiprocessing.connection import wait as connection_wait
from typing import Any, TypeVar

from .processes import DeathPolicy, Worker, start_context

__all__ = ["WorkerPool", "run_tasks"]

T = TypeVar("T")
R = TypeVar("R")

_END: Any = object()


class WorkerPool:
    """``count`` long-lived processes running ``fn``, shared by the caller threads."""

    def __init__(self, fn: Callable[[Any], Any], count: int, *, fork_safe: bool = False,
                 name: str = "pacscore-worker"):
        self._ctx = start_context(fork_safe)
        self._fn, self._count, self._name = fn, count, name
        self._policy = DeathPolicy(count)
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        for _ in range(count):
            self._idle.put(self._start())

    def _start(self) -> Worker:
        return Worker(self._ctx, self._fn, name=self._name)

    def pids(self) -> list[int]:
        """Process IDs of the idle workers (for tests and monitoring)."""
        workers = [self._idle.get() for _ in range(self._count)]
        for w in workers:
            self._idle.put(w)
        return [w.process.pid for w in workers if w.process.pid is not None]

    def run(self, item: T, on_error: Callable[[T, str], R]) -> R:
        """``fn(item)`` in an idle worker (waiting for one if none is).

        A worker found dead is replaced; one that dies on the item is replaced and the
        item sent to the new one; when that one dies too (the item probably crashes a
        codec library), or ``fn`` raised, the result is ``on_error(item, reason)``.

        Raises
        ------
        WorkerError
            ``max(2, count)`` workers in a row died before they were ready.
        """
        worker = self._idle.get()
        try:
            pending: list[tuple[Any, int]] = [(item, 0)]
            while pending:
                if not worker.process.is_alive():
                    worker.stop(kill=True)
                    worker = self._start()
                worker.send(*pending[0])
                try:
                    while isinstance(reply := worker.receive(), str):
                        self._policy.ready()
                except (EOFError, OSError):
                    worker.reap()
                    pending, blamed = self._policy.died(worker)
                    worker = self._start()
                    if blamed:
                        return on_error(*blamed[0])
                    continue
                except BaseException:  # interrupted: its reply may still be unread
                    worker.stop(kill=True)
                    worker = self._start()
                    raise
                worker.queue.popleft()
                ok, value = reply
                return value if ok else on_error(item, str(value))  # type: ignore[no-any-return]
            raise AssertionError("unreachable: an item is answered or blamed")
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop the workers once the running calls have finished."""
        for _ in range(self._count):
            self._idle.get().stop()


def _local(fn: Callable[[T], R], items: Iterable[T], workers: int,  # noqa: C901
           on_error: Callable[[T, str], R], fork_safe: bool, depth: int = 2
           ) -> Generator[R, None, None]:
    """Worker processes on dedicated pipes, each kept ``depth`` items ahead so that it
    never waits for the parent; no pool threads in the parent (a
    ``multiprocessing.Pool`` spent a quarter of a core there on a 2-worker compress,
    and hangs when a worker dies).  Deaths: see :class:`~.processes.DeathPolicy`; after
    a :class:`~pacscore.errors.WorkerError` every item not yielded is the caller's to
    report."""
    source = iter(items)
    first = next(source, _END)
    if first is _END:  # nothing to do: no worker is started (an empty import, 14.2)
        return
    source = itertools.chain((first,), source)
    ctx = start_context(fork_safe)
    policy = DeathPolicy(workers)
    pool: list[Worker] = []
    for _ in range(workers):
        pool.append(Worker(ctx, fn, pool, name="pacscore-job"))

    def feed(worker: Worker) -> None:
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
                    reply = worker.receive()
                except (EOFError, OSError):
                    worker.reap()
                    queued, blamed = policy.died(worker)
                    pool[i] = Worker(ctx, fn, [w for w in pool if w is not worker],
                                     name="pacscore-job")
                    for item, deaths in queued:
                        pool[i].send(item, deaths)
                    feed(pool[i])  # its queue may be empty: the source must go on
                    for item, reason in blamed:
                        yield on_error(item, reason)
                    continue
                if isinstance(reply, str):  # READY
                    policy.ready()
                    continue
                item, _ = worker.queue.popleft()
                feed(worker)  # before yielding: the worker goes on while the caller works
                ok, value = reply
                yield value if ok else on_error(item, str(value))
    finally:
        for worker in pool:
            worker.stop(kill=bool(worker.queue))


def _raise(item: object, reason: str) -> Any:
    raise RuntimeError(f"task on {item!r} failed: {reason}")


def run_tasks(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
              dask_address: str | None = None, window: int | None = None,
              on_error: Callable[[T, str], R] = _raise, fork_safe: bool = False
              ) -> Generator[R, None, None]:
    """Apply ``fn`` to every item; yield results as they complete (unordered).

    Tasks are plain picklable callables applied to small items (paths and settings);
    results are small records.  Submission is bounded (a few tasks per worker in
    flight), so memory stays flat whatever the size of the input stream.

    ``close()`` stops the workers at once (busy ones are killed).  ``workers`` <= 0
    runs in this process; ``dask_address`` sends the tasks to a Dask
    distributed scheduler instead of the local workers (which must see the same paths).
    ``on_error(item, reason)`` makes the result of an item whose worker process died or
    whose task raised, locally or on Dask (the default raises).  ``fork_safe``: the
    caller holds no LMDB environment or thread, so workers may be forked from it
    directly.

    Raises
    ------
    WorkerError
        The local worker processes cannot start (from the iterator, after the results
        of the items that were done); the caller accounts for the other items.
    """
    if dask_address:
        from .dask import run_dask  # distributed: only for a job that uses it

        # Room for a whole commit batch while the caller commits, plus work per worker.
        return run_dask(fn, items, dask_address, window or 4 * max(workers, 1) + 32,
                        on_error)
    if workers <= 0:
        return (fn(item) for item in items)
    return _local(fn, items, workers, on_error, fork_safe)
