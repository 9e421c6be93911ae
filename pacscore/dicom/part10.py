"""Splitting a Part-10 object into header and pixels, and building it back.

An object stored as frames keeps its *header parts*: every byte before the Pixel
Data element, the element's own tag/VR/length bytes, the padding byte, and every
byte after the value.  With the decoded frames these rebuild the original file byte
for byte (PS3.10 7.1).  Other transfer syntaxes get a fresh File Meta group and a data
set re-encoded by :mod:`.convert` where its encoding changes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.encaps import encapsulate

from ..errors import UnsupportedTransferSyntaxError
from .convert import ENCAPSULATED, NestedDecoder, convert_dataset
from .scan import PIXEL_DATA
from .syntaxes import EXPLICIT_LE, syntax

__all__ = ["IMPLEMENTATION_UID", "HeaderParts", "build_part10", "uncompressed_part10"]

IMPLEMENTATION_UID = "2.25.305941386744131380465287425306582785381"
"""pacscore's Implementation Class UID (a UUID-derived UID, PS3.5 B.2)."""
IMPLEMENTATION_VERSION = "PACSCORE_01"

_PACK = struct.Struct("<IIIIB")


@dataclass(frozen=True, slots=True)
class HeaderParts:
    """Everything of an object but its pixel values."""

    prefix: bytes
    """Bytes before the Pixel Data element (preamble and File Meta included)."""
    element_header: bytes
    """Tag, VR and length bytes of the Pixel Data element."""
    suffix: bytes
    """Bytes after the Pixel Data value."""
    dataset_start: int
    """Offset in ``prefix`` where the data set begins (after File Meta)."""
    pad: int
    """Value of the trailing padding byte of odd-length pixel data, or -1."""

    def pack(self) -> bytes:
        """Serialised form kept in the index."""
        return _PACK.pack(len(self.prefix), len(self.element_header), len(self.suffix),
                          self.dataset_start, self.pad + 1) + self.prefix \
            + self.element_header + self.suffix

    @classmethod
    def unpack(cls, raw: bytes) -> HeaderParts:
        """Inverse of :meth:`pack`."""
        n_prefix, n_elem, n_suffix, start, pad = _PACK.unpack_from(raw)
        pos = _PACK.size
        prefix = raw[pos : pos + n_prefix]
        pos += n_prefix
        elem = raw[pos : pos + n_elem]
        pos += n_elem
        return cls(prefix, elem, raw[pos : pos + n_suffix], start, pad - 1)

    def original(self, pixel_bytes: bytes) -> bytes:
        """The object as received, given its native pixel bytes."""
        pad = b"" if self.pad < 0 else bytes([self.pad])
        return b"".join((self.prefix, self.element_header, pixel_bytes, pad, self.suffix))


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" " if vr == b"SH" else b"\x00"
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble (zeroed), 'DICM' and the File Meta group (PS3.10 7.1)."""
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", sop_class.encode()),
        _meta_element(0x0003, b"UI", sop_instance.encode()),
        _meta_element(0x0010, b"UI", transfer_syntax.encode()),
        _meta_element(0x0012, b"UI", IMPLEMENTATION_UID.encode()),
        _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode()),
    ))
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + length + body


_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_ENCAPSULATED_HEADER = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)


def _encapsulated_element(frames: list[bytes]) -> bytes:
    """Pixel Data element with a Basic Offset Table and one fragment per frame."""
    return _ENCAPSULATED_HEADER + encapsulate(frames, has_bot=True) + _SEQUENCE_DELIMITER


def build_part10(parts: HeaderParts, original_syntax: str, target_syntax: str,
                 sop_class: str, sop_instance: str, *, frames: list[bytes]) -> bytes:
    """A Part-10 object in the encapsulated ``target_syntax`` from header parts and one
    codestream per frame.

    The data set is copied verbatim when it is already explicit VR little endian;
    otherwise it is re-encoded (:func:`~pacscore.dicom.convert.convert_dataset`).
    Elements after the pixel data are kept either way.
    """
    target = syntax(target_syntax)
    source = syntax(original_syntax)
    if not target.encapsulated:
        raise UnsupportedTransferSyntaxError(
            f"{target.name} is not encapsulated: use uncompressed_part10")
    pixel = _encapsulated_element(frames)
    verbatim = (source.uid == EXPLICIT_LE or (source.encapsulated and not source.deflated)) \
        and not source.implicit_vr and source.little_endian
    if verbatim:
        dataset = parts.prefix[parts.dataset_start :]
        return _file_meta(sop_class, sop_instance, target.uid) + dataset + pixel + \
            parts.suffix
    body = parts.prefix[parts.dataset_start :] + parts.suffix
    value = pixel[len(_ENCAPSULATED_HEADER):]
    dataset = convert_dataset(body, 0, source, syntax(EXPLICIT_LE),
                              {PIXEL_DATA: (ENCAPSULATED, value)})
    return _file_meta(sop_class, sop_instance, target.uid) + dataset


def uncompressed_part10(body: bytes | bytearray, start: int, source_syntax: str, target_syntax: str,
                        sop_class: str, sop_instance: str,
                        replace: Mapping[int, tuple[str, bytes]] | None = None,
                        decode_nested: NestedDecoder | None = None) -> bytes:
    """A Part-10 object in an uncompressed ``target_syntax`` (Implicit VR Little
    Endian, Explicit VR Little or Big Endian, Deflated Explicit VR Little Endian) from
    the data set ``body[start:]`` encoded as ``source_syntax`` (a deflated one
    inflated, i.e. explicit VR little endian).

    ``replace``: top-level elements written instead of the source's, by tag (VR and
    little-endian value), e.g. the native pixel data of a decoded object;
    ``decode_nested`` decodes encapsulated icons.  A deflated
    target is the explicit VR little endian data set deflated (PS3.5 A.5, RFC 1951).
    """
    source, target = syntax(source_syntax), syntax(target_syntax)
    if source.deflated:
        source = syntax(EXPLICIT_LE)
    if target.encapsulated:
        raise UnsupportedTransferSyntaxError(f"{target.name} is not an uncompressed syntax")
    dataset = convert_dataset(body, start, source,
                              syntax(EXPLICIT_LE) if target.deflated else target, replace,
                              decode_nested)
    if target.deflated:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        dataset = deflater.compress(dataset) + deflater.flush()
    return _file_meta(sop_class, sop_instance, target.uid) + dataset
