"""C-STORE requests received straight into the spool, past pynetdicom's message layer.

pynetdicom turns every P-DATA-TF PDU into PDU and primitive objects (copying the
data three times), runs its state machine, decodes the command set with pydicom,
validates every UID, queues the message for the association's thread, runs its
storage service class and encodes the response with pydicom: about a millisecond of
the server's CPU per CT-size instance, on top of the protocol itself.  On an
association the server accepted (:func:`enable`), the reader installed here
(:func:`install`) handles the one message that dominates ingest itself:

* a P-DATA-TF PDU whose first PDV is a complete command set of a C-STORE-RQ with a
  data set, on an accepted presentation context, opens a file in the spool with the
  preamble and file meta group pynetdicom would write (:func:`.wire.file_meta`)
  (the association's previous spool file, rewritten: see :data:`_REUSED_UP_TO`);
* its data set fragments are written to that file as they arrive, from the receive
  buffer (one copy);
* the last fragment closes the file; the handler stores it (in the association's
  reader thread: the peer waits for the response anyway), given the open file, never
  its name, and the C-STORE-RSP is written with :mod:`.wire`, with an Error
  Comment and Offending Element when it is a refusal (:class:`StoreAnswer`);
* a request whose Affected SOP Class or Instance UID is not a UID is answered 0xC000
  naming it, its data set read and dropped: the association goes on.

Everything else takes pynetdicom's path unchanged: other PDU types, other messages
(their PDVs are handed to pynetdicom's DIMSE layer as its state machine would), a
message pynetdicom has already started, TLS or not.  A data set cut short by a closed
connection or an abort is removed from the spool, never stored; the spool file goes
when the association ends.  pynetdicom's
``EVT_DATA_RECV``, ``EVT_PDU_RECV``, ``EVT_DIMSE_RECV`` and ``EVT_C_STORE`` are not
triggered for these requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from . import wire as dimse_wire
from .scope import SPOOL_PREFIX

__all__ = ["PATCHES", "StoreAnswer", "StoreRequest", "closed", "enable", "not_idle",
           "store_response"]

log = logging.getLogger(__name__)

_P_DATA_TF = 0x04
_PDU_TYPES = range(0x01, 0x08)  # PS3.8 9.3.1
_C_STORE_RQ, _C_STORE_RSP, _NO_DATA_SET = 0x0001, 0x8001, 0x0101
_HANDLER_FAILED = 0xC211  # "exception in handler", as pynetdicom answers
_OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3
_STEP = 4 << 20  # the receive buffer grows as data arrives, whatever a header claims


@dataclasses.dataclass(frozen=True, slots=True)
class StoreRequest:
    """A C-STORE-RQ whose data set is in ``path`` (a Part-10 file of the spool).  A UID
    the request carried that is not a UID at all is "" here (it is never echoed)."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path
    refusal: StoreAnswer | None = None
    """The answer when the request is refused as it is (its data set is read and
    dropped, never spooled)."""


@dataclasses.dataclass(frozen=True, slots=True)
class StoreAnswer:
    """What a C-STORE-RSP says (PS3.7 9.1.1.1.8-9, PS3.4 B.2.3): the status and, for a
    failure or warning, an Error Comment (0000,0902) and the Offending Element
    (0000,0901) tags."""

    status: int
    comment: str = ""
    """Why, in at most 64 characters (:func:`.wire.error_comment`)."""
    offending: tuple[int, ...] = ()
    """Tags of the elements at fault."""


StoreHandler = Callable[[Any, StoreRequest, BinaryIO | None], StoreAnswer]
"""``(association, request, data set file) -> answer``; called once the data set is
complete, with the open spool file (read from its position: the File Meta pynetdicom
would write, then the data set), or with None for a request refused as it is
(``request.refusal``, which the handler returns)."""


def store_response(request: StoreRequest, answer: StoreAnswer | int) -> bytes:
    """The C-STORE-RSP command set (PS3.7 9.3.1.2); the UIDs that were not UIDs are
    left out (they are U(=) in the response, PS3.7 Table 9.3-2)."""
    if isinstance(answer, int):
        answer = StoreAnswer(answer)
    fields: list[tuple[int, str | int | bytes]] = [
        (0x0100, _C_STORE_RSP), (0x0120, request.message_id), (0x0800, _NO_DATA_SET),
        (0x0900, answer.status)]
    fields += [(number, uid) for number, uid in ((0x0002, request.sop_class_uid),
                                                 (0x1000, request.sop_instance_uid)) if uid]
    if answer.offending:
        fields.append((0x0901, dimse_wire.tags(*answer.offending)))
    if answer.comment:
        fields.append((0x0902, dimse_wire.error_comment(answer.comment).encode("ascii")))
    return dimse_wire.command_set(fields)


@contextlib.contextmanager
def not_idle(assoc: Any) -> Iterator[None]:
    """Storing is not idleness: pynetdicom aborts an association whose connection was
    quiet for longer than the network timeout, also while a request is being served
    (it then aborts right after the response)."""
    timer = getattr(assoc.dul, "_idle_timer", None)  # pynetdicom's, private
    if timer is None:
        yield
        return
    timer.restart()
    timer.stop()  # a stopped timer does not expire
    try:
        yield
    finally:
        timer.restart()


def _command(value: memoryview) -> dict[int, bytes]:
    """Group 0000 elements of a command set (Implicit VR Little Endian) by element."""
    out, at = {}, 0
    while at + 8 <= len(value):
        group, number, length = struct.unpack_from("<HHI", value, at)
        if group != 0x0000 or at + 8 + length > len(value):
            raise ValueError("not a command set")
        out[number] = bytes(value[at + 8:at + 8 + length])
        at += 8 + length
    if at != len(value):
        raise ValueError("command set ends inside an element")
    return out


# PS3.5 9.1 digits and dots, and what the archive tolerates beyond the grammar in a
# data set (letters, '-' and '_' of hex digests; pacscore.dicom.header.validate_uid).
_UID = re.compile(rb"[0-9A-Za-z_-]+(\.[0-9A-Za-z_-]+)*")


def _uid(raw: bytes | None) -> str | None:
    """A UID value (PS3.5 9.1: at most 64 characters); ValueError for anything else."""
    if not raw:
        return None
    value = raw.rstrip(b"\0 ")
    if len(value) > 64 or not _UID.fullmatch(value):
        raise ValueError(f"{value[:80]!r} is not a UID")
    return value.decode("ascii")


_AFFECTED = ((0x0002, "Affected SOP Class UID"), (0x1000, "Affected SOP Instance UID"))
_CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3, with the Offending Element


def _us(raw: bytes | None) -> int | None:
    return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None


def _store_request(assoc: Any, context_id: int, value: memoryview) -> StoreRequest | None:
    """The C-STORE-RQ with a data set that the complete command set ``value`` is, its
    ``path`` still unset (a ``refusal`` when its UIDs are not UIDs: 0xC000, the
    association goes on); None for any other message (or none at all), which
    pynetdicom handles.  ValueError: a C-STORE-RQ that must abort the association (a
    presentation context that was not accepted, PS3.8 9.3.5)."""
    try:
        fields = _command(value)
    except (ValueError, struct.error):
        return None
    message_id = _us(fields.get(0x0110))
    if _us(fields.get(0x0100)) != _C_STORE_RQ or message_id is None \
            or _us(fields.get(0x0800)) in (None, _NO_DATA_SET):
        return None
    context = assoc._accepted_cx.get(context_id)
    if context is None:
        raise ValueError(f"presentation context {context_id} was not accepted")
    uids, refusal = [], None
    for number, name in _AFFECTED:
        try:
            uids.append(_uid(fields.get(number)))
        except ValueError as exc:
            uids.append("")
            refusal = refusal or StoreAnswer(_CANNOT_UNDERSTAND, f"invalid {name}",
                                             (number,))
            log.warning("C-STORE-RQ refused: %s %s", name, exc)
    if None in uids:
        return None  # pynetdicom answers the missing attribute
    return StoreRequest(context_id, message_id, str(uids[0]), str(uids[1]),
                        str(context.transfer_syntax[0]), Path(), refusal)


@dataclasses.dataclass(slots=True)
class _Incoming:
    """A C-STORE-RQ whose data set is arriving; ``fd`` is -1 once writing failed (the
    rest is read and dropped, and the request answered "out of resources") or when
    the request is refused as it is (``request.refusal``)."""

    request: StoreRequest
    fd: int
    written: int = 0

    def write(self, data: memoryview) -> None:
        try:
            while data and self.fd >= 0:
                done = os.write(self.fd, data)
                self.written += done
                data = data[done:]
        except OSError as exc:
            log.error("spooling %s failed: %s", self.request.sop_instance_uid, exc)
            self.discard()

    def discard(self) -> None:
        _remove(self.fd, self.request.path)
        self.fd = -1


def _remove(fd: int, path: Path) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    if path != Path():  # a refused request never had a spool file
        with contextlib.suppress(OSError):
            os.unlink(path)


_REUSED_UP_TO = 8 << 20
"""A spool file of at most this size is kept open for the association's next data set:
overwriting its pages costs a fifth of allocating them in a new file and freeing them
at its removal (0.07 against 0.28 ms of CPU per CT-size instance in /dev/shm)."""


class _Receiver:
    """The fast path's state on one association."""

    def __init__(self, handler: StoreHandler, spool: Path, max_pdu: int):
        self.handler, self.spool, self.max_pdu = handler, spool, max_pdu
        self.buffer = bytearray(64 << 10)
        self.incoming: _Incoming | None = None
        self.idle: tuple[int, Path] | None = None
        """The last data set's spool file, open, reused for the next one."""

    def _spool_file(self) -> tuple[int, Path]:
        """The idle spool file rewound, unless it was removed meanwhile; else a new one."""
        if self.idle is not None:
            (fd, path), self.idle = self.idle, None
            try:
                if os.fstat(fd).st_nlink > 0:  # not removed (an operator emptying the spool)
                    os.lseek(fd, 0, os.SEEK_SET)
                    return fd, path
            except OSError:
                pass
            _remove(fd, path)
        try:
            fd, name = tempfile.mkstemp(suffix=".dcm", prefix=SPOOL_PREFIX, dir=self.spool)
        except OSError as exc:
            log.error("spool %s unusable: %s", self.spool, exc)
            return -1, self.spool / f"{SPOOL_PREFIX}unwritable"
        return fd, Path(name)

    def open(self, request: StoreRequest) -> None:
        """Start receiving ``request``'s data set into a spool file (or, when it is
        refused as it is, reading and dropping it)."""
        if request.refusal is not None:
            self.incoming = _Incoming(request, -1)
            return
        meta = b"\0" * 128 + b"DICM" + dimse_wire.file_meta(
            request.sop_class_uid, request.sop_instance_uid, request.transfer_syntax)
        fd, path = self._spool_file()
        self.incoming = _Incoming(dataclasses.replace(request, path=path), fd)
        self.incoming.write(memoryview(meta))

    def finish(self, assoc: Any) -> None:
        """The data set is complete: store it (handing the handler the open spool file,
        never its name) and answer."""
        incoming, self.incoming = self.incoming, None
        assert incoming is not None
        request = incoming.request
        answer = StoreAnswer(_OUT_OF_RESOURCES, "the data set could not be spooled")
        try:
            if request.refusal is not None:
                answer = self.handler(assoc, request, None)
            elif incoming.fd >= 0:
                os.ftruncate(incoming.fd, incoming.written)  # the last one may be longer
                os.lseek(incoming.fd, 0, os.SEEK_SET)
                with not_idle(assoc), open(incoming.fd, "rb", buffering=0,
                                           closefd=False) as spooled:
                    answer = self.handler(assoc, request, spooled)
        except OSError as exc:
            log.error("spooling %s failed: %s", request.sop_instance_uid, exc)
        except Exception:
            log.exception("storing %s failed", request.sop_instance_uid)
            answer = StoreAnswer(_HANDLER_FAILED)
        finally:
            if incoming.fd >= 0 and incoming.written <= _REUSED_UP_TO:
                self.idle = incoming.fd, request.path
            else:
                incoming.discard()
        if not assoc.is_established:
            return
        try:
            dimse_wire.send_message(assoc, request.context_id, store_response(request, answer))
        except OSError:  # the peer went away meanwhile (it will send it again: a duplicate)
            assoc.dul.event_queue.put("Evt17")  # transport connection closed

    def discard(self) -> None:
        """Remove the data set being received and the idle spool file."""
        if self.incoming is not None:
            self.incoming.discard()
            self.incoming = None
        if self.idle is not None:
            _remove(*self.idle)
            self.idle = None

    def read(self, transport: Any, count: int) -> memoryview | None:
        """Exactly ``count`` bytes from the socket into the buffer (None: closed)."""
        raw = transport.socket
        if not min(count, _STEP) <= len(self.buffer) <= _STEP:  # kept small between PDUs
            self.buffer = bytearray(max(min(count, _STEP), 64 << 10))
        read = 0
        while read < count:
            if read == len(self.buffer):  # grow only as data comes in (a peer may lie)
                self.buffer.extend(bytes(min(count - read, _STEP)))
            with memoryview(self.buffer) as view:
                got = raw.recv_into(view[read:min(count, len(view))])
            if not got:
                return None
            read += got
        return memoryview(self.buffer)[:count]


# (getattr: a pynetdicom without it is refused by dimse_patches, not at import)
_ORIGINAL_READ: Any = getattr(DULServiceProvider, "_read_pdu_data", None)


def _pdvs(body: memoryview) -> list[tuple[int, int, memoryview]] | None:
    """(context ID, message control header, value) of each PDV; None if malformed."""
    out, at = [], 0
    while at < len(body):
        if at + 6 > len(body):
            return None
        (length,) = struct.unpack_from(">I", body, at)
        if length < 2 or at + 4 + length > len(body):
            return None
        out.append((body[at + 4], body[at + 5], body[at + 6:at + 4 + length]))
        at += 4 + length
    return out


def _to_pynetdicom(dul: DULServiceProvider, pdvs: list[tuple[int, int, memoryview]]) -> None:
    """Hand PDVs to pynetdicom's DIMSE layer, as its state machine does (DT-2)."""
    primitive = P_DATA()
    # pynetdicom annotates tuples but its setter accepts only [ID, PDV] lists
    items: Any = [[cid, bytes([control]) + bytes(value)] for cid, control, value in pdvs]
    primitive.presentation_data_value_list = items
    dul.assoc.dimse.receive_primitive(primitive)


def _read_pdu_data(self: DULServiceProvider) -> None:
    receiver: _Receiver | None = self.__dict__.get("_pacscore_receiver")
    transport = self.socket
    if receiver is None or transport is None or transport.socket is None \
            or self.state_machine.current_state != "Sta6" or not self.event_queue.empty():
        if receiver is not None and self.state_machine.current_state != "Sta6":
            receiver.discard()  # released or aborted (by either side) inside a data set
        _ORIGINAL_READ(self)
        return
    try:
        _read_pdu(self, receiver, transport)
    except BaseException:
        receiver.discard()  # pynetdicom's reactor aborts the association
        raise


def _read_pdu(dul: DULServiceProvider, receiver: _Receiver, transport: Any) -> None:
    try:
        header = receiver.read(transport, 6)
        if header is None:
            raise ConnectionError("closed")
        head = bytes(header)  # the buffer is reused for the body
        header.release()
        pdu_type, _, length = struct.unpack(">BBL", head)
        if pdu_type not in _PDU_TYPES:  # its length means nothing: do not read it
            _abort(dul, receiver, f"unknown PDU type 0x{pdu_type:02X}")
            return
        if pdu_type == _P_DATA_TF and 0 < receiver.max_pdu < length:  # PS3.8 9.3.5
            _abort(dul, receiver, f"P-DATA-TF PDU of {length} bytes, over the "
                                  f"{receiver.max_pdu} announced")
            return
        body = receiver.read(transport, length)
        if body is None:
            raise ConnectionError("closed")
    except (OSError, ConnectionError, TimeoutError):
        receiver.discard()
        dul.event_queue.put("Evt17")  # transport connection closed
        return
    if pdu_type != _P_DATA_TF:
        receiver.discard()  # a release or abort inside a data set: nothing is stored
        _decode(dul, head + bytes(body))
        return
    _data(dul, receiver, body)


def _abort(dul: DULServiceProvider, receiver: _Receiver, why: str) -> None:
    """Drop the data set being received; pynetdicom aborts the association (Evt19:
    invalid PDU, as it reacts itself)."""
    log.warning("%s: association aborted", why)
    receiver.discard()
    dul.event_queue.put("Evt19")


def _decode(dul: DULServiceProvider, pdu_bytes: bytes) -> None:
    """Any PDU but P-DATA-TF: pynetdicom decodes it and its state machine acts."""
    try:
        pdu, event = dul._decode_pdu(bytearray(pdu_bytes))
    except Exception:
        log.exception("unable to decode a PDU")
        dul.event_queue.put("Evt19")  # unrecognised or invalid PDU
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _data(dul: DULServiceProvider, receiver: _Receiver, body: memoryview) -> None:
    pdvs = _pdvs(body)
    if pdvs is None:
        _abort(dul, receiver, "a PDV longer than its P-DATA-TF PDU")
        return
    assoc = dul.assoc
    for i, (context_id, control, value) in enumerate(pdvs):
        incoming = receiver.incoming
        if incoming is not None:
            if control & 1 or context_id != incoming.request.context_id:
                _abort(dul, receiver, "a fragment of another message inside the data set "
                                      f"of {incoming.request.sop_instance_uid}")
                return
            incoming.write(value)
            if control & 2:
                receiver.finish(assoc)
            continue
        request = None
        if control & 3 == 3 and assoc.dimse.message is None:
            try:
                request = _store_request(assoc, context_id, value)
            except ValueError as exc:  # pynetdicom refuses these too
                _abort(dul, receiver, f"C-STORE-RQ refused: {exc}")
                return
        if request is None:
            _to_pynetdicom(dul, pdvs[i:])
            return
        receiver.open(request)


PATCHES: tuple[tuple[Any, str, Any], ...] = (
    (DULServiceProvider, "_read_pdu_data", _read_pdu_data),
)
"""P-DATA-TF PDUs read through the fast path on associations :func:`enable`\\ d
(installed by :func:`.patches.install`)."""


def enable(assoc: Any, handler: StoreHandler, spool: Path, max_pdu: int) -> None:
    """Receive ``assoc``'s C-STORE requests into ``spool`` and store them with
    ``handler``; P-DATA-TF PDUs over ``max_pdu`` bytes (0: no limit), the maximum
    this side announced, abort the association."""
    assoc.dul.__dict__["_pacscore_receiver"] = _Receiver(handler, spool, max_pdu)


def closed(event: Any) -> None:
    """``EVT_CONN_CLOSE`` handler: remove a data set the connection's end cut short."""
    receiver: _Receiver | None = event.assoc.dul.__dict__.get("_pacscore_receiver")
    if receiver is not None:
        receiver.discard()
