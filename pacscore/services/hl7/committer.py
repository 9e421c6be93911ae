"""Group commit for the HL7 door: one thread applies the messages that have arrived,
all of them in one worklist transaction (one flush to disk), and answers each.

Each MLLP connection sends its next message only after the ACK of the last, so a batch
holds at most one message per connection; with one sender the batch is that message
alone and nothing waits for company.  Other work that must not run beside a commit
(dropping old answers) is queued between batches.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

__all__ = ["GroupCommitter"]

log = logging.getLogger(__name__)

Batch = Callable[[Sequence[tuple[bytes, str]]], list[bytes]]
"""Applies ``(message, host)`` pairs in one transaction; the answer of each."""


class GroupCommitter:
    """The commit thread of the HL7 door."""

    def __init__(self, apply: Batch, *, max_batch: int = 256):
        self._apply, self._max = apply, max_batch
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hl7-commit", daemon=True)
        self._thread.start()

    def submit(self, raw: bytes, host: str) -> Future[bytes]:
        """Queue a message; its answer (the ACK), once committed."""
        done: Future[bytes] = Future()
        self._queue.put(("message", raw, host, done))
        return done

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` in the commit thread, between two batches."""
        done: Future[Any] = Future()
        self._queue.put(("call", fn, done))
        return done

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            if first[0] == "call":
                self._call(first[1], first[2])
                continue
            batch: list[tuple[Any, ...]] = [first]
            after: tuple[Any, ...] | None = ()
            while len(batch) < self._max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None or item[0] == "call":
                    after = item  # its turn comes after this batch
                    break
                batch.append(item)
            self._commit(batch)
            if after is None:
                return  # stopped
            if after:
                self._call(after[1], after[2])

    def _commit(self, batch: list[tuple[Any, ...]]) -> None:
        try:
            answers = self._apply([(raw, host) for _, raw, host, _ in batch])
        except BaseException as exc:  # every message gets an answer or an error
            for *_, done in batch:
                done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            log.exception("HL7 batch failed")
            return
        for (*_, done), answer in zip(batch, answers, strict=True):
            done.set_result(answer)

    @staticmethod
    def _call(fn: Callable[[], Any], done: Future[Any]) -> None:
        try:
            done.set_result(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)
