"""What each lossless syntax may carry, as data (PS3.5 Section 8.2).

A codec refuses a layout when the table says so; the reason it gives cites the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dicom.header import PixelLayout

__all__ = ["PROFILES", "Profile"]


@dataclass(frozen=True, slots=True)
class Profile:
    """Pixel formats a transfer syntax may encode."""

    citation: str
    """Where the rule is in the standard."""
    photometric: frozenset[str]
    """Allowed Photometric Interpretations."""
    samples: frozenset[int]
    """Allowed Samples per Pixel."""
    bits_allocated: frozenset[int]
    """Allowed Bits Allocated."""
    max_bits_stored: int
    """Largest Bits Stored."""

    def refuses(self, layout: PixelLayout) -> str | None:
        """Why ``layout`` cannot be encoded under this profile, or None."""
        if layout.photometric not in self.photometric:
            return f"Photometric Interpretation {layout.photometric} not allowed ({self.citation})"
        if layout.samples not in self.samples:
            return f"{layout.samples} samples per pixel not allowed ({self.citation})"
        if layout.bits_allocated not in self.bits_allocated:
            return f"Bits Allocated {layout.bits_allocated} not allowed ({self.citation})"
        if layout.bits_stored > self.max_bits_stored:
            return f"Bits Stored {layout.bits_stored} over {self.max_bits_stored} ({self.citation})"
        return None


_MONO = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"})
_COLOUR = frozenset({"RGB", "YBR_FULL"})

PROFILES: dict[str, Profile] = {
    # JPEG-LS lossless: PS3.5 8.2.3; bit depths 2..16 (ISO 14495-1).
    "1.2.840.10008.1.2.4.80": Profile(
        "PS3.5 8.2.3", _MONO | _COLOUR, frozenset({1, 3}), frozenset({8, 16}), 16),
    # JPEG 2000 reversible: PS3.5 8.2.4.
    "1.2.840.10008.1.2.4.90": Profile(
        "PS3.5 8.2.4", _MONO | _COLOUR, frozenset({1, 3}), frozenset({8, 16}), 16),
    # HTJ2K lossless (RPCL): PS3.5 8.2.14.
    "1.2.840.10008.1.2.4.201": Profile(
        "PS3.5 8.2.14", _MONO | _COLOUR, frozenset({1, 3}), frozenset({8, 16}), 16),
    "1.2.840.10008.1.2.4.202": Profile(
        "PS3.5 8.2.14", _MONO | _COLOUR, frozenset({1, 3}), frozenset({8, 16}), 16),
    # RLE lossless: PS3.5 8.2.2 and Annex G (not YBR_FULL_422; at most 15 segments).
    "1.2.840.10008.1.2.5": Profile(
        "PS3.5 8.2.2", _MONO | _COLOUR, frozenset({1, 3}), frozenset({8, 16}), 16),
}
"""Encodable formats by transfer syntax UID."""
