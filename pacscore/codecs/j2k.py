"""JPEG 2000 lossless (1.2.840.10008.1.2.4.90) through OpenJPEG (imagecodecs).

No multiple-component transform is applied, so RGB stays RGB (PS3.5 8.2.4 allows
it without MCT) and the Photometric Interpretation needs no change.
"""

from __future__ import annotations

import imagecodecs

from ..dicom.layout import PixelLayout
from .base import Frame, FrameCodec

__all__ = ["CODEC", "J2kCodec"]


class J2kCodec(FrameCodec):
    """OpenJPEG encoder and decoder."""

    name = "j2k"
    transfer_syntax = "1.2.840.10008.1.2.4.90"

    def encode(self, frame: Frame, layout: PixelLayout) -> bytes:
        return bytes(imagecodecs.jpeg2k_encode(
            frame, level=0, codecformat="J2K", reversible=True, mct=False,
            bitspersample=layout.bits_stored, numthreads=1,
        ))

    def decode(self, data: bytes, layout: PixelLayout) -> Frame:
        return self._shaped(imagecodecs.jpeg2k_decode(data, numthreads=1), layout)


CODEC = J2kCodec()
