"""Where job tasks run: in this process, a local worker pool, or a Dask cluster.

Tasks are plain picklable callables applied to small items (paths and settings);
results are small records.  Submission is bounded (at most ``window`` tasks in
flight), so memory stays flat whatever the size of the input stream.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["run_tasks"]

T = TypeVar("T")
R = TypeVar("R")


def _gated(items: Iterable[T], gate: threading.Semaphore, stop: threading.Event) -> Iterator[T]:
    """Yield items only while fewer than the gate allows are in flight."""
    for item in items:
        while not gate.acquire(timeout=0.1):
            if stop.is_set():
                return
        if stop.is_set():
            return
        yield item


def _local(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int
           ) -> Iterator[R]:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pacscore.ingest.prepare"])
    gate, stop = threading.Semaphore(window), threading.Event()
    pool = ctx.Pool(workers)
    try:
        for result in pool.imap_unordered(fn, _gated(items, gate, stop), chunksize=1):
            gate.release()
            yield result
        pool.close()
    finally:
        stop.set()
        pool.terminate()
        pool.join()


def _dask(fn: Callable[[T], R], items: Iterable[T], address: str, window: int
          ) -> Iterator[R]:
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


def run_tasks(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
              dask_address: str | None = None, window: int | None = None) -> Iterator[R]:
    """Apply ``fn`` to every item; yield results as they complete (unordered).

    ``workers`` <= 0 runs in this process; ``dask_address`` sends the tasks to a Dask
    distributed scheduler instead of the local pool (workers must see the same paths).
    """
    # Room for a whole commit batch while the caller commits, plus work for each worker.
    bound = window or 4 * max(workers, 1) + 32
    if dask_address:
        return _dask(fn, items, dask_address, bound)
    if workers <= 0:
        return (fn(item) for item in items)
    return _local(fn, items, workers, bound)
