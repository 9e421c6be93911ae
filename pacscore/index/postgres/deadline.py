"""A deadline on the client side of every index operation.

``statement_timeout`` bounds what the server does; nothing bounds a server that has
gone silent: a network partition, a host that froze, a firewall dropping packets.  The
client then waits for an answer forever (TCP keepalives take hours by default, and see
nothing when a proxy in the way is alive), and a C-STORE never gets its status.

:class:`Deadlines` cuts such a connection: one thread per process looks at the
operations in progress every :data:`TICK` seconds and shuts down the socket of those
past their deadline (``shutdown``, not ``close``: the descriptor stays the
connection's, the waiting call wakes up at once with "server closed the connection").
The operation then fails as the server having gone away does, and the pool replaces
the connection.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

__all__ = ["Deadlines", "TICK"]

TICK = 0.25
"""Seconds between two looks at the operations in progress."""


class Deadlines:
    """Operations in progress on connections, each with its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, socket fd)
        self._cut: dict[int, list[bool]] = {}  # token -> its flag
        self._next = 0
        self._pid = 0

    @contextlib.contextmanager
    def watch(self, fd: int, seconds: float) -> Iterator[list[bool]]:
        """Cut the connection of socket ``fd`` if the block runs longer than
        ``seconds``; yields a one-item list that is ``[True]`` once it was cut."""
        cut = [False]
        with self._lock:
            self._start()
            self._next += 1
            token = self._next
            self._armed[token] = (time.monotonic() + seconds, fd)
            self._cut[token] = cut
        try:
            yield cut
        finally:
            with self._lock:  # after this, the descriptor is no longer ours to touch
                self._armed.pop(token, None)
                self._cut.pop(token, None)

    def _start(self) -> None:
        if self._pid != os.getpid():  # first use, or a forked child: no thread yet
            self._pid = os.getpid()
            self._cut.clear()
            self._armed.clear()
            threading.Thread(target=self._run, name="pacscore-pg-deadlines",
                             daemon=True).start()

    def _run(self) -> None:
        pid = os.getpid()
        while pid == self._pid:
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                for token, (deadline, fd) in list(self._armed.items()):
                    if now >= deadline:
                        del self._armed[token]
                        self._cut[token][0] = True
                        _shutdown(fd)


def _shutdown(fd: int) -> None:
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
