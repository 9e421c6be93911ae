"""WADO-RS bulk data (PS3.18 10.4.1.1.5 Retrieve Bulkdata; media types 8.7.3.3): the
values that the metadata (:mod:`pacscore.metadata`) replaces by a ``BulkDataURI``.

A bulk data URL is ``.../studies/{study}/series/{series}/instances/{sop}/bulk/{path}``
where ``path`` is a tag (``00420011``) or, for a value inside a sequence, tags and
0-based item indices in turn (``54000100/1/54001010``: the Waveform Data of the second
Waveform Sequence item).  The metadata writes these paths as it converts each element
and :func:`pacscore.dicom.values.parse_path` reads them back (the round trip is tested).

Values are answered as they are in the object as received, little endian (PS3.18
8.7.3.3.1: bulk data is in Explicit VR Little Endian).  The top-level Pixel Data
(7FE0,0010) stands for the pixel data of *all* frames: by default native samples, every
frame one after another (``application/octet-stream``); when Accept names the stored
transfer syntax (or its media type, Table 8.7.3-5), the stored codestreams, one part per
frame, without a transcode.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ...archive import Archive
from ...dicom.syntaxes import EXPLICIT_LE
from ...dicom.values import parse_path
from ...errors import NotFoundError, UnsupportedTransferSyntaxError
from ...index import InstanceRecord
from .media import MEDIA_OF, parse_accept
from .multipart import encode_related

__all__ = ["BulkData"]

PIXEL_DATA = 0x7FE00010
_OCTETS = "application/octet-stream"
# Uncompressed little-endian syntaxes (PS3.5 A.1, A.2, A.5): the Pixel Data value of
# an object received in one of them is already the native bulk data.
_NATIVE_LE = frozenset({"1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.1.99"})
# Parts of Accept that ask for native octets: (media type, its ``type`` parameter).
_NATIVE_RANGES = frozenset({("*/*", None), (_OCTETS, None), ("multipart/related", None),
                            ("multipart/related", _OCTETS), ("multipart/related", "*/*"),
                            ("multipart/related", "application/*")})


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
            values = [await run_in_threadpool(self._element, rec, path)]
        if not answer.multipart:
            return Response(b"".join(values), 200, media_type=_OCTETS)
        ts = answer.syntax or EXPLICIT_LE
        media = MEDIA_OF.get(ts, _OCTETS) if answer.syntax else _OCTETS
        label = f"{media}; transfer-syntax={ts}" if pixels else media
        boundary = uuid.uuid4().hex
        return Response(encode_related([(label, v) for v in values], boundary), 200,
                        media_type=f'multipart/related; type="{media}"; boundary={boundary}')

    def _element(self, rec: InstanceRecord, path: str) -> bytes:
        return self.archive.attribute_value(rec.sop_instance_uid, path)

    def _pixels(self, rec: InstanceRecord, passthrough: str | None) -> list[bytes]:
        """Pixel data of every frame: stored codestreams (``passthrough``: re-encoded
        frames, or the fragments of an object kept as received) or one native
        little-endian block (as received when it was native little endian: the packed
        bits of 1-bit data, planar colour as it was)."""
        sop = rec.sop_instance_uid
        if self.archive.pixel_tag(sop) != PIXEL_DATA:
            raise NotFoundError(f"instance {sop} has no attribute 7FE00010 (Pixel Data)")
        if passthrough is not None:
            return self.archive.frames(sop, None, "stored", record=rec)
        if rec.original_syntax not in _NATIVE_LE:
            return [b"".join(self.archive.frames(sop, None, "native", record=rec))]
        return [self.archive.attribute_value(sop, "7FE00010")]
