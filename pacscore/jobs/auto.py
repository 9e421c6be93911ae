"""``--codec auto``: choose the codec per series by measuring it.

The first object of each series that a worker sees is encoded with every candidate
on a sample of frames; among the codecs whose encode speed is at least ``budget``
times the fastest one's, the smallest output wins.  The choice is cached per series
in the worker and reported with the result.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codecs import FrameCodec, by_name
from ..config import DEFAULT_BUDGET
from ..dicom.header import InstanceHeader

__all__ = ["AUTO_CANDIDATES", "DEFAULT_BUDGET", "Measurement", "SeriesChooser", "measure"]


AUTO_CANDIDATES: tuple[str, ...] = ("htj2k", "jpegls", "j2k")
"""Codecs ``auto`` measures (JPEG 2000 rarely passes a speed budget; it is measured
so the report can say so)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One codec on one sample."""

    codec: str
    """Codec name."""
    bytes_out: int
    """Encoded size of the sample."""
    seconds: float
    """Encode time of the sample."""
    raw_bytes: int
    """Native size of the sample."""

    @property
    def speed(self) -> float:
        """Raw MB encoded per second."""
        return self.raw_bytes / max(self.seconds, 1e-9) / 1e6


def measure(frames: Any, header: InstanceHeader, names: tuple[str, ...] = AUTO_CANDIDATES,
            sample: int = 2) -> list[Measurement]:
    """Encode up to ``sample`` frames (first, middle) with each codec that accepts them."""
    layout = header.layout
    assert layout is not None
    picks = sorted({0, len(frames) // 2})[:sample]
    chosen = [np.ascontiguousarray(frames[i]) for i in picks]
    raw = sum(f.nbytes for f in chosen)
    out = []
    for name in names:
        codec = by_name(name)
        if codec.refuses(layout):
            continue
        start = time.perf_counter()
        try:
            size = sum(len(codec.encode(f, layout)) for f in chosen)
        except Exception:  # noqa: BLE001 - a codec library's boundary (they raise their
            # own, undocumented types): one that cannot encode this image is no candidate
            continue
        out.append(Measurement(name, size, time.perf_counter() - start, raw))
    return out


def pick(measurements: list[Measurement], budget: float) -> str:
    """Smallest output among codecs at least ``budget`` x as fast as the fastest."""
    fastest = max(m.speed for m in measurements)
    eligible = [m for m in measurements if m.speed >= budget * fastest]
    return min(eligible, key=lambda m: m.bytes_out).codec


class SeriesChooser:
    """Per-process cache of the codec chosen for each series."""

    def __init__(self, budget: float, capacity: int = 4096):
        self.budget = budget
        self.capacity = capacity
        self.choices: OrderedDict[str, str] = OrderedDict()

    def __call__(self, header: InstanceHeader, frames: Any) -> FrameCodec:
        name = self.choices.get(header.series_uid)
        if name is None:
            measured = measure(frames, header)
            name = pick(measured, self.budget) if measured else "htj2k"
            self.choices[header.series_uid] = name
            if len(self.choices) > self.capacity:
                self.choices.popitem(last=False)
        return by_name(name)
