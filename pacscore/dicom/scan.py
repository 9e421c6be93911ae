"""Structural scan of a Part-10 object, before any pixel is touched.

One pass over the element headers (values are skipped by length, never copied)
that checks what pydicom reads silently (RELIABILITY items 1, 3-6, 9, 13):

* every declared length fits in what is left of the file (truncation inside a
  sequence, declared lengths near 4 GB);
* sequences nest no deeper than the limit;
* the File Meta group names a transfer syntax;
* a deflated data set inflates within the size and ratio caps and the process's
  budget (:mod:`pacscore.dicom.inflate`).

It returns where the Pixel Data element and its fragments lie, and the raw bytes
of the top-level elements, so the archive can index an object and rebuild it
byte for byte without parsing it twice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from pydicom.datadict import dictionary_VR

from ..config import Limits
from ..errors import InvalidDicomError, LimitExceededError, TruncatedFileError
from .inflate import inflate
from .syntaxes import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    TransferSyntax,
    syntax,
)

__all__ = ["PixelElement", "RawElement", "ScannedObject", "looks_like_dicom", "scan"]

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_PIXEL_DATA = 0x7FE00009
_PIXEL_TAGS = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA})
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF

# PS3.5 7.1.2: VRs whose explicit header has 2 reserved bytes and a 32-bit length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ALL_VRS = _LONG_VRS | frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
     b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_VR_INFO: dict[bytes, tuple[str, bool]] = {
    vr: (vr.decode(), vr in _LONG_VRS) for vr in _ALL_VRS}
"""VR as written -> (its name, whether its header has the 32-bit length)."""
_MAX_CAPTURED_VALUE = 1 << 16


class RawElement(NamedTuple):
    """A top-level element as it lies in the data set bytes (a tuple: one is made for
    every element of every object stored, and a tuple is made 4x faster than a frozen
    dataclass)."""

    vr: str
    """Value representation (from the stream, or the dictionary for implicit VR)."""
    offset: int
    """Offset of the value in :attr:`ScannedObject.body`."""
    length: int
    """Length of the value in bytes."""


@dataclass(frozen=True, slots=True)
class PixelElement:
    """Where the pixel data lies in :attr:`ScannedObject.body`."""

    tag: int
    """(7FE0,0010), or (7FE0,0008)/(7FE0,0009) for float and double pixel data."""
    element_start: int
    """Offset of the element's tag."""
    value_start: int
    """Offset of its value."""
    value_end: int
    """Offset just past its value (past the sequence delimiter when encapsulated)."""
    vr: str
    """VR as written (OB or OW; OW assumed for implicit VR)."""
    encapsulated: bool = False
    """The value is a sequence of fragments (undefined length)."""
    fragments: tuple[tuple[int, int], ...] = ()
    """(offset, length) of each fragment after the Basic Offset Table; empty if native."""
    offset_table: tuple[int, ...] = ()
    """Basic Offset Table entries (PS3.5 A.4), empty when the table is empty."""


    @property
    def length(self) -> int:
        """Length of the value in bytes."""
        return self.value_end - self.value_start


@dataclass(frozen=True, slots=True)
class ScannedObject:
    """A Part-10 object whose structure has been checked."""

    data: bytes
    """The object exactly as received."""
    transfer_syntax: TransferSyntax
    """Transfer syntax of the data set (from File Meta, or inferred when there is none)."""
    has_file_meta: bool
    """A File Meta group (0002,xxxx) is present."""
    dataset_start: int
    """Offset in :attr:`data` where the data set (after File Meta) begins."""
    body: bytes | bytearray
    """The data set bytes the offsets refer to: :attr:`data` itself, or the inflated
    data set of a deflated object (a buffer of its own, not copied again)."""
    elements: dict[int, RawElement] = field(repr=False)
    """Top-level elements (but pixel data and sequences), by tag."""
    meta: dict[int, bytes] = field(repr=False)
    """Raw values of the File Meta elements."""
    pixel: PixelElement | None
    """The Pixel Data element, if any."""
    sequence_tags: frozenset[int]
    """Top-level sequence tags (their content was checked, not captured)."""
    oversized: dict[int, int] = field(default_factory=dict, repr=False)
    """Top-level elements too long to be captured (over 64 KiB): tag -> length."""

    @property
    def preamble(self) -> bytes:
        """The 128-byte preamble, or empty."""
        return self.data[:128] if self.data[128:132] == b"DICM" else b""

    @property
    def inflated(self) -> bool:
        """The body is an inflated copy rather than the received bytes."""
        return self.body is not self.data


def looks_like_dicom(head: bytes) -> bool:
    """Cheap sniff used to skip non-DICOM files in folder imports."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group_le = struct.unpack_from("<H", head, 0)[0]
    group_be = struct.unpack_from(">H", head, 0)[0]
    return group_le in (0x0002, 0x0008) or group_be == 0x0008


@lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    # Ambiguous VRs ("US or SS", "OB or OW") matter only for value decoding.
    return vr.split(" ")[0]


class _Walker:
    """Walks element headers of one data set encoding."""

    def __init__(self, body: bytes | bytearray, ts: TransferSyntax, limits: Limits,
                 source: str):
        self.body = body
        self.little = ts.little_endian
        self.implicit = ts.implicit_vr
        self.limits = limits
        self.source = source
        self.u16 = struct.Struct("<H" if self.little else ">H").unpack_from
        self.u32 = struct.Struct("<I" if self.little else ">I").unpack_from
        self.head = struct.Struct("<HH2sH" if self.little else ">HH2sH").unpack_from
        self.elements: dict[int, RawElement] = {}
        self.oversized: dict[int, int] = {}
        self.sequences: set[int] = set()
        self.pixel: PixelElement | None = None

    # -- errors -----------------------------------------------------------------
    def _truncated(self, what: str, pos: int, need: int, end: int) -> TruncatedFileError:
        return TruncatedFileError(
            f"{what} at offset {pos} needs {need} bytes but only {max(end - pos, 0)} remain",
            source=self.source,
        )

    # -- element header -----------------------------------------------------------
    def header(self, pos: int, end: int) -> tuple[int, str, int, int]:
        """Return (tag, vr, length, value_start) of the element at ``pos``."""
        if pos + 8 > end:
            raise self._truncated("element header", pos, 8, end)
        group, elem, raw_vr, short = self.head(self.body, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE or self.implicit:
            length = self.u32(self.body, pos + 4)[0]
            vr = "" if group == 0xFFFE else dictionary_vr(tag)
            return tag, vr, length, pos + 8
        known = _VR_INFO.get(raw_vr)
        if known is None:
            raise InvalidDicomError(
                f"element ({group:04X},{elem:04X}) at offset {pos} has unknown VR {raw_vr!r}",
                source=self.source,
            )
        vr, long = known
        if long:
            if pos + 12 > end:
                raise self._truncated(f"header of ({group:04X},{elem:04X})", pos, 12, end)
            return tag, vr, self.u32(self.body, pos + 8)[0], pos + 12
        return tag, vr, short, pos + 8

    # -- data sets and sequences ----------------------------------------------------
    def dataset(self, pos: int, end: int, depth: int, top: bool) -> int:  # noqa: C901
        """Walk elements from ``pos``; return the offset after the data set.

        Stops at ``end`` or after an Item Delimitation Item (undefined-length items).
        """
        body, header, elements = self.body, self.header, self.elements
        element = tuple.__new__  # RawElement(...) runs NamedTuple's Python-level __new__:
        # 4x the time of the tuple itself, and one is made for every element stored
        while pos < end:
            if top and end - pos < 8 and not any(body[pos:end]):
                return end  # trailing padding bytes
            tag, vr, length, value = header(pos, end)
            if tag == ITEM_END:
                return value
            if tag in _PIXEL_TAGS and (top or length == UNDEFINED):
                # Nested pixel data (Icon Image Sequence) is walked but not recorded.
                pos = self.pixel_element(tag, vr, pos, value, length, end, record=top)
                continue
            if length == UNDEFINED:
                if tag == ITEM:  # a stray item at data-set level: read it as a data set
                    pos = self.dataset(value, end, depth + 1, top=False)
                else:
                    pos = self.sequence(value, end, depth + 1, tag)
                if top:
                    self.sequences.add(tag)
                continue
            if value + length > end:
                raise self._truncated(
                    f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) [{vr}]", value, length, end
                )
            if vr == "SQ":
                self.sequence_items(value, value + length, depth + 1, tag)
                if top:
                    self.sequences.add(tag)
            elif top and length <= _MAX_CAPTURED_VALUE:
                elements[tag] = element(RawElement, (vr, value, length))
            elif top:
                self.oversized[tag] = length
            pos = value + length
        return pos

    def sequence(self, pos: int, end: int, depth: int, tag: int) -> int:
        """Walk an undefined-length sequence; return the offset after its delimiter."""
        self._check_depth(depth, tag)
        while True:
            item_tag, _, length, value = self.header(pos, end)
            if item_tag == SEQUENCE_END:
                return value
            if item_tag != ITEM:
                raise InvalidDicomError(
                    f"sequence ({tag >> 16:04X},{tag & 0xFFFF:04X}) holds tag "
                    f"({item_tag >> 16:04X},{item_tag & 0xFFFF:04X}) where an item was expected",
                    source=self.source,
                )
            if length == UNDEFINED:
                pos = self.dataset(value, end, depth, top=False)
            else:
                if value + length > end:
                    raise self._truncated("sequence item", value, length, end)
                self.dataset(value, value + length, depth, top=False)
                pos = value + length

    def sequence_items(self, pos: int, end: int, depth: int, tag: int) -> None:
        """Walk a defined-length sequence value occupying [pos, end)."""
        self._check_depth(depth, tag)
        while pos < end:
            item_tag, _, length, value = self.header(pos, end)
            if item_tag == SEQUENCE_END:
                return
            if item_tag != ITEM:
                raise InvalidDicomError(
                    f"sequence ({tag >> 16:04X},{tag & 0xFFFF:04X}) holds a non-item tag",
                    source=self.source,
                )
            if length == UNDEFINED:
                pos = self.dataset(value, end, depth, top=False)
            else:
                if value + length > end:
                    raise self._truncated("sequence item", value, length, end)
                self.dataset(value, value + length, depth, top=False)
                pos = value + length

    def _check_depth(self, depth: int, tag: int) -> None:
        if depth > self.limits.max_sequence_depth:
            raise LimitExceededError(
                f"sequences nest deeper than {self.limits.max_sequence_depth} levels "
                f"(at ({tag >> 16:04X},{tag & 0xFFFF:04X}))",
                source=self.source,
            )

    # -- pixel data -------------------------------------------------------------
    def pixel_element(self, tag: int, vr: str, start: int, value: int, length: int,  # noqa: C901
                      end: int, record: bool) -> int:
        if record and self.pixel is not None:
            raise InvalidDicomError("more than one pixel data element", source=self.source)
        vr = vr if vr not in ("", "UN") else "OW"
        if length != UNDEFINED:
            if value + length > end:
                raise self._truncated("pixel data", value, length, end)
            if record:
                self.pixel = PixelElement(tag, start, value, value + length, vr)
            return value + length
        # Encapsulated (PS3.5 A.4): Basic Offset Table item, fragment items, delimiter.
        fragments: list[tuple[int, int]] = []
        table: tuple[int, ...] = ()
        pos = value
        first = True
        while True:
            item_tag, _, item_len, item_value = self.header(pos, end)
            if item_tag == SEQUENCE_END:
                pos = item_value
                break
            if item_tag != ITEM or item_len == UNDEFINED:
                raise InvalidDicomError(
                    f"encapsulated pixel data has a malformed item at offset {pos}",
                    source=self.source,
                )
            if item_value + item_len > end:
                raise self._truncated("pixel data fragment", item_value, item_len, end)
            if first:
                if item_len % 4:
                    raise InvalidDicomError(
                        "Basic Offset Table length is not a multiple of 4", source=self.source
                    )
                fmt = ("<" if self.little else ">") + f"{item_len // 4}I"
                table = struct.unpack_from(fmt, self.body, item_value)
                first = False
            else:
                fragments.append((item_value, item_len))
            pos = item_value + item_len
        if record:
            self.pixel = PixelElement(tag, start, value, pos, "OB", True, tuple(fragments), table)
        return pos


def _parse_meta(data: bytes, pos: int, source: str) -> tuple[dict[int, bytes], int]:
    """Read the File Meta group (always explicit VR little endian, PS3.10 7.1)."""
    meta: dict[int, bytes] = {}
    end = len(data)
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise TruncatedFileError("File Meta element header is cut short", source=source)
            length = struct.unpack_from("<I", data, pos + 8)[0]
            value = pos + 12
        elif vr in _ALL_VRS:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            value = pos + 8
        else:
            raise InvalidDicomError(
                f"File Meta element (0002,{elem:04X}) has unknown VR {vr!r}", source=source
            )
        if length == UNDEFINED or value + length > end:
            raise TruncatedFileError(
                f"File Meta element (0002,{elem:04X}) declares {length} bytes past the end",
                source=source,
            )
        meta[(group << 16) | elem] = data[value : value + length]
        pos = value + length
    return meta, pos


def _infer_syntax(data: bytes, pos: int) -> str:
    """Guess the encoding of a data set without File Meta (ACR-NEMA style files)."""
    if len(data) - pos < 8:
        return IMPLICIT_LE
    if struct.unpack_from(">H", data, pos)[0] == 0x0008 and data[pos] == 0:
        return EXPLICIT_BE
    return EXPLICIT_LE if data[pos + 4 : pos + 6] in _ALL_VRS else IMPLICIT_LE


def scan(data: bytes, limits: Limits, source: str = "<bytes>") -> ScannedObject:
    """Check the structure of a Part-10 object and locate its parts.

    Raises
    ------
    InvalidDicomError, TruncatedFileError, LimitExceededError
        With the offset and the reason; nothing in ``data`` is trusted before this.
    """
    if len(data) > limits.max_file_bytes:
        raise LimitExceededError(
            f"object is {len(data)} bytes, over the {limits.max_file_bytes} limit", source=source
        )
    if not looks_like_dicom(data[:132]):
        raise InvalidDicomError(
            "not a DICOM object: no 'DICM' prefix and no recognisable first element",
            source=source,
        )
    pos = 132 if data[128:132] == b"DICM" else 0
    meta, pos = _parse_meta(data, pos, source)
    has_meta = bool(meta)
    if has_meta:
        raw_ts = meta.get(0x00020010)
        if raw_ts is None:
            raise InvalidDicomError(
                "File Meta has no Transfer Syntax UID (0002,0010)", source=source
            )
        ts_uid = raw_ts.rstrip(b"\x00 ").decode("ascii", "replace")
    else:
        ts_uid = _infer_syntax(data, pos)
    ts = syntax(ts_uid)
    dataset_start = pos
    body: bytes | bytearray
    if ts.deflated:  # inflated within absolute caps and the process's budget
        body = inflate(data, pos, limits, source)
        start = 0
    else:
        body = data
        start = pos
    walker = _Walker(body, ts, limits, source)
    try:
        walker.dataset(start, len(body), depth=0, top=True)
    except RecursionError as exc:  # belt and braces: depth is checked before this
        raise LimitExceededError("sequences nest too deeply", source=source) from exc
    return ScannedObject(
        data=data,
        transfer_syntax=ts,
        has_file_meta=has_meta,
        dataset_start=dataset_start,
        body=body,
        elements=walker.elements,
        meta=meta,
        pixel=walker.pixel,
        sequence_tags=frozenset(walker.sequences),
        oversized=walker.oversized,
    )
