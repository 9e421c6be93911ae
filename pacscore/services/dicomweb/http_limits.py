"""Bounds on the HTTP connections of ``pacscore serve`` (RELIABILITY: connections that
never speak, slow headers and bodies, more than 1,024 descriptors).

uvicorn closes an idle keep-alive connection, answers 503 past ``limit_concurrency``
once a request head has arrived, and caps the size of a request head (h11, 16 KiB),
but it sets no time limit on a connection that never completes its request head (a
new connection that sends nothing, or a byte now and then: any byte cancels its
keep-alive timer) nor on a body that trickles in, and it accepts every connection,
each holding a descriptor.  :func:`guarded_h11` makes its h11 protocol close those:

* a connection beyond ``max_connections`` is answered ``503`` at once and closed (a
  503 after the request head, as ``limit_concurrency`` gives, needs a head a slow
  client never sends, and holds the descriptor meanwhile);
* a request head (request line and header fields) must be complete within
  ``header_timeout`` seconds of its first byte (of the connection, for a new one):
  else ``408`` and the connection is closed;
* a request body may pause at most ``body_timeout`` seconds, and must come at
  :data:`MIN_BODY_RATE` bytes/s on average once it has taken that long, counted while
  this server reads (not while it holds reading back itself): else the connection is
  closed (STOW-RS ends a pausing body itself first, with a 408 naming the reason);
* the rest of a body that the answer did not need (a refused upload) may take
  :data:`LINGER` more seconds after the answer (for the client to read it), no more.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["LINGER", "MIN_BODY_RATE", "guarded_h11"]

MIN_BODY_RATE = 1024
"""Bytes per second a request body must average once it has taken ``body_timeout``."""
LINGER = 5.0
"""Seconds the unread rest of a body may still arrive after the answer was sent."""


def _answer(status: bytes, text: bytes, *extra: bytes) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection."""
    return b"\r\n".join((b"HTTP/1.1 " + status, b"Connection: close", *extra,
                         b"Content-Type: text/plain",
                         b"Content-Length: " + str(len(text)).encode(), b"", text))


_REFUSED = _answer(b"503 Service Unavailable", b"too many connections: retry in a moment\n",
                   b"Retry-After: 5")
_TIMED_OUT = _answer(b"408 Request Timeout", b"the request head did not arrive in time\n")


class _GuardedH11(H11Protocol):  # type: ignore[misc]
    """uvicorn's h11 protocol with the bounds of the module docstring."""

    max_connections = 256
    header_timeout = 10.0
    body_timeout = 65.0

    _timer: asyncio.TimerHandle | None = None
    _head_deadline = 0.0  # of the request head being read (monotonic); 0: none is
    _linger_deadline = 0.0  # of the unwanted rest of a body; 0: none
    _body_since = 0.0  # when the body's rate is counted from
    _body_bytes = 0  # bytes received since then
    _last_data = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_REFUSED)
            transport.close()
            return
        self._head_deadline = time.monotonic() + self.header_timeout
        self._watch()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self._last_data, self._body_bytes = now, self._body_bytes + len(data)
        if not self._head_deadline and self.conn.their_state is h11.IDLE:
            self._head_deadline = now + self.header_timeout  # the next request's head
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self._linger_deadline:
            self._linger_deadline = time.monotonic() + LINGER  # its rest is not wanted
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self) -> None:
        """Arm the check of what the connection waits for now from the client."""
        if self.transport is None or self.transport.is_closing():
            self._cancel()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if not self._head_deadline and self.conn.trailing_data[0]:
                self._head_deadline = time.monotonic() + self.header_timeout  # pipelined
            if self._head_deadline:  # a request head is under way
                self._arm(self._head_deadline - time.monotonic())
            else:
                self._cancel()  # between requests: uvicorn's keep-alive timeout
            return
        if self._head_deadline:  # the head is complete: the body (if any) starts
            self._head_deadline = 0.0
            self._body_since, self._body_bytes = time.monotonic(), 0
        if state is h11.SEND_BODY:
            if self._timer is None:
                self._arm(min(self.body_timeout, LINGER))
        else:
            self._linger_deadline = 0.0
            self._cancel()

    def _arm(self, delay: float) -> None:
        self._cancel()
        self._timer = self.loop.call_later(max(delay, 0.0), self._check)

    def _check(self) -> None:
        """Close a connection that overran its request head, body or linger time."""
        self._timer = None
        if self.transport.is_closing():
            return
        now, state = time.monotonic(), self.conn.their_state
        if state is h11.IDLE:
            if self._head_deadline and now >= self._head_deadline:
                self.transport.write(_TIMED_OUT)
                self.transport.close()
            else:
                self._watch()
            return
        if state is not h11.SEND_BODY:
            return
        if self.flow is not None and self.flow.read_paused:  # held back by us: not slow
            self._body_since, self._body_bytes, self._last_data = now, 0, now
        else:
            elapsed = now - self._body_since
            if (self._linger_deadline and now >= self._linger_deadline) \
                    or now - self._last_data > self.body_timeout \
                    or (elapsed > self.body_timeout
                        and self._body_bytes < MIN_BODY_RATE * elapsed):
                self.transport.close()
                return
        self._arm(min(self.body_timeout, LINGER))


def guarded_h11(*, max_connections: int, header_timeout: float,
                body_timeout: float) -> type[Any]:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` with these bounds (see
    the module docstring)."""
    return type("GuardedH11", (_GuardedH11,), {
        "max_connections": max_connections, "header_timeout": header_timeout,
        "body_timeout": body_timeout})
