"""Job tasks on a Dask distributed cluster, with the local pool's error contract.

An item whose task raised, or on which the cluster's workers died until the scheduler
gave up on it (``KilledWorker``, after ``distributed.scheduler.allowed-failures``
deaths: the scheduler's setting, 3 by default, where the local pool blames an item on
the second death), is reported through ``on_error`` and the job goes on, as with
:func:`pacscore.workers.pool.run_tasks`'s local workers.  Losing the cluster itself
(the scheduler gone, the client cancelled) still raises: that is no item's fault.
Blame is the scheduler's: it counts a worker's death against every task that was on
that worker, not only the one running, so an innocent item in flight can be reported
too (the local pool blames only the item at the head of the dead worker's queue).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

__all__ = ["run_dask"]

T = TypeVar("T")
R = TypeVar("R")

_END: Any = object()


def _reason(exc: BaseException | None) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return (f"worker processes stopped on this input until the Dask scheduler gave "
                f"up on it (KilledWorker: {exc})")
    return f"{type(exc).__name__}: {exc}"


def run_dask(fn: Callable[[T], R], items: Iterable[T], address: str, window: int,
             on_error: Callable[[T, str], R]) -> Generator[R, None, None]:
    """``fn`` over ``items`` on the scheduler at ``address``, ``window`` tasks in
    flight; results as they complete."""
    from distributed import Client, as_completed

    with Client(address) as client:  # type: ignore[no-untyped-call]
        source = iter(items)
        submitted: dict[str, T] = {}

        def submit(item: T) -> Any:
            future = client.submit(fn, item, pure=False)
            submitted[future.key] = item
            return future

        # range first: zip stops on it before taking one more item from the source
        first = [submit(item) for _, item in zip(range(window), source, strict=False)]
        pending: Any = as_completed(first)  # type: ignore[no-untyped-call]
        for future in pending:
            item = submitted.pop(future.key)
            if future.status == "error":  # the task raised, or its workers died
                yield on_error(item, _reason(future.exception()))
            else:
                yield future.result()
            nxt = next(source, _END)
            if nxt is not _END:
                pending.add(submit(nxt))
