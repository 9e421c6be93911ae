"""The encoding profiles are the PS3.5 Section 8.2 tables: one test per row, with what
the row allows and the neighbours (one attribute changed) that no row of the table
allows; and what no profile allows is kept as received, with the table's name."""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacscore import Archive, ArchiveConfig
from pacscore.codecs import by_name
from pacscore.codecs.profiles import ENCODER_LIMITS, PROFILES
from pacscore.dicom.layout import PixelLayout

RLE, JLS, J2K = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"
HTJ2K, HTJ2K_RPCL = "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202"


class Px(NamedTuple):
    """(Photometric Interpretation, samples, Pixel Representation, Bits Allocated,
    Bits Stored)"""

    pi: str
    spp: int
    pr: int
    ba: int
    bs: int

    def layout(self) -> PixelLayout:
        return PixelLayout(4, 4, self.spp, self.ba, self.bs, self.pr == 1, False, self.pi, 1)


# (syntax, row) -> (allowed by the row, refused neighbours): written from PS3.5 2024
# Tables 8.2.2-1 (RLE), 8.2.3-1 (JPEG-LS), 8.2.4-1 (JPEG 2000), 8.2.14-1 (HTJ2K).
_MONO_J2K = ([Px("M", 1, 0, 8, 1), Px("M", 1, 1, 16, 16), Px("M", 1, 0, 32, 32),
              Px("M", 1, 1, 40, 38)],
             [Px("M", 3, 0, 16, 12), Px("M", 1, 0, 12, 12), Px("M", 1, 0, 40, 39)])
_COLOUR_J2K = ([Px("C", 3, 0, 8, 8), Px("C", 3, 0, 16, 12), Px("C", 3, 0, 24, 24)],
               [Px("C", 1, 0, 8, 8), Px("C", 3, 1, 16, 16), Px("C", 3, 0, 12, 12)])
_PALETTE_16 = ([Px("PALETTE COLOR", 1, 0, 8, 8), Px("PALETTE COLOR", 1, 0, 16, 16)],
               [Px("PALETTE COLOR", 1, 1, 16, 16), Px("PALETTE COLOR", 3, 0, 8, 8),
                Px("PALETTE COLOR", 1, 0, 32, 17)])
ROWS: dict[tuple[str, str], tuple[list[Px], list[Px]]] = {
    (RLE, "MONO"): ([Px("M", 1, 0, 8, 1), Px("M", 1, 1, 16, 16)],
                    [Px("M", 1, 0, 32, 32), Px("M", 3, 0, 8, 8), Px("M", 1, 0, 16, 17)]),
    (RLE, "PALETTE COLOR"): _PALETTE_16,
    (RLE, "YBR_FULL"): ([Px("YBR_FULL", 3, 0, 8, 8)],
                        [Px("YBR_FULL", 3, 0, 16, 12), Px("YBR_FULL", 3, 1, 8, 8),
                         Px("YBR_FULL", 1, 0, 8, 8), Px("YBR_FULL_422", 3, 0, 8, 8)]),
    (RLE, "RGB"): ([Px("RGB", 3, 0, 8, 8), Px("RGB", 3, 0, 16, 16)],
                   [Px("RGB", 3, 1, 16, 16), Px("RGB", 1, 0, 8, 8), Px("RGB", 4, 0, 8, 8)]),
    (JLS, "MONO"): ([Px("M", 1, 0, 8, 2), Px("M", 1, 1, 16, 16), Px("M", 1, 1, 16, 12)],
                    [Px("M", 1, 0, 8, 1), Px("M", 1, 0, 32, 32), Px("M", 3, 0, 8, 8)]),
    (JLS, "PALETTE COLOR"): ([Px("PALETTE COLOR", 1, 0, 8, 8),
                              Px("PALETTE COLOR", 1, 0, 16, 16)],
                             [Px("PALETTE COLOR", 1, 1, 8, 8),
                              Px("PALETTE COLOR", 1, 0, 8, 1)]),
    (JLS, "YBR_FULL"): ([Px("YBR_FULL", 3, 0, 8, 8), Px("YBR_FULL", 3, 0, 8, 2)],
                        [Px("YBR_FULL", 3, 0, 16, 16), Px("YBR_FULL", 3, 0, 16, 12),
                         Px("YBR_FULL", 3, 1, 8, 8), Px("YBR_FULL", 1, 0, 8, 8)]),
    (JLS, "RGB"): ([Px("RGB", 3, 0, 8, 8), Px("RGB", 3, 0, 16, 16)],
                   [Px("RGB", 3, 1, 8, 8), Px("RGB", 3, 0, 8, 1), Px("YBR_RCT", 3, 0, 8, 8)]),
    (J2K, "MONO"): _MONO_J2K,
    (J2K, "PALETTE COLOR"): _PALETTE_16,
    (J2K, "YBR_RCT"): ([Px("YBR_RCT", 3, 0, 8, 8)],
                       [Px("YBR_RCT", 1, 0, 8, 8), Px("YBR_ICT", 3, 0, 8, 8)]),
    (J2K, "RGB"): _COLOUR_J2K,
    (J2K, "YBR_FULL"): _COLOUR_J2K,
    (HTJ2K, "MONO"): _MONO_J2K,
    (HTJ2K, "PALETTE COLOR"): _PALETTE_16,
    (HTJ2K, "YBR_RCT"): ([Px("YBR_RCT", 3, 0, 16, 16)],
                         [Px("YBR_RCT", 3, 1, 16, 16), Px("YBR_ICT", 3, 0, 16, 16)]),
    (HTJ2K, "RGB"): _COLOUR_J2K,
    (HTJ2K, "YBR_FULL"): _COLOUR_J2K,
    (HTJ2K_RPCL, "MONO"): _MONO_J2K,
    (HTJ2K_RPCL, "PALETTE COLOR"): _PALETTE_16,
    (HTJ2K_RPCL, "YBR_RCT"): ([Px("YBR_RCT", 3, 0, 8, 8)],
                              [Px("YBR_ICT", 3, 0, 8, 8), Px("YBR_FULL_422", 3, 0, 8, 8)]),
    (HTJ2K_RPCL, "RGB"): _COLOUR_J2K,
    (HTJ2K_RPCL, "YBR_FULL"): _COLOUR_J2K,
}


def _expand(cases: list[Px], name: str) -> list[Px]:
    """'M' stands for both MONOCHROME1 and MONOCHROME2, 'C' for the row's colour."""
    out = []
    for px in cases:
        if px.pi == "M":
            out += [px._replace(pi="MONOCHROME1"), px._replace(pi="MONOCHROME2")]
        else:
            out.append(px._replace(pi=name) if px.pi == "C" else px)
    return out


def test_every_row_of_every_table_is_tested() -> None:
    for uid, profile in PROFILES.items():
        names = {"MONO" if r.photometric.startswith("MONOCHROME") else r.photometric
                 for r in profile.rows}
        assert names == {name for (syntax, name) in ROWS if syntax == uid}


@pytest.mark.parametrize(("uid", "name"), sorted(ROWS))
def test_profile_row(uid: str, name: str) -> None:
    profile = PROFILES[uid]
    allowed, refused = ROWS[uid, name]
    for px in _expand(allowed, name):
        assert profile.refuses(px.layout()) is None, px
    for px in _expand(refused, name):
        reason = profile.refuses(px.layout())
        assert reason is not None and profile.citation in reason, px


@pytest.mark.parametrize(("px", "allowed"), [
    (Px("MONOCHROME2", 1, 1, 16, 16), True), (Px("RGB", 3, 0, 8, 8), True),
    (Px("MONOCHROME2", 1, 0, 32, 32), False),  # the encoders write 8 or 16 bits
    (Px("YBR_RCT", 3, 0, 8, 8), False),  # a transform none of them applied
])
def test_encoder_limits(px: Px, allowed: bool) -> None:
    assert (ENCODER_LIMITS.refuses(px.layout()) is None) is allowed


def _object(pi: str, spp: int, ba: int, bs: int) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "PROFILE", "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = spp, pi
    if spp > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = ba, bs, bs - 1, 0
    rng = np.random.default_rng(7)
    ds.PixelData = rng.integers(0, 1 << bs, (8, 8, spp), dtype=f"u{ba // 8}").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(("codec", "pi", "ba", "bs", "table"), [
    ("jpegls", "YBR_FULL", 16, 12, "PS3.5 Table 8.2.3-1"),  # was encoded
    ("rle", "YBR_FULL", 16, 16, "PS3.5 Table 8.2.2-1"),  # was encoded
    ("jpegls", "MONOCHROME2", 8, 1, "PS3.5 Table 8.2.3-1"),
])
def test_what_no_profile_allows_is_kept_as_received(tmp_path: Path, codec: str, pi: str,
                                                    ba: int, bs: int, table: str) -> None:
    data = _object(pi, 3 if pi.startswith("YBR") else 1, ba, bs)
    with Archive(tmp_path / "a", ArchiveConfig(codec=codec)) as archive:
        result = archive.store(data)
        assert result.stored_syntax == ExplicitVRLittleEndian
        assert result.kept_reason is not None and table in result.kept_reason
        assert archive.get(result.sop_instance_uid) == data
        assert by_name(codec).refuses(PixelLayout(8, 8, 3 if pi.startswith("YBR") else 1,
                                                  ba, bs, False, False, pi, 1))


def test_an_allowed_layout_is_encoded(tmp_path: Path) -> None:
    data = _object("YBR_FULL", 3, 8, 8)
    with Archive(tmp_path / "a", ArchiveConfig(codec="jpegls")) as archive:
        result = archive.store(data)
        assert result.stored_syntax == JLS and result.kept_reason is None
        back = pydicom.dcmread(io.BytesIO(archive.get(result.sop_instance_uid, JLS)))
        assert back.PhotometricInterpretation == "YBR_FULL"
