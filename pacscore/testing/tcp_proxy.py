"""A TCP proxy on loopback that partitions the network on demand (fault tests).

:class:`TcpProxy` forwards connections to an upstream port (a PostgreSQL server) until
told otherwise:

* :meth:`TcpProxy.partition`: a black hole, as a cut cable or a dropping firewall looks
  to a client: open connections stay open but nothing more passes either way, new
  connections are accepted and then never answered (not refused: a refusal is the easy
  case);
* :meth:`TcpProxy.partition_after`: the same, from the moment the client's bytes
  contain a pattern (``b"COMMIT"``), once these bytes were passed on: the server acts on
  them, the client never hears the answer (a transaction committed whose client cannot
  know it);
* :meth:`TcpProxy.heal`: connections open across the partition are closed (their peers'
  TCP would have given up on them), new ones forward again.

Use as a context manager; :attr:`TcpProxy.port` is where clients connect.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from enum import Enum

__all__ = ["LinkState", "TcpProxy"]


class LinkState(Enum):
    """What the proxy does with traffic."""

    FORWARD = "forward"
    """Pass everything on."""
    PARTITIONED = "partitioned"
    """Pass nothing; accept new connections and leave them silent."""


class _Link:
    """One client connection and its upstream connection."""

    __slots__ = ("client", "dead", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket | None):
        self.client, self.upstream, self.dead = client, upstream, False

    def close(self) -> None:
        self.dead = True
        for s in (self.client, self.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


class TcpProxy:
    """See the module docstring.

    Parameters
    ----------
    upstream_port
        The port on 127.0.0.1 it forwards to.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.state = LinkState.FORWARD
        self._trigger: bytes | None = None
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self.triggered = threading.Event()
        """Set when a :meth:`partition_after` pattern went through."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    # -- control ------------------------------------------------------------------
    def partition(self) -> None:
        """Stop passing anything, from now on."""
        with self._lock:
            self.state = LinkState.PARTITIONED

    def partition_after(self, pattern: bytes) -> None:
        """Partition once client bytes containing ``pattern`` were passed upstream."""
        with self._lock:
            self._trigger = pattern
            self.triggered.clear()

    def heal(self) -> None:
        """Close the connections open during the partition; forward new ones again."""
        with self._lock:
            self.state, self._trigger = LinkState.FORWARD, None
            links, self._links = self._links, []
        for link in links:
            link.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)
        self.heal()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------
    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                silent = self.state is LinkState.PARTITIONED
            upstream = None
            if not silent:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port),
                                                       timeout=5)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:  # the server is down: so is the connection
                    client.close()
                    continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            if upstream is not None:
                threading.Thread(target=self._pump, args=(link,), daemon=True).start()

    def _passing(self) -> bool:
        with self._lock:
            return self.state is LinkState.FORWARD

    def _pump(self, link: _Link) -> None:
        assert link.upstream is not None
        peer = {link.client: link.upstream, link.upstream: link.client}
        with selectors.DefaultSelector() as sel:
            for s in peer:
                sel.register(s, selectors.EVENT_READ)
            while not link.dead and not self._stop.is_set():
                if not self._passing():  # a black hole: hold on to everything
                    self._stop.wait(0.1)
                    continue
                for key, _ in sel.select(timeout=0.1):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        link.close()
                        return
                    with contextlib.suppress(OSError):
                        peer[src].sendall(data)
                    if src is link.client:
                        self._check_trigger(data)
                    if not self._passing():
                        break

    def _check_trigger(self, data: bytes) -> None:
        with self._lock:
            if self._trigger is not None and self._trigger in data:
                self._trigger = None
                self.state = LinkState.PARTITIONED
                self.triggered.set()
