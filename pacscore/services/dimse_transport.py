"""Socket tuning for pynetdicom associations (FACTS.md, DIMSE pitfalls).

* pynetdicom reads a PDU 4 KB at a time into a growing ``bytearray``: 32 ``recv``
  calls and copies for each 128 KB P-DATA PDU that DCMTK sends.  ``install`` reads
  each PDU with ``recv_into`` into a buffer grown 4 MB at a time as data arrives (never
  sized by the length a peer claims before sending it); same contract: returns what
  was read, short only when the peer closed.  On C-STORE of CT
  instances from 4 associations this cut the receiving process's CPU by about a
  fifth (bare pynetdicom SCP, storescu, 500 instances).
* ``fast_polling``: pynetdicom's DUL thread sleeps 1 ms whenever a loop found nothing
  to do, which adds up to a millisecond to every message of a C-GET's sub-operations;
  while a retrieve runs it polls every 0.1 ms instead.
* pynetdicom's association thread sleeps 1 ms between looks at its DIMSE message
  queue: a thousand GIL hand-overs a second per association, idle or not, and up to a
  millisecond before a received request is served.  ``install`` makes that sleep a
  wait on the queue itself: woken by the next message, or after 5 ms at most, so a
  release or abort request (which arrives on another queue) waits 5 ms at most.
* Nagle's algorithm can hold the tail of a data set sent in several segments until
  the peer's delayed ACK (40 ms over loopback); ``nodelay`` switches it off on every
  association's socket, ours as acceptor and as requestor.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pynetdicom.association
from pynetdicom.transport import AssociationSocket

__all__ = ["fast_polling", "install", "nodelay"]


_STEP = 4 << 20  # memory follows the data that arrives, whatever a PDU header claims


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    raw = self.socket
    assert raw is not None
    buffer = bytearray(min(nr_bytes, _STEP))
    read = 0
    while read < nr_bytes:
        if read == len(buffer):  # grow only as data comes in (a peer may lie)
            buffer.extend(bytes(min(nr_bytes - read, _STEP)))
        with memoryview(buffer) as view:
            count = raw.recv_into(view[read:], len(buffer) - read)
        if not count:  # connection closed: return what arrived, as pynetdicom does
            del buffer[read:]
            return buffer
        read += count
    return buffer


class _ReactorClock:
    """``time`` as pynetdicom's association module sees it: its reactor's 1 ms poll
    waits on the association's DIMSE queue instead; everything else is ``time``."""

    _POLL, _LONGEST = 0.001, 0.005

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds == self._POLL:
            dimse = getattr(threading.current_thread(), "dimse", None)
            messages = getattr(dimse, "msg_queue", None)
            if isinstance(messages, queue.Queue):
                with messages.not_empty:
                    if not messages.queue:
                        messages.not_empty.wait(self._LONGEST)
                return
        time.sleep(seconds)


def install() -> None:
    """Replace ``AssociationSocket.recv`` and the association reactor's poll
    (idempotent)."""
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
    setattr(pynetdicom.association, "time", _ReactorClock())  # noqa: B010


def nodelay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: TCP_NODELAY on the association's socket."""
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextlib.contextmanager
def fast_polling(assoc: Any, delay: float = 0.0001) -> Iterator[None]:
    """Poll the association's socket every ``delay`` s instead of every 1 ms while a
    retrieve runs: each C-GET sub-operation is three messages through the DUL thread,
    which sleeps ``_run_loop_delay`` whenever it found nothing to do."""
    dul = getattr(assoc, "dul", None)
    before = getattr(dul, "_run_loop_delay", None)
    if dul is None or before is None:
        yield
        return
    dul._run_loop_delay = delay
    try:
        yield
    finally:
        dul._run_loop_delay = before
