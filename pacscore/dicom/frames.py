"""Native pixel data as frame arrays and back, and the frame checksum: numpy only
(ingest and retrieval both use them; neither the kernels nor the codecs load here)."""

from __future__ import annotations

import zlib
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .layout import PixelLayout
from .scan import ScannedObject

__all__ = ["frame_crc32", "native_bytes", "native_frames"]


def native_frames(scanned: ScannedObject, layout: PixelLayout) -> npt.NDArray[Any]:
    """Frames of native pixel data as (frames, rows, columns[, samples]) native arrays.

    A view of the received bytes when little endian and colour-by-pixel; a copy when
    the data set is big endian or colour-by-plane.
    """
    pixel = scanned.pixel
    assert pixel is not None
    order: Literal["<", ">"] = "<" if scanned.transfer_syntax.little_endian else ">"
    dtype = layout.dtype.newbyteorder(order)
    count = layout.frame_samples * layout.frames
    arr = np.frombuffer(scanned.body, dtype, count=count, offset=pixel.value_start)
    if layout.planar:
        arr = arr.reshape(layout.frames, layout.samples, layout.rows, layout.columns)
        arr = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    else:
        arr = arr.reshape(layout.frames, *layout.frame_shape)
    if order == ">" and layout.bits_allocated > 8:
        arr = arr.astype(layout.dtype)
    return arr


def native_bytes(frames: list[npt.NDArray[Any]], layout: PixelLayout, little: bool) -> bytes:
    """Inverse of :func:`native_frames`: the pixel value bytes as in the file."""
    stack = np.stack(frames).reshape(layout.frames, *layout.frame_shape)
    if layout.planar:
        stack = stack.transpose(0, 3, 1, 2)
    if not little and layout.bits_allocated > 8:
        stack = stack.astype(layout.dtype.newbyteorder(">"))
    return np.ascontiguousarray(stack).tobytes()


def frame_crc32(frame: npt.NDArray[Any]) -> int:
    """CRC-32 of a decoded frame's samples in little-endian order (the index checksum)."""
    le = np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("<"), copy=False))
    return zlib.crc32(le.data)
