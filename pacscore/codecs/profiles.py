"""What each lossless syntax may carry, as data: the PS3.5 Section 8.2 tables.

A profile is the list of rows of its table; a layout is allowed when one row matches
all of Photometric Interpretation, Samples per Pixel, Pixel Representation, Bits
Allocated and Bits Stored (pydicom's ``ENCODING_PROFILES`` has the same shape).  A
codec refuses what no row allows, citing the table, and the object is then kept as
received (:data:`pacscore.ingest.prepare._KEEP_RULES`).

Besides the standard, the encoders here (:data:`ENCODER_LIMITS`) write samples of 8 or
16 bits only, and never apply a colour transform of their own choosing to the header:
YBR_RCT and YBR_ICT name a JPEG 2000 component transform done by the encoder that
wrote the codestream, so they can only be kept, never produced from native pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dicom.layout import PixelLayout

__all__ = ["ENCODER_LIMITS", "PROFILES", "Profile", "Row"]


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a PS3.5 8.2 table."""

    photometric: str
    """Photometric Interpretation (0028,0004)."""
    samples: int
    """Samples per Pixel (0028,0002), tied to the Photometric Interpretation."""
    pixel_representation: frozenset[int]
    """Pixel Representation (0028,0103): 0 unsigned, 1 two's complement."""
    bits_allocated: frozenset[int]
    """Bits Allocated (0028,0100)."""
    bits_stored: range
    """Bits Stored (0028,0101)."""

    def allows(self, layout: PixelLayout) -> bool:
        """Whether ``layout`` matches this row."""
        return (layout.photometric == self.photometric and layout.samples == self.samples
                and int(layout.signed) in self.pixel_representation
                and layout.bits_allocated in self.bits_allocated
                and layout.bits_stored in self.bits_stored)


@dataclass(frozen=True, slots=True)
class Profile:
    """Pixel formats a transfer syntax may encode: the rows of its table."""

    citation: str
    """Where the table is in the standard."""
    rows: tuple[Row, ...]
    """Allowed combinations."""

    def refuses(self, layout: PixelLayout) -> str | None:
        """Why ``layout`` cannot be encoded under this profile, or None."""
        if any(row.allows(layout) for row in self.rows):
            return None
        return (f"{layout.photometric} with {layout.samples} samples per pixel, Pixel "
                f"Representation {int(layout.signed)}, Bits Allocated "
                f"{layout.bits_allocated}, Bits Stored {layout.bits_stored} is not in "
                f"{self.citation}")


_U, _S, _US = frozenset({0}), frozenset({1}), frozenset({0, 1})
_B8, _B816 = frozenset({8}), frozenset({8, 16})
_B8_40 = frozenset({8, 16, 24, 32, 40})


def _rows(*rows: tuple[str, int, frozenset[int], frozenset[int], range]) -> tuple[Row, ...]:
    return tuple(Row(*r) for r in rows)


# PS3.5 Table 8.2.4-1 (JPEG 2000, reversible) and Table 8.2.14-1 (HTJ2K lossless):
# the same rows (YBR_ICT only in the irreversible syntaxes).
_J2K_LOSSLESS = _rows(
    ("MONOCHROME1", 1, _US, _B8_40, range(1, 39)),
    ("MONOCHROME2", 1, _US, _B8_40, range(1, 39)),
    ("PALETTE COLOR", 1, _U, _B816, range(1, 17)),
    ("YBR_RCT", 3, _U, _B8_40, range(1, 39)),
    ("RGB", 3, _U, _B8_40, range(1, 39)),
    ("YBR_FULL", 3, _U, _B8_40, range(1, 39)),
)

PROFILES: dict[str, Profile] = {
    # RLE Lossless: PS3.5 8.2.2, Table 8.2.2-1.
    "1.2.840.10008.1.2.5": Profile("PS3.5 Table 8.2.2-1", _rows(
        ("MONOCHROME1", 1, _US, _B816, range(1, 17)),
        ("MONOCHROME2", 1, _US, _B816, range(1, 17)),
        ("PALETTE COLOR", 1, _U, _B816, range(1, 17)),
        ("YBR_FULL", 3, _U, _B8, range(1, 9)),
        ("RGB", 3, _U, _B816, range(1, 17)),
    )),
    # JPEG-LS Lossless: PS3.5 8.2.3, Table 8.2.3-1 (P >= 2, ISO 14495-1).
    "1.2.840.10008.1.2.4.80": Profile("PS3.5 Table 8.2.3-1", _rows(
        ("MONOCHROME1", 1, _US, _B816, range(2, 17)),
        ("MONOCHROME2", 1, _US, _B816, range(2, 17)),
        ("PALETTE COLOR", 1, _U, _B816, range(2, 17)),
        ("YBR_FULL", 3, _U, _B8, range(2, 9)),
        ("RGB", 3, _U, _B816, range(2, 17)),
    )),
    # JPEG 2000 Image Compression (Lossless Only): PS3.5 8.2.4, Table 8.2.4-1.
    "1.2.840.10008.1.2.4.90": Profile("PS3.5 Table 8.2.4-1", _J2K_LOSSLESS),
    # HTJ2K Lossless and HTJ2K Lossless RPCL: PS3.5 8.2.14, Table 8.2.14-1.
    "1.2.840.10008.1.2.4.201": Profile("PS3.5 Table 8.2.14-1", _J2K_LOSSLESS),
    "1.2.840.10008.1.2.4.202": Profile("PS3.5 Table 8.2.14-1", _J2K_LOSSLESS),
}
"""Encodable formats by transfer syntax UID (PS3.5 Section 8.2)."""

ENCODER_LIMITS = Profile(
    "what pacscore's encoders write (8- or 16-bit samples; a component transform is "
    "never invented)", _rows(
        *((pi, 1, _US, _B816, range(1, 17)) for pi in ("MONOCHROME1", "MONOCHROME2")),
        ("PALETTE COLOR", 1, _U, _B816, range(1, 17)),
        ("RGB", 3, _U, _B816, range(1, 17)),
        ("YBR_FULL", 3, _U, _B816, range(1, 17)),
    ))
"""Layouts the encoders here handle, whatever the syntax allows."""
