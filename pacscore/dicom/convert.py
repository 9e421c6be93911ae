"""Re-encoding a data set among the uncompressed transfer syntaxes (PS3.5 7.1, A.1-A.3).

Implicit VR Little Endian, Explicit VR Little Endian and Explicit VR Big Endian
differ only in how element headers are written and in the byte order of binary
values.  This module walks a data set's bytes once and writes every element again in
the target encoding:

* text values, OB and UN are copied byte for byte (character sets are never decoded,
  so nothing can be lost in a re-encoding, RELIABILITY 19);
* binary values are byte-swapped by the size of their VR's unit when the byte order
  changes: 2 bytes for OW, US, SS and AT (a tag is two 16-bit halves, PS3.5 6.2);
  4 for OL, OF, UL, SL, FL; 8 for OD, FD, OV, SV, UV (PS3.5 7.3).  Native Pixel
  Data with VR OW is a stream of 16-bit words whatever Bits Allocated is (PS3.5
  8.1.1, CP-565): 32-bit pixel cells span two words, least significant word first;
* an implicit VR source gets the dictionary VR of each element (PS3.6), the
  ambiguous ones resolved as PS3.5 Annex A does (Pixel Data OB when Bits Allocated
  is at most 8, else OW; US or SS by Pixel Representation), private elements UN
  and private creators LO (PS3.5 6.2.2, 7.8.1); a value too long for its VR's
  16-bit length is written as UN (PS3.5 6.2.2 note);
* sequences and items get defined lengths in explicit VR, undefined ones in implicit
  VR (how a reader tells a private sequence there); an explicit UN of undefined
  length keeps its content, which is implicit VR little endian in every syntax
  (PS3.5 6.2.2);
* group lengths (gggg,0000) are left out (retired, PS3.5 7.2).

Top-level elements may be replaced or added (``replace``): the pixel data of a
decoded object, a Photometric Interpretation that changed with the decoding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from functools import lru_cache

import numpy as np
from pydicom.datadict import dictionary_VR

from ..errors import InvalidDicomError, UnsupportedTransferSyntaxError
from .scan import ITEM, ITEM_END, SEQUENCE_END, UNDEFINED
from .syntaxes import IMPLICIT_LE, TransferSyntax, syntax

__all__ = ["ENCAPSULATED", "SWAP_UNIT", "NestedDecoder", "convert_dataset", "swap_value",
           "top_level"]

# PS3.5 7.1.2: explicit VRs with 2 reserved bytes and a 32-bit length.
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                       "UT", "UV"})
_KNOWN_VRS = _LONG_VRS | frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH",
    "SL", "SS", "ST", "TM", "UI", "UL", "US"})

SWAP_UNIT: dict[str, int] = {
    "OW": 2, "US": 2, "SS": 2, "AT": 2,
    "OL": 4, "OF": 4, "UL": 4, "SL": 4, "FL": 4,
    "OD": 8, "FD": 8, "OV": 8, "SV": 8, "UV": 8,
}
"""Bytes swapped together when the byte order changes, by VR (PS3.5 7.3); VRs not
listed (text, OB, UN) are byte streams."""

ENCAPSULATED = "encapsulated"
"""VR to give in ``replace`` for encapsulated pixel data: written as OB of undefined
length, the value being its items and sequence delimiter (explicit VR little endian
targets only, PS3.5 A.4)."""

_BITS_ALLOCATED = 0x00280100
_PIXEL_REPRESENTATION = 0x00280103
_WAVEFORM_BITS_ALLOCATED = 0x54001004
_WAVEFORM_DATA = 0x54001010
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_CONTEXT_TAGS = frozenset({_BITS_ALLOCATED, _PIXEL_REPRESENTATION, _WAVEFORM_BITS_ALLOCATED})
# Image Pixel Module attributes (PS3.3 C.7.6.3) an encapsulated icon is decoded with.
_DESCRIBING = frozenset({0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010,
                         0x00280011, 0x00280100, 0x00280101, 0x00280103})

NestedDecoder = Callable[[Mapping[int, int | str], bytes], dict[int, tuple[str, bytes]]]
"""Decodes encapsulated pixel data met inside a sequence (an Icon Image Sequence item of
a compressed object): given the item's Image Pixel attributes by tag and the pixel
data's items (little endian, sequence delimiter included), the elements that replace
it as native pixel data in the item (VR and little-endian value, by tag)."""


def swap_value(value: bytes, vr: str) -> bytes:
    """``value`` with the byte order of each unit of its VR reversed (a trailing
    partial unit of a malformed value is left as it is)."""
    unit = SWAP_UNIT.get(vr, 1)
    whole = len(value) - len(value) % unit
    if unit == 1 or whole == 0:
        return value
    swapped = np.frombuffer(value, f"u{unit}", count=whole // unit).byteswap().tobytes()
    return swapped + value[whole:]


@lru_cache(maxsize=8192)
def _dictionary_vr(tag: int) -> str:
    """VR of ``tag`` for an implicit VR source (PS3.5 6.2.2, 7.8.1)."""
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2:
        return "LO" if 0x0010 <= element <= 0x00FF else "UN"
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _resolve(vr: str, tag: int, context: Mapping[int, int]) -> str:
    """One VR for an ambiguous dictionary VR (PS3.5 Annex A; as DCMTK and pydicom do)."""
    if " or " not in vr:
        return vr
    choices = vr.split(" or ")
    if "OB" in choices:
        bits = context.get(_WAVEFORM_BITS_ALLOCATED if tag == _WAVEFORM_DATA
                           else _BITS_ALLOCATED, 16)
        return "OB" if tag in (*_PIXEL_TAGS, _WAVEFORM_DATA) and bits <= 8 else "OW"
    if "OW" in choices:  # LUT Data: a long length is always possible
        return "OW"
    if choices == ["US", "SS"]:
        return "SS" if context.get(_PIXEL_REPRESENTATION) == 1 else "US"
    return choices[0]


class _Converter:
    """One pass over one data set encoding, writing another."""

    def __init__(self, body: bytes | bytearray, source: TransferSyntax, target: TransferSyntax,
                 decode_nested: NestedDecoder | None = None):
        self.body = body
        self.decode_nested = decode_nested
        self.src_implicit, self.src_little = source.implicit_vr, source.little_endian
        self.dst_implicit, self.dst_little = target.implicit_vr, target.little_endian
        self.swap = source.little_endian != target.little_endian
        src, dst = "<" if source.little_endian else ">", "<" if target.little_endian else ">"
        self.src_tag = struct.Struct(f"{src}HH").unpack_from
        self.src_u16 = struct.Struct(f"{src}H").unpack_from
        self.src_u32 = struct.Struct(f"{src}I").unpack_from
        self.dst_tag = struct.Struct(f"{dst}HH").pack
        self.dst_u16 = struct.Struct(f"{dst}H").pack
        self.dst_u32 = struct.Struct(f"{dst}I").pack

    # -- reading --------------------------------------------------------------------
    def header(self, pos: int, end: int) -> tuple[int, str | None, int, int]:
        """(tag, VR as written or None for implicit VR, length, value offset)."""
        if pos + 8 > end:
            raise InvalidDicomError(f"element header at offset {pos} is cut short")
        group, element = self.src_tag(self.body, pos)
        tag = (group << 16) | element
        if group == 0xFFFE or self.src_implicit:
            return tag, None, self.src_u32(self.body, pos + 4)[0], pos + 8
        vr = self.body[pos + 4 : pos + 6].decode("latin-1")
        if vr in _LONG_VRS:
            return tag, vr, self.src_u32(self.body, pos + 8)[0], pos + 12
        if vr not in _KNOWN_VRS:
            raise InvalidDicomError(f"element {_tag(tag)} has unknown VR {vr!r}")
        return tag, vr, self.src_u16(self.body, pos + 6)[0], pos + 8

    def skip_undefined(self, pos: int, end: int) -> int:
        """Offset after the sequence delimiter of an undefined-length value at ``pos``
        (items and fragments of any nesting)."""
        depth = 0  # undefined-length containers open inside the value
        while pos < end:
            tag, _, length, value = self.header(pos, end)
            if tag == SEQUENCE_END and depth == 0:
                return value
            if tag in (SEQUENCE_END, ITEM_END):
                depth -= 1
                pos = value
            elif length == UNDEFINED:
                depth += 1
                pos = value
            else:
                pos = value + length
        raise InvalidDicomError("an undefined-length value has no sequence delimiter")

    # -- writing --------------------------------------------------------------------
    def element(self, tag: int, vr: str, value: bytes) -> bytes:
        """An element in the target encoding; ``value`` already in its byte order."""
        if len(value) % 2:
            value += b" " if vr in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT",
                                    "PN", "SH", "ST", "TM", "UC", "UR", "UT") else b"\x00"
        head = self.dst_tag(tag >> 16, tag & 0xFFFF)
        if self.dst_implicit:
            return head + self.dst_u32(len(value)) + value
        if vr not in _LONG_VRS and len(value) > 0xFFFF:
            vr = "UN"  # PS3.5 6.2.2: the value does not fit a 16-bit length
        if vr in _LONG_VRS:
            return head + vr.encode() + b"\x00\x00" + self.dst_u32(len(value)) + value
        return head + vr.encode() + self.dst_u16(len(value)) + value

    def sequence_element(self, tag: int, items: list[bytes]) -> bytes:
        """A sequence in the target encoding.  Implicit VR gets undefined lengths: a
        reader knows a private sequence as one only by them (PS3.5 7.5.1, 6.2.2)."""
        if not self.dst_implicit:
            return self.element(tag, "SQ", b"".join(
                self.dst_tag(0xFFFE, 0xE000) + self.dst_u32(len(i)) + i for i in items))
        item_end = self.dst_tag(0xFFFE, 0xE00D) + self.dst_u32(0)
        content = b"".join(self.dst_tag(0xFFFE, 0xE000) + self.dst_u32(UNDEFINED) + i
                           + item_end for i in items)
        return self.dst_tag(tag >> 16, tag & 0xFFFF) + self.dst_u32(UNDEFINED) + content \
            + self.dst_tag(0xFFFE, 0xE0DD) + self.dst_u32(0)

    def sequence(self, pos: int, end: int, context: dict[int, int],
                 defined: bool) -> tuple[list[bytes], int]:
        """Items of the sequence value at ``pos`` (to ``end`` when ``defined``, else to
        its delimiter), each converted; and the offset after the value."""
        items: list[bytes] = []
        while pos < end:
            tag, _, length, value = self.header(pos, end)
            if tag == SEQUENCE_END:
                return items, value
            if tag != ITEM:
                raise InvalidDicomError(f"a sequence holds {_tag(tag)} where an item was "
                                        f"expected (offset {pos})")
            item_end = end if length == UNDEFINED else value + length
            content, pos = self.dataset(value, item_end, dict(context), {})
            if length != UNDEFINED:
                pos = item_end
            items.append(content)
        if not defined:
            raise InvalidDicomError("a sequence has no delimiter")
        return items, pos

    def dataset(self, pos: int, end: int, context: dict[int, int],  # noqa: C901
                replace: Mapping[int, tuple[str, bytes]]) -> tuple[bytes, int]:
        """Convert the elements from ``pos`` to ``end`` (or to an item delimiter);
        return the converted bytes and the offset after what was read."""
        out: list[tuple[int, bytes]] = []
        replace = dict(replace)
        described: dict[int, int | str] = {}  # this data set's pixel description
        body = self.body
        while pos < end:
            if end - pos < 8 and not any(body[pos:end]):
                pos = end  # trailing padding (tolerated at ingest)
                break
            tag, vr, length, value = self.header(pos, end)
            if tag == ITEM_END:
                pos = value
                break
            if tag >> 16 == 0xFFFE:
                raise UnsupportedTransferSyntaxError(
                    f"an item tag {_tag(tag)} stands where an element was expected at "
                    f"offset {pos}: the data set cannot be re-encoded")
            # an explicit UN of undefined length holds implicit VR LE items (PS3.5 6.2.2)
            walker = _implicit_walker(body) if vr == "UN" and not self.src_implicit else self
            after = walker.skip_undefined(value, end) if length == UNDEFINED \
                else value + length
            if after > end:
                raise InvalidDicomError(f"value of {_tag(tag)} runs past the data set")
            if tag in replace or (tag & 0xFFFF == 0 and tag >> 16 > 0x0002):
                pos = after  # replaced; or a group length, retired (PS3.5 7.2)
                continue
            explicit_un = vr == "UN"
            vr = _resolve(vr or _dictionary_vr(tag), tag, context)
            if length == UNDEFINED and tag in _PIXEL_TAGS:  # encapsulated (PS3.5 A.4)
                if self.decode_nested is None:
                    raise UnsupportedTransferSyntaxError(
                        f"element {_tag(tag)} holds encapsulated pixel data, which an "
                        f"uncompressed transfer syntax cannot carry")
                replace.update(self.decode_nested(described, bytes(body[value:after])))
            elif length == UNDEFINED and explicit_un and not self.src_implicit:
                # PS3.5 6.2.2: its items are implicit VR little endian in any syntax
                out.append((tag, self._undefined_un(tag, bytes(body[value:after]))))
            elif length == UNDEFINED or vr == "SQ":
                items, _ = self.sequence(value, after, context, defined=length != UNDEFINED)
                out.append((tag, self.sequence_element(tag, items)))
            else:
                raw = bytes(body[value:after])
                if tag in _CONTEXT_TAGS and length >= 2:
                    context[tag] = self.src_u16(body, value)[0]
                if tag in _DESCRIBING:
                    described[tag] = self.src_u16(body, value)[0] if vr == "US" \
                        and length >= 2 else raw.decode("ascii", "replace").strip(" \x00")
                out.append((tag, self.element(tag, vr, swap_value(raw, vr) if self.swap
                                              else raw)))
            pos = after
        if replace:  # replaced and added elements, in tag order (PS3.5 7.1)
            out = [(t, e) for t, e in out if t not in replace]
            out += [(t, self._replacement(t, new)) for t, new in replace.items()]
            out.sort(key=lambda te: te[0])
        return b"".join(e for _, e in out), pos

    def _replacement(self, tag: int, new: tuple[str, bytes]) -> bytes:
        vr, little = new
        if vr == ENCAPSULATED:
            if self.dst_implicit or not self.dst_little:
                raise UnsupportedTransferSyntaxError(
                    "encapsulated pixel data needs explicit VR little endian")
            return self.dst_tag(tag >> 16, tag & 0xFFFF) + b"OB\x00\x00" + \
                self.dst_u32(UNDEFINED) + little
        value = swap_value(little, vr) if not self.dst_little else little
        return self.element(tag, vr, value)

    def _undefined_un(self, tag: int, content: bytes) -> bytes:
        """An undefined-length UN (explicit) or sequence (implicit) keeping its
        implicit VR little endian content."""
        head = self.dst_tag(tag >> 16, tag & 0xFFFF)
        if self.dst_implicit:
            return head + self.dst_u32(UNDEFINED) + content
        return head + b"UN\x00\x00" + self.dst_u32(UNDEFINED) + content


def _implicit_walker(body: bytes | bytearray) -> _Converter:
    """A walker of implicit VR little endian content in ``body``."""
    return _Converter(body, syntax(IMPLICIT_LE), syntax(IMPLICIT_LE))


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def convert_dataset(body: bytes | bytearray, start: int, source: TransferSyntax,
                    target: TransferSyntax,
                    replace: Mapping[int, tuple[str, bytes]] | None = None,
                    decode_nested: NestedDecoder | None = None) -> bytes:
    """The data set in ``body[start:]`` (no File Meta; inflated if it was deflated),
    encoded as ``source``, re-encoded as ``target`` (its explicit VR little endian
    form when ``target`` is deflated: the caller deflates).

    Parameters
    ----------
    replace
        Top-level elements to write instead of the source's (or to add), by tag: their
        VR and value in little-endian byte order (e.g. the pixel data of a decoded
        object).
    decode_nested
        How encapsulated pixel data inside a sequence becomes native (icons of a
        compressed object); without it such data cannot be converted.

    Raises
    ------
    UnsupportedTransferSyntaxError
        ``target`` is not an uncompressed syntax, or the data set holds what it cannot
        carry (encapsulated pixel data that was not replaced).
    InvalidDicomError
        The data set is malformed (it was checked at ingest: a damaged store).
    """
    if source.implicit_vr and not source.little_endian:
        raise UnsupportedTransferSyntaxError(f"cannot read {source.name}")
    if target.encapsulated and not (target.little_endian and not target.implicit_vr):
        raise UnsupportedTransferSyntaxError(f"cannot write {target.name} ({target.uid})")
    converter = _Converter(body, source, target, decode_nested)
    converted, _ = converter.dataset(start, len(body), {}, replace or {})
    return converted


def top_level(dataset: bytes) -> list[tuple[int, bytes]]:
    """The top-level elements of an implicit VR little endian data set: (tag, the
    element's bytes, header included)."""
    walker = _implicit_walker(dataset)
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(dataset)
    while pos < end:
        tag, _, length, value = walker.header(pos, end)
        after = walker.skip_undefined(value, end) if length == UNDEFINED else value + length
        out.append((tag, dataset[pos:after]))
        pos = after
    return out
