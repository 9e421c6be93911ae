"""JPEG-LS lossless (1.2.840.10008.1.2.4.80) at the true Bits Stored precision.

CharLS through pyjpegls encodes (imagecodecs always writes P=16 for 16-bit input);
signed samples are encoded as their bit pattern masked to Bits Stored and sign
extended on decode, as PS3.5 8.2.3 and CP-1843 describe.
"""

from __future__ import annotations

import imagecodecs
import jpeg_ls
import numpy as np

from ..dicom.layout import PixelLayout
from ..kernels import mask_to_bits, sign_extend
from .base import Frame, FrameCodec

__all__ = ["CODEC", "JpeglsCodec"]


class JpeglsCodec(FrameCodec):
    """CharLS encoder, CharLS (imagecodecs) decoder."""

    name = "jpegls"
    transfer_syntax = "1.2.840.10008.1.2.4.80"

    def encode(self, frame: Frame, layout: PixelLayout) -> bytes:
        bits = max(layout.bits_stored, 2)
        samples = frame
        if layout.signed:
            samples = mask_to_bits(frame.view(np.uint16), bits)
        elif frame.dtype.itemsize == 2 and bits < 16:
            samples = frame.view(np.uint16)
        return bytes(jpeg_ls.encode_buffer(
            np.ascontiguousarray(samples).tobytes(), layout.rows, layout.columns,
            layout.samples, bits, 0, 2 if layout.samples > 1 else 0,
        ))

    def decode(self, data: bytes, layout: PixelLayout) -> Frame:
        decoded = imagecodecs.jpegls_decode(data)
        if layout.signed:
            decoded = sign_extend(decoded.view(np.uint16).reshape(-1),
                                  max(layout.bits_stored, 2))
            if layout.bits_allocated == 8:
                decoded = decoded.astype(np.int8)
        return self._shaped(decoded, layout)


CODEC = JpeglsCodec()
