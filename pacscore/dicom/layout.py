"""Geometry and sample format of pixel data, apart from the header parser.

:class:`PixelLayout` is what codecs, the frame store and the index share about pixel
data; it lives here (numpy only) so that they do not import
:mod:`pacscore.dicom.header` and pydicom with it.  ``pacscore.dicom.header`` still
re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PixelLayout"]


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Geometry and sample format of the pixel data (PS3.3 C.7.6.3)."""

    rows: int
    """Rows."""
    columns: int
    """Columns."""
    samples: int
    """Samples per pixel."""
    bits_allocated: int
    """Bits allocated per sample."""
    bits_stored: int
    """Bits stored per sample."""
    signed: bool
    """Pixel Representation 1 (two's complement)."""
    planar: bool
    """Planar Configuration 1 (colour-by-plane)."""
    photometric: str
    """Photometric Interpretation."""
    frames: int
    """Number of frames."""

    @property
    def frame_samples(self) -> int:
        """Samples in one frame."""
        return self.rows * self.columns * self.samples

    @property
    def frame_bytes(self) -> int:
        """Bytes of one native frame (bits allocated a multiple of 8).

        YBR_FULL_422 native data holds two samples per pixel (PS3.3 C.7.6.3.1.2)."""
        if self.photometric == "YBR_FULL_422" and self.samples == 3:
            return self.rows * self.columns * 2 * self.bits_allocated // 8
        return self.frame_samples * self.bits_allocated // 8

    @property
    def native_bytes(self) -> int:
        """Bytes of the whole native pixel data, without the padding byte."""
        if self.bits_allocated == 1:
            return (self.rows * self.columns * self.samples * self.frames + 7) // 8
        return self.frame_bytes * self.frames

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native-endian numpy dtype of one sample."""
        kind = "i" if self.signed else "u"
        return np.dtype(f"{kind}{max(self.bits_allocated // 8, 1)}")

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one decoded frame, colour-by-pixel."""
        if self.samples == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples)

    def to_dict(self) -> dict[str, Any]:
        """Plain form for the index."""
        return {
            "rows": self.rows, "columns": self.columns, "samples": self.samples,
            "bits_allocated": self.bits_allocated, "bits_stored": self.bits_stored,
            "signed": self.signed, "planar": self.planar, "photometric": self.photometric,
            "frames": self.frames,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PixelLayout:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)
