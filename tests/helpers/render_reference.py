"""The reference rendering for the rendering tests, built from pydicom's own pixel
processing (``apply_modality_lut``, ``apply_voi_lut``/``apply_windowing``, ``apply_voi``,
``apply_color_lut``, ``convert_color_space``) on pydicom's decoding of the original file,
independently of :mod:`pacscore.render`."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, dcmread
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_voi_lut,
    apply_windowing,
    convert_color_space,
    pixel_array,
)
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # objects without File Meta
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else
                                          ExplicitVRBigEndian)
    return ds


def _flat(ds: Dataset, index: int) -> Dataset:
    """A copy of ``ds`` with the Pixel Value Transformation and Frame VOI LUT values of
    frame ``index`` (shared, then per-frame) at the top level, as PS3.3 C.7.6.16 says."""
    out = copy.copy(ds)
    groups = []
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    if ds.get("PerFrameFunctionalGroupsSequence"):
        groups.append(ds.PerFrameFunctionalGroupsSequence[index])
    for group in groups:
        for macro in _MACROS:
            if group.get(macro):
                for elem in group[macro][0]:
                    out[elem.tag] = elem
    return out


def _to8(y: npt.NDArray[Any], ymin: float, ymax: float) -> npt.NDArray[np.uint8]:
    scaled = (np.asarray(y, np.float64) - ymin) / (ymax - ymin) * 255.0
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def _windowed(m: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[np.uint8]:
    """pydicom's windowing, its output range mapped to 0..255 (PS3.3 C.11.2.1.2 with
    an 8-bit output); pydicom's range read by windowing -inf and +inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        ends = apply_windowing(np.array([-np.inf, np.inf]), ds)
    return _to8(apply_voi_lut(m, ds, prefer_lut=False), float(ends[0]), float(ends[1]))


def _window(ds: Dataset) -> tuple[float, float, str] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    c, w = (v[0] if isinstance(v, Sequence) and not isinstance(v, str) else v
            for v in (ds.WindowCenter, ds.WindowWidth))
    return float(c), float(w), str(ds.get("VOILUTFunction") or "LINEAR")


def _fractional_linear(ds: Dataset) -> bool:
    """A LINEAR window narrower than 1 (an RT image's, in Gy): pacscore.render applies
    it as LINEAR_EXACT, since C.11.2.1.2.1 wants LINEAR widths of at least 1."""
    window = _window(ds)
    return window is not None and window[2] == "LINEAR" and 0 < window[1] < 1


def _usable_window(ds: Dataset) -> bool:
    """A window C.11.2.1.2/.3 can apply (width > 0; LINEAR: >= 1); else the next
    VOI source."""
    window = _window(ds)
    return window is not None and (window[1] >= 1 or (window[1] > 0 and window[2] != "LINEAR"))


def reference(path: Path, index: int = 0,
              window: tuple[float, float, str] | None = None) -> npt.NDArray[np.uint8]:
    """Frame ``index`` of ``path`` as 8-bit display values (see the module docstring):
    the first window of the object, else its first VOI LUT, else min..max of the frame;
    MONOCHROME1 / INVERSE inverted; palette entries' high 8 bits; YBR to RGB."""
    ds = read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = pixel_array(ds, index=index, raw=True)
        pi = str(ds.PhotometricInterpretation)
        if pi == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds)[..., :3]
            return (rgb >> (8 * rgb.dtype.itemsize - 8)).astype(np.uint8)
        if pi in ("YBR_FULL", "YBR_FULL_422"):
            return np.asarray(convert_color_space(arr, pi, "RGB"), np.uint8)
        if arr.ndim == 3:  # RGB, or YBR_RCT/YBR_ICT decoded to RGB by JPEG 2000
            shift = max(int(ds.BitsStored) - 8, 0)
            return (arr >> shift).astype(np.uint8)
        fds = _flat(ds, index)
        m = apply_modality_lut(arr, fds)
        if window is not None:
            fds.WindowCenter, fds.WindowWidth, fds.VOILUTFunction = window
        if window is None and _fractional_linear(fds):
            fds.VOILUTFunction = "LINEAR_EXACT"  # as pacscore.render reads it
        if _usable_window(fds):
            out = _windowed(m, fds)
        elif "VOILUTSequence" in fds:
            bits = int(fds.VOILUTSequence[0].LUTDescriptor[2])
            out = _to8(apply_voi(m, fds), 0.0, 2.0**bits - 1)
        else:
            lo, hi = float(m.min()), float(m.max())
            fds.WindowCenter, fds.WindowWidth = (lo + hi) / 2, (hi - lo) or 1.0
            fds.VOILUTFunction = "LINEAR_EXACT"
            out = _windowed(m, fds)
        if pi == "MONOCHROME1" or fds.get("PresentationLUTShape") == "INVERSE":
            out = 255 - out
        return out
