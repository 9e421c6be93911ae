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

__all__ = ["GRID", "compare", "reference"]

GRID = 128


def reference(path: Path) -> npt.NDArray[np.float64]:
    """The slice in ``path`` windowed as its first WindowCenter/Width, 0..255."""
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + \
        float(ds.get("RescaleIntercept", 0))
    c = float(pydicom.multival.MultiValue(float, ds.WindowCenter)[0]
              if isinstance(ds.WindowCenter, pydicom.multival.MultiValue) else ds.WindowCenter)
    w = float(ds.WindowWidth[0] if isinstance(ds.WindowWidth, pydicom.multival.MultiValue)
              else ds.WindowWidth)
    out = ((hu - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(out, 0.0, 255.0)


def _grid(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Area average of a square image onto GRID x GRID."""
    n = image.shape[0]
    bins = (np.arange(n) * GRID) // n
    flat = bins[:, None] * GRID + bins[None, :]
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


def compare(png: bytes, path: Path) -> tuple[float, float]:
    """(correlation, mean absolute difference in grey levels) of a canvas screenshot
    and the slice of ``path``."""
    ref = reference(path)
    shown = drawn_square(png, *ref.shape)
    side = min(shown.shape)
    a, b = _grid(shown[:side, :side]), _grid(ref)
    corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    return corr, float(np.abs(a - b).mean())
