"""Periodic background tasks of a server, run by one front end at a time (issue 17.3).

Several ``pacscore serve`` processes may share one archive (a PostgreSQL index and an
object-store prefix, :attr:`pacscore.Archive.shared`).  A task that works on the
archive as a whole (the object-store garbage collection) must then run on one of them
at a time: each run takes the task's lock in the index
(:meth:`~pacscore.index.SharedIndex.exclusive`, a PostgreSQL session advisory lock,
``pg_try_advisory_lock``); a front end that finds it taken skips that run.  The lock
is released by the server when the process holding it dies, so the task never stays
blocked by a crashed front end.  On an archive with one writer (the writer lock of its
folder), the task simply runs.

What stays per front end, so needs no lock: the metadata cache (memory), the spool,
the temp folder, tokens, users and the audit log (in each front end's own folder;
docs/scale.md says how to provision them).  The workflow state and the HL7 outbox are
in the shared index's database (:mod:`pacscore.kv`); the outbox's sender uses this
module's :func:`exclusive` too.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .index import Index, SharedIndex

__all__ = ["Periodic", "exclusive"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive(index: Index, task: str) -> Iterator[bool]:
    """True while this process holds ``task``'s lock across the front ends sharing
    ``index`` (False: another one is running it); always True on an unshared index."""
    if isinstance(index, SharedIndex):
        with index.exclusive(task) as mine:
            yield mine
    else:
        yield True


@dataclass
class Periodic:
    """Run ``task`` every ``interval`` seconds in a daemon thread, on one front end at a
    time (:func:`exclusive`); failures are logged and the next run comes as planned."""

    index: Index
    """The archive's index (its lock decides which front end runs)."""
    name: str
    """The task's name: its lock key (``T<name>``) and in the log."""
    task: Callable[[], object]
    """What to run; its result is logged."""
    interval: float
    """Seconds between two runs (the first one: after one interval)."""
    runs: int = 0
    """Runs this front end made."""
    skipped: int = 0
    """Runs skipped because another front end held the task's lock."""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def run_once(self) -> bool:
        """Run the task now unless another front end is running it; whether it ran."""
        with exclusive(self.index, self.name) as mine:
            if not mine:
                self.skipped += 1
                log.info("background %s: another front end is running it; skipped",
                         self.name)
                return False
            result = self.task()
            self.runs += 1
            log.info("background %s ran: %s", self.name, result)
            return True

    def start(self) -> Periodic:
        self._thread = threading.Thread(target=self._loop, name=f"pacscore-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # the thread must live: log, run again next time
                log.exception("background %s failed", self.name)
