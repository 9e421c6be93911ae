"""Bit-depth kernels: unused high bits, masking, sign extension (PS3.5 8.1.1).

All kernels take the raw sample pattern as a flat unsigned array (uint8 or uint16):
callers pass ``frame.reshape(-1).view(np.uint16)`` so signed data is handled as the
bit pattern that is stored in the file.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from ._cache import njit

__all__ = [
    "bits_outside_stored",
    "bits_outside_stored_numpy",
    "mask_to_bits",
    "mask_to_bits_numpy",
    "sign_extend",
    "sign_extend_numpy",
]

_UINT = npt.NDArray[np.unsignedinteger[Any]]


def _ro(dtype: Any) -> Any:
    """Read-only contiguous 1-d array type: frames are views of the received bytes."""
    return numba.types.Array(dtype, 1, "C", readonly=True)


@njit(
    [numba.boolean(arr, numba.int64, numba.boolean)
     for arr in (numba.uint16[::1], numba.uint8[::1], _ro(numba.uint16), _ro(numba.uint8))],
    nogil=True,
)
def _bits_outside_stored(a, bits_stored, signed):  # type: ignore[no-untyped-def]
    if signed:
        # Above the sign bit every bit must repeat the sign bit (or be zero when the
        # value is non-negative): two's complement within Bits Stored.
        full = (1 << (a.itemsize * 8)) - 1
        upper = full ^ ((1 << bits_stored) - 1)
        sign = 1 << (bits_stored - 1)
        for i in range(a.size):
            v = a[i]
            expect = upper if (v & sign) else 0
            if (v & upper) != expect:
                return True
        return False
    limit = 1 << bits_stored
    for i in range(a.size):  # noqa: SIM110 (an early-exit loop numba compiles well)
        if a[i] >= limit:
            return True
    return False


def bits_outside_stored(a: _UINT, bits_stored: int, signed: bool) -> bool:
    """True if any sample uses bits above Bits Stored (junk, overlays).

    For signed data the bits above Bits Stored must be the sign extension.
    """
    if bits_stored >= a.itemsize * 8:
        return False
    return bool(_bits_outside_stored(np.ascontiguousarray(a).reshape(-1), bits_stored, signed))


def bits_outside_stored_numpy(a: _UINT, bits_stored: int, signed: bool) -> bool:
    """numpy twin of :func:`bits_outside_stored`."""
    width = a.itemsize * 8
    if bits_stored >= width:
        return False
    if signed:
        as_signed = a.view(f"i{a.itemsize}").astype(np.int64)
        lo, hi = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
        return bool(((as_signed < lo) | (as_signed > hi)).any())
    return bool((a >= (1 << bits_stored)).any())


@njit(
    [numba.void(arr, numba.int64, numba.uint16[::1])
     for arr in (numba.uint16[::1], _ro(numba.uint16))], nogil=True
)
def _mask(a, bits, out):  # type: ignore[no-untyped-def]
    m = (1 << bits) - 1
    for i in range(a.size):
        out[i] = a[i] & m


def mask_to_bits(a: npt.NDArray[np.uint16], bits: int) -> npt.NDArray[np.uint16]:
    """Keep the low ``bits`` bits of each sample (signed data for JPEG-LS at P=bits)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty_like(flat)
    _mask(flat, bits, out)
    return out.reshape(a.shape)


def mask_to_bits_numpy(a: npt.NDArray[np.uint16], bits: int) -> npt.NDArray[np.uint16]:
    """numpy twin of :func:`mask_to_bits`."""
    return a & np.uint16((1 << bits) - 1)


@njit(
    [numba.void(arr, numba.int64, numba.int16[::1])
     for arr in (numba.uint16[::1], _ro(numba.uint16))], nogil=True
)
def _sign_extend(a, bits, out):  # type: ignore[no-untyped-def]
    sign = 1 << (bits - 1)
    m = (1 << bits) - 1
    for i in range(a.size):
        v = np.int32(a[i] & m)
        if v & sign:
            v -= 1 << bits
        out[i] = v


def sign_extend(a: npt.NDArray[np.uint16], bits: int) -> npt.NDArray[np.int16]:
    """Two's complement value of the low ``bits`` bits of each sample, as int16."""
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(flat.shape, np.int16)
    _sign_extend(flat, bits, out)
    return out.reshape(a.shape)


def sign_extend_numpy(a: npt.NDArray[np.uint16], bits: int) -> npt.NDArray[np.int16]:
    """numpy twin of :func:`sign_extend`."""
    v = (a & np.uint16((1 << bits) - 1)).astype(np.int32)
    v = np.where(v & (1 << (bits - 1)), v - (1 << bits), v)
    return v.astype(np.int16)
