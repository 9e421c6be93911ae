"""Compare what a viewer drew with the slice rendered from the file (issue 20.4).

The reference is the stored pixels through the Modality LUT and the file's first VOI
window, linear (PS3.3 C.11.2.1.2.1), to 8 bits.  The viewer fits the image into its
canvas keeping the aspect ratio and centres it; both pictures are cut to the image's
square, averaged down to a common ``GRID`` x ``GRID`` grid (which absorbs the
viewer's interpolation) and compared by Pearson correlation and mean absolute
difference in grey levels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import imagecodecs
import numpy as np
import numpy.typing as npt
import pydicom

__all__ = ["GRID", "coloured", "compare", "compare_image", "reference", "reformat",
           "sigmoid", "windowed"]

GRID = 128


def reference(path: Path, window: tuple[float, float] | None = None,
              frame: int = 0) -> npt.NDArray[np.float64]:
    """The slice in ``path`` windowed as ``window`` (centre, width) or its first
    WindowCenter/Width, 0..255; a colour image (frame ``frame``) as the mean of its
    R, G and B (8 bits: shown as they are)."""
    ds = pydicom.dcmread(path)
    if ds.SamplesPerPixel == 3:
        rgb = ds.pixel_array[frame] if int(ds.get("NumberOfFrames", 1)) > 1 \
            else ds.pixel_array
        return np.asarray(rgb, dtype=np.float64).mean(axis=2)
    hu = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + \
        float(ds.get("RescaleIntercept", 0))
    if window is not None:
        c, w = window
        return np.clip(((hu - (c - 0.5)) / (w - 1) + 0.5) * 255.0, 0.0, 255.0)
    c = float(pydicom.multival.MultiValue(float, ds.WindowCenter)[0]
              if isinstance(ds.WindowCenter, pydicom.multival.MultiValue) else ds.WindowCenter)
    w = float(ds.WindowWidth[0] if isinstance(ds.WindowWidth, pydicom.multival.MultiValue)
              else ds.WindowWidth)
    out = ((hu - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(out, 0.0, 255.0)


def _grid(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Area average of an image onto GRID x GRID."""
    rows, cols = image.shape
    flat = ((np.arange(rows) * GRID) // rows)[:, None] * GRID + \
        ((np.arange(cols) * GRID) // cols)[None, :]
    sums = np.bincount(flat.ravel(), weights=image.ravel(), minlength=GRID * GRID)
    counts = np.bincount(flat.ravel(), minlength=GRID * GRID)
    return (sums / counts).reshape(GRID, GRID)


def drawn_square(png: bytes, rows: int, cols: int) -> npt.NDArray[np.float64]:
    """The part of a canvas screenshot where an image of ``rows`` x ``cols`` is fitted
    (centred, aspect kept), as grey levels."""
    rgb = imagecodecs.png_decode(png).astype(np.float64)
    grey = rgb[..., :3].mean(axis=2) if rgb.ndim == 3 else rgb
    h, w = grey.shape
    scale = min(h / rows, w / cols)
    dh, dw = round(rows * scale), round(cols * scale)
    top, left = (h - dh) // 2, (w - dw) // 2
    return grey[top:top + dh, left:left + dw]


def coloured(png: bytes, path: Path, frame: int = 0) -> tuple[float, float]:
    """The share of clearly coloured pixels (max(R, G, B) - min(R, G, B) > 20) where a
    canvas screenshot shows the image of ``path``, and in that frame itself (0: grey)."""
    source = np.asarray(pydicom.dcmread(path).pixel_array[frame], dtype=np.float64)
    rows, cols = source.shape[:2]
    rgb = imagecodecs.png_decode(png).astype(np.float64)[..., :3]
    h, w = rgb.shape[:2]
    scale = min(h / rows, w / cols)
    dh, dw = round(rows * scale), round(cols * scale)
    top, left = (h - dh) // 2, (w - dw) // 2
    shown = rgb[top:top + dh, left:left + dw]
    return (float((shown.max(axis=2) - shown.min(axis=2) > 20).mean()),
            float((source.max(axis=2) - source.min(axis=2) > 20).mean()))


def compare(png: bytes, path: Path, window: tuple[float, float] | None = None,
            frame: int = 0) -> tuple[float, float]:
    """(correlation, mean absolute difference in grey levels) of a canvas screenshot
    and the slice (frame) of ``path`` (``window``: see :func:`reference`)."""
    ref = reference(path, window, frame)
    shown = drawn_square(png, *ref.shape)
    a, b = _grid(shown), _grid(ref)
    corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    return corr, float(np.abs(a - b).mean())


def windowed(values: npt.NDArray[np.float64], centre: float,
             width: float) -> npt.NDArray[np.float64]:
    """Linear VOI window (PS3.3 C.11.2.1.2.1) to 0..255."""
    return np.clip(((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0, 0.0, 255.0)


def sigmoid(values: npt.NDArray[np.float64], centre: float,
            width: float) -> npt.NDArray[np.float64]:
    """The SIGMOID VOI LUT Function (PS3.3 C.11.2.1.3.1) to 0..255."""
    return 255.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))


def compare_image(png: bytes, image: npt.NDArray[np.float64]) -> tuple[float, float]:
    """(correlation, mean absolute difference) of a canvas screenshot and ``image``
    (0..255, its rows and columns in the proportions of its physical size) fitted,
    centred, into the canvas."""
    shown = drawn_square(png, *image.shape)
    a, b = _grid(shown), _grid(image)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), float(np.abs(a - b).mean())


Plane = Literal["sagittal", "coronal"]


def reformat(slices: Sequence[Path], plane: Plane, at_mm: float,
             window: tuple[float, float]) -> npt.NDArray[np.float64]:
    """A sagittal or coronal plane through an axial series (orientation 1\\0\\0\\0\\1\\0,
    evenly spaced), as a viewer shows it: the head up, the patient's right on the left
    (coronal), anterior on the left (sagittal).  ``at_mm`` is the plane's patient x
    (sagittal) or y (coronal); between two voxel planes it is interpolated linearly.
    The slices are stacked superior first and resampled linearly along z so that the
    rows are as many as the plane's height (slice count x spacing) holds pixels, the
    columns one per voxel; windowed linearly with ``window`` (centre, width)."""
    sets = sorted((pydicom.dcmread(p) for p in slices),
                  key=lambda d: -float(d.ImagePositionPatient[2]))
    first = sets[0]
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0], \
        "reformat() reads axial series only"
    hu = np.stack([d.pixel_array * float(d.get("RescaleSlope", 1)) +
                   float(d.get("RescaleIntercept", 0)) for d in sets]).astype(np.float64)
    spacing_z = abs(float(sets[0].ImagePositionPatient[2]) -
                    float(sets[1].ImagePositionPatient[2]))
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    axis, origin, step = ((2, float(first.ImagePositionPatient[0]), col_mm)
                          if plane == "sagittal" else
                          (1, float(first.ImagePositionPatient[1]), row_mm))
    where = (at_mm - origin) / step
    low = int(np.floor(where))
    frac = where - low
    cut = np.take(hu, low, axis=axis) * (1 - frac) + \
        np.take(hu, min(low + 1, hu.shape[axis] - 1), axis=axis) * frac
    pixel_mm = col_mm if plane == "coronal" else row_mm
    rows = round(len(sets) * spacing_z / pixel_mm)
    at = np.clip((np.arange(rows) + 0.5) * len(sets) / rows - 0.5, 0, len(sets) - 1)
    lo = np.floor(at).astype(int)
    hi = np.minimum(lo + 1, len(sets) - 1)
    f = (at - lo)[:, None]
    return windowed(cut[lo] * (1 - f) + cut[hi] * f, *window)
