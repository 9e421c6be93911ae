"""Socket tuning for pynetdicom associations (FACTS.md, DIMSE pitfalls).

* pynetdicom reads a PDU 4 KB at a time into a growing ``bytearray``: 32 ``recv``
  calls and copies for each 128 KB P-DATA PDU that DCMTK sends.  ``install`` reads
  each PDU with ``recv_into`` into a buffer grown 4 MB at a time as data arrives (never
  sized by the length a peer claims before sending it); same contract: returns what
  was read, short only when the peer closed.  On C-STORE of CT
  instances from 4 associations this cut the receiving process's CPU by about a
  fifth (bare pynetdicom SCP, storescu, 500 instances).
* pynetdicom's DUL thread sleeps 1 ms whenever a loop found nothing to do, which
  added up to a millisecond to every message a peer sent (three per C-GET
  sub-operation) and woke every association's thread a thousand times a second, idle
  or not, each time taking the GIL (on C-STORE from 4 associations: ~50 wake-ups and
  hundreds of futex calls per instance).  ``install`` makes that sleep a wait that
  ends when the socket is readable, when another thread queues a PDU or stops the
  DUL (a wake-up byte on a socket pair), or after 50 ms; not at all while a TLS socket
  holds decrypted bytes (``pending``), which ``select`` cannot see.
* pynetdicom sends with ``socket.send`` in a loop that copies the rest of the buffer
  after every partial send, and pacscore writes some messages itself
  (:mod:`.wire`); ``install`` makes every send one ``sendall`` under a lock per
  socket (:func:`send_lock`), so writers never interleave.
* pynetdicom's association thread sleeps 1 ms between looks at its DIMSE message
  queue: a thousand GIL hand-overs a second per association, idle or not, and up to a
  millisecond before a received request is served.  ``install`` makes that sleep a
  wait on the queue itself: woken by the next message, or after 5 ms at most, so a
  release or abort request (which arrives on another queue) waits 5 ms at most.
* pynetdicom's ``send_c_echo`` (and every other ``send_*``) pauses that thread by
  clearing its checkpoint and waiting for ``_is_paused``, which is still True for a
  moment after the thread passed the checkpoint: the thread then took the response
  off the queue, dropped it ("Received unexpected C-ECHO service message") and the
  sender waited out the DIMSE timeout (seen once in ~2,500 tests on a busy 2-core
  CI machine).  ``install`` makes the thread's own look at the queue
  (``get_msg(block=False)``) leave a response there while a sender has the thread
  paused: only the sender waits for responses.
* every C-STORE data set received into a file starts with a file meta group that
  pynetdicom builds as a pydicom dataset and writes with pydicom (~0.2 ms a data
  set); ``install`` writes the same bytes with :func:`.wire.file_meta`.
* pynetdicom receives each C-STORE data set into a file in the system's temp folder;
  a claimed AE's associations receive into its spool instead
  (:func:`.scope.spool_file`; see :func:`pacscore.services.serve.default_spool`).
* Nagle's algorithm can hold the tail of a data set sent in several segments until
  the peer's delayed ACK (40 ms over loopback); ``nodelay`` switches it off on every
  association's socket, ours as acceptor and as requestor.
* pynetdicom asks ``select.select`` whether a socket is readable, which fails for a
  descriptor numbered 1,024 or more (FD_SETSIZE): once the process held that many
  files (idle HTTP connections), every new association was taken for closed.
  ``ready`` and the DUL's idle wait ask ``poll``, which has no such bound.

Every replacement is listed in :data:`PATCHES`; :mod:`.patches` checks that each
name still exists in the installed pynetdicom before installing any, and installs each
scoped (:mod:`.scope`): only the associations of a pacscore server's AE take the
fast paths, any other pynetdicom association in the process runs pynetdicom's code.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import socket
import ssl
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import pynetdicom.association
import pynetdicom.dimse_messages
import pynetdicom.dul
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

from ....errors import UnsafeFolderError
from .scope import SPOOL_PREFIX, spool_file
from .wire import file_meta, send_lock

__all__ = ["PATCHES", "SPOOL_PREFIX", "clear_spool", "nodelay", "private_folder", "readable"]


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


_REACTOR_LOOP: Any = getattr(getattr(pynetdicom.association.Association, "_run_reactor", None),
                             "__code__", None)


class _ReactorClock:
    """``time`` as pynetdicom's association module sees it: the poll of its reactor loop
    (the ``sleep`` that ``Association._run_reactor`` itself calls, recognised by its
    caller, not by its value) waits on the association's DIMSE queue instead;
    everything else is ``time``.

    The wait takes a wake-up that ``put`` meant for one waiter: when a message is
    there, the wake-up is passed on, for a thread blocked in ``get`` on the same queue
    (a request sent from another thread, e.g. a storage commitment report, or a
    client's ``send_c_echo`` after the reactor slipped past its pause); without it,
    that thread waited out the whole DIMSE timeout (30 s) with its response queued."""

    _LONGEST = 0.005

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if sys._getframe(1).f_code is _REACTOR_LOOP:
            dimse = getattr(threading.current_thread(), "dimse", None)
            messages = getattr(dimse, "msg_queue", None)
            if isinstance(messages, queue.Queue):
                with messages.not_empty:
                    if not messages.queue:
                        messages.not_empty.wait(self._LONGEST)
                    if messages.queue:
                        messages.not_empty.notify()
                return
        time.sleep(seconds)


_READ_EVENTS = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


def readable(socks: list[Any], timeout: float, owner: Any = None) -> list[Any]:
    """The sockets of ``socks`` with something to read (data, an end, an error), after
    waiting ``timeout`` seconds at most for one; ``poll``, so any descriptor number
    works (``select`` stops at 1,023).  ValueError for a closed socket.  With
    ``owner``, the poll object is kept in its ``__dict__`` for the next call on the
    same descriptors."""
    fds = tuple(sock.fileno() for sock in socks)
    cached = owner.__dict__.get("_pacscore_poll") if owner is not None else None
    if cached is None or cached[0] != fds:
        if min(fds) < 0:
            raise ValueError("the socket is closed")
        poller = select.poll()
        for fd in fds:
            poller.register(fd, _READ_EVENTS)
        cached = (fds, poller)
        if owner is not None:
            owner.__dict__["_pacscore_poll"] = cached
    events = cached[1].poll(max(0, int(timeout * 1000)))
    if events and any(mask & select.POLLNVAL for _, mask in events):
        raise ValueError("the socket is closed")
    return [socks[fds.index(fd)] for fd, _ in events]


def _ready(self: AssociationSocket) -> bool:
    """``AssociationSocket.ready`` without ``select`` (same contract: True when there is
    something to read; Evt17 when the socket is closed); the poll object is kept for
    the socket's next call (cheaper than ``select`` then)."""
    raw = self.socket
    if raw is None or self._is_connected is False:
        return False
    fd = raw.fileno()
    cached = self.__dict__.get("_pacscore_poll")
    try:
        if cached is None or cached[0] != fd:
            if fd < 0:
                raise ValueError("the socket is closed")
            cached = (fd, select.poll())
            cached[1].register(fd, _READ_EVENTS)
            self.__dict__["_pacscore_poll"] = cached
        events = cached[1].poll(0)
        if events and events[0][1] & select.POLLNVAL:
            raise ValueError("the socket is closed")
        ready = bool(events)
    except (OSError, ValueError):
        self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom does
        return False
    if isinstance(raw, ssl.SSLSocket):  # decrypted bytes waiting (pynetdicom #528)
        return ready or bool(raw.pending())
    return ready


def _send(self: AssociationSocket, bytestream: bytes) -> None:
    raw = self.socket
    if raw is None:  # closed meanwhile
        self.event_queue.put("Evt17")
        return
    try:
        with send_lock(self):
            raw.sendall(bytestream)
        evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": bytestream})
    except (OSError, ValueError):  # reset, broken pipe, TLS error; a closed socket
        self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom does


_IDLE = 0.05  # longest idle wait of a DUL reactor (its timers are seconds long)
# (getattr: a pynetdicom without one of them is refused by dimse_patches, not at import)
_ORIGINAL_SEND_PDU: Any = getattr(DULServiceProvider, "send_pdu", None)
_ORIGINAL_STOP_DUL: Any = getattr(DULServiceProvider, "stop_dul", None)
_ORIGINAL_KILL_DUL: Any = getattr(DULServiceProvider, "kill_dul", None)
_ORIGINAL_RUN_REACTOR: Any = getattr(DULServiceProvider, "run_reactor", None)


def _waker(dul: DULServiceProvider) -> tuple[socket.socket, socket.socket]:
    """The DUL's wake-up channel: a byte written to the second end ends its idle wait."""
    pair = dul.__dict__.get("_pacscore_wake")
    if pair is None:
        fresh = socket.socketpair()  # closed when the reactor ends (_run_reactor)
        for end in fresh:
            end.setblocking(False)
        pair = dul.__dict__.setdefault("_pacscore_wake", fresh)
    return cast(tuple[socket.socket, socket.socket], pair)


def _wake(dul: DULServiceProvider) -> None:
    """End the reactor's idle wait; nothing to do when it is not running (the channel
    lives as long as the reactor: :func:`_run_reactor`)."""
    pair = dul.__dict__.get("_pacscore_wake")
    if pair is not None:
        with contextlib.suppress(OSError):  # a byte is already waiting, or it is closed
            pair[1].send(b"\0")


def _run_reactor(self: DULServiceProvider) -> None:
    _waker(self)  # before the first look at the queues: no wake-up is missed
    try:
        _ORIGINAL_RUN_REACTOR(self)
    finally:  # the reactor is done: nobody waits on the wake-up channel any more
        for end in self.__dict__.pop("_pacscore_wake", ()):
            end.close()


def _send_pdu(self: DULServiceProvider, primitive: Any) -> None:
    _ORIGINAL_SEND_PDU(self, primitive)
    _wake(self)


def _stop_dul(self: DULServiceProvider) -> bool:
    self.__dict__["_pacscore_stopping"] = True
    _wake(self)
    return bool(_ORIGINAL_STOP_DUL(self))


def _kill_dul(self: DULServiceProvider) -> None:
    self.__dict__["_pacscore_stopping"] = True
    _ORIGINAL_KILL_DUL(self)
    _wake(self)


class _DulClock:
    """``time`` as pynetdicom's DUL module sees it: the idle sleep of its reactor waits
    until the association's socket is readable, a PDU is queued to send or the DUL is
    told to stop (or ``_IDLE`` passes)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        dul = threading.current_thread()
        transport = getattr(dul, "socket", None)
        raw = getattr(transport, "socket", None)
        if isinstance(dul, DULServiceProvider) and isinstance(transport, AssociationSocket) \
                and raw is not None and transport._is_connected \
                and not dul.__dict__.get("_pacscore_stopping"):
            if isinstance(raw, ssl.SSLSocket) and raw.pending():
                return  # decrypted bytes wait in the TLS layer, which poll cannot see
            reader = _waker(dul)[0]
            try:
                ready = readable([raw, reader], _IDLE, dul)
            except (OSError, ValueError):  # closed meanwhile: the reactor will see it
                return
            if reader in ready:
                with contextlib.suppress(OSError):
                    reader.recv(4096)
            return
        time.sleep(seconds)


_ORIGINAL_GET_MSG: Any = getattr(DIMSEServiceProvider, "get_msg", None)


def _get_msg(self: DIMSEServiceProvider, block: bool = False) -> Any:
    """``get_msg`` that never gives the association's own thread a response while a
    ``send_*`` on another thread waits for one (the checkpoint is cleared then): the
    thread only serves requests and drops anything else.  Taken under the queue's
    lock, so the sender's ``get`` and this look cannot split one message."""
    assoc = self.assoc
    if block or threading.current_thread() is not assoc \
            or assoc._reactor_checkpoint.is_set():
        return _ORIGINAL_GET_MSG(self, block)
    messages = self.msg_queue
    with messages.mutex:
        if not messages.queue:
            return None, None
        head = messages.queue[0][1]
        if not getattr(head, "is_valid_request", True):
            return None, None  # the paused sender's response: it takes it itself
        return messages.queue.popleft()


def _write_file_meta(fp: Any, file_meta: bytes, enforce_standard: bool = True) -> None:
    fp.write(file_meta)  # already encoded (file_meta above replaces create_file_meta)


PATCHES: tuple[tuple[Any, str, Any], ...] = (
    (AssociationSocket, "recv", _recv),
    (AssociationSocket, "send", _send),
    (AssociationSocket, "ready", property(_ready)),
    (pynetdicom.association, "time", _ReactorClock()),
    (pynetdicom.dul, "time", _DulClock()),
    (DULServiceProvider, "send_pdu", _send_pdu),
    (DULServiceProvider, "stop_dul", _stop_dul),
    (DULServiceProvider, "kill_dul", _kill_dul),
    (DULServiceProvider, "run_reactor", _run_reactor),
    (DIMSEServiceProvider, "get_msg", _get_msg),
    (pynetdicom.dimse_messages, "create_file_meta", file_meta),
    (pynetdicom.dimse_messages, "write_file_meta_info", _write_file_meta),
    (pynetdicom.dimse_messages, "NamedTemporaryFile", spool_file),
)
"""``(owner, attribute, replacement)``: the PDU reads and sends, the socket's readiness,
the idle waits of the DUL and association reactors, the association thread's look at
its DIMSE queue, and the file meta writing and the
spool file of received data sets (installed by :func:`.patches.install`)."""


def private_folder(folder: Path) -> None:
    """Make ``folder`` (mode 0700) unless it exists; UnsafeFolderError when it is not a
    real folder of this user that no one else may write to (another user could add,
    remove or swap the data sets received there)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    st = os.lstat(folder)
    why = ("is a symbolic link" if stat.S_ISLNK(st.st_mode)
           else "is not a folder" if not stat.S_ISDIR(st.st_mode)
           else f"belongs to user {st.st_uid}, not to {os.geteuid()} who runs pacscore"
           if st.st_uid != os.geteuid()
           else f"may be written by others (mode {stat.S_IMODE(st.st_mode):04o})"
           if st.st_mode & 0o022 else None)
    if why:
        raise UnsafeFolderError(f"spool folder {folder} {why}: refused")


def clear_spool(folder: Path) -> int:
    """Remove the data sets a stopped or killed server left in ``folder`` (none of
    them was acknowledged); return how many."""
    left = list(folder.glob(f"{SPOOL_PREFIX}*"))
    for path in left:
        path.unlink(missing_ok=True)
    return len(left)


def nodelay(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler: TCP_NODELAY on the association's socket."""
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
