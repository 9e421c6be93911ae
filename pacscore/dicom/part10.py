"""Splitting a Part-10 object into header and pixels, and building it back.

An object stored as frames keeps its *header parts*: every byte before the Pixel
Data element, the element's own tag/VR/length bytes, the padding byte, and every
byte after the value.  With the decoded frames these rebuild the original file byte
for byte (PS3.10 7.1).  Other transfer syntaxes get a fresh File Meta group.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite

from ..errors import UnsupportedTransferSyntaxError
from .syntaxes import EXPLICIT_LE, syntax

__all__ = ["IMPLEMENTATION_UID", "HeaderParts", "build_part10"]

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
                 sop_class: str, sop_instance: str, *, frames: list[bytes] | None = None,
                 native: bytes | None = None, bits_allocated: int = 16) -> bytes:
    """A Part-10 object in ``target_syntax`` from header parts and pixel data.

    Give ``frames`` (one codestream each) for an encapsulated target, ``native`` (the
    little-endian native pixel bytes) for a native one.  The data set is copied
    verbatim when it is already explicit VR little endian; otherwise pydicom
    re-encodes it.  Elements after the pixel data are kept only in the verbatim path.
    """
    target = syntax(target_syntax)
    source = syntax(original_syntax)
    if target.deflated or (target.uid not in (EXPLICIT_LE, "1.2.840.10008.1.2",
                                             "1.2.840.10008.1.2.2") and not target.encapsulated):
        raise UnsupportedTransferSyntaxError(f"cannot write {target.name} ({target.uid})")
    if target.encapsulated:
        if frames is None:
            raise UnsupportedTransferSyntaxError("encapsulated target needs frames")
        pixel = _encapsulated_element(frames)
    else:
        if native is None:
            raise UnsupportedTransferSyntaxError("native target needs native pixel bytes")
        pixel = native
    verbatim = (source.uid == EXPLICIT_LE or (source.encapsulated and not source.deflated)) \
        and not source.implicit_vr and source.little_endian
    if verbatim and (target.encapsulated or target.uid == EXPLICIT_LE):
        dataset = parts.prefix[parts.dataset_start :]
        if target.encapsulated:
            element = pixel
        else:
            vr = b"OW" if bits_allocated > 8 else b"OB"
            padded = pixel + (b"\x00" if len(pixel) % 2 else b"")
            element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, len(padded)) + padded
        return _file_meta(sop_class, sop_instance, target.uid) + dataset + element + \
            parts.suffix
    return _rebuild_with_pydicom(parts, target.uid, sop_class, sop_instance, pixel,
                                 target.encapsulated, bits_allocated)


def _resolve_ambiguous_vrs(ds: Dataset) -> None:
    """Give every element with a dictionary VR like 'OB or OW' a definite VR so that
    an implicit-VR data set can be written as explicit VR (PS3.5 Annex A)."""
    correct_ambiguous_vr(ds, True)
    for elem in ds.iterall():
        if " or " in str(elem.VR):
            elem.VR = "OW" if "OW" in str(elem.VR) else str(elem.VR).split(" or ")[0]


def _rebuild_with_pydicom(parts: HeaderParts, target: str, sop_class: str, sop_instance: str,
                          pixel: bytes, encapsulated: bool, bits_allocated: int) -> bytes:
    """Re-encode the data set (implicit VR or big endian sources) into ``target``."""
    ts = syntax(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(BytesIO(parts.prefix), force=True)
        ds.preamble = None
        del ds.file_meta
        if encapsulated:
            # The value of the element built by the caller; pydicom adds the delimiter.
            ds.PixelData = pixel[len(_ENCAPSULATED_HEADER) : -len(_SEQUENCE_DELIMITER)]
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        else:
            if not ts.little_endian and bits_allocated == 16:
                pixel = np.frombuffer(pixel, "<u2").astype(">u2").tobytes()
            ds.PixelData = pixel
            ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
        if not ts.implicit_vr:
            _resolve_ambiguous_vrs(ds)
        out = BytesIO()
        dcmwrite(out, ds, implicit_vr=ts.implicit_vr, little_endian=ts.little_endian,
                 force_encoding=True)
    return _file_meta(sop_class, sop_instance, target) + out.getvalue()
