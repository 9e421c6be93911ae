"""Transfer syntaxes as data (PS3.5 Section 10 and Annex A; PS3.6 Table A-1)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFLATED_EXPLICIT_LE",
    "EXPLICIT_BE",
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "SYNTAXES",
    "TransferSyntax",
    "syntax",
]


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    """How a data set and its pixel data are encoded."""

    uid: str
    """Transfer Syntax UID."""
    name: str
    """Short human name."""
    implicit_vr: bool = False
    """Implicit VR (only 1.2.840.10008.1.2)."""
    little_endian: bool = True
    """Byte order of the data set."""
    deflated: bool = False
    """The data set after the File Meta group is deflated (PS3.5 A.5)."""
    encapsulated: bool = False
    """Pixel data is a sequence of fragments (PS3.5 A.4)."""
    lossy: bool = False
    """May carry irreversibly compressed pixels (then it is always kept as received)."""

    @property
    def native(self) -> bool:
        """Pixel data is uncompressed."""
        return not self.encapsulated


IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

_TABLE: tuple[TransferSyntax, ...] = (
    TransferSyntax(IMPLICIT_LE, "Implicit VR Little Endian", implicit_vr=True),
    TransferSyntax(EXPLICIT_LE, "Explicit VR Little Endian"),
    TransferSyntax(DEFLATED_EXPLICIT_LE, "Deflated Explicit VR Little Endian", deflated=True),
    TransferSyntax(EXPLICIT_BE, "Explicit VR Big Endian", little_endian=False),
    TransferSyntax("1.2.840.10008.1.2.4.50", "JPEG Baseline", encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.51", "JPEG Extended", encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.53", "JPEG Spectral Selection (retired)",
                   encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.55", "JPEG Full Progression (retired)",
                   encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.57", "JPEG Lossless", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.70", "JPEG Lossless SV1", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", encapsulated=True,
                   lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.91", "JPEG 2000", encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Lossless", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2", encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.201", "HTJ2K Lossless", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.202", "HTJ2K Lossless RPCL", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.203", "HTJ2K", encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.100", "MPEG2 MP@ML", encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.101", "MPEG2 MP@HL", encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264", encapsulated=True,
                   lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.103", "MPEG-4 AVC/H.264 BD", encapsulated=True,
                   lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression",
                   encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.4.112", "JPEG XL", encapsulated=True, lossy=True),
    TransferSyntax("1.2.840.10008.1.2.5", "RLE Lossless", encapsulated=True),
)

SYNTAXES: dict[str, TransferSyntax] = {ts.uid: ts for ts in _TABLE}
"""Every transfer syntax pacscore knows, by UID."""


def syntax(uid: str) -> TransferSyntax:
    """Return the syntax for ``uid``.

    An unknown UID is treated as what PS3.5 10 requires of every non-default syntax,
    explicit VR little endian with encapsulated pixel data, and marked lossy so that
    its pixels are never touched.
    """
    found = SYNTAXES.get(uid)
    if found is not None:
        return found
    return TransferSyntax(uid, f"unknown ({uid})", encapsulated=True, lossy=True)
