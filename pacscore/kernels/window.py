"""Windowing to 8 bits for rendered images (PS3.3 C.11.2.1.2, linear function)."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["window_to_uint8", "window_to_uint8_numpy"]


@numba.njit(
    [numba.void(numba.types.Array(t, 1, "C", readonly=ro), numba.float64, numba.float64,
                numba.float64, numba.float64, numba.boolean, numba.uint8[::1])
     for t in (numba.uint8, numba.int8, numba.uint16, numba.int16) for ro in (False, True)],
    cache=True, nogil=True,
)
def _window(a, slope, intercept, center, width, invert, out):  # type: ignore[no-untyped-def]
    lo = center - 0.5 - (width - 1.0) / 2.0
    hi = center - 0.5 + (width - 1.0) / 2.0
    span = max(width - 1.0, 1e-9)
    for i in range(a.size):
        v = a[i] * slope + intercept
        if v <= lo:
            y = 0.0
        elif v > hi:
            y = 255.0
        else:
            y = ((v - (center - 0.5)) / span + 0.5) * 255.0
        y = 255.0 - y if invert else y
        out[i] = np.uint8(min(max(y + 0.5, 0.0), 255.0))


def window_to_uint8(a: npt.NDArray[Any], slope: float, intercept: float, center: float,
                    width: float, invert: bool) -> npt.NDArray[np.uint8]:
    """Apply rescale, then the linear VOI window, to 8 bits (MONOCHROME1: inverted)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(flat.shape, np.uint8)
    _window(flat, float(slope), float(intercept), float(center), float(max(width, 1.0)),
            bool(invert), out)
    return out.reshape(a.shape)


def window_to_uint8_numpy(a: npt.NDArray[Any], slope: float, intercept: float, center: float,
                          width: float, invert: bool) -> npt.NDArray[np.uint8]:
    """numpy twin of :func:`window_to_uint8`."""
    width = max(width, 1.0)
    v = a.astype(np.float64) * slope + intercept
    lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = ((v - (center - 0.5)) / max(width - 1, 1e-9) + 0.5) * 255.0
    y = np.where(v <= lo, 0.0, np.where(v > hi, 255.0, y))
    if invert:
        y = 255.0 - y
    return np.clip(y + 0.5, 0, 255).astype(np.uint8)
