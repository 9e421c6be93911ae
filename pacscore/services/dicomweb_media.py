"""Media types of the DICOMweb front end (PS3.18 8.7): Accept parsing, which transfer
syntax a frame request names, and rendered images (PS3.18 8.3.5.1, 9 WADO-URI).

Pure functions over tables: the handlers in :mod:`.dicomweb` call these and the
:class:`~pacscore.Archive`, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt

from ..dicom.syntaxes import EXPLICIT_LE
from ..kernels import window_to_uint8

__all__ = ["FRAME_MEDIA", "MEDIA_OF", "RENDERED_MEDIA", "SERVED_BY", "FrameChoice",
           "MediaRange", "fit", "frame_choices", "parse_accept", "render", "rendered_media"]

_OCTET = "application/octet-stream"

# PS3.18 Table 8.7.3-5 (compressed) and 8.7.3-2 (uncompressed): media type of pixel
# data -> its transfer syntaxes, the RESTful default (D) first, then the optional ones.
FRAME_MEDIA: dict[str, tuple[str, ...]] = {
    _OCTET: (EXPLICIT_LE,),
    "image/jpeg": ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50",
                   "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                   "1.2.840.10008.1.2.4.203"),
}
MEDIA_OF: dict[str, str] = {ts: media for media, syntaxes in FRAME_MEDIA.items()
                            for ts in syntaxes}
"""Transfer syntax -> media type of its frames (the inverse of :data:`FRAME_MEDIA`)."""

# Requested syntax -> stored syntaxes whose codestreams are valid in it as they are
# (PS3.5 A.4): an HTJ2K RPCL lossless stream (.202) is an HTJ2K lossless stream
# (.201), and any HTJ2K stream is valid for .203; a lossless stream is valid for the
# syntax that also allows lossy coding (J2K .91, JPEG-LS near-lossless .81 with NEAR 0).
SERVED_BY: dict[str, frozenset[str]] = {
    "1.2.840.10008.1.2.4.201": frozenset({"1.2.840.10008.1.2.4.202"}),
    "1.2.840.10008.1.2.4.203": frozenset({"1.2.840.10008.1.2.4.201",
                                          "1.2.840.10008.1.2.4.202"}),
    "1.2.840.10008.1.2.4.91": frozenset({"1.2.840.10008.1.2.4.90"}),
    "1.2.840.10008.1.2.4.81": frozenset({"1.2.840.10008.1.2.4.80"}),
}


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header (RFC 9110 12.5.1)."""

    media: str
    """``type/subtype``, lower case (may hold ``*``)."""
    params: dict[str, str] = field(default_factory=dict)
    """Parameters by lower-cased name, unquoted (``q`` removed)."""
    q: float = 1.0
    """Quality."""


def parse_accept(header: str) -> list[MediaRange]:
    """Media ranges of an Accept header, most preferred first (q=0 left out); an
    absent header is ``*/*``."""
    out: list[MediaRange] = []
    for item in header.split(",") if header.strip() else ["*/*"]:
        media, *raw = (p.strip() for p in item.split(";"))
        params: dict[str, str] = {}
        for p in raw:
            key, _, value = p.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if media and q > 0:
            out.append(MediaRange(media.lower(), params, q))
    return sorted(out, key=lambda m: -m.q)  # stable: equal q keep their order


@dataclass(frozen=True, slots=True)
class FrameChoice:
    """One acceptable answer to a frame request."""

    media: str
    """Media type of each part."""
    syntax: str
    """Transfer syntax the parts are labelled with (what the client asked for)."""
    source: str
    """What to ask :meth:`Archive.frames` for: ``stored`` (a read) or a syntax UID."""


def frame_choices(accept: str, stored: str) -> tuple[list[FrameChoice], list[str]]:
    """Answers to ``accept`` for frames stored in ``stored``, in the client's order of
    preference, and what was asked for but has no answer (for the 406 message).

    ``multipart/related; type=X`` names the media type X; without a transfer-syntax
    parameter X's default syntax (PS3.18 Table 8.7.3-5) is meant; ``*`` or ``*/*``
    leave the choice to the server: the stored syntax, a read.
    """
    choices: list[FrameChoice] = []
    refused: list[str] = []
    stored_media = MEDIA_OF.get(stored, _OCTET)
    for rng in parse_accept(accept):
        media = rng.params.get("type", _OCTET).lower() if rng.media == "multipart/related" \
            else rng.media
        ts = rng.params.get("transfer-syntax")
        if media in ("*/*", "*", "multipart/*") or ts == "*":
            choices.append(FrameChoice(stored_media, stored, "stored"))
            continue
        allowed = FRAME_MEDIA.get(media)
        if allowed is None or (ts is not None and ts not in allowed):
            refused.append(f"{media}" + (f" in {ts}" if ts else ""))
            continue
        wanted = ts or allowed[0]
        passthrough = wanted == stored or stored in SERVED_BY.get(wanted, ())
        choices.append(FrameChoice(media, wanted, "stored" if passthrough else wanted))
    return choices, refused


# -- rendered images ---------------------------------------------------------------
def _jpeg(image: npt.NDArray[np.uint8]) -> bytes:
    return bytes(imagecodecs.jpeg8_encode(image, level=90))


def _png(image: npt.NDArray[np.uint8]) -> bytes:
    return bytes(imagecodecs.png_encode(image))


# PS3.18 8.7.4 (rendered media types) that this server writes, the default first.
RENDERED_MEDIA: dict[str, Callable[[npt.NDArray[np.uint8]], bytes]] = {
    "image/jpeg": _jpeg, "image/png": _png,
}


def rendered_media(requested: list[str]) -> str | None:
    """The first of ``requested`` media types (or ranges) this server renders."""
    default = next(iter(RENDERED_MEDIA))
    for item in requested:
        media = item.strip().lower()
        if media in ("*/*", "image/*", ""):
            return default
        if media in RENDERED_MEDIA:
            return media
    return None


def fit(shape: tuple[int, int], rows: int | None, columns: int | None) -> tuple[int, int]:
    """Size of an image of ``shape`` (rows, columns) scaled to fit inside ``rows`` x
    ``columns`` with its aspect ratio kept (PS3.18 8.3.5.1.3 viewport; WADO-URI rows
    and columns, either of which may be absent), at most 4x enlarged."""
    scales = [4.0]
    if rows:
        scales.append(rows / shape[0])
    if columns:
        scales.append(columns / shape[1])
    scale = min(scales)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _voi(ds: Any) -> tuple[float, float] | None:
    """First Window Center / Width of the header (multi-valued or not)."""
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    if wc is None or ww is None:
        return None
    first = [v[0] if isinstance(v, Sequence) and not isinstance(v, str) else v
             for v in (wc, ww)]
    return float(first[0]), float(first[1])


def render(pixels: npt.NDArray[Any], ds: Any, media: str, *,
           window: tuple[float, float] | None = None,
           size: tuple[int | None, int | None] | None = None) -> bytes:
    """One frame as an 8-bit image of ``media``: monochrome through the VOI window
    (``window`` = center, width; else the header's; else the pixel range), colour as
    stored; scaled to fit ``size`` (rows, columns) when given."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if pixels.ndim == 3:  # colour: shown as stored (no VOI)
        image = pixels.astype(np.uint8) if pixels.dtype.itemsize == 1 else \
            (pixels >> (pixels.dtype.itemsize * 8 - 8)).astype(np.uint8)
    else:
        voi = window or _voi(ds)
        if voi is None:
            lo = float(pixels.min()) * slope + intercept
            hi = float(pixels.max()) * slope + intercept
            voi = (lo + hi) / 2, max(hi - lo, 1.0)
        invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        image = window_to_uint8(pixels, slope, intercept, voi[0], voi[1], invert)
    if size is not None:
        rows, cols = fit((image.shape[0], image.shape[1]), *size)
        ri = np.arange(rows) * image.shape[0] // rows
        ci = np.arange(cols) * image.shape[1] // cols
        image = np.ascontiguousarray(image[ri][:, ci])
    return RENDERED_MEDIA[media](image)
