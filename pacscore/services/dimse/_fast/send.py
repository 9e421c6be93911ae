"""C-GET/C-MOVE sub-operations that send stored objects as they are, from memory.

pynetdicom's retrieve handlers must yield a pydicom ``Dataset``, which it then encodes
again (or, for a file, reads back in PDU-sized chunks) and sends through its DUL
thread's queue: ~2 ms of the server's GIL per CT-size sub-operation.  Here the handler
yields an :class:`OutgoingObject` holding the Part-10 bytes the archive built (already
in the transfer syntax the peer accepted), and the association's ``send_c_store`` is
wrapped (:func:`send_from_memory`) so that such an object goes out as a C-STORE-RQ
written by :mod:`.wire`: the command set encoded directly, the data set sent as
it is.  The C-STORE-RSP still arrives through pynetdicom (its DIMSE queue), and
pynetdicom keeps counting the sub-operations.

The responses that are only a status (C-STORE responses, pending C-GET/C-MOVE responses
with their counts) are encoded and written here as well (:func:`send_responses_directly`,
installed on every association the server accepts); pynetdicom's encoder stays for the
rest (final retrieve responses with a failed-instances list, error comments).
"""

from __future__ import annotations

import dataclasses
import struct
import threading
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from . import wire as dimse_wire

__all__ = ["NotSendable", "OutgoingObject", "SubOperations", "data_set_offset",
           "response_command", "send_from_memory", "send_responses_directly", "store_request",
           "track"]


class OutgoingObject(Dataset):
    """What a retrieve handler yields: a Part-10 object encoded in ``syntax``."""

    def __init__(self, part10: bytes, sop_class: str, sop_instance: str, syntax: str):
        super().__init__()
        self.SOPInstanceUID = sop_instance  # pynetdicom lists it when the store fails
        # plain attributes, not DICOM elements (cheaper to set than pydicom's)
        self.__dict__.update(part10=part10, sop_class=sop_class, syntax=syntax)

    @property
    def sop_class(self) -> str:
        """The SOP Class UID."""
        return str(self.__dict__["sop_class"])

    @property
    def syntax(self) -> str:
        """The transfer syntax of the bytes."""
        return str(self.__dict__["syntax"])

    @property
    def data_set(self) -> memoryview:
        """The data set after the file meta information, not copied."""
        part10: bytes = self.__dict__["part10"]
        return memoryview(part10)[data_set_offset(part10):]


class NotSendable(Dataset):
    """What a retrieve handler yields for an instance it cannot send (it cannot be
    made in a syntax the peer accepted, its data cannot be read): its C-STORE
    sub-operation fails without reaching the peer, and pynetdicom counts it as failed,
    lists its UID among the failed ones and goes on with the others (PS3.4 C.4.2.3.1,
    C.4.3.3.1: the final status is then a warning, B000)."""

    def __init__(self, sop_instance: str, reason: str):
        super().__init__()
        self.SOPInstanceUID = sop_instance
        self.__dict__.update(reason=reason)

    @property
    def reason(self) -> str:
        """Why it cannot be sent."""
        return str(self.__dict__["reason"])


def data_set_offset(part10: bytes) -> int:
    """Where the data set starts: after the preamble, "DICM" and the file meta group
    (PS3.10 7.1, explicit VR little endian) when present; 0 for a bare data set."""
    at = 132 if part10[128:132] == b"DICM" else 4 if part10[:4] == b"DICM" else 0
    while len(part10) >= at + 8 and part10[at:at + 2] == b"\x02\x00":
        vr = part10[at + 4:at + 6].decode("latin-1")
        if vr in dimse_wire.LONG_VRS:
            (length,) = struct.unpack_from("<I", part10, at + 8)
            at += 12 + int(length)
        else:
            (length,) = struct.unpack_from("<H", part10, at + 6)
            at += 8 + int(length)
    return at


def store_request(sop_class: str, sop_instance: str, message_id: int, priority: int = 0,
                  originator_aet: str | bytes | None = None,
                  originator_id: int | None = None) -> bytes:
    """A C-STORE-RQ command set with a data set following (PS3.7 9.3.1.1)."""
    fields: list[tuple[int, str | int]] = [
        (0x0002, sop_class), (0x0100, 0x0001), (0x0110, message_id), (0x0700, priority),
        (0x0800, 0x0000), (0x1000, sop_instance)]
    if originator_aet and originator_id is not None:
        aet = originator_aet.decode() if isinstance(originator_aet, bytes) else originator_aet
        fields += [(0x1030, aet.strip().ljust(16)), (0x1031, originator_id)]
    return dimse_wire.command_set(fields)


_PENDING = 0xFF00
_RETRIEVE_RESPONSES = {C_GET: 0x8010, C_MOVE: 0x8021}  # Command Field
_COUNTS = ((0x1020, "NumberOfRemainingSuboperations"),
           (0x1021, "NumberOfCompletedSuboperations"),
           (0x1022, "NumberOfFailedSuboperations"),
           (0x1023, "NumberOfWarningSuboperations"))
_STORE_EXTRAS = ("ErrorComment", "OffendingElement")  # left to pynetdicom when present


def response_command(primitive: Any) -> bytes | None:
    """The command set of a C-STORE response (PS3.7 9.3.1.2) or of a pending C-GET or
    C-MOVE response without identifier (9.3.3.2, 9.3.4.2); None for any other
    message, which pynetdicom encodes."""
    kind = type(primitive)
    if (kind is not C_STORE and kind not in _RETRIEVE_RESPONSES) \
            or primitive.MessageIDBeingRespondedTo is None or primitive.Status is None \
            or primitive.AffectedSOPClassUID is None:
        return None  # requests, and every other kind of message
    fields: list[tuple[int, str | int]] = [
        (0x0002, str(primitive.AffectedSOPClassUID)),
        (0x0120, int(primitive.MessageIDBeingRespondedTo)), (0x0800, 0x0101),
        (0x0900, int(primitive.Status))]
    if kind is C_STORE:
        if primitive.AffectedSOPInstanceUID is None or any(
                getattr(primitive, name, None) is not None for name in _STORE_EXTRAS):
            return None
        fields += [(0x0100, 0x8001), (0x1000, str(primitive.AffectedSOPInstanceUID))]
    elif kind in _RETRIEVE_RESPONSES and primitive.Status == _PENDING \
            and primitive.Identifier is None:
        fields.append((0x0100, _RETRIEVE_RESPONSES[kind]))
        fields += [(number, int(getattr(primitive, name))) for number, name in _COUNTS
                   if getattr(primitive, name) is not None]
    else:
        return None
    return dimse_wire.command_set(fields)


def _once(assoc: Any, mark: str) -> bool:
    """True the first time ``mark`` is asked for on ``assoc`` (wrappers never nest)."""
    if assoc.__dict__.get(mark):
        return False
    assoc.__dict__[mark] = True
    return True


def send_responses_directly(assoc: Any) -> None:
    """Make ``assoc`` write the responses :func:`response_command` encodes with
    :mod:`.wire`."""
    if not _once(assoc, "_pacscore_responses"):
        return
    dimse = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        command = response_command(primitive)
        if command is None:
            original(primitive, context_id)
        else:
            dimse_wire.send_message(assoc, context_id, command)

    dimse.send_msg = send_msg


class Checkpoint:
    """An association's reactor checkpoint (``Association._reactor_checkpoint``, an
    ``Event`` in pynetdicom) that also knows whether the association's own thread is
    parked on it: :meth:`hold` waits on a condition for that, where pynetdicom's
    ``send_*`` poll ``_is_paused``, which is still True for a moment after the thread
    passed the checkpoint (now and then the thread then took the next C-STORE response
    off the queue and the sender waited out the DIMSE timeout: the C-MOVE tests failed
    about one run in three, before pacscore sent sub-operations itself)."""

    def __init__(self, owner: threading.Thread):
        self._owner = owner
        self._changed = threading.Condition()
        self._flag = True
        self._parked = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._changed:
            self._flag = True
            self._changed.notify_all()

    def clear(self) -> None:
        with self._changed:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._changed:
            if self._flag:
                return True
            mine = threading.current_thread() is self._owner
            if mine:
                self._parked = True
                self._changed.notify_all()
            try:
                return self._changed.wait_for(lambda: self._flag, timeout)
            finally:
                if mine:
                    self._parked = False

    def hold(self, alive: Callable[[], bool]) -> None:
        """Clear the checkpoint and return once the owner thread is parked on it (or
        ``alive()`` turned False: the association ended)."""
        with self._changed:
            self._flag = False
            while not self._parked and alive():
                self._changed.wait(0.05)


def _hold_reactor(assoc: Any) -> None:
    """Keep ``assoc``'s own thread (a C-MOVE sub-association's) away from its DIMSE
    queue until the association is released, whose ``release`` lets it go again: held
    once, for all sub-operations, on a :class:`Checkpoint` put in place of pynetdicom's.
    Not needed (and not possible) from that thread itself, where C-GET handlers run."""
    if threading.current_thread() is assoc or assoc.__dict__.get("_pacscore_held"):
        return
    checkpoint = assoc._reactor_checkpoint
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(assoc)  # set: the thread passes until it is held
        assoc._reactor_checkpoint = checkpoint
    checkpoint.hold(lambda: bool(assoc.is_established))
    assoc.__dict__["_pacscore_held"] = True


@dataclasses.dataclass(slots=True)
class SubOperations:
    """The C-STORE sub-operations of one C-GET or C-MOVE, as they end (:func:`track`)."""

    total: int = 0
    """How many there are to be."""
    completed: list[str] = dataclasses.field(default_factory=list)
    """SOP Instance UIDs stored by the peer."""
    warned: list[str] = dataclasses.field(default_factory=list)
    """Stored with a warning status."""
    failed: list[str] = dataclasses.field(default_factory=list)
    """Not sent, or refused by the peer."""

    def record(self, sop: str, status: int | None) -> None:
        """One sub-operation ended with ``status`` (None: it could not be sent)."""
        category = None if status is None else code_to_category(status)
        {STATUS_SUCCESS: self.completed, STATUS_WARNING: self.warned}.get(
            category or "", self.failed).append(sop)

    def final_status(self) -> int:
        """The final C-GET/C-MOVE status the peer gets, as pynetdicom decides it (PS3.4
        C.4.2.3.1, C.4.3.3.1): success, 0xA702 when every sub-operation failed, else
        0xB000 when any failed or had a warning."""
        if not self.failed and not self.warned:
            return 0x0000
        return 0xA702 if len(self.failed) == self.total else 0xB000


def track(assoc: Any, tally: SubOperations) -> None:
    """Record in ``tally`` how each C-STORE sub-operation sent on ``assoc`` ends (and
    fail a :class:`NotSendable` without sending anything).  The wrapper is installed
    once; the tally is the current request's."""
    assoc.__dict__["_pacscore_tally"] = tally
    if not _once(assoc, "_pacscore_track"):
        return
    original = assoc.send_c_store

    def send(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        current: SubOperations = assoc.__dict__["_pacscore_tally"]
        sop = str(getattr(dataset, "SOPInstanceUID", ""))
        if isinstance(dataset, NotSendable):
            current.record(sop, None)
            raise LookupError(f"{sop} not sent: {dataset.reason}")
        try:
            status = original(dataset, *args, **kwargs)
        except BaseException:
            current.record(sop, None)
            raise
        current.record(sop, getattr(status, "Status", None))
        return status

    assoc.send_c_store = send


def send_from_memory(assoc: Any) -> None:
    """Make ``assoc`` send every :class:`OutgoingObject` with :mod:`.wire`."""
    if not _once(assoc, "_pacscore_store"):
        return
    original = assoc.send_c_store

    def send(dataset: Any, msg_id: int = 1, priority: int = 2,
             originator_aet: str | bytes | None = None,
             originator_id: int | None = None) -> Any:
        if isinstance(dataset, NotSendable):
            raise LookupError(f"{dataset.SOPInstanceUID} not sent: {dataset.reason}")
        if not isinstance(dataset, OutgoingObject):
            return original(dataset, msg_id, priority, originator_aet, originator_id)
        if not assoc.is_established:
            raise RuntimeError("the association was released or aborted")
        sop_class, sop = dataset.sop_class, str(dataset.SOPInstanceUID)
        context = assoc._get_valid_context(sop_class, dataset.syntax, "scu",
                                           allow_conversion=False)
        command = store_request(sop_class, sop, msg_id, priority, originator_aet,
                                originator_id)
        _hold_reactor(assoc)
        dimse_wire.send_message(assoc, int(context.context_id), command, dataset.data_set)
        _, rsp = assoc.dimse.get_msg(block=True)
        if rsp is None:  # no response within the DIMSE timeout: pynetdicom aborts too
            assoc.abort()
            raise TimeoutError(f"no C-STORE response for {sop} within the DIMSE timeout")
        status = Dataset()
        status.Status = int(rsp.Status) if getattr(rsp, "Status", None) is not None \
            else 0xC000
        return status

    assoc.send_c_store = send
