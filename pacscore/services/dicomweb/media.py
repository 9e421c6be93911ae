"""Media types of the DICOMweb front end (PS3.18 8.7): Accept parsing, which transfer
syntax a frame request names, and which rendered media type a request names (PS3.18
8.7.4; the images are made by :mod:`pacscore.render`).

Pure functions over tables: the handlers in :mod:`.app` call these and the
:class:`~pacscore.Archive`, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ...dicom.syntaxes import EXPLICIT_LE
from ...errors import InvalidRequestError, UnsupportedTransferSyntaxError
from ...render import RENDERED_MEDIA, RenderOptions, Window

__all__ = ["FRAME_MEDIA", "MEDIA_OF", "SERVED_BY", "FrameChoice", "MediaRange",
           "frame_choices", "parse_accept", "render_options", "rendered_media",
           "wado_render_options"]

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


# -- rendered images (the images themselves: pacscore.render) -------------------------
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


def _rendered_media_of(accept: str, what: str) -> str:
    """The rendered media type an Accept header names (``multipart/related;
    type=...`` too); 406 for none this server writes."""
    media = rendered_media([m.params.get("type", "") if m.media == "multipart/related"
                            else m.media for m in parse_accept(accept)])
    if media is None:
        raise UnsupportedTransferSyntaxError(
            f"cannot render {what} as {accept}: ask for image/jpeg or image/png")
    return media


def render_options(accept: str, query: Mapping[str, str], what: str, *,
                   thumbnail: bool = False) -> RenderOptions:
    """A WADO-RS rendered request (PS3.18 8.3.5.1): the media type of Accept,
    window=center,width[,function], viewport=vw,vh (columns, rows; aspect kept),
    quality (JPEG, 1..100); a thumbnail fits 128 x 128."""
    media = _rendered_media_of(accept, what)
    window = Window.parse(query["window"]) if "window" in query else None
    size: tuple[int | None, int | None] | None = (128, 128) if thumbnail else None
    try:
        if "viewport" in query:
            vw, vh = (int(v) for v in query["viewport"].split(",")[:2])
            size = (vh, vw)
        quality = int(query.get("quality", "90"))
    except ValueError:
        raise InvalidRequestError("viewport is width,height in pixels (viewport=512,512) "
                                  "and quality an integer 1..100") from None
    return RenderOptions(media, window, size, quality)


def wado_render_options(media: str, query: Mapping[str, str]) -> tuple[RenderOptions, int]:
    """A WADO-URI image request (PS3.18 9.5.1.2): windowCenter and windowWidth (both
    or none), rows, columns, imageQuality; and frameNumber (1-based)."""
    window = None
    if "windowCenter" in query or "windowWidth" in query:
        try:
            window = Window(float(query["windowCenter"]), float(query["windowWidth"]))
        except (KeyError, ValueError) as exc:
            raise InvalidRequestError(f"windowCenter and windowWidth are numbers given "
                                      f"together ({exc})") from None
    try:
        rows, cols = (int(query[k]) if k in query else None for k in ("rows", "columns"))
        frame = int(query.get("frameNumber", "1"))
        quality = int(query.get("imageQuality", "90"))
    except ValueError:
        raise InvalidRequestError("rows, columns, frameNumber and imageQuality are "
                                  "integers") from None
    return RenderOptions(media, window, (rows, cols) if rows or cols else None,
                         quality), frame
