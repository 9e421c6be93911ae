"""Decoding pixel data as it was received (objects kept as received, transcode input).

A table of the transfer syntaxes pacscore decodes, each with the one pydicom
decoding plugin it uses (a fixed plugin per syntax: the CRC-32s recorded at ingest
must come out the same at every later decode).  Every plugin is permissively
licensed: imagecodecs (BSD-3-Clause), pyjpegls and pylibjpeg-openjpeg/-rle (MIT).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt

from ..dicom.layout import PixelLayout
from ..errors import UndecodablePixelDataError
from . import jpeg_plugin

__all__ = ["DECODERS", "decodable", "decode_frames", "native_elements", "nested_decoder"]

DECODERS: dict[str, str] = {
    # JPEG (PS3.5 A.4.1): libjpeg-turbo through imagecodecs (:mod:`.jpeg_plugin`)
    "1.2.840.10008.1.2.4.50": jpeg_plugin.LABEL,
    "1.2.840.10008.1.2.4.51": jpeg_plugin.LABEL,
    "1.2.840.10008.1.2.4.57": jpeg_plugin.LABEL,
    "1.2.840.10008.1.2.4.70": jpeg_plugin.LABEL,
    # JPEG-LS (A.4.3): CharLS through pyjpegls
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    # JPEG 2000 (A.4.4) and HTJ2K (A.4.11): OpenJPEG through pylibjpeg-openjpeg
    "1.2.840.10008.1.2.4.90": "pylibjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg",
    # RLE Lossless (A.4.2): pylibjpeg-rle
    "1.2.840.10008.1.2.5": "pylibjpeg",
}
"""pydicom decoding plugin by encapsulated transfer syntax UID."""

_registered = False
_register_lock = threading.Lock()


def _register() -> None:
    """Add :mod:`.jpeg_plugin` to pydicom's JPEG decoders (once per process)."""
    global _registered
    if _registered:
        return
    from pydicom.pixels.decoders.base import get_decoder

    with _register_lock:
        if not _registered:
            for uid in jpeg_plugin.DECODER_DEPENDENCIES:
                with contextlib.suppress(ValueError):  # already added (a reload)
                    get_decoder(uid).add_plugin(jpeg_plugin.LABEL,
                                                (jpeg_plugin.__name__, "decode_frame"))
            _registered = True


def decodable(transfer_syntax: str) -> bool:
    """Whether pixel data in ``transfer_syntax`` (encapsulated) is decoded here."""
    return transfer_syntax in DECODERS


def decode_frames(data: bytes, transfer_syntax: str, layout: PixelLayout,
                  indices: Sequence[int] | None = None) -> list[npt.NDArray[Any]]:
    """Decode the frames ``indices`` (all by default) of the Part-10 object ``data``,
    whose pixel data is encapsulated in ``transfer_syntax``: arrays of the layout's
    dtype and frame shape, colour-by-pixel, colour space as stored.

    Raises
    ------
    UndecodablePixelDataError
        With the frame and the decoder's reason: no decoder for the syntax, a
        codestream that does not decode, a frame whose size differs from what the
        header says, fewer frames than Number of Frames.
    """
    return _decoded(BytesIO(data), transfer_syntax, layout, indices)


def _decoded(src: Any, transfer_syntax: str, layout: PixelLayout,
             indices: Sequence[int] | None) -> list[npt.NDArray[Any]]:
    plugin = DECODERS.get(transfer_syntax)
    if plugin is None:
        raise UndecodablePixelDataError(f"pixel data in {transfer_syntax} is not decoded here")
    _register()
    from pydicom.pixels import iter_pixels  # type: ignore[attr-defined]

    wanted = list(range(layout.frames)) if indices is None else list(indices)
    if bad := [i for i in wanted if not 0 <= i < layout.frames]:
        raise UndecodablePixelDataError(f"there are {layout.frames} frames; no frame {bad[0]}")
    out: list[npt.NDArray[Any]] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for frame in iter_pixels(src, indices=wanted, raw=True, decoding_plugin=plugin):
                arr = np.asarray(frame)
                if arr.size != int(np.prod(layout.frame_shape)):
                    raise ValueError(f"decodes to {arr.shape}, the header says "
                                     f"{layout.frame_shape}")
                out.append(np.ascontiguousarray(arr).astype(layout.dtype, copy=False)
                           .reshape(layout.frame_shape))
    except Exception as exc:  # codec libraries and pydicom raise their own types
        where = f"frame {wanted[len(out)]}" if len(out) < len(wanted) else "pixel data"
        why = " ".join(str(exc).split())  # pydicom lists each plugin's reason on a line
        raise UndecodablePixelDataError(
            f"{where} does not decode ({type(exc).__name__}: {why})") from exc
    if len(out) != len(wanted):
        raise UndecodablePixelDataError(
            f"{len(out)} frames decode, {len(wanted)} were asked for")
    return out


# Photometric Interpretation of decoded pixels (PS3.3 C.7.6.3.1.2): JPEG's 4:2:2
# chroma comes back at full resolution, a JPEG 2000 component transform undone.
_DECODED_PHOTOMETRIC = {"YBR_FULL_422": "YBR_FULL", "YBR_RCT": "RGB", "YBR_ICT": "RGB"}
_PIXEL_DATA = 0x7FE00010


def native_elements(decoded: Sequence[npt.NDArray[Any]], layout: PixelLayout
                    ) -> dict[int, tuple[str, bytes]]:
    """The elements that describe decoded frames as native pixel data (PS3.5 8.1.1),
    by tag: the value (little endian, colour-by-pixel), and, with colour, Planar
    Configuration 0 and the colour space the decoder gave."""
    stack = np.stack([np.asarray(f) for f in decoded]) if decoded else np.zeros(0, np.uint8)
    raw = np.ascontiguousarray(stack.astype(stack.dtype.newbyteorder("<"), copy=False))
    out = {_PIXEL_DATA: ("OW" if layout.bits_allocated > 8 else "OB", raw.tobytes())}
    if layout.samples > 1:
        out[0x00280006] = ("US", b"\x00\x00")  # Planar Configuration: colour-by-pixel
    if layout.photometric in _DECODED_PHOTOMETRIC:
        out[0x00280004] = ("CS", _DECODED_PHOTOMETRIC[layout.photometric].encode())
    return out


def nested_decoder(transfer_syntax: str
                   ) -> Callable[[Mapping[int, int | str], bytes], dict[int, tuple[str, bytes]]]:
    """A :data:`~pacscore.dicom.convert.NestedDecoder` for ``transfer_syntax``: decodes
    encapsulated pixel data inside a sequence item (an icon, PS3.3 C.7.6.1.1.6) with
    the item's own Image Pixel attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID

    def decode(described: Mapping[int, int | str], value: bytes
               ) -> dict[int, tuple[str, bytes]]:
        def number(tag: int, default: int) -> int:
            try:
                return int(described.get(tag, default))
            except ValueError:
                return default
        layout = PixelLayout(
            number(0x00280010, 0), number(0x00280011, 0), number(0x00280002, 1),
            number(0x00280100, 8), number(0x00280101, number(0x00280100, 8)),
            number(0x00280103, 0) == 1, number(0x00280006, 0) == 1,
            str(described.get(0x00280004, "MONOCHROME2")), max(number(0x00280008, 1), 1))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        ds.Rows, ds.Columns, ds.SamplesPerPixel = layout.rows, layout.columns, layout.samples
        ds.BitsAllocated, ds.BitsStored = layout.bits_allocated, layout.bits_stored
        ds.HighBit, ds.PixelRepresentation = layout.bits_stored - 1, int(layout.signed)
        ds.PhotometricInterpretation, ds.NumberOfFrames = layout.photometric, layout.frames
        if layout.samples > 1:
            ds.PlanarConfiguration = int(layout.planar)
        delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        ds.PixelData = value[: -len(delimiter)] if value.endswith(delimiter) else value
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        return native_elements(_decoded(ds, transfer_syntax, layout, None), layout)

    return decode
