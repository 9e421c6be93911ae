"""HL7 v2 messages in and acknowledgements out: character sets, parsing, the MSH
checks, and the ACK (HL7 v2.5.1 chapter 2).

Parsing is python-hl7's (``hl7.parse`` with the separators the message declares in
MSH-1/MSH-2); this module only decodes the bytes first, by MSH-18, and checks what the
parse gives.  Decisions where the standard leaves a choice:

* No MSH-18: UTF-8 (HL7's default is ASCII, of which UTF-8 is a superset; v2.8 makes
  UTF-8 the preferred encoding, and many senders send it without saying so).  Bytes
  that are not valid in the declared (or default) encoding are refused (AR, 103).
* The ACK (MSH, MSA, and ERR for a refusal) is sent in the encoding of the message.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import hl7
from hl7.util import generate_message_control_id, unescape

from ...errors import HL7MessageError

__all__ = ["CHARSETS", "REJECT_CODES", "VERSIONS", "Incoming", "ack", "field", "parse",
           "refusal"]

CHARSETS: dict[str, str] = {
    # MSH-18 (HL7 Table 0211) -> Python codec
    "": "utf-8", "ASCII": "ascii", "UNICODE UTF-8": "utf-8",
    "8859/1": "latin-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3",
    "8859/4": "iso8859-4", "8859/5": "iso8859-5", "8859/6": "iso8859-6",
    "8859/7": "iso8859-7", "8859/8": "iso8859-8", "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
}
"""Character sets of MSH-18 that the door decodes (others: AR, code 103)."""

VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1",
                      "2.8", "2.8.1", "2.8.2", "2.9"})
"""MSH-12 versions accepted (IHE RAD SWF uses 2.3.1 and 2.5.1)."""

PROCESSING = frozenset({"P", "D", "T"})
"""MSH-11 processing ids accepted (Table 0103: production, debugging, training)."""

REJECT_CODES = frozenset({100, 200, 201, 202, 203})
"""HL7 Table 0357 codes answered with AR (the message as such is refused: structure,
type, event, processing id, version), as is every problem of its MSH (separators,
character set); every other refusal is AE (its content)."""

_SEGMENT_END = b"\r"


def _msh18(raw: bytes) -> str:
    """MSH-18 (first repetition) read from the raw bytes: MSH-1 is the byte after
    ``MSH`` and every character set of :data:`CHARSETS` keeps ASCII as it is."""
    if len(raw) < 8 or raw[:3] != b"MSH":
        return ""
    sep = raw[3:4]
    head = raw.split(_SEGMENT_END, 1)[0].split(b"\n", 1)[0]
    fields = head.split(sep)
    if len(fields) < 18:
        return ""
    rep = raw[5:6] if len(fields[1]) > 1 else b"~"
    return fields[17].split(rep, 1)[0].decode("ascii", "replace").strip()


@dataclass(frozen=True, slots=True)
class Incoming:
    """A parsed message and what the door needs of its header."""

    message: hl7.Message
    """python-hl7's parse."""
    encoding: str
    """The Python codec of its character set (the ACK's too)."""
    kind: str
    """MSH-9.1 message type (``ORM``)."""
    event: str
    """MSH-9.2 trigger event (``O01``)."""
    control_id: str
    """MSH-10."""
    sender: str
    """MSH-3 and MSH-4 (application, facility), what the control ID is unique within."""
    header: str = ""
    """The MSH segment as received (decoded, still escaped): the AA is written from it
    without python-hl7's ``create_ack`` (:func:`ack`); empty for a stand-in."""

    @property
    def dedup_key(self) -> str:
        """The key of the answered-messages table."""
        return f"{self.sender}\0{self.control_id}"


def field(segment: hl7.Segment, number: int, component: int = 1, sub: int = 1,
          repetition: int = 1) -> str:
    """One value of ``segment`` (escapes resolved), ``''`` where the message has none:
    python-hl7's ``Segment.extract_field``, whose walk down its parse tree is done here
    for the first repetition without its per-call bookkeeping (an order reads ~40
    values; a test compares the two on every position of many messages)."""
    if repetition != 1 or min(number, component, sub) < 1 \
            or (number < 3 and str(segment[0]) in _HEADERS):
        try:
            value = segment.extract_field(1, number, repetition, component, sub)
        except (IndexError, KeyError):
            return ""
        return str(value).strip()
    if number >= len(segment):
        return ""
    value = _ITEM(_ITEM(segment, number), 0)  # the field's first repetition
    if isinstance(value, hl7.Repetition):
        if component > len(value):
            return ""
        value = _ITEM(value, component - 1)
        if isinstance(value, hl7.Component):
            return str(unescape(segment, _ITEM(value, sub - 1))).strip() \
                if sub <= len(value) else ""
        if sub != 1:
            return ""
    elif component != 1 or sub != 1:
        return ""
    return str(unescape(segment, value)).strip()


_ITEM = list.__getitem__  # python-hl7's containers are lists; theirs adds slice handling
_HEADERS = frozenset({"MSH", "BHS", "FHS"})  # MSH-1 and MSH-2 are not unescaped


def _decode(raw: bytes) -> tuple[str, str]:
    charset = _msh18(raw)
    encoding = CHARSETS.get(charset.upper())
    if encoding is None:
        raise HL7MessageError(f"character set {charset!r} in MSH-18 is not supported",
                              code=103, location="MSH-18",
                              hint=f"send one of {', '.join(c for c in CHARSETS if c)}")
    try:
        return raw.decode(encoding), encoding
    except UnicodeDecodeError as exc:
        raise HL7MessageError(f"bytes not valid in {charset or 'UTF-8 (no MSH-18)'}: "
                              f"{exc.reason} at byte {exc.start}", code=103,
                              location="MSH-18",
                              hint="declare the character set the message is in, in "
                                   "MSH-18 (UNICODE UTF-8, 8859/1, ...)") from exc


def parse(raw: bytes) -> Incoming:
    """Decode (MSH-18), parse (python-hl7) and check the header of one message;
    :class:`HL7MessageError` naming what is wrong."""
    text, encoding = _decode(raw)
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH"):
        raise HL7MessageError("the message does not start with an MSH segment", code=100,
                              location="MSH", hint="an HL7 v2 message starts with MSH")
    seps = text[3:9]
    if len(seps) < 5 or seps[0].isalnum() or seps[0] in "\r" \
            or len(set(seps[:5])) != 5 or any(c.isalnum() or c.isspace() for c in seps[:5]):
        raise HL7MessageError("MSH-1/MSH-2 do not declare a field separator and four "
                              "distinct encoding characters", code=102, location="MSH-2",
                              hint="start the message with MSH|^~\\&|")
    try:
        message = hl7.parse(text)
    except (hl7.ParseException, IndexError, ValueError) as exc:
        raise HL7MessageError(f"not an HL7 v2 message: {exc}", code=100,
                              location="MSH") from exc
    msh = message.segment("MSH")
    kind, event = field(msh, 9, 1), field(msh, 9, 2)
    control_id, version = field(msh, 10), field(msh, 12)
    for value, where, what in ((kind, "MSH-9", "message type"),
                               (event, "MSH-9", "trigger event (MSH-9.2)"),
                               (control_id, "MSH-10", "message control ID"),
                               (version, "MSH-12", "version ID")):
        if not value:
            raise HL7MessageError(f"{where} ({what}) is missing", code=101, location=where,
                                  hint="check the field separators: every field of MSH "
                                       "is counted from MSH-1")
    if version not in VERSIONS:
        raise HL7MessageError(f"version {version!r} (MSH-12) is not supported", code=203,
                              location="MSH-12",
                              hint=f"send one of {', '.join(sorted(VERSIONS))}")
    processing = field(msh, 11)
    if processing and processing not in PROCESSING:
        raise HL7MessageError(f"processing ID {processing!r} (MSH-11) is not supported",
                              code=202, location="MSH-11", hint="send P, D or T")
    sender = f"{field(msh, 3)}^{field(msh, 4)}"
    return Incoming(message, encoding, kind.upper(), event.upper(), control_id, sender,
                    text.split("\r", 1)[0])


def _err(ack: hl7.Message, error: HL7MessageError) -> hl7.Segment:
    """ERR (v2.5+): ERR-2 location, ERR-3 code^text^HL70357, ERR-4 severity E,
    ERR-8 the message for the user."""
    segment = ack.create_segment([ack.create_field(["ERR"])])
    location = error.location.split("-")
    segment.assign_field(location[0], 2, 1, 1)
    if len(location) > 1:
        segment.assign_field("1", 2, 1, 2)
        segment.assign_field(location[1], 2, 1, 3)
    segment.assign_field(str(error.code), 3, 1, 1)
    segment.assign_field(ack.escape(_TABLE_0357.get(error.code, "Error")), 3, 1, 2)
    segment.assign_field("HL70357", 3, 1, 3)
    segment.assign_field("E", 4)
    segment.assign_field(ack.escape(error.reason), 8)
    return segment


_TABLE_0357 = {100: "Segment sequence error", 101: "Required field missing",
               102: "Data type error", 103: "Table value not found",
               200: "Unsupported message type", 201: "Unsupported event code",
               202: "Unsupported processing id", 203: "Unsupported version id",
               204: "Unknown key identifier", 205: "Duplicate key identifier",
               206: "Application record locked", 207: "Application internal error"}


def ack(incoming: Incoming, error: HL7MessageError | None = None) -> bytes:
    """The ACK of ``incoming``: AA, or AE/AR (by :data:`REJECT_CODES`) with an ERR
    segment naming the problem; encoded like the message."""
    if error is None and incoming.header:
        return _accept(incoming.header).encode(incoming.encoding, "replace")
    code = "AA" if error is None else "AR" if error.code in REJECT_CODES \
        or error.location.startswith("MSH") else "AE"
    answer = incoming.message.create_ack(code, application="PACSCORE")
    if error is not None:
        answer.append(_err(answer, error))
    text = str(answer)  # python-hl7 ends the last segment with CR already
    return (text if text.endswith("\r") else text + "\r").encode(incoming.encoding,
                                                                  "replace")


def _accept(header: str) -> str:
    """The AA of the message whose MSH segment is ``header``, as python-hl7's
    ``create_ack(application="PACSCORE")`` writes it (tests compare both), without
    building its containers: the ACK of every accepted message, so the hot one.
    MSH-3/4 and MSH-5/6 swapped, MSH-7 now (UTC), MSH-9 ``ACK^<event>^ACK``, MSH-10 a
    new control ID, MSH-11/12 copied; MSA-1 AA, MSA-2 the message's control ID."""
    sep, fields = header[3:4], header.split(header[3:4])
    enc = fields[1] if len(fields) > 1 else "^~\\&"
    comp, rep = enc[:1] or "^", enc[1:2] or "~"

    def f(n: int) -> str:  # MSH-n as python-hl7 counts (MSH-1 is the separator)
        return fields[n - 1] if n - 1 < len(fields) else ""

    trigger = f(9).split(rep, 1)[0].split(comp)
    head = [enc, "PACSCORE", f(6), f(3), f(4),
            datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S"), "",
            comp.join(("ACK", trigger[1] if len(trigger) > 1 else "", "ACK")),
            generate_message_control_id(), f(11), f(12)]
    return f"MSH{sep}{sep.join(head)}\rMSA{sep}AA{sep}{f(10)}\r"


def refusal(raw: bytes, error: HL7MessageError) -> bytes:
    """An AR/AE for bytes that did not parse into a message: MSA-2 holds MSH-10 when
    it can be read from them."""
    control_id = ""
    if raw[:3] == b"MSH" and len(raw) > 4:
        parts = raw.split(b"\r", 1)[0].split(raw[3:4])
        if len(parts) > 9:
            control_id = parts[9].decode("ascii", "replace")[:199]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    stand_in = hl7.parse(f"MSH|^~\\&|||PACSCORE||{stamp}||ACK^|x|P|2.5")
    stand_in.segment("MSH").assign_field(stand_in.escape(control_id), 10)
    incoming = Incoming(stand_in, "utf-8", "ACK", "", control_id, "")
    return ack(incoming, error)
