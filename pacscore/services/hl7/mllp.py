"""The HL7 v2 door: an MLLP server (HL7 v2.5.1 Appendix C: ``0x0B message 0x1C 0x0D``)
on asyncio, in a thread of ``pacscore serve``.

Each message is parsed (:mod:`.messages`), applied (:mod:`.actions`) and its ACK
recorded under its sender and control ID in **one** worklist transaction, and the
ACK is sent only after that commit: a sender that gets no ACK (the server was killed
in between) resends, and the resend finds the recorded ACK and changes nothing.

Framing decisions: bytes before a start block are dropped (garbage between messages);
a frame without a start block is answered AR; an unterminated message followed by a
new start block is dropped (it was never acknowledged, so the sender resends it); a
message longer than ``max_message`` is answered AR, the rest of it is read and
dropped, and the connection closed.  A sender may pipeline (send the next message
before the ACK of the last): each message is queued for the commit thread as soon as
it is framed, so the messages of every connection that arrive while a commit runs are
committed together by the next (one flush to disk for the lot), and the ACKs go back
in the order of the messages.  Per connection at most
:attr:`MllpSettings.window` messages wait for their answer and ``max_message`` plus
one read is buffered; past that the connection is not read, so a flood is held back
by TCP, not by memory.  Peers are allowed by source address
(:class:`~pacscore.services.auth.security.SenderList`); others are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...archive import Archive
from ...errors import HL7MessageError, PacsError
from ...workflow.worklist import Changes
from ..auth.security import AuditLog, SenderList
from .actions import handle
from .messages import Incoming, ack, parse, refusal

__all__ = ["MllpServer", "MllpSettings"]

log = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"
_MAX_BATCH = 256  # messages in one group commit


@dataclass(frozen=True, slots=True)
class MllpSettings:
    """Limits of the MLLP door."""

    max_message: int = 64 * 1024**2
    """Largest message in bytes (larger: AR, connection closed)."""
    idle_timeout: float = 60.0
    """Seconds a connection may send nothing before it is closed."""
    max_connections: int = 64
    """Concurrent MLLP connections (more are closed at once)."""
    kill_after_commit: bool = False
    """Test hook: SIGKILL the server after a message's commit, before its ACK."""
    answers_kept: float = 30 * 86400.0
    """Seconds the answer of each message is kept for resends (older ones are dropped
    at start and daily: a sender resends within minutes)."""
    window: int = 64
    """Messages of one connection in flight (received, not yet answered): a sender may
    send the next before the ACK of the last; past this many the connection is not
    read until answers have gone out."""


class MllpServer:
    """Receives HL7 messages and applies them to ``archive.worklist``."""

    def __init__(self, archive: Archive, audit: AuditLog,
                 settings: MllpSettings = MllpSettings()):
        self.archive, self.audit, self.settings = archive, audit, settings
        self.senders = SenderList(archive.root)
        self._pending: list[tuple[bytes, str, _Connection, list[bytes | None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[_Connection] = set()

    # -- life ---------------------------------------------------------------------
    def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (returns once listening; OSError if it cannot)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(self._accept, host, port))
            except BaseException as exc:  # noqa: BLE001 - re-raised by start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.call_soon(self._forget_old_answers)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="hl7-mllp", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        """Stop listening, end the connections, wait for the message being committed."""
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():
            async def close() -> None:
                server.close()
                for connection in list(self._connections):
                    connection.close()
                loop.stop()
            asyncio.run_coroutine_threadsafe(close(), loop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _forget_old_answers(self) -> None:
        """Drop answers older than :attr:`MllpSettings.answers_kept` (in the event
        loop, so between two commits), then again in a day."""
        if self._loop is not None:
            self._loop.call_later(86400.0, self._forget_old_answers)
        try:
            dropped = self.archive.worklist.forget_messages(
                time.time() - self.settings.answers_kept)
        except PacsError as exc:
            log.warning("HL7: old message answers not dropped: %s", exc)
            return
        if dropped:
            log.info("HL7: dropped the answers of %d messages older than %.0f days",
                     dropped, self.settings.answers_kept / 86400)

    # -- connections --------------------------------------------------------------
    def _accept(self) -> _Connection:
        return _Connection(self)

    def _queue(self, raw: bytes, host: str, connection: _Connection,
               slot: list[bytes | None]) -> None:
        """Queue a framed message for the next group commit."""
        if not self._pending and self._loop is not None:
            self._loop.call_soon(self._commit)
        self._pending.append((raw, host, connection, slot))

    def _commit(self) -> None:
        """Group commit: apply every message framed since the last one, of every
        connection, in one transaction (one flush to disk), then answer each.

        It runs in the event loop, after the reads that were ready: while it flushes,
        the next messages wait in their sockets and the next commit takes them all;
        no hand-off to another thread per message (measured in benches/test_hl7.py)."""
        batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
        if self._pending and self._loop is not None:
            self._loop.call_soon(self._commit)
        try:
            answers = self.process_batch([(raw, host) for raw, host, _, _ in batch])
        except Exception as exc:  # noqa: BLE001 - a bug: every message's AE, logged
            answers = [refusal(raw, _as_hl7(exc)) for raw, _, _, _ in batch]
        for (_, _, connection, slot), answer in zip(batch, answers, strict=True):
            connection.answered(slot, answer)

    # -- messages -----------------------------------------------------------------
    def process(self, raw: bytes, host: str) -> bytes:
        """Apply one message and return its ACK (committed first when accepted)."""
        return self.process_batch([(raw, host)])[0]

    def process_batch(self, items: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """Apply messages in one worklist transaction (each in its own nested one:
        a refused message changes nothing, the others are committed); the ACK of each,
        sent only after the commit.  Never raises: a failure is every message's AE."""
        answers: list[bytes | None] = [None] * len(items)
        parsed: list[tuple[int, Incoming, str]] = []
        for i, (raw, host) in enumerate(items):
            try:
                parsed.append((i, parse(raw), host))
            except HL7MessageError as exc:
                self._audit(host, "", "?", exc)
                answers[i] = refusal(raw, exc)
            except Exception as exc:
                log.exception("HL7 message failed")
                answers[i] = refusal(raw, _as_hl7(exc))
        work = [(_applier(incoming), f"HL7 {incoming.sender}@{host}")
                for _, incoming, host in parsed]
        try:
            results: list[tuple[bytes, bool] | Exception] = \
                list(self.archive.worklist.change_many(work)) if work else []
        except Exception as exc:  # noqa: BLE001 - the commit failed: every message's AE
            results = [exc] * len(work)
        for (i, incoming, host), result in zip(parsed, results, strict=True):
            if isinstance(result, Exception):
                error = _as_hl7(result)
                self._audit(host, incoming.sender, self._name(incoming), error)
                answers[i] = ack(incoming, error)
                continue
            answer, again = result
            if self.settings.kill_after_commit and not again:
                os.kill(os.getpid(), signal.SIGKILL)
            self._audit(host, incoming.sender, self._name(incoming), None, again)
            answers[i] = answer
        return [a if a is not None else b"" for a in answers]

    @staticmethod
    def _name(incoming: Incoming) -> str:
        return f"{incoming.kind}^{incoming.event} {incoming.control_id}"

    def _audit(self, host: str, sender: str, name: str, error: HL7MessageError | None,
               again: bool = False) -> None:
        detail = f"HL7 {name}: " + ("AA (resent, answered as before)" if again else "AA"
                                     if error is None else f"{error.code} {error.reason}")
        self.audit.record("procedure", action="E", user=sender, host=host, interface="hl7",
                          outcome="success" if error is None else "minor", detail=detail)


def _applier(incoming: Incoming) -> Callable[[Changes], tuple[bytes, bool]]:
    """What one message does to the worklist: its ACK and whether it was answered
    before (a resend: nothing changes, the first answer is given again)."""
    def apply(changes: Changes) -> tuple[bytes, bool]:
        answered = changes.answered(incoming.dedup_key)
        if answered is not None:
            return answered, True
        handle(changes, incoming)
        answer = ack(incoming)
        changes.remember(incoming.dedup_key, answer)
        return answer, False
    return apply


def _as_hl7(exc: Exception) -> HL7MessageError:
    """``exc`` as the HL7 error the ACK reports (Table 0357 code by
    :data:`~pacscore.services.auth.access.ERROR_STATUS`)."""
    if isinstance(exc, HL7MessageError):
        return exc
    if isinstance(exc, PacsError):
        # imported here: auth.access imports the DICOMweb package, which imports it
        from ..auth.access import hl7_error_code
        return HL7MessageError(exc.reason, code=hl7_error_code(exc), hint=exc.hint)
    log.exception("HL7 message failed")
    return HL7MessageError(f"internal error ({type(exc).__name__}), logged", code=207)


class _Connection(asyncio.Protocol):
    """One MLLP connection: frames in, each message queued for the commit thread as it
    is framed, the answers written back in the order the messages came (HL7 v2.5.1
    C.4: the sender matches them by control ID, but in order is what it expects)."""

    def __init__(self, server: MllpServer):
        self.server, self.settings = server, server.settings
        self.transport: asyncio.Transport | None = None
        self.host = ""
        self.buf = bytearray()
        self.searched = 0
        self.slots: deque[list[bytes | None]] = deque()  # answers pending, in order
        self.reading = True
        self.blocked = False  # the peer's receive window is full
        self.ended = False  # no more messages taken (peer done, or the connection ends)
        self.dropping: bytes | None = None  # the tail of a message over the limit
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.host = str(peer[0])
        server = self.server
        if not server.senders.allows(self.host):
            server.audit.record("security", action="E", outcome="minor", user="",
                                host=self.host, interface="hl7",
                                detail="MLLP connection from a host not allowed "
                                       "(pacscore hl7 allow HOST)")
            self.close()
            return
        if len(server._connections) >= self.settings.max_connections:
            self.close()
            return
        server._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last = time.monotonic()
        self._idle_check()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        if bytes(self.buf).strip():
            log.info("MLLP peer %s closed with %d bytes of an unterminated message",
                     self.host, len(self.buf))

    def eof_received(self) -> bool:
        """The peer sent all it will: answer what it sent, then close."""
        self.ended = True
        self.dropping = None
        self._flush()
        return True  # keep the transport open to write the answers

    def pause_writing(self) -> None:
        self.blocked = True  # the peer does not read its ACKs: stop taking messages
        self._read(False)

    def resume_writing(self) -> None:
        self.blocked = False
        self._read(True)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.dropping is not None:  # the rest of a message over the limit
            if END in self.dropping + data:
                self.dropping = None
                self._flush()  # the AR, then close
            else:
                self.dropping = data[-1:]
            return
        if self.ended:
            return
        self.buf += data
        self._frames()

    # -- framing ------------------------------------------------------------------
    def _frames(self) -> None:
        settings, buf = self.settings, self.buf
        limit = settings.max_message + len(START) + len(END)
        while not self.ended:
            end = buf.find(END, self.searched)
            if end < 0:
                if len(buf) > limit:  # over the limit and still coming: AR, drop the rest
                    head = bytes(buf[buf.find(START) + 1:][:4096])
                    self.dropping = bytes(buf[-1:])
                    buf.clear()
                    self._refuse_and_close(head)
                else:
                    self.searched = max(0, len(buf) - 1)
                return
            frame = bytes(buf[:end])
            del buf[: end + len(END)]
            self.searched = 0
            start = frame.rfind(START)
            if start >= 0 and len(frame) - start - 1 > settings.max_message:
                # over the limit but read whole: the same AR and close
                self._refuse_and_close(frame[start + 1:][:4096])
                return
            slot: list[bytes | None] = [None]
            self.slots.append(slot)
            if start < 0:
                slot[0] = refusal(frame.strip(), HL7MessageError(
                    "MLLP start block (0x0B) missing before the message", code=100,
                    location="MSH", hint="frame each message as 0x0B message 0x1C 0x0D"))
                self._flush()
            else:
                if frame[:start].strip():
                    log.info("MLLP peer %s: %d bytes before a start block dropped",
                             self.host, start)
                self.server._queue(frame[start + 1:], self.host, self, slot)
            if len(self.slots) >= settings.window:
                self._read(False)

    def _refuse_and_close(self, head: bytes) -> None:
        """AR for a message over the limit (after the answers before it), then close."""
        self.slots.append([refusal(head, HL7MessageError(
            f"message longer than {self.settings.max_message} bytes", code=207,
            location="MSH", hint="send it in smaller messages, or raise hl7_max_message "
                                 "in the serve configuration"))])
        self.ended = True
        self._flush()

    # -- answers ------------------------------------------------------------------
    def answered(self, slot: list[bytes | None], answer: bytes) -> None:
        """The answer of one message."""
        slot[0] = answer
        self._flush()

    def _flush(self) -> None:
        """Write the answers that are ready, in order; read again when few are left."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        ready = []
        while self.slots and self.slots[0][0] is not None:
            ready.append(START + self.slots.popleft()[0] + END)  # type: ignore[operator]
        if ready:
            transport.write(b"".join(ready))
        if not self.slots and self.ended and self.dropping is None:
            transport.close()
        elif len(self.slots) <= self.settings.window // 2:
            self._read(True)

    def _read(self, on: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or on == self.reading:
            return
        if on and (len(self.slots) >= self.settings.window or self.blocked):
            return
        self.reading = on
        (transport.resume_reading if on else transport.pause_reading)()

    def _idle_check(self) -> None:
        """Close a connection that sent nothing for ``idle_timeout`` seconds while it
        had no message waiting for its answer."""
        loop, idle = asyncio.get_running_loop(), self.settings.idle_timeout
        quiet = time.monotonic() - self.last
        if quiet >= idle and not self.slots:
            self.close()
            return
        self.timer = loop.call_later(max(idle - quiet, 0.05) if not self.slots else idle,
                                     self._idle_check)

    def close(self) -> None:
        """Close now (answers not yet written are dropped: their senders resend)."""
        self.ended = True
        if self.transport is not None:
            self.transport.close()
