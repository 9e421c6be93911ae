"""A pydicom decoding plugin for JPEG (PS3.5 A.4.1) through libjpeg-turbo (imagecodecs).

Baseline (process 1), Extended (processes 2 and 4, 8 and 12 bits) and Lossless
(process 14, any predictor; and selection value 1).  libjpeg-turbo 3 decodes all of
them; on the corpus it gives DCMTK's ``dcmdjpeg`` output sample for sample (lossy
frames included), where pylibjpeg-libjpeg (GPL-3.0) differed by up to 7 in the lossy
ones and could not read a 12-bit Extended file.

Registered with pydicom's JPEG decoders under :data:`LABEL` by
:func:`pacscore.codecs.decoding.decode_frames`; pydicom calls :func:`decode_frame`
with one codestream and a runner holding the header's pixel description.
"""

from __future__ import annotations

from typing import Any

import imagecodecs

__all__ = ["DECODER_DEPENDENCIES", "LABEL", "decode_frame", "is_available"]

LABEL = "pacscore-imagecodecs"
"""Name of the plugin in pydicom's decoders."""

_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14, SV1)
)

DECODER_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    uid: ("imagecodecs>=2024.9.22",) for uid in _SYNTAXES}
"""What the plugin needs, by transfer syntax (pydicom's plugin contract)."""


def is_available(uid: str) -> bool:
    """Whether this plugin decodes ``uid`` here (pydicom's plugin contract)."""
    return uid in DECODER_DEPENDENCIES and bool(imagecodecs.JPEG8.available)


def decode_frame(src: bytes, runner: Any) -> bytes:
    """Decode one JPEG codestream to the samples pydicom expects, colour-by-pixel.

    YBR data keeps its colour space (pydicom's ``raw`` decoding: the caller converts);
    samples are widened to the Bits Allocated container.
    """
    space = "YCBCR" if runner.samples_per_pixel == 3 and str(
        runner.photometric_interpretation).startswith("YBR") else None  # no conversion
    frame = imagecodecs.jpeg8_decode(src, colorspace=space, outcolorspace=space)
    itemsize = max((runner.bits_allocated + 7) // 8, 1)
    if frame.dtype.itemsize > itemsize:
        raise ValueError(f"the codestream's sample precision needs {frame.dtype.itemsize * 8}"
                         f" bits but Bits Allocated is {runner.bits_allocated}")
    runner.set_option("planar_configuration", 0)  # libjpeg-turbo interleaves samples
    return bytes(frame.astype(f"<u{itemsize}", copy=False).tobytes())
