"""HTJ2K lossless RPCL (1.2.840.10008.1.2.4.202) through OpenJPH (imagecodecs).

The profile of PS3.5 8.2.14: reversible 5/3 wavelet, RPCL progression, TLM markers,
enough decomposition levels that the smallest resolution is at most 64 pixels.
"""

from __future__ import annotations

import imagecodecs

from ..dicom.layout import PixelLayout
from .base import Frame, FrameCodec

__all__ = ["CODEC", "Htj2kCodec"]


def _levels(layout: PixelLayout) -> int:
    size, levels = max(layout.rows, layout.columns), 0
    while size > 64 and levels < 32:
        size = (size + 1) // 2
        levels += 1
    return levels + 1  # imagecodecs counts resolutions, not decompositions


class Htj2kCodec(FrameCodec):
    """OpenJPH encoder and decoder."""

    name = "htj2k"
    transfer_syntax = "1.2.840.10008.1.2.4.202"

    def encode(self, frame: Frame, layout: PixelLayout) -> bytes:
        return bytes(imagecodecs.htj2k_encode(
            frame, reversible=True, tlm=True, resolutions=_levels(layout),
        ))

    def decode(self, data: bytes, layout: PixelLayout) -> Frame:
        return self._shaped(imagecodecs.htj2k_decode(data), layout)


CODEC = Htj2kCodec()
