"""WADO-RS bulk data (PS3.18 10.4.1.1.5 Retrieve Bulkdata; media types 8.7.3.3): the
values that the metadata (:mod:`.metadata`) replaces by a ``BulkDataURI``.

A bulk data URL is ``.../studies/{study}/series/{series}/instances/{sop}/bulk/{path}``
where ``path`` is a tag (``00420011``) or, for a value inside a sequence, tags and
0-based item indices in turn (``54000100/1/54001010``: the Waveform Data of the second
Waveform Sequence item).  The metadata writes these paths as it converts each element
and :func:`parse_path` reads them back (the round trip is tested).

Values are answered as they are in the object as received, little endian (PS3.18
8.7.3.3.1: bulk data is in Explicit VR Little Endian).  The top-level Pixel Data
(7FE0,0010) stands for the pixel data of *all* frames: by default native samples, every
frame one after another (``application/octet-stream``); when Accept names the stored
transfer syntax (or its media type, Table 8.7.3-5), the stored codestreams, one part per
frame, without a transcode.
"""

from __future__ import annotations

import io
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.encaps import generate_frames
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..archive import Archive
from ..dicom.syntaxes import EXPLICIT_LE
from ..errors import InvalidRequestError, NotFoundError, UnsupportedTransferSyntaxError
from ..index import InstanceRecord
from ..index.records import StoreKind
from .dicomweb_media import MEDIA_OF, parse_accept
from .multipart import encode_related

__all__ = ["BulkData", "parse_path"]

PIXEL_DATA = 0x7FE00010
_FIRST_PIXEL_TAG = 0x7FE00008  # Float Pixel Data: every pixel data element is from here on
_OCTETS = "application/octet-stream"
# Uncompressed little-endian syntaxes (PS3.5 A.1, A.2, A.5): the Pixel Data value of
# an object received in one of them is already the native bulk data.
_NATIVE_LE = frozenset({"1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.1.99"})
_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # retired (PS3.5 A.3): its words are swapped back
# Byte width of the words of each binary VR (PS3.5 Table 6.2-1), for that swap.
_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
# Parts of Accept that ask for native octets: (media type, its ``type`` parameter).
_NATIVE_RANGES = frozenset({("*/*", None), (_OCTETS, None), ("multipart/related", None),
                            ("multipart/related", _OCTETS), ("multipart/related", "*/*"),
                            ("multipart/related", "application/*")})


# -- paths -------------------------------------------------------------------------
def parse_path(text: str) -> tuple[tuple[int, int], ...]:
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


# -- content negotiation -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Answer:
    """How to answer: one of the forms the Accept header allows."""

    multipart: bool
    """multipart/related (else a single ``application/octet-stream`` body)."""
    syntax: str | None
    """Transfer syntax of stored codestreams to pass through; ``None`` for native."""


def _negotiate(header: str, stored: str | None) -> _Answer | None:
    """The first form of the Accept header we can give (``stored``: the stored syntax of
    pixel data that may pass through, ``None`` for other values); ``None``: none fits."""
    for rng in parse_accept(header):
        kind, ts, part = rng.media, rng.params.get("transfer-syntax"), rng.params.get("type")
        if (kind, part) in _NATIVE_RANGES and ts in (None, "*", EXPLICIT_LE):
            return _Answer(kind != _OCTETS, None)
        if stored is None or stored in _NATIVE_LE or kind != "multipart/related":
            continue
        media = MEDIA_OF.get(stored)
        if (part == media and ts in (None, "*", stored)) or (part == "*/*" and ts == stored):
            return _Answer(True, stored)
    return None


# -- values ------------------------------------------------------------------------
def _dataset(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data), force=True)


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:  # private, unknown
        return "UN"


def _value(ds: Dataset, steps: tuple[tuple[int, int], ...], sop: str, path: str) -> bytes:
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


class BulkData:
    """The handler of ``GET .../instances/{sop}/bulk/{path}``.

    Parameters
    ----------
    archive
        Where the instances are.
    """

    def __init__(self, archive: Archive):
        self.archive = archive

    async def __call__(self, request: Request) -> Response:
        p = request.path_params
        sop, path = p["sop"], p["path"].strip("/")
        steps = parse_path(path)
        rec = await run_in_threadpool(self.archive.record, sop)
        if rec.study_uid != p["study"] or rec.series_uid != p["series"]:
            raise NotFoundError(f"instance {sop} is not in series {p['series']} of study "
                                f"{p['study']}")
        pixels = steps[0][0] == PIXEL_DATA and len(steps) == 1
        accept = request.headers.get("accept", "")
        answer = _negotiate(accept, rec.stored_syntax if pixels else None)
        if answer is None:
            raise UnsupportedTransferSyntaxError(
                f"bulk data {path} of instance {sop} cannot be given as {accept!r}; "
                f'accept multipart/related; type="{_OCTETS}"',
                hint="ask for application/octet-stream (or the stored transfer syntax of "
                     "pixel data)")
        if pixels:
            values = await run_in_threadpool(self._pixels, rec, answer.syntax)
        else:
            values = [await run_in_threadpool(self._element, rec, steps, path)]
        if not answer.multipart:
            return Response(b"".join(values), 200, media_type=_OCTETS)
        ts = answer.syntax or EXPLICIT_LE
        media = MEDIA_OF.get(ts, _OCTETS) if answer.syntax else _OCTETS
        label = f"{media}; transfer-syntax={ts}" if pixels else media
        boundary = uuid.uuid4().hex
        return Response(encode_related([(label, v) for v in values], boundary), 200,
                        media_type=f'multipart/related; type="{media}"; boundary={boundary}')

    def _element(self, rec: InstanceRecord, steps: tuple[tuple[int, int], ...],
                 path: str) -> bytes:
        sop = rec.sop_instance_uid
        # Everything before the pixel data is in the header kept in the index: no frame
        # is decoded for it.  What follows the pixel data needs the whole object.
        before = steps[0][0] < _FIRST_PIXEL_TAG
        data = self.archive.header(sop) if before else self.archive.get(sop, "original")
        return _value(_dataset(data), steps, sop, path)

    def _pixels(self, rec: InstanceRecord, passthrough: str | None) -> list[bytes]:
        """Pixel data of every frame: stored codestreams (``passthrough``) or one native
        little-endian block."""
        sop = rec.sop_instance_uid
        if self.archive.pixel_tag(sop) != PIXEL_DATA:
            raise NotFoundError(f"instance {sop} has no attribute 7FE00010 (Pixel Data)")
        if passthrough is None and rec.original_syntax not in _NATIVE_LE:
            return [b"".join(self.archive.frames(sop, None, "native"))]
        if rec.kind == StoreKind.FRAMES and passthrough is not None:  # re-encoded frames
            return self.archive.frames(sop, None, "stored")
        # Native as received (the packed bits of 1-bit data, planar colour as it was),
        # or the fragments of an object kept as received.
        ds = _dataset(self.archive.get(sop, "original"))
        value = _value(ds, ((PIXEL_DATA, -1),), sop, "7FE00010")
        if passthrough is None:
            return [value]
        frames = int(ds.get("NumberOfFrames") or 1)
        return list(generate_frames(value, number_of_frames=frames))
