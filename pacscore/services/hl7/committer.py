"""Group commit for the HL7 door: one thread applies the messages that have arrived,
all of them in one worklist transaction (one flush to disk), and answers each.

A batch is whatever is queued when the thread is free: the messages of every
connection, and the messages one connection sent without waiting for their ACKs
(pipelined); one message alone when nothing else waits, so nothing waits for company.
The answers of a batch are handed over in one call (:data:`Deliver`: one wake-up of
the MLLP event loop per batch, not per message).  Other work that must not run beside
a commit (dropping old answers) is queued between batches.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

__all__ = ["Deliver", "GroupCommitter"]

log = logging.getLogger(__name__)

Batch = Callable[[Sequence[tuple[bytes, str]]], list[bytes]]
"""Applies ``(message, host)`` pairs in one transaction; the answer of each."""

Deliver = Callable[[list[tuple[Any, "bytes | BaseException"]]], None]
"""Takes the ``(tag, answer or error)`` of the messages :meth:`GroupCommitter.send`
queued, once per batch (in the commit thread)."""


class GroupCommitter:
    """The commit thread of the HL7 door."""

    def __init__(self, apply: Batch, deliver: Deliver | None = None, *,
                 max_batch: int = 256):
        self._apply, self._deliver, self._max = apply, deliver, max_batch
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hl7-commit", daemon=True)
        self._thread.start()

    def submit(self, raw: bytes, host: str) -> Future[bytes]:
        """Queue a message; its answer (the ACK), once committed."""
        done: Future[bytes] = Future()
        self._queue.put(("message", raw, host, done))
        return done

    def send(self, raw: bytes, host: str, tag: Any) -> None:
        """Queue a message; its answer goes to ``deliver`` with ``tag`` once committed."""
        self._queue.put(("message", raw, host, tag))

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
            self._answer(batch, [exc] * len(batch))
            if not isinstance(exc, Exception):
                raise
            log.exception("HL7 batch failed")
            return
        self._answer(batch, answers)

    def _answer(self, batch: list[tuple[Any, ...]], answers: Sequence[bytes | BaseException]
                ) -> None:
        tagged: list[tuple[Any, bytes | BaseException]] = []
        for (*_, done), answer in zip(batch, answers, strict=True):
            if not isinstance(done, Future):
                tagged.append((done, answer))
            elif isinstance(answer, BaseException):
                done.set_exception(answer)
            else:
                done.set_result(answer)
        if tagged and self._deliver is not None:
            self._deliver(tagged)

    @staticmethod
    def _call(fn: Callable[[], Any], done: Future[Any]) -> None:
        try:
            done.set_result(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)
