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
dropped, and the connection closed.  Per connection at most ``max_message`` + 64 KiB
is buffered, and the next message is not read before the ACK of the last is sent, so
a flood is held back by TCP, not by memory.  Peers are allowed by source address
(:class:`~pacscore.services.auth.security.SenderList`); others are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...archive import Archive
from ...errors import HL7MessageError, PacsError
from ...workflow.worklist import Changes
from ..auth.security import AuditLog, SenderList
from .actions import handle
from .committer import GroupCommitter
from .messages import Incoming, ack, parse, refusal

__all__ = ["MllpServer", "MllpSettings"]

log = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"
_CHUNK = 1 << 16


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


class MllpServer:
    """Receives HL7 messages and applies them to ``archive.worklist``."""

    def __init__(self, archive: Archive, audit: AuditLog,
                 settings: MllpSettings = MllpSettings()):
        self.archive, self.audit, self.settings = archive, audit, settings
        self.senders = SenderList(archive.root)
        self._committer = GroupCommitter(self.process_batch)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._open = 0

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
                    asyncio.start_server(self._connection, host, port, limit=_CHUNK))
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
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()
                loop.stop()
            asyncio.run_coroutine_threadsafe(close(), loop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._committer.stop()

    def _forget_old_answers(self) -> None:
        """Drop answers older than :attr:`MllpSettings.answers_kept` (in the commit
        thread, between messages), then again in a day."""
        def forget() -> None:
            try:
                dropped = self.archive.worklist.forget_messages(
                    time.time() - self.settings.answers_kept)
            except PacsError as exc:
                log.warning("HL7: old message answers not dropped: %s", exc)
                return
            if dropped:
                log.info("HL7: dropped the answers of %d messages older than %.0f days",
                         dropped, self.settings.answers_kept / 86400)
        self._committer.call(forget)
        if self._loop is not None:
            self._loop.call_later(86400.0, self._forget_old_answers)

    # -- connections --------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        host = str(peer[0])
        try:
            if not self.senders.allows(host):
                self.audit.record("security", action="E", outcome="minor", user="",
                                  host=host, interface="hl7",
                                  detail="MLLP connection from a host not allowed "
                                         "(pacscore hl7 allow HOST)")
                return
            if self._open >= self.settings.max_connections:
                return
            self._open += 1
            try:
                await self._messages(reader, writer, host)
            finally:
                self._open -= 1
        except (TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _messages(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        host: str) -> None:
        buf = bytearray()
        searched = 0
        limit = self.settings.max_message + len(START) + len(END)
        while True:
            end = buf.find(END, searched)
            if end < 0:
                if len(buf) > limit:
                    await self._too_large(bytes(buf[buf.find(START) + 1:][:4096]), reader,
                                          writer, buf)
                    return
                searched = max(0, len(buf) - 1)
                chunk = await asyncio.wait_for(reader.read(_CHUNK),
                                               self.settings.idle_timeout)
                if not chunk:
                    if bytes(buf).strip():
                        log.info("MLLP peer %s closed with %d bytes of an unterminated "
                                 "message", host, len(buf))
                    return
                buf += chunk
                continue
            frame = bytes(buf[:end])
            del buf[: end + len(END)]
            searched = 0
            start = frame.rfind(START)
            if start >= 0 and len(frame) - start - 1 > self.settings.max_message:
                # over the limit but read whole (its end came in the same read): the
                # same AR and close as for one still arriving
                writer.write(self._too_large_answer(frame[start + 1:][:4096]))
                await writer.drain()
                return
            if start < 0:
                answer = refusal(frame.strip(), HL7MessageError(
                    "MLLP start block (0x0B) missing before the message", code=100,
                    location="MSH", hint="frame each message as 0x0B message 0x1C 0x0D"))
            else:
                if frame[:start].strip():
                    log.info("MLLP peer %s: %d bytes before a start block dropped",
                             host, start)
                answer = await asyncio.wrap_future(
                    self._committer.submit(frame[start + 1:], host))
            writer.write(START + answer + END)
            await writer.drain()

    def _too_large_answer(self, head: bytes) -> bytes:
        """The AR of a message over the limit (``head``: its first bytes)."""
        return START + refusal(head, HL7MessageError(
            f"message longer than {self.settings.max_message} bytes", code=207,
            location="MSH", hint="send it in smaller messages, or raise hl7_max_message "
                                 "in the serve configuration")) + END

    async def _too_large(self, head: bytes, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, buf: bytearray) -> None:
        """AR for a message over the limit; read and drop the rest of it, close."""
        writer.write(self._too_large_answer(head))
        await writer.drain()
        tail = bytes(buf[-1:])
        buf.clear()
        while True:
            chunk = await asyncio.wait_for(reader.read(_CHUNK), self.settings.idle_timeout)
            if not chunk or END in tail + chunk:
                return
            tail = chunk[-1:]

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
