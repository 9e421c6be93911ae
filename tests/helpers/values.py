"""Element values of a Part-10 object as pydicom reads them, independent of encoding.

Each element becomes (tag path, value bytes in little-endian order): the bytes pydicom
read, swapped back by the unit of the VR the file itself gives (PS3.5 7.3), so the
same data set written in Implicit VR Little Endian, Explicit VR Little or Big Endian
gives the same list.  Sequences are walked; File Meta and group lengths are left out.
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import (
    _read_file_meta_info,
    read_dataset,
    read_preamble,
    read_sequence,
)

_UNIT = {"OW": 2, "US": 2, "SS": 2, "AT": 2, "OL": 4, "OF": 4, "UL": 4, "SL": 4, "FL": 4,
         "OD": 8, "FD": 8, "OV": 8, "SV": 8, "UV": 8}
_PIXEL = 0x7FE00010
_ITEM = b"\xfe\xff\x00\xe0"
_NUMBERS = {"US": "<u2", "SS": "<i2", "UL": "<u4", "SL": "<i4", "FL": "<f4", "FD": "<f8"}


def _little(raw: bytes, vr: str | None, big: bool) -> bytes:
    unit = _UNIT.get(vr or "", 1)
    if not big or unit == 1 or len(raw) % unit:
        return raw
    return np.frombuffer(raw, f">u{unit}").astype(f"<u{unit}").tobytes()


def _trimmed(data: bytes) -> bytes:
    """Padding is not a value (PS3.5 6.2): trailing NULs and spaces (DCMTK trims the
    spaces of long texts)."""
    return data.rstrip(b"\x00 ")


def _walk(ds: Dataset, big: bool, path: tuple[int, ...], skip: frozenset[int]
          ) -> Iterator[tuple[tuple[int, ...], bytes]]:
    for tag in sorted(ds.keys()):
        if tag.element == 0 or tag.group == 0x0002 or (not path and int(tag) in skip):
            continue
        raw = ds.get_item(tag)
        vr = raw.VR
        known = pydicom.datadict.dictionary_VR(tag) \
            if pydicom.datadict.dictionary_has_tag(tag) else "UN"
        if vr is None:
            vr = known  # implicit VR
        if vr == "UN" and isinstance(raw.value, bytes) and raw.value[:4] == _ITEM:
            # a sequence written as UN: implicit VR little endian items (PS3.5 6.2.2)
            items = read_sequence(DicomBytesIO(raw.value), True, True, len(raw.value),
                                  "iso8859")
            for i, item in enumerate(items):
                yield from _walk(item, False, (*path, int(tag), i), skip)
            continue
        undefined = getattr(raw, "length", 0) == 0xFFFFFFFF
        if vr in _NUMBERS and not isinstance(raw.value, bytes):  # converted early by pydicom
            values = raw.value if isinstance(raw.value, list | tuple) or hasattr(
                raw.value, "__iter__") else [raw.value]
            yield (*path, int(tag)), _trimmed(np.asarray(list(values), _NUMBERS[vr]).tobytes())
            continue
        if raw.value is None or (vr != "SQ" and not isinstance(raw.value, bytes | list)
                                 and not hasattr(raw.value, "is_undefined_length")):
            # a text value converted early by pydicom
            yield (*path, int(tag)), _trimmed(str(raw.value or "").encode("utf-8"))
            continue
        if vr == "SQ" or (undefined and int(tag) != _PIXEL) or not isinstance(raw.value, bytes):
            for i, item in enumerate(ds[tag].value):
                yield from _walk(item, big, (*path, int(tag), i), skip)
            continue
        yield (*path, int(tag)), _trimmed(_little(raw.value, vr, big))


def read(data: bytes) -> Any:
    """The object read by pydicom (a missing File Meta taken as Implicit VR LE)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


def element_values(data: bytes, skip: frozenset[int] = frozenset(), syntax: str = ""
                   ) -> list[tuple[tuple[int, ...], bytes]]:
    """(tag path, little-endian value bytes) of every element of ``data``'s data set
    (top-level tags in ``skip`` left out), read by pydicom's own reader; ``syntax``
    for an object without File Meta.  A UN holding a sequence is read as the
    sequence (implicit VR little endian, in any syntax)."""
    fp = DicomBytesIO(data)
    read_preamble(fp, force=True)
    meta = _read_file_meta_info(fp)
    ts = pydicom.uid.UID(meta.get("TransferSyntaxUID",
                                  syntax or pydicom.uid.ImplicitVRLittleEndian))
    if ts == pydicom.uid.DeflatedExplicitVRLittleEndian:
        fp = DicomBytesIO(zlib.decompress(fp.read(), -zlib.MAX_WBITS))
    implicit = ts == pydicom.uid.ImplicitVRLittleEndian
    big = ts == pydicom.uid.ExplicitVRBigEndian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_dataset(fp, implicit, not big)
        return list(_walk(ds, big, (), skip))
