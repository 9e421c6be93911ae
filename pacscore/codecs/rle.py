"""RLE Lossless (1.2.840.10008.1.2.5, PS3.5 Annex G) through pylibjpeg-rle."""

from __future__ import annotations

import numpy as np
from rle.rle import decode_frame, encode_frame

from ..dicom.layout import PixelLayout
from .base import Frame, FrameCodec

__all__ = ["CODEC", "RleCodec"]


class RleCodec(FrameCodec):
    """pylibjpeg-rle encoder and decoder (byte segments, little-endian input)."""

    name = "rle"
    transfer_syntax = "1.2.840.10008.1.2.5"

    def encode(self, frame: Frame, layout: PixelLayout) -> bytes:
        src = np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<")).tobytes()
        return bytes(encode_frame(src, layout.rows, layout.columns, layout.samples,
                                  layout.bits_allocated, "<"))

    def decode(self, data: bytes, layout: PixelLayout) -> Frame:
        raw = decode_frame(data, layout.rows * layout.columns, layout.bits_allocated, "<")
        decoded = np.frombuffer(raw, layout.dtype.newbyteorder("<"))
        if layout.samples > 1:  # RLE decodes colour-by-plane
            decoded = decoded.reshape(layout.samples, layout.rows, layout.columns)
            decoded = decoded.transpose(1, 2, 0)
        return self._shaped(decoded.astype(layout.dtype, copy=False), layout)


CODEC = RleCodec()
