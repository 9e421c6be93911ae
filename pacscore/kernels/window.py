"""Mapping stored pixel values to 8-bit display values through a lookup table.

The rendering pipeline (:mod:`pacscore.render`) works out the display value of every
stored value a frame holds once (Modality LUT, VOI window or LUT, Presentation LUT;
PS3.3 C.11; or a Palette Color LUT, C.7.6.3.1.5) into a table of at most 65,536
entries; this kernel then maps each pixel through that table, the only per-pixel
work left.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from ._cache import njit

__all__ = ["lookup_uint8", "lookup_uint8_numpy"]


@njit(
    [numba.void(numba.types.Array(t, 1, "C", readonly=ro), numba.int64, numba.uint8[:, ::1],
                numba.uint8[:, ::1])
     for t in (numba.uint8, numba.int8, numba.uint16, numba.int16) for ro in (False, True)],
    nogil=True,
)
def _lookup(a, lo, lut, out):  # type: ignore[no-untyped-def]
    last = lut.shape[0] - 1
    channels = lut.shape[1]
    for i in range(a.size):
        k = np.int64(a[i]) - lo
        k = 0 if k < 0 else (last if k > last else k)
        for c in range(channels):
            out[i, c] = lut[k, c]


def _table(lut: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(lut.reshape(lut.shape[0], -1), dtype=np.uint8)


def _shape(a: npt.NDArray[Any], lut: npt.NDArray[np.uint8]) -> tuple[int, ...]:
    return a.shape if lut.ndim == 1 else (*a.shape, lut.shape[1])


def lookup_uint8(a: npt.NDArray[Any], lo: int, lut: npt.NDArray[np.uint8]
                 ) -> npt.NDArray[np.uint8]:
    """``lut[v - lo]`` for every sample ``v`` of ``a`` (8- or 16-bit integers), indices
    clamped to the table.

    ``lut`` is 1-d (one output value per input: greyscale, result shaped like ``a``)
    or 2-d (n, channels) (e.g. RGB from a palette: result ``a.shape + (channels,)``).
    """
    if lut.shape[0] == 0:
        raise ValueError("empty lookup table")
    table = _table(lut)
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty((flat.size, table.shape[1]), np.uint8)
    _lookup(flat, int(lo), table, out)
    return out.reshape(_shape(a, lut))


def lookup_uint8_numpy(a: npt.NDArray[Any], lo: int, lut: npt.NDArray[np.uint8]
                       ) -> npt.NDArray[np.uint8]:
    """numpy twin of :func:`lookup_uint8`."""
    if lut.shape[0] == 0:
        raise ValueError("empty lookup table")
    table = _table(lut)
    index = np.clip(a.astype(np.int64) - lo, 0, table.shape[0] - 1)
    return table[index.reshape(-1)].reshape(_shape(a, lut))
