"""Inflation of deflated data sets (PS3.5 A.5) within absolute bounds.

A deflated data set (Deflated Explicit VR Little Endian) is inflated whole before it
is read.  Deflate reaches ratios of ~1000:1 on runs of zeros, so a ratio guard alone
lets a 1 MB object take 1 GB (RELIABILITY item 13).  Here:

* the output never exceeds the object's cap (``Limits.max_inflated_bytes``, and the
  ratio guard): it is inflated in steps of at most :data:`_STEP` bytes into one
  growing buffer (no concatenation at the end, which doubled the peak);
* every inflation reserves its cap from one budget per process
  (``Limits.inflate_budget_bytes``) before it starts, waiting while others hold it,
  keeps its size reserved for as long as the inflated data set is alive, and gives
  the rest back at once; so concurrent stores and retrievals in one process never
  hold more than the budget in inflated data.
"""

from __future__ import annotations

import threading
import weakref
import zlib

from ..config import Limits
from ..errors import InvalidDicomError, LimitExceededError

__all__ = ["Inflated", "inflate"]

_STEP = 16 * 1024**2
"""Most bytes inflated per call (and input fed per call: :data:`_FEED`)."""
_FEED = 256 * 1024
_WAIT = 120.0
"""Seconds an inflation waits for others to give back budget before it is refused."""


class Inflated(bytearray):
    """An inflated data set; its budget reservation ends when it is freed."""


class _Budget:
    """Bytes reserved by the inflated data sets of this process."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._used = 0

    def reserve(self, n: int, capacity: int, timeout: float) -> bool:
        with self._cv:
            if not self._cv.wait_for(lambda: self._used + n <= capacity, timeout):
                return False
            self._used += n
            return True

    def release(self, n: int) -> None:
        with self._cv:
            self._used -= n
            self._cv.notify_all()

    @property
    def used(self) -> int:
        """Bytes reserved now."""
        return self._used


BUDGET = _Budget()
"""The process's budget (one per process: the bound is on this process's memory)."""


def inflate(data: bytes, pos: int, limits: Limits, source: str) -> Inflated:
    """Inflate the raw deflate stream ``data[pos:]`` within the caps.

    Raises
    ------
    LimitExceededError
        When the output would exceed ``max_inflated_bytes`` (or the ratio guard, or
        the budget), or the budget stays taken by others for too long; nothing is
        kept then.
    InvalidDicomError
        When the stream is corrupt.
    """
    compressed = len(data) - pos
    by_ratio = max(compressed, 1) * limits.max_inflate_ratio
    cap = min(limits.max_inflated_bytes, by_ratio, limits.inflate_budget_bytes)
    if not BUDGET.reserve(cap, limits.inflate_budget_bytes, _WAIT):
        raise LimitExceededError(
            f"deflated data set: {limits.inflate_budget_bytes} bytes of inflation budget "
            f"stayed in use by other objects for {_WAIT:.0f} s", source=source,
            hint="send it again later, or raise Limits.inflate_budget_bytes")
    try:
        out = _inflate(memoryview(data)[pos:], cap, source, limits, by_ratio)
    except BaseException:
        BUDGET.release(cap)
        raise
    BUDGET.release(cap - len(out))
    weakref.finalize(out, BUDGET.release, len(out))
    return out


def _inflate(stream: memoryview, cap: int, source: str, limits: Limits,
             by_ratio: int) -> Inflated:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = Inflated()
    fed = 0
    tail: bytes | memoryview = b""
    try:
        while not inflater.eof:
            if not tail and fed < len(stream):
                tail, fed = stream[fed:fed + _FEED], fed + _FEED
            room = cap + 1 - len(out)  # >= 1: max_length 0 would mean "no limit"
            chunk = inflater.decompress(tail, min(_STEP, room))
            tail = inflater.unconsumed_tail
            if not chunk and not tail and fed >= len(stream):
                break  # the stream ends without its final block (read as it is)
            out += chunk
            if len(out) > cap:
                raise LimitExceededError(_too_big(cap, len(stream), limits, by_ratio),
                                         source=source)
    except zlib.error as exc:
        raise InvalidDicomError(f"deflated data set is corrupt: {exc}", source=source) from exc
    return out


def _too_big(cap: int, compressed: int, limits: Limits, by_ratio: int) -> str:
    why = ("max_inflated_bytes" if cap == limits.max_inflated_bytes else
           f"{limits.max_inflate_ratio}:1 ratio guard" if cap == by_ratio else
           "inflate_budget_bytes")
    return (f"deflated data set of {compressed} bytes inflates beyond {cap} bytes (the "
            f"{why}; decompression bomb guard)")
