"""Every numba kernel in pacscore.kernels against its numpy twin (and a plain-Python
reference), on seeded random data and edge values.

Inputs cover uint8 and uint16 bit patterns, Bits Stored 1..16, signed and unsigned
interpretation, read-only arrays (``np.frombuffer`` of bytes, as frames are views of
the received file), non-contiguous and 2-d arrays, and empty arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pacscore import kernels
from pacscore.kernels import (
    bits_outside_stored,
    bits_outside_stored_numpy,
    mask_to_bits,
    mask_to_bits_numpy,
    sign_extend,
    sign_extend_numpy,
)

SEEDS = (0, 1, 2, 3, 42)
KERNELS_TESTED = {"bits_outside_stored", "lookup_uint8", "mask_to_bits", "sign_extend"}


def test_every_kernel_has_a_twin_and_a_test() -> None:
    public = set(kernels.__all__)
    twins = {n for n in public if n.endswith("_numpy")}
    plain = public - twins
    assert {f"{n}_numpy" for n in plain} == twins, "a kernel without a numpy twin"
    assert plain == KERNELS_TESTED, "a kernel this file does not test"
    for name in public:
        assert callable(getattr(kernels, name))


# -- plain-Python references (bit patterns as ints) ---------------------------------------
def ref_outside(values: list[int], width: int, bits: int, signed: bool) -> bool:
    if bits >= width:
        return False
    if not signed:
        return any(v >= 1 << bits for v in values)
    upper = ((1 << width) - 1) ^ ((1 << bits) - 1)
    return any((v & upper) != (upper if v >> (bits - 1) & 1 else 0) for v in values)


def ref_sign_extend(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) & 1 else v


# -- inputs ---------------------------------------------------------------------------------------
def _clean(rng: np.random.Generator, dtype: Any, bits: int, signed: bool, n: int
           ) -> npt.NDArray[Any]:
    """Bit patterns that respect Bits Stored (sign-extended when signed)."""
    width = np.dtype(dtype).itemsize * 8
    bits = min(bits, width)
    v = rng.integers(0, 1 << bits, n, dtype=np.int64)
    if signed:
        v = np.where(v >> (bits - 1) & 1, v - (1 << bits), v) & ((1 << width) - 1)
    return v.astype(dtype)


def _edges(dtype: Any, bits: int) -> npt.NDArray[Any]:
    width = np.dtype(dtype).itemsize * 8
    full = (1 << width) - 1
    vals = {0, 1, full, full - 1, 1 << (width - 1), (1 << (width - 1)) - 1}
    for b in (bits - 1, bits, bits + 1):
        if 0 <= b < width:
            vals |= {1 << b, (1 << b) - 1, full ^ ((1 << b) - 1), (full ^ ((1 << b) - 1)) - 1}
    return np.array(sorted(v & full for v in vals), dtype=dtype)


def bit_patterns(dtype: Any, bits: int, signed: bool, seed: int
                 ) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    """Named arrays: clean, dirty, one bad sample, edge values, read-only, odd layouts."""
    rng = np.random.default_rng([seed, bits, int(signed), np.dtype(dtype).itemsize])
    width = np.dtype(dtype).itemsize * 8
    clean = _clean(rng, dtype, bits, signed, 257)
    yield "clean", clean
    yield "dirty", rng.integers(0, 1 << width, 257, dtype=np.int64).astype(dtype)
    for pos in (0, 128, 256):
        one = clean.copy()
        one[pos] = one[pos] ^ (1 << min(bits, width - 1)) if bits < width else one[pos]
        yield f"one-flipped-bit@{pos}", one
    edges = _edges(dtype, bits)
    yield "edges", edges
    for v in edges:
        yield f"single-{int(v)}", np.array([v], dtype=dtype)
    yield "all-max", np.full(33, (1 << width) - 1, dtype=dtype)
    yield "all-zero", np.zeros(33, dtype=dtype)
    yield "empty", np.zeros(0, dtype=dtype)
    ro = np.frombuffer(clean.tobytes(), dtype=dtype)
    assert not ro.flags.writeable
    yield "read-only-clean", ro
    yield "read-only-edges", np.frombuffer(edges.tobytes(), dtype=dtype)
    yield "strided", np.concatenate([clean, edges])[::3]
    yield "2d", np.resize(np.concatenate([clean, edges]), (7, 11))
    yield "2d-read-only", np.frombuffer(np.resize(edges, (5, 6)).tobytes(),
                                        dtype=dtype).reshape(5, 6)


CASES = [
    pytest.param(dtype, bits, signed, seed, id=f"{np.dtype(dtype).name}-b{bits}-"
                 f"{'s' if signed else 'u'}-seed{seed}")
    for dtype, bits, signed in itertools.product((np.uint8, np.uint16), range(1, 17),
                                                 (False, True))
    for seed in SEEDS[:2]
]


# -- bits_outside_stored ---------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "bits", "signed", "seed"), CASES)
def test_bits_outside_stored_matches_twin(dtype: Any, bits: int, signed: bool,
                                          seed: int) -> None:
    width = np.dtype(dtype).itemsize * 8
    for name, arr in bit_patterns(dtype, bits, signed, seed):
        before = arr.copy()
        got = bits_outside_stored(arr, bits, signed)
        want = bits_outside_stored_numpy(arr, bits, signed)
        ref = ref_outside([int(v) for v in arr.reshape(-1)], width, bits, signed)
        assert isinstance(got, bool)
        assert got == want == ref, f"{name}: kernel {got}, twin {want}, reference {ref}"
        np.testing.assert_array_equal(arr, before)  # inputs are not modified


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("signed", [False, True])
def test_bits_outside_stored_clean_data_never_flags(dtype: Any, signed: bool) -> None:
    width = np.dtype(dtype).itemsize * 8
    for bits, seed in itertools.product(range(1, width + 1), SEEDS):
        clean = _clean(np.random.default_rng(seed), dtype, bits, signed, 1000)
        assert not bits_outside_stored(clean, bits, signed)
        assert not bits_outside_stored_numpy(clean, bits, signed)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("signed", [False, True])
def test_bits_outside_stored_finds_one_bad_sample_anywhere(dtype: Any, signed: bool) -> None:
    width = np.dtype(dtype).itemsize * 8
    rng = np.random.default_rng(7)
    for bits in range(1, width):
        clean = _clean(rng, dtype, bits, signed, 500)
        for pos in (0, 1, 250, 498, 499):
            bad = clean.copy()
            bad[pos] ^= 1 << int(rng.integers(bits, width))  # junk above Bits Stored
            ro = np.frombuffer(bad.tobytes(), dtype=dtype)
            assert bits_outside_stored(bad, bits, signed), (bits, pos)
            assert bits_outside_stored(ro, bits, signed), (bits, pos)
            assert bits_outside_stored_numpy(bad, bits, signed), (bits, pos)


def test_bits_outside_stored_full_width_is_never_outside() -> None:
    for dtype, bits in ((np.uint8, 8), (np.uint8, 12), (np.uint8, 16), (np.uint16, 16)):
        arr = np.full(10, np.iinfo(dtype).max, dtype=dtype)
        for signed in (False, True):
            assert bits_outside_stored(arr, bits, signed) is False
            assert bits_outside_stored_numpy(arr, bits, signed) is False


def test_bits_outside_stored_of_signed_views() -> None:
    """What callers do: frame.reshape(-1).view(uint16) of int16 pixels."""
    pixels = np.array([-2048, -1, 0, 1, 2047], dtype=np.int16)
    view = pixels.view(np.uint16)
    assert not bits_outside_stored(view, 12, True)
    assert bits_outside_stored(view, 11, True)
    assert bits_outside_stored(view, 12, False)  # negative values use every bit
    wider = np.array([-2049], dtype=np.int16).view(np.uint16)
    assert bits_outside_stored(wider, 12, True)
    assert bits_outside_stored_numpy(wider, 12, True)


# -- mask_to_bits ------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("seed", SEEDS)
def test_mask_to_bits_matches_twin(bits: int, seed: int) -> None:
    for name, arr in bit_patterns(np.uint16, bits, seed % 2 == 1, seed):
        before = arr.copy()
        got = mask_to_bits(arr, bits)
        want = mask_to_bits_numpy(arr, bits)
        assert got.dtype == want.dtype == np.uint16, name
        assert got.shape == want.shape == arr.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        ref = [int(v) & ((1 << bits) - 1) for v in arr.reshape(-1)]
        assert got.reshape(-1).tolist() == ref, name
        np.testing.assert_array_equal(arr, before, err_msg=name)
        if arr.size:
            assert not np.shares_memory(got, arr), name


def test_mask_to_bits_result_is_writable_from_read_only_input() -> None:
    ro = np.frombuffer(np.arange(0, 65536, 257, dtype=np.uint16).tobytes(), dtype=np.uint16)
    out = mask_to_bits(ro, 8)
    assert out.flags.writeable
    np.testing.assert_array_equal(out, ro & 0xFF)


# -- sign_extend -------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("seed", SEEDS)
def test_sign_extend_matches_twin(bits: int, seed: int) -> None:
    for name, arr in bit_patterns(np.uint16, bits, seed % 2 == 0, seed):
        before = arr.copy()
        got = sign_extend(arr, bits)
        want = sign_extend_numpy(arr, bits)
        assert got.dtype == want.dtype == np.int16, name
        assert got.shape == want.shape == arr.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        ref = [ref_sign_extend(int(v), bits) for v in arr.reshape(-1)]
        assert got.reshape(-1).tolist() == ref, name
        np.testing.assert_array_equal(arr, before, err_msg=name)


@pytest.mark.parametrize("bits", range(1, 17))
def test_sign_extend_extremes(bits: int) -> None:
    m = (1 << bits) - 1
    sign = 1 << (bits - 1)
    arr = np.array([0, 1 & m, sign - 1, sign, m, 0xFFFF, 0xFFFF ^ m], dtype=np.uint16)
    expect = [0, ref_sign_extend(1, bits), sign - 1, -sign, -1, -1, 0]
    assert sign_extend(arr, bits).tolist() == expect
    assert sign_extend_numpy(arr, bits).tolist() == expect
    ro = np.frombuffer(arr.tobytes(), dtype=np.uint16)
    assert sign_extend(ro, bits).tolist() == expect


@pytest.mark.parametrize("bits", range(1, 17))
def test_kernels_agree_with_each_other(bits: int) -> None:
    """Signed data is inside Bits Stored exactly when sign extension leaves it unchanged,
    and masking first does not change the sign-extended value."""
    rng = np.random.default_rng(bits)
    arr = np.concatenate([_clean(rng, np.uint16, bits, True, 300),
                          rng.integers(0, 1 << 16, 300, dtype=np.int64).astype(np.uint16),
                          _edges(np.uint16, bits)])
    for chunk in np.array_split(arr, 40):
        unchanged = bool((sign_extend(chunk, bits).view(np.uint16) == chunk).all())
        assert bits_outside_stored(chunk, bits, True) == (not unchanged)
        np.testing.assert_array_equal(sign_extend(mask_to_bits(chunk, bits), bits),
                                      sign_extend(chunk, bits))
        if bits < 16:
            assert bits_outside_stored(mask_to_bits(chunk, bits), bits, False) is False


def test_big_random_arrays() -> None:
    """Sizes a frame really has (512x512 and more), several seeds."""
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        bits = int(rng.integers(1, 17))
        a = rng.integers(0, 1 << 16, 512 * 512, dtype=np.int64).astype(np.uint16)
        funcs: list[tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...]]] = [
            (mask_to_bits, mask_to_bits_numpy, (a, bits)),
            (sign_extend, sign_extend_numpy, (a, bits))]
        for kernel, twin, args in funcs:
            np.testing.assert_array_equal(kernel(*args), twin(*args))
        clean = _clean(rng, np.uint16, bits, bool(seed % 2), 512 * 512)
        assert bits_outside_stored(clean, bits, bool(seed % 2)) is False
        clean[-1] = 0xFFFF if not seed % 2 else clean[-1] ^ (1 << 15)
        expect = bits_outside_stored_numpy(clean, bits, bool(seed % 2))
        assert bits_outside_stored(clean, bits, bool(seed % 2)) == expect


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_lookup_uint8_matches_twin(dtype: Any, channels: int | None, seed: int) -> None:
    """Every sample through a table over [lo, hi] (indices outside clamped to its ends),
    on read-only and non-contiguous frames, greyscale (1-d table) and RGB (n, 3)."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    a = rng.integers(info.min, info.max, (37, 53), endpoint=True).astype(dtype)
    a.flat[:4] = [info.min, info.max, 0, 1]
    lo = int(rng.integers(info.min, 1))
    n = int(rng.integers(1, min(info.max - lo + 2, 70000)))
    lut = rng.integers(0, 256, (n,) if channels is None else (n, channels)).astype(np.uint8)
    ro = np.frombuffer(a.tobytes(), dtype).reshape(a.shape)
    for frame in (ro, a[:, ::2], a.T):
        out = kernels.lookup_uint8(frame, lo, lut)
        np.testing.assert_array_equal(out, kernels.lookup_uint8_numpy(frame, lo, lut))
        assert out.dtype == np.uint8
        assert out.shape == frame.shape + (() if channels is None else (channels,))
    index = np.clip(a.astype(np.int64) - lo, 0, n - 1)  # plain reference
    assert np.array_equal(kernels.lookup_uint8(a, lo, lut), lut[index])
    empty = np.empty((0, 4), dtype)
    assert kernels.lookup_uint8(empty, lo, lut).shape[:2] == (0, 4)
    with pytest.raises(ValueError, match="empty lookup table"):
        kernels.lookup_uint8(a, lo, lut[:0])
