"""Every file in corpus/malformed is refused with a specific reason, or kept as
received when it is a readable object whose pixels we do not touch; never partly
stored, and the archive stays usable."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacscore import Archive, InvalidDicomError
from pacscore.archive import StoreResult
from pacscore.errors import IdentityMismatchError

from .conftest import corpus_files

MALFORMED = [f for f in corpus_files() if f.malformed]

# Files a reader can parse whose pixel data we keep byte for byte (never re-encoded).
# (JPEGLossless_signed_bad decodes, to garbage: nothing can tell it from an image.)
KEPT = {
    "malformed/JPEGLossless_signed_bad.dcm": "kept as received",
    "malformed/Philips_MR_BitsAllocated12_no_meta.dcm": "Bits Allocated 12",
}
# Compressed pixel data that does not decode is refused (a broken copy must never hold
# the place of a good one): a truncated codestream, frames smaller than the header says.
REFUSED = {
    "malformed/DX_truncated_j2k_966.dcm": "frame 0 does not decode",
    "malformed/WSI_unpadded_edge_tiles_140fr.dcm": "frame 13 does not decode",
    "malformed/GH177_CT1_big_endian_undefined_length.dcm": "unknown VR",
    "malformed/Hologic_DBT_slice_truncated_pixeldata.dcm": "encapsulated but the transfer",
    "malformed/MR_truncated.dcm": "needs 8192 bytes but only 8130 remain",
    "malformed/badVR.dcm": "NumberOfFrames '1A' is not an integer",
    "malformed/emri_small_jpeg_2k_lossless_too_short.dcm": "remain",
    "malformed/meta_missing_tsyntax.dcm": "no Transfer Syntax UID",
    "malformed/no_meta_offbyone.dcm": "not a DICOM object",
    "malformed/oob-monochrome-46341.dcm": "46341x46341",
    "malformed/oob-monochrome-65535.dcm": "65535x65535",
    "malformed/rtplan_truncated.dcm": "(300A,00B0)",
}


def test_every_malformed_file_has_an_expectation() -> None:
    if not MALFORMED:
        pytest.skip("shared corpus not found")
    assert {f.relative for f in MALFORMED} == set(KEPT) | set(REFUSED)


@pytest.mark.parametrize("relative", sorted(REFUSED))
def test_refused_with_reason_naming_the_file(archive: Archive, corpus: Path,
                                             relative: str) -> None:
    path = corpus / relative
    with pytest.raises(InvalidDicomError) as info:
        archive.store(path)
    assert str(path) in str(info.value)
    assert REFUSED[relative] in str(info.value)
    assert archive.stats()["instances"] == 0
    assert list(archive.store_.staging.iterdir()) == []
    assert list(archive.store_.locations()) == []


@pytest.mark.parametrize("relative", sorted(KEPT))
def test_kept_exactly_as_received(archive: Archive, corpus: Path, relative: str) -> None:
    """Through a bulk import (a single store refuses JPEGLossless_signed_bad.dcm, whose
    File Meta names another SOP Instance: see below)."""
    path = corpus / relative
    (result,) = archive.store_many([str(path)], workers=0)
    assert isinstance(result, StoreResult), result
    assert result.kept_reason is not None and KEPT[relative] in result.kept_reason
    assert archive.get(result.sop_instance_uid, "original") == path.read_bytes()
    assert archive.get(result.sop_instance_uid, "stored") == path.read_bytes()


def test_a_single_store_refuses_a_file_meta_naming_another_instance(archive: Archive,
                                                                  corpus: Path) -> None:
    """A real file whose File Meta (0002,0003) is not its SOP Instance UID: a single
    store with strict_identity (the doors of C-STORE, STOW-RS, gRPC) refuses it naming
    both UIDs."""
    path = corpus / "malformed/JPEGLossless_signed_bad.dcm"
    with pytest.raises(IdentityMismatchError) as info:
        archive.store(path, strict_identity=True)
    assert "9.99.999.9999" in str(info.value)
    assert "1.2.840.113619.2.30.1.1762269736.1927.1076592555.824" in str(info.value)
    assert archive.stats()["instances"] == 0
    assert list(archive.store_.locations()) == []


def test_archive_usable_after_every_refusal(archive: Archive, corpus: Path) -> None:
    for relative in REFUSED:
        with pytest.raises(InvalidDicomError):
            archive.store(corpus / relative)
    good = corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm"
    result = archive.store(good)
    assert archive.get(result.sop_instance_uid) == good.read_bytes()
    assert archive.verify().failed == []
