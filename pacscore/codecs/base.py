"""The contract every frame codec fulfils."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import numpy.typing as npt

from ..dicom.layout import PixelLayout
from .profiles import ENCODER_LIMITS, PROFILES

__all__ = ["Frame", "FrameCodec"]

Frame = npt.NDArray[Any]
"""One frame, shape (rows, columns) or (rows, columns, samples), native byte order."""


class FrameCodec(ABC):
    """Encoder and decoder of one lossless transfer syntax.

    ``encode`` and ``decode`` work on one frame in the layout's native dtype,
    colour-by-pixel; the codestream returned by ``encode`` is exactly what goes into a
    DICOM fragment and into a Zarr chunk.
    """

    name: str
    """Short name used in the CLI and config (``htj2k``)."""
    transfer_syntax: str
    """Transfer Syntax UID of the codestreams."""

    def refuses(self, layout: PixelLayout) -> str | None:
        """Why this codec cannot encode ``layout`` losslessly, or None: its syntax's
        PS3.5 8.2 table, then what the encoders here write."""
        return PROFILES[self.transfer_syntax].refuses(layout) or ENCODER_LIMITS.refuses(layout)

    @abstractmethod
    def encode(self, frame: Frame, layout: PixelLayout) -> bytes:
        """Encode one frame losslessly."""

    @abstractmethod
    def decode(self, data: bytes, layout: PixelLayout) -> Frame:
        """Decode one codestream to the layout's dtype and frame shape."""

    @staticmethod
    def _shaped(decoded: npt.NDArray[Any], layout: PixelLayout) -> Frame:
        out = decoded.reshape(layout.frame_shape)
        if out.dtype != layout.dtype:
            out = out.view(layout.dtype) if out.itemsize == layout.dtype.itemsize else out
        return np.ascontiguousarray(out)
