"""Rendered images: one stored frame as an 8-bit PNG or JPEG (PS3.18 8.3.5, 8.7.4).

What a viewer would show, by the pipeline of PS3.3 C.11 (PS3.4 N.2):

Greyscale (MONOCHROME1/2)
    1. the stored values: bits outside Bits Stored ignored, signed data sign-extended
       (PS3.5 8.1.1);
    2. Modality LUT: Rescale Slope/Intercept or the Modality LUT Sequence (C.11.1); for
       enhanced multi-frame objects the frame's own Pixel Value Transformation
       functional group (C.7.6.16.2.9, per-frame over shared over the top level);
    3. VOI: the window asked for (PS3.18 8.3.5.1.3); else the object's first Window
       Center/Width with its VOI LUT Function, LINEAR, LINEAR_EXACT or SIGMOID (C.11.2.1.2,
       C.11.2.1.3; the frame's Frame VOI LUT functional group first, C.7.6.16.2.10); else
       its first VOI LUT Sequence item (C.11.2.1.1); else, since nothing in the object
       says what to show, the frame's own range: its smallest modality value black, its
       largest white (LINEAR_EXACT);
    4. the VOI output range as 0..255, inverted for MONOCHROME1 or Presentation LUT Shape
       INVERSE (C.7.6.3.1.2, C.11.6.1), once: a DX object says both (C.8.11.1.1.1).
Colour
    PALETTE COLOR through its lookup tables, segmented ones too (C.7.6.3.1.5, C.7.9.2),
    each entry's high 8 bits; YBR_FULL and YBR_FULL_422 to RGB (C.7.6.3.1.2); RGB,
    YBR_RCT and YBR_ICT as decoded (JPEG 2000 undoes its component transform itself:
    PS3.5 8.2.4); more than 8 bits stored: the high 8 bits.

Then the viewport (aspect ratio kept) and the encoder.  The pixels come from
:meth:`Archive.pixels` (pixel data the archive only keeps as received, e.g. 1-bit
segmentations, 32-bit samples or native YBR_FULL_422, is decoded from the original
object with pydicom).  For 8- and 16-bit data the display value of every stored value
the frame holds is worked out once (at most 65,536 values, with pydicom's
``apply_modality_lut``/``apply_voi``/``apply_color_lut``), and each pixel is then
mapped through that table by a numba kernel.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import imagecodecs
import numpy as np
import numpy.typing as npt
from pydicom import Dataset, dcmread
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    convert_color_space,
)
from pydicom.pixels.utils import pixel_array

from .archive import Archive
from .errors import InvalidRequestError, PacsError, RenderError, UnsupportedTransferSyntaxError
from .kernels import lookup_uint8
from .retrieve import check_frames

__all__ = ["RENDERED_MEDIA", "RenderOptions", "Rendering", "Window", "display_order", "fit",
           "render_frame"]

log = logging.getLogger(__name__)
_U8 = npt.NDArray[np.uint8]
_F64 = npt.NDArray[np.float64]

# VOI LUT Functions (PS3.3 C.11.2.1.3) and the smallest Window Width each allows.
_WIDTH_OK: dict[str, tuple[Callable[[float], bool], str]] = {
    "LINEAR": (lambda w: w >= 1.0, "at least 1"),           # C.11.2.1.2.1
    "LINEAR_EXACT": (lambda w: w > 0.0, "greater than 0"),  # C.11.2.1.3.2
    "SIGMOID": (lambda w: w > 0.0, "greater than 0"),       # C.11.2.1.3.1
}
# PS3.18 8.3.5.1.3 writes the function in lower case ("linear-exact"); accept both.
_FUNCTION_NAMES = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT",
                   "linear_exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): values around ``center`` spread over 0..255."""

    center: float
    """Window Center (0028,1050), in modality (rescaled) values."""
    width: float
    """Window Width (0028,1051)."""
    function: str = "LINEAR"
    """VOI LUT Function (0028,1056): LINEAR, LINEAR_EXACT or SIGMOID."""

    def __post_init__(self) -> None:
        rule = _WIDTH_OK.get(self.function)
        if rule is None:
            raise InvalidRequestError(f"VOI LUT Function {self.function!r} is not one of "
                                      f"{', '.join(_WIDTH_OK)} (PS3.3 C.11.2.1.3)")
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise InvalidRequestError("window center and width must be finite numbers")
        if not rule[0](self.width):
            raise InvalidRequestError(f"a {self.function} window needs a width {rule[1]}, "
                                      f"not {self.width:g} (PS3.3 C.11.2.1.2)")

    @classmethod
    def parse(cls, text: str) -> Window:
        """``center,width[,function]`` as the ``window`` query parameter has it
        (PS3.18 8.3.5.1.3; function ``linear`` (default), ``linear-exact``, ``sigmoid``)."""
        parts = [p.strip() for p in text.split(",")]
        name = parts[2].lower() if len(parts) == 3 else "linear"
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise InvalidRequestError(f"window={text!r}: write center,width[,function], "
                                      f"e.g. window=40,400 or window=40,400,sigmoid") from None
        if name not in _FUNCTION_NAMES:
            raise InvalidRequestError(f"window={text!r}: the function is one of linear, "
                                      f"linear-exact or sigmoid (PS3.18 8.3.5.1.3)")
        return cls(center, width, _FUNCTION_NAMES[name])

    def apply(self, x: npt.NDArray[Any]) -> _F64:
        """Modality values ``x`` to display values in 0..255 (not yet rounded)."""
        c, w = self.center, self.width
        v = np.asarray(x, np.float64)
        if self.function == "SIGMOID":  # C.11.2.1.3.1
            with np.errstate(over="ignore"):
                return np.asarray(255.0 / (1.0 + np.exp(-4.0 * (v - c) / w)), np.float64)
        if self.function == "LINEAR":  # C.11.2.1.2.1: LINEAR_EXACT of (c - 0.5, w - 1)
            c, w = c - 0.5, w - 1.0
        # C.11.2.1.3.2, ((v - c) / w + 0.5) * 255 written as (v - bottom) * 255 / w: one
        # rounding for integer values, so a value halfway between two outputs stays so
        bottom = c - w / 2
        with np.errstate(divide="ignore", invalid="ignore"):  # w == 0: nothing between
            y = (v - bottom) * 255.0 / w
        return np.where(v <= bottom, 0.0, np.where(v > c + w / 2, 255.0, y))


def _jpeg(image: _U8, quality: int) -> bytes:
    # PS3.18 8.7.4: baseline lossy 8-bit Huffman JPEG.
    return bytes(imagecodecs.jpeg8_encode(image, level=quality))


def _png(image: _U8, quality: int) -> bytes:
    return bytes(imagecodecs.png_encode(image))


# Rendered media types (PS3.18 8.7.4) this server writes, the default first.
RENDERED_MEDIA: dict[str, Callable[[_U8, int], bytes]] = {
    "image/jpeg": _jpeg, "image/png": _png,
}


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How to render (PS3.18 8.3.5.1)."""

    media: str = "image/jpeg"
    """A key of :data:`RENDERED_MEDIA`."""
    window: Window | None = None
    """A window that replaces the object's VOI (greyscale only)."""
    size: tuple[int | None, int | None] | None = None
    """Rows, columns to fit in with the aspect ratio kept (either may be None)."""
    quality: int = 90
    """JPEG quality, 1..100 (PS3.18 8.3.5.1.2)."""

    def __post_init__(self) -> None:
        if self.media not in RENDERED_MEDIA:
            raise UnsupportedTransferSyntaxError(
                f"cannot render as {self.media}", hint=f"ask for {' or '.join(RENDERED_MEDIA)}")
        if not 1 <= self.quality <= 100:
            raise InvalidRequestError(f"quality {self.quality} is not in 1..100")
        if self.size is not None and any(s is not None and s < 1 for s in self.size):
            raise InvalidRequestError(f"viewport {self.size} must be positive")


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


def _scaled(image: _U8, size: tuple[int | None, int | None] | None) -> _U8:
    if size is None:
        return image
    rows, cols = fit((image.shape[0], image.shape[1]), *size)
    ri = np.arange(rows) * image.shape[0] // rows
    ci = np.arange(cols) * image.shape[1] // cols
    return np.ascontiguousarray(image[ri][:, ci])


def _short(exc: BaseException) -> str:
    """``Type: message`` on one line, bounded: a reason for a client, no traceback."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# -- greyscale ------------------------------------------------------------------------
_GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Attributes the greyscale pipeline reads (C.11.1, C.11.2, C.11.6) ...
_GREY_KEYWORDS = frozenset({
    "PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "PresentationLUTShape"})
# ... and the functional group macros that hold them per frame (C.7.6.16.2.9, .10).
_FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def _frame_view(ds: Dataset, index: int) -> Dataset:  # noqa: C901
    """The greyscale attributes that apply to frame ``index``: the top level, then the
    Shared, then this frame's Per-frame Functional Groups (PS3.3 C.7.6.16), each
    overriding the one before."""
    view = Dataset()
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        view.file_meta = file_meta  # the byte order of OW lookup table data
    implicit, little = ds.original_encoding
    view.set_original_encoding(implicit, little, ds.original_character_set)
    for keyword in _GREY_KEYWORDS:
        if keyword in ds:
            view[keyword] = ds[keyword]
    groups: list[Dataset] = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for macro in _FRAME_MACROS:
            items = group.get(macro)
            if items:
                for elem in items[0]:
                    if elem.keyword in _GREY_KEYWORDS:
                        view[elem.tag] = elem
    return view


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value


def _object_window(view: Dataset) -> Window | None:
    """The object's first window (C.11.2.1.2), or None without a usable one."""
    center, width = view.get("WindowCenter"), view.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c, w = float(_first(center)), float(_first(width))
        function = str(view.get("VOILUTFunction") or "LINEAR").strip().upper()
        if function == "LINEAR" and 0 < w < 1:
            # A window over fractional modality values (an RT image's, in Gy); LINEAR's
            # integer steps (C.11.2.1.2.1, width >= 1) do not apply: taken as exact.
            function = "LINEAR_EXACT"
        return Window(c, w, function)
    except (ValueError, TypeError, IndexError):  # empty, width 0, unknown function:
        return None                                # the next VOI source applies


def _stored_values(a: npt.NDArray[Any], bits_stored: int, signed: bool) -> npt.NDArray[Any]:
    """Sample values as Bits Stored defines them (PS3.5 8.1.1): the bits above it
    ignored, signed values sign-extended; native byte order."""
    if a.dtype.kind not in "ui":
        raise RenderError(f"{a.dtype} pixel data is not rendered here")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    size = a.dtype.itemsize
    if not 0 < bits_stored < 8 * size:
        return a
    masked = np.asarray(a.view(f"u{size}") & np.array((1 << bits_stored) - 1, f"u{size}"))
    if not signed:
        return masked
    sign = 1 << (bits_stored - 1)
    return np.asarray((masked.astype(np.int64) ^ sign) - sign).astype(f"i{size}")


class Rendering:
    """One stored instance made ready to render: its header read once, then any of
    its frames (a study or series rendered frame after frame reads it once)."""

    def __init__(self, archive: Archive, sop_instance_uid: str):
        self.archive, self.sop = archive, sop_instance_uid
        self.ds = self._header()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.photometric = str(self.ds.get("PhotometricInterpretation", "")
                                       ).strip().upper()
                self.bits_stored = int(self.ds.get("BitsStored") or 0)
                self.signed = int(self.ds.get("PixelRepresentation") or 0) == 1
                rows = self.ds.get("Rows")
        except Exception as exc:  # pydicom raises many kinds on a bad header
            raise RenderError(f"the header of instance {self.sop} cannot be read for "
                              f"rendering ({_short(exc)})") from exc
        self.frames = archive.frame_count(sop_instance_uid) if rows else 0
        """Number of frames."""
        if self.frames == 0:
            raise UnsupportedTransferSyntaxError(
                f"instance {self.sop} has no pixel data: it is not an image to render",
                hint="retrieve it as application/dicom")

    def _header(self) -> Dataset:
        """The data set without pixel data (a deflated object kept as received: read
        from the whole object, as Archive.header cuts it at its inflated offsets)."""
        header = self.archive.header(self.sop)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return dcmread(io.BytesIO(header), force=True, stop_before_pixels=True)
            except Exception:  # catch-all on purpose: pydicom raises many kinds (documented as
                # none) on bytes it cannot read; a fallback, whose own failure is reported
                log.debug("header of %s unreadable; reading the object", self.sop,
                          exc_info=True)
            try:
                return dcmread(io.BytesIO(self.archive.get(self.sop, "original")),
                               force=True, stop_before_pixels=True)
            except Exception as exc:
                raise RenderError(f"the header of instance {self.sop} cannot be read for "
                                  f"rendering ({_short(exc)})") from exc

    # -- pixels --------------------------------------------------------------------
    def _pixels(self, index: int) -> npt.NDArray[Any]:
        try:
            return self.archive.pixels(self.sop, index)
        except UnsupportedTransferSyntaxError:
            return self._decoded_by_pydicom(index)
        except PacsError:
            raise
        except Exception as exc:  # a codec library's own error: damaged data
            raise RenderError(f"pixel data of instance {self.sop} frame {index + 1} "
                              f"cannot be decoded ({_short(exc)})") from exc

    def _decoded_by_pydicom(self, index: int) -> npt.NDArray[Any]:
        """A frame the archive keeps only as received (1-bit, 32-bit, native
        YBR_FULL_422), decoded from the original object."""
        data = self.archive.get(self.sop, "original")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(pixel_array(io.BytesIO(data), index=index, raw=True))
        except Exception as exc:
            raise RenderError(f"pixel data of instance {self.sop} frame {index + 1} "
                              f"cannot be decoded ({_short(exc)})") from exc

    # -- display values --------------------------------------------------------------
    def image(self, index: int, window: Window | None = None) -> _U8:
        """Frame ``index`` (0-based) as display values: (rows, columns) greyscale or
        (rows, columns, 3) RGB, 8 bits; ``window`` replaces the object's VOI."""
        check_frames(self.sop, [index], self.frames)
        pixels = self._pixels(index)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._display(pixels, index, window)
        except PacsError:
            raise
        except Exception as exc:  # pydicom on odd lookup tables, and bugs: logged
            log.warning("rendering instance %s frame %d failed", self.sop, index + 1,
                        exc_info=True)
            raise RenderError(f"instance {self.sop} frame {index + 1} cannot be rendered "
                              f"({_short(exc)})") from exc

    def frame(self, index: int, options: RenderOptions) -> bytes:
        """Frame ``index`` (0-based) rendered as ``options`` say."""
        image = _scaled(self.image(index, options.window), options.size)
        return RENDERED_MEDIA[options.media](image, options.quality)

    def _display(self, a: npt.NDArray[Any], index: int, window: Window | None) -> _U8:
        if self.photometric in _GREY and a.ndim == 2:
            return self._grey(a, index, window)
        if self.photometric == "PALETTE COLOR" and a.ndim == 2:
            return self._palette(a)
        if self.photometric in _TO_RGB and a.ndim == 3 and a.shape[2] == 3:
            return self._colour(a, _TO_RGB[self.photometric])
        raise RenderError(f"instance {self.sop}: photometric interpretation "
                          f"{self.photometric or '(none)'} with pixel shape {a.shape} is "
                          f"not rendered here")

    def _grey(self, a: npt.NDArray[Any], index: int, window: Window | None) -> _U8:
        view = _frame_view(self.ds, index)
        values = _stored_values(a, self.bits_stored, self.signed)
        invert = self.photometric == "MONOCHROME1" or \
            str(view.get("PresentationLUTShape", "")).strip().upper() == "INVERSE"
        if values.dtype.itemsize > 2:  # 32-bit: every pixel through the pipeline
            return _grey_values(values, view, window, invert,
                                lambda m: (float(m.min()), float(m.max())))
        lo, hi = int(values.min()), int(values.max())
        domain = np.arange(lo, hi + 1).astype(values.dtype)

        def present(m: npt.NDArray[Any]) -> tuple[float, float]:
            # the range of the modality values the frame holds (a rescale is monotonic:
            # its ends; a Modality LUT need not be)
            if "ModalityLUTSequence" in view:
                held = np.bincount(values.reshape(-1).astype(np.int64) - lo,
                                   minlength=m.shape[0]) > 0
                m = m[held]
            return float(np.min(m)), float(np.max(m))

        return lookup_uint8(values, lo, _grey_values(domain, view, window, invert, present))

    def _palette(self, a: npt.NDArray[Any]) -> _U8:
        values = _stored_values(a, self.bits_stored, self.signed)
        if values.dtype.itemsize > 2:
            raise RenderError(f"instance {self.sop}: {values.dtype} palette indices")
        lo, hi = int(values.min()), int(values.max())
        rgb = apply_color_lut(np.arange(lo, hi + 1).astype(values.dtype), self.ds)[..., :3]
        # 8 or 16 bits per entry (C.7.6.3.1.5): the high 8 bits of each
        table = (rgb >> (8 * rgb.dtype.itemsize - 8)).astype(np.uint8)
        return lookup_uint8(values, lo, table)

    def _colour(self, a: npt.NDArray[Any], source: str | None) -> _U8:
        values = a
        if a.dtype != np.uint8:
            values = _stored_values(a, self.bits_stored, False)
            bits = self.bits_stored or 8 * a.dtype.itemsize
            values = (values >> max(bits - 8, 0)).astype(np.uint8)
        if source is not None:  # C.7.6.3.1.2
            values = convert_color_space(values, source, "RGB")
        return np.ascontiguousarray(values, np.uint8)


# Decoded colour samples -> the colour space to convert from to get RGB (None: RGB).
_TO_RGB: dict[str, str | None] = {
    "RGB": None, "YBR_RCT": None, "YBR_ICT": None,  # JPEG 2000 MCT undone by the codec
    "YBR_FULL": "YBR_FULL", "YBR_FULL_422": "YBR_FULL_422",  # decoded as YBR
}


def _grey_values(domain: npt.NDArray[Any], view: Dataset, window: Window | None,
                 invert: bool, present: Callable[[npt.NDArray[Any]], tuple[float, float]]
                 ) -> _U8:
    """Display values (0..255) of the stored values ``domain`` (PS3.3 C.11)."""
    m = apply_modality_lut(domain, view)  # C.11.1
    chosen = window or _object_window(view)
    if chosen is not None:
        y = chosen.apply(m)
    elif view.get("VOILUTSequence"):  # C.11.2.1.1: output 0 .. 2^bits - 1
        bits = int(view.VOILUTSequence[0].LUTDescriptor[2])
        y = np.asarray(apply_voi(m, view, 0), np.float64) * (255.0 / (2**bits - 1))
    else:  # no VOI in the object: the frame's own range, end to end
        lo, hi = present(m)
        y = Window((lo + hi) / 2, hi - lo if hi > lo else 1.0, "LINEAR_EXACT").apply(m)
    out = np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)
    return np.asarray(255 - out if invert else out, np.uint8)


def render_frame(archive: Archive, sop_instance_uid: str, index: int,
                 options: RenderOptions | None = None) -> bytes:
    """Frame ``index`` (0-based) of an instance rendered (see the module docstring).

    Raises
    ------
    NotFoundError
        No such instance.
    UnsupportedTransferSyntaxError
        It has no pixel data (a report, a document), or ``options`` name a media type
        this module does not write.
    InvalidRequestError
        ``index`` is not a frame of it (also a ``ValueError``).
    RenderError
        Its pixel data does not decode or cannot be shown (the reason is named).
    """
    return Rendering(archive, sop_instance_uid).frame(index, options or RenderOptions())


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf


def display_order(archive: Archive, sops: Sequence[str]) -> list[str]:
    """``sops`` in the order a viewer lists them: by Series Number, series, Instance
    Number, SOP Instance UID (absent numbers last)."""
    def key(sop: str) -> tuple[float, str, float, str]:
        rec = archive.record(sop)
        a = rec.attributes
        return (_number(a.get("SeriesNumber")), rec.series_uid,
                _number(a.get("InstanceNumber")), sop)
    return sorted(sops, key=key)
