"""DIMSE messages written by pacscore straight to an association's socket.

pynetdicom encodes every command set and data set with pydicom and hands each PDU to
its DUL thread through a queue; on the hot paths (C-FIND pending responses, C-GET
sub-operations) that was most of the server's time.  Here:

* a command set is encoded directly (PS3.7 6.3.1 and 9.3: group 0000, Implicit VR
  Little Endian, ascending tags, even lengths, the group length first);
* a message is framed as P-DATA-TF PDUs (PS3.8 9.3.5): the command in one PDV, then
  the data set in PDVs of at most the peer's maximum PDU length, one PDV per PDU;
* the PDUs of one message are written with one ``sendall`` while holding the
  socket's send lock (:func:`send_lock`), which pynetdicom's own sends also take
  (:func:`pacscore.services.dimse._fast.transport.install`), so a message pynetdicom sends
  meanwhile (a pending C-GET response, a release) never lands inside ours;
* the file meta group pynetdicom writes before each data set it receives into a file
  is encoded here too (:func:`file_meta`, the same bytes as pydicom's writer).

One PDU never carries two messages: pynetdicom's reader drops whatever follows a
complete message in the same PDU.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

__all__ = ["ERROR_COMMENT_LENGTH", "LONG_VRS", "command_set", "element", "error_comment",
           "file_meta", "frame", "send_lock", "send_message", "tags"]

# Explicit VR: these have a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_UNLIMITED_FRAGMENT = 1 << 22  # PDV size when the peer set no maximum PDU length


def element(tag: tuple[int, int], vr: str, value: bytes, explicit: bool) -> bytes:
    """One data element, its value padded to even length (PS3.5 6.2, 7.1)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    if not explicit:
        return struct.pack("<HHI", *tag, len(value)) + value
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xI", *tag, vr.encode(), len(value)) + value
    if len(value) > 0xFFFF:
        raise ValueError(f"({tag[0]:04X},{tag[1]:04X}) {vr} value of {len(value)} bytes "
                         "does not fit a 2-byte length")
    return struct.pack("<HH2sH", *tag, vr.encode(), len(value)) + value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
              implementation_uid: str = PYNETDICOM_IMPLEMENTATION_UID,
              implementation_version: str = PYNETDICOM_IMPLEMENTATION_VERSION) -> bytes:
    """The file meta group after "DICM" (PS3.10 7.1), as pynetdicom's
    ``create_file_meta`` and pydicom's ``write_file_meta_info`` would write it."""
    body = b"".join((
        element((0x0002, 0x0001), "OB", b"\x00\x01", True),
        element((0x0002, 0x0002), "UI", str(sop_class_uid).encode("ascii"), True),
        element((0x0002, 0x0003), "UI", str(sop_instance_uid).encode("ascii"), True),
        element((0x0002, 0x0010), "UI", str(transfer_syntax).encode("ascii"), True),
        element((0x0002, 0x0012), "UI", str(implementation_uid).encode("ascii"), True),
        element((0x0002, 0x0013), "SH", str(implementation_version).encode("ascii"), True)))
    return element((0x0002, 0x0000), "UL", struct.pack("<I", len(body)), True) + body


def command_set(fields: Iterable[tuple[int, str | int | bytes]]) -> bytes:
    """A command set from ``(element number, value)`` pairs of group 0000: text values
    are UI/AE strings, integers US, bytes a value already encoded (LO padded with a
    space, AT) (PS3.7 E.1); the group length is added."""
    parts = []
    for number, value in sorted(fields, key=lambda f: f[0]):
        if isinstance(value, int):
            parts.append(struct.pack("<HHIH", 0x0000, number, 2, value))
        elif isinstance(value, bytes):
            parts.append(element((0x0000, number), "LO", value, False))
        else:
            parts.append(element((0x0000, number), "UI", value.encode("ascii"), False))
    body = b"".join(parts)
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


ERROR_COMMENT_LENGTH = 64  # (0000,0902) Error Comment is LO (PS3.7 E.1, PS3.5 6.2)


def error_comment(text: str) -> str:
    """``text`` as an Error Comment (0000,0902) can carry it: the default character
    repertoire without backslash or control characters, at most 64 characters (cut at
    a word where it must be, with "...")."""
    clean = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in " ".join(text.split()))
    if len(clean) <= ERROR_COMMENT_LENGTH:
        return clean
    cut = clean[:ERROR_COMMENT_LENGTH - 3]
    word = cut.rsplit(" ", 1)[0]
    return (word if len(word) >= ERROR_COMMENT_LENGTH // 2 else cut).rstrip(" ,;:") + "..."


def tags(*tags: int) -> bytes:
    """An AT value: each tag as group then element, little endian (PS3.5 6.2)."""
    return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)


def frame(context_id: int, command: bytes, data: bytes | memoryview | None,
          max_pdu: int) -> bytearray:
    """The P-DATA-TF PDUs of one message, back to back: the command, then the data
    set, in PDVs of at most ``max_pdu`` bytes of PDU body (0: no limit), as many PDVs
    to a PDU as fit."""
    room = (max_pdu - 6) if max_pdu else _UNLIMITED_FRAGMENT  # PDV header: 4 + 1 + 1
    if room < 1:
        raise ValueError(f"a maximum PDU length of {max_pdu} bytes holds no data")
    pdus: list[list[tuple[int, memoryview]]] = [[]]
    used = 0  # PDU body bytes of the last PDU
    for value, more, last in ((command, 0x01, 0x03), (data, 0x00, 0x02)):
        if value is None:
            continue
        view = memoryview(value)
        count = max(1, -(-len(view) // room))
        for i in range(count):
            piece = view[i * room:(i + 1) * room]
            if pdus[-1] and max_pdu and used + 6 + len(piece) > max_pdu:
                pdus.append([])
                used = 0
            pdus[-1].append((last if i == count - 1 else more, piece))
            used += 6 + len(piece)
    out = bytearray(sum(6 + sum(6 + len(p) for _, p in pdu) for pdu in pdus))
    at = 0
    for pdu in pdus:
        struct.pack_into(">BxI", out, at, 0x04, sum(6 + len(p) for _, p in pdu))
        at += 6
        for control, piece in pdu:
            struct.pack_into(">IBB", out, at, 2 + len(piece), context_id, control)
            out[at + 6:at + 6 + len(piece)] = piece
            at += 6 + len(piece)
    return out


def send_lock(transport: Any) -> threading.Lock:
    """The lock every writer of this association socket holds while it writes."""
    lock: threading.Lock = transport.__dict__.setdefault("_pacscore_send", threading.Lock())
    return lock


def send_message(assoc: Any, context_id: int, command: bytes,
                 data: bytes | memoryview | None = None) -> None:
    """Write one message on ``assoc``, framed to the peer's maximum PDU length."""
    limit = int(assoc.dimse.maximum_pdu_size or 0)
    pdus = frame(context_id, command, data, limit)
    transport = assoc.dul.socket
    if transport is None or transport.socket is None:
        raise ConnectionError("the association's connection is closed")
    with send_lock(transport):
        transport.socket.sendall(pdus)
