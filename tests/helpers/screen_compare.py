"""Compare what a viewer drew with the slice rendered from the file (issue 20.4).

The reference is the stored pixels through the Modality LUT and the file's first VOI
window, linear (PS3.3 C.11.2.1.2.1), to 8 bits.  The viewer fits the image into its
canvas keeping the aspect ratio and centres it; both pictures are cut to the image's
square, averaged down to a common ``GRID`` x ``GRID`` grid (which absorbs the
viewer's interpolation) and compared by Pearson correlation and mean absolute
difference in grey levels."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import numpy.typing as npt
import pydicom

__all__ = ["GRID", "coloured", "compare", "reference"]

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
