"""Who gets a DIMSE connection and an association slot.

pynetdicom counts every accepted TCP connection as an association from the moment it
is accepted, and waits the whole ACSE timeout (30 s) for its A-ASSOCIATE-RQ, also
after the peer has closed it: 16 connections that send nothing took every slot, and
every real association was rejected (transient, local limit exceeded) for as long as
they were renewed.  The server started here (:func:`start`) instead:

* counts an association against ``max_associations`` only once its A-ASSOCIATE-RQ
  has arrived (``EVT_REQUESTED``); beyond it the request is rejected, transient,
  "local limit exceeded" (PS3.8 9.3.4, Table 9-21: source 3, reason 2);
* ends a connection whose A-ASSOCIATE-RQ has not arrived within
  ``request_timeout`` seconds (the ARTIM timer of PS3.8 9.1.5 in state Sta2, and the
  wait for the request), then restores the ACSE timeout for the association;
* accepts at most ``per_host`` connections at a time from one source address (an
  established association is a connection too); any more are closed at once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from ...auth.security import canonical_address

__all__ = ["AcceptLimits", "start"]

log = logging.getLogger(__name__)

_REJECTED_TRANSIENT, _PRESENTATION, _LOCAL_LIMIT = 0x02, 0x03, 0x02  # PS3.8 Table 9-21


@dataclasses.dataclass(frozen=True, slots=True)
class AcceptLimits:
    """Limits of :func:`start`."""

    max_associations: int = 16
    """Associations at a time (counted from their A-ASSOCIATE-RQ)."""
    per_host: int = 8
    """Connections at a time from one source address."""
    request_timeout: float = 5.0
    """Seconds a connection may take to send its A-ASSOCIATE-RQ."""
    acse_timeout: float = 30.0
    """Seconds of the ACSE timeout once the association is requested."""


Rejected = Callable[[Any, str], None]
"""``(association, why)``: told when an association request is rejected here."""


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, with connections counted per source address."""

    limits: AcceptLimits
    on_reject: Rejected

    def setup_limits(self, limits: AcceptLimits, on_reject: Rejected) -> None:
        self.limits, self.on_reject = limits, on_reject
        self._lock = threading.Lock()
        self._connections: collections.Counter[str] = collections.Counter()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Accept the connection unless its address has ``per_host`` already; a
        refused connection is closed by socketserver."""
        host = _host(client_address)
        with self._lock:
            if self._connections[host] >= self.limits.per_host:
                log.warning("DIMSE connection from %s closed: %d connections from that "
                            "address already", host, self.limits.per_host)
                return False
            self._connections[host] += 1
        return True

    def release(self, host: str) -> None:
        """A connection of ``host`` ended."""
        with self._lock:
            self._connections[host] -= 1
            if self._connections[host] <= 0:
                del self._connections[host]

    def connections(self) -> dict[str, int]:
        """Open connections by source address (for tests and monitoring)."""
        with self._lock:
            return dict(self._connections)

    def requested(self, event: Any) -> None:
        """``EVT_REQUESTED``: give the association a slot, or reject it."""
        assoc = event.assoc
        assoc.acse_timeout = self.limits.acse_timeout
        with self._lock:
            held = sum(1 for a in self.active_associations
                       if a is not assoc and a.__dict__.get("_pacscore_slot") and a.is_alive())
            if held < self.limits.max_associations:
                assoc.__dict__["_pacscore_slot"] = True
                return
        assoc.acse_timeout = self.limits.request_timeout  # for the peer to close
        assoc.acse.send_reject(_REJECTED_TRANSIENT, _PRESENTATION, _LOCAL_LIMIT)
        self.on_reject(assoc, f"{held} associations, the limit: rejected (transient, "
                              "local limit exceeded)")
        assoc.kill()  # as pynetdicom does after its own rejections


class _Handler(RequestHandler):
    """pynetdicom's request handler (an acceptor Association per connection) whose
    association has ``request_timeout`` to send its A-ASSOCIATE-RQ, and gives its
    address's connection back when its thread ends."""

    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        host = _host(self.client_address)
        started = False
        try:
            assoc = self._create_association()
            assoc.acse_timeout = server.limits.request_timeout
            run = assoc.run

            def counted() -> None:
                try:
                    run()
                finally:
                    server.release(host)

            assoc.run = counted  # type: ignore[method-assign]
            # as pynetdicom's handle(): the trigger after the handlers are bound
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            started = True
        finally:
            if not started:
                server.release(host)


def _host(client_address: Any) -> str:
    address = client_address[0] if isinstance(client_address, tuple) else str(client_address)
    return canonical_address(str(address))


def start(ae: AE, address: tuple[str, int], handlers: list[Any], ssl_context: Any,
          limits: AcceptLimits, on_reject: Rejected) -> _Server:
    """Listen on ``address`` in a background thread, as ``ae.start_server(...,
    block=False)`` does, with the limits above; return the server (``shutdown()``
    stops it)."""
    ae.maximum_associations = 1 << 30  # counted here, from the A-ASSOCIATE-RQ
    server = ae.make_server(address, evt_handlers=handlers, ssl_context=ssl_context,
                            server_class=_Server, request_handler=_Handler)
    assert isinstance(server, _Server)
    server.setup_limits(limits, on_reject)
    server.bind(evt.EVT_REQUESTED, server.requested)
    timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{timestamp}",
                              daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
