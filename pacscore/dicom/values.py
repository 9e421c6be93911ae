"""Values of attributes as received, by path: the bulk data that the DICOM JSON model
(:mod:`pacscore.metadata`) gives as a ``BulkDataURI`` and WADO-RS answers (PS3.18
10.4.1.1.5; little endian, as 8.7.3.3.1 wants it).

A path is a tag (``00420011``) or, for a value inside a sequence, tags and 0-based item
indices in turn (``54000100/1/54001010``: the Waveform Data of the second Waveform
Sequence item).  The metadata writes these paths as it converts each element and
:func:`parse_path` reads them back (the round trip is tested).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR

from ..errors import InvalidRequestError, NotFoundError

__all__ = ["FIRST_PIXEL_TAG", "Steps", "element_value", "parse_path"]

FIRST_PIXEL_TAG = 0x7FE00008  # Float Pixel Data: every pixel data element is from here on
# Byte width of the words of each binary VR (PS3.5 Table 6.2-1), for the big endian swap.
_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

Steps = tuple[tuple[int, int], ...]
"""A parsed path: (tag, item index) steps; the last index is -1."""


def parse_path(text: str) -> Steps:
    """``tag[/index/tag]...`` as (tag, index) steps; the last index is -1.

    Raises
    ------
    InvalidRequestError
        For anything else (HTTP 400).
    """
    words = text.strip("/").split("/")
    if len(words) % 2 == 0 or not all(
            len(w) == 8 and all(c in "0123456789abcdefABCDEF" for c in w)
            for w in words[::2]) or not all(w.isdigit() for w in words[1::2]):
        raise InvalidRequestError(f"bulk data path {text!r} is not tag[/item/tag]... (tags "
                                  "as 8 hex digits, items counted from 0)")
    tags = [int(w, 16) for w in words[::2]]
    items = [int(w) for w in words[1::2]] + [-1]
    return tuple(zip(tags, items, strict=True))


def _dataset(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data), force=True)


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:  # private, unknown
        return "UN"


def _value(ds: Dataset, steps: Steps, sop: str, path: str) -> bytes:
    """The raw value at ``steps``, little endian."""
    node = ds
    for tag, index in steps[:-1]:
        elem = node.get(tag)
        items = elem.value if elem is not None and elem.VR == "SQ" else None
        if items is None or not 0 <= index < len(items):
            raise NotFoundError(f"instance {sop} has no attribute {path}: no item {index} "
                                f"of sequence ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        node = items[index]
    tag = steps[-1][0]
    if tag not in node:
        raise NotFoundError(f"instance {sop} has no attribute {path}")
    raw = node.get_item(tag)  # the value as read (unless pydicom converted it already)
    value: Any = raw.value
    vr = str(raw.VR or _dictionary_vr(tag))
    if not isinstance(value, bytes | bytearray):
        raise InvalidRequestError(f"attribute {path} of instance {sop} is not bulk data "
                                  f"(VR {vr})")
    width = _WORD.get(vr.split(" ", maxsplit=1)[0], 1)
    if ds.original_encoding[1] is False and width > 1:
        swapped = bytearray(value)
        for i in range(width):
            swapped[i::width] = value[width - 1 - i::width]
        value = swapped
    return bytes(value)


def element_value(data: bytes, steps: Steps, sop: str, path: str) -> bytes:
    """The value at ``steps`` of the Part-10 object (or header) ``data`` as received,
    little endian (the words of a big endian object swapped back).

    Raises
    ------
    NotFoundError
        The object has no such attribute (or sequence item).
    InvalidRequestError
        The attribute is no bulk data (not a binary value).
    """
    return _value(_dataset(data), steps, sop, path)
