"""Bulk store (:meth:`pacscore.Archive.store_many`): worker processes prepare the files,
this process commits them a batch at a time.

The commit of one batch runs in a thread of its own while the next batch is gathered:
the workers are fed and their outcomes read all the while, so that no worker waits
for the index and the renames (a synchronous commit left the one worker of a
``--workers 1`` import idle for the whole commit of each batch, about 0.4 ms of every
file's 2.4).  One batch at a time is committed, in order; results are yielded only once
their batch is committed (acknowledged).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .config import ArchiveConfig
from .errors import PacsError
from .ingest.outcomes import Failed, Prepared, Rejected, Skipped, StoreResult
from .store import FrameStore, StoreSpec

__all__ = ["store_many"]

log = logging.getLogger(__name__)

Outcome = StoreResult | Rejected | Skipped | Failed
Commit = Callable[[Sequence[Prepared]], list[StoreResult | Rejected]]


class _CommitThread:
    """At most one batch committing in a thread while the caller goes on; ``inline``:
    in the caller, at once (files prepared in this process: nothing runs meanwhile
    that a thread would let go on, and a crash point is reached in a fixed order)."""

    def __init__(self, commit: Commit, *, inline: bool = False):
        self._commit = commit
        self._thread = None if inline else ThreadPoolExecutor(
            1, thread_name_prefix="pacscore-commit")
        self._running: Future[list[StoreResult | Rejected]] | None = None

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def done(self) -> bool:
        return self._running is not None and self._running.done()

    def submit(self, batch: Sequence[Prepared]) -> None:
        assert self._running is None, "one batch at a time"
        if self._thread is not None:
            self._running = self._thread.submit(self._commit, batch)
            return
        self._running = Future()
        try:
            self._running.set_result(self._commit(batch))
        except Exception as exc:  # noqa: BLE001 - held for collect(), as a thread's
            # future holds it (it raises there)
            self._running.set_exception(exc)

    def collect(self) -> list[StoreResult | Rejected]:
        """The running batch's outcomes, once committed (waits); raises its error."""
        running, self._running = self._running, None
        assert running is not None
        return running.result()

    def close(self) -> None:
        """Wait for a running commit (whose outcomes are then not reported: the caller
        was interrupted; they are in the archive, found as duplicates by a resumed job)
        and stop the thread."""
        if self._running is not None:
            with contextlib.suppress(Exception):  # its error: already the caller's stop
                self._running.result()
            self._running = None
        if self._thread is not None:
            self._thread.shutdown(wait=True)


def store_many(commit: Commit, store: FrameStore, config: ArchiveConfig,  # noqa: C901
               spec: StoreSpec, paths: Iterable[str], workers: int,
               dask_address: str | None) -> Generator[Outcome, None, None]:
    """See :meth:`pacscore.Archive.store_many` (``commit``: its committer's)."""
    source = iter(paths)
    first = next(source, None)
    if first is None:  # nothing to store: nothing more to import or start (14.2)
        return
    source = itertools.chain((first,), source)
    from .ingest.pool import run_pool  # (the pipeline itself: where the tasks run)

    open_: collections.Counter[str] = collections.Counter()  # taken, not yet answered
    cause: list[tuple[str, type[Exception]]] = []  # (reason, error class) of the stop

    def feed() -> Iterator[str]:
        while not cause and (path := next(source, None)) is not None:
            open_[path] += 1
            yield path

    def answered(outcome: Outcome) -> Outcome:
        open_[outcome.source] -= 1
        if not open_[outcome.source]:
            del open_[outcome.source]
        return outcome

    def committed() -> Iterator[Outcome]:
        """The running batch's outcomes (waits for it); on its failure the cause is
        set and nothing is yielded (its files are still open: reported failed)."""
        try:
            done = committer.collect()
        except Exception as exc:  # disk full, I/O error: nothing of it is visible
            if not isinstance(exc, PacsError):
                log.exception("committing a batch failed")
            cause.append((str(exc), type(exc)))
            return  # its staged files: removed by the commit, or at the next start
        for o in done:
            yield answered(o)

    batch: list[Prepared] = []
    committer = _CommitThread(commit, inline=workers <= 0 and not dask_address)
    outcomes = run_pool(feed(), config, spec, workers, dask_address)
    try:
        while not cause:
            if committer.done:
                yield from committed()
                continue
            try:
                outcome = next(outcomes, None)
            except Exception as exc:  # the workers as a whole: cannot start, cluster gone
                if not isinstance(exc, PacsError):
                    log.exception("the worker processes failed")
                cause.append((str(exc) if isinstance(exc, PacsError) else
                              f"{type(exc).__name__}: {exc}", type(exc)))
                break
            if isinstance(outcome, Prepared):
                batch.append(outcome)
            if batch and (outcome is None or len(batch) >= config.commit_batch):
                if committer.busy:
                    yield from committed()
                    if cause:
                        break
                committer.submit(batch)
                batch = []
            if isinstance(outcome, Failed) and outcome.storage:
                cause.append((outcome.reason, outcome.error))
            if outcome is None:
                if committer.busy:
                    yield from committed()
                if not cause:
                    return
                break
            if not isinstance(outcome, Prepared):
                yield answered(outcome)
        if committer.busy:  # stopped with a batch committing: what it committed stands
            yield from committed()
    finally:
        outcomes.close()  # stops the workers (those still busy are killed)
        committer.close()
    store.discard([p.record.location for p in batch])  # never submitted
    reason, error = cause[0]
    for path in list(open_.elements()):
        yield Failed(path, f"not stored: storing stopped at a failure: {reason}", error)
    for path in source:
        yield Failed(path, f"not attempted: storing stopped at a failure: {reason}", error)
