"""Whether two objects with the same SOP Instance UID are the same instance.

The duplicate policy (README "Policies"): the same instance in another encoding is a
duplicate.  Two objects are the same instance when their data sets, without File
Meta and pixel data, hold the same elements with the same values (compared in one
canonical encoding, Implicit VR Little Endian, where neither the VRs written nor the
byte order nor sequence lengths nor group lengths differ), and their pixels decode to
the same frames (CRC-32 of every decoded frame), or, where either cannot be decoded,
their pixel data values are the same bytes.  Called only when a UID arrives again
with another SHA-256, so ingest pays nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag

from .convert import convert_dataset, top_level
from .syntaxes import IMPLICIT_LE, TransferSyntax, syntax

__all__ = ["Content", "difference"]


@dataclass(frozen=True, slots=True)
class Content:
    """What of an object the duplicate policy compares."""

    dataset: bytes
    """Its data set without File Meta and without the pixel data element (inflated)."""
    encoding: TransferSyntax
    """How :attr:`dataset` is encoded."""
    pixel: bytes | None
    """The pixel data value as stored, for objects decoded nowhere (None without)."""
    crcs: tuple[int, ...]
    """CRC-32 of every decoded frame (empty when not decoded)."""
    layout: dict[str, Any] | None
    """Geometry of the decoded frames."""


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}){' ' + keyword if keyword else ''}"


def _elements(content: Content) -> list[tuple[int, bytes]]:
    canonical = convert_dataset(content.dataset, 0, content.encoding, syntax(IMPLICIT_LE))
    return top_level(canonical)


def difference(new: Content, old: Content) -> str | None:
    """What differs between ``new`` and ``old`` (the first attribute in tag order, or
    the pixel data), or None when they are the same instance."""
    a, b = dict(_elements(new)), dict(_elements(old))
    for tag in sorted(set(a) | set(b)):
        if a.get(tag) != b.get(tag):
            what = "is missing" if tag not in a else "is new" if tag not in b else "differs"
            return f"attribute {_name(tag)} {what}"
    if new.crcs and old.crcs:
        geometry = ("rows", "columns", "samples", "bits_allocated", "frames")
        if new.layout is None or old.layout is None or any(
                new.layout.get(k) != old.layout.get(k) for k in geometry):
            return "the pixel data has another geometry"
        for i, (x, y) in enumerate(zip(new.crcs, old.crcs, strict=True)):
            if x != y:
                return f"pixel data differs (frame {i} decodes to other values)"
        return None
    if new.pixel != old.pixel:
        return "pixel data differs (not decoded here: its bytes differ)"
    return None
