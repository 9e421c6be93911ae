"""Objects kept in a compressed syntax pacscore decodes are decoded at ingest: one that
does not decode is refused with the reason (so a truncated copy can never hold the
place of the good one), the others get the CRC-32 of every decoded frame, which
``verify`` checks; what cannot be decoded later raises a PacsError, never a codec
library's exception."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from pacscore import Archive, ArchiveConfig, InvalidDicomError, PacsError, StoreResult
from pacscore.errors import UndecodablePixelDataError, UnsupportedTransferSyntaxError
from pacscore.ingest.pool import Rejected

GOOD = "radiography/dx/DX_2128x2000_12bit_j2kr.dcm"
TRUNCATED = "malformed/DX_truncated_j2k_966.dcm"  # the same instance, codestream cut


@pytest.mark.parametrize("order", ["truncated first", "good first"])
def test_a_truncated_copy_is_refused_whatever_arrives_first(tmp_path: Path, corpus: Path,
                                                            order: str) -> None:
    good, truncated = corpus / GOOD, corpus / TRUNCATED
    paths = [truncated, good] if order == "truncated first" else [good, truncated]
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        outcomes = {}
        for path in paths:
            try:
                outcomes[path] = archive.store(path).status
            except InvalidDicomError as exc:
                outcomes[path] = str(exc)
        assert outcomes[good] == "stored"
        assert "does not decode" in outcomes[truncated] and str(truncated) in outcomes[truncated]
        sop = archive.find("instance")[0]["SOPInstanceUID"]
        assert archive.get(sop) == good.read_bytes()


def test_bulk_import_refuses_the_truncated_copy(tmp_path: Path, corpus: Path) -> None:
    """Worker order does not matter: the truncated copy is refused by its worker."""
    good, truncated = corpus / GOOD, corpus / TRUNCATED
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        outcomes = {o.source: o for o in archive.store_many([str(truncated), str(good)],
                                                          workers=2)}
        assert isinstance(outcomes[str(good)], StoreResult)
        refused = outcomes[str(truncated)]
        assert isinstance(refused, Rejected) and "does not decode" in refused.reason
        assert archive.stats()["instances"] == 1


def _replace_kept(archive: Archive, sop: str, data: bytes, crcs: tuple[int, ...]) -> None:
    """Fault injection: the kept object of ``sop`` becomes ``data`` with these CRC-32s
    (what an archive written before pacscore decoded kept objects may hold)."""
    old = archive.record(sop)
    location = uuid.uuid4().hex
    archive.store_.stage_blob(location, data)
    archive.store_.publish([location])
    archive.index.delete([sop])
    archive.store_.delete([old.location])
    archive.index.clear_pending([old.location])
    new = replace(old, location=location, sha256=hashlib.sha256(data).hexdigest(),
                  bytes_in=len(data), frame_crc32=crcs)
    assert archive.index.put([(new, b"")])[0].status == "stored"


def test_verify_decodes_kept_objects_and_reads_raise_pacs_errors(tmp_path: Path,
                                                                 corpus: Path) -> None:
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        result = archive.store(corpus / GOOD)
        assert result.kept_reason and "kept as received" in result.kept_reason
        sop = result.sop_instance_uid
        crcs = archive.record(sop).frame_crc32
        assert len(crcs) == 1  # the decoded frame's CRC-32 is recorded
        assert archive.verify().failed == []

        _replace_kept(archive, sop, (corpus / GOOD).read_bytes(), (crcs[0] ^ 1,))
        assert archive.verify().failed == [(sop, "frame 0 CRC mismatch")]

        _replace_kept(archive, sop, (corpus / TRUNCATED).read_bytes(), ())
        [(failed, reason)] = archive.verify().failed
        assert failed == sop and "does not decode" in reason
        for read in (lambda: archive.pixels(sop), lambda: archive.frames(sop, [0], "native"),
                     lambda: archive.get(sop, "1.2.840.10008.1.2.1"),
                     lambda: archive.get(sop, "1.2.840.10008.1.2.4.80")):
            with pytest.raises(UnsupportedTransferSyntaxError) as info:
                read()
            assert isinstance(info.value, UndecodablePixelDataError | PacsError)
            assert sop in str(info.value) and "does not decode" in str(info.value)
        assert archive.get(sop) == (corpus / TRUNCATED).read_bytes()  # as received


def test_a_kept_object_with_a_damaged_frame_never_raises_a_codec_error(
        tmp_path: Path, corpus: Path) -> None:
    """Frames stored re-encoded whose codestream is damaged on disk: pixels() says so
    as a PacsError (doors map it to a status; a codec exception became a 500)."""
    src = corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm"
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        sop = archive.store(src).sop_instance_uid
        location = archive.record(sop).location
        chunk = next(p for p in archive.store_.array_path(location).rglob("*")
                     if p.is_file() and p.name != "zarr.json")
        chunk.write_bytes(chunk.read_bytes()[:100])
        with pytest.raises(UndecodablePixelDataError, match="does not decode"):
            archive.pixels(sop)
        assert [sop] == [s for s, _ in archive.verify().failed]


@pytest.mark.parametrize("name", ["odd/odd_dims/liver_nonbyte_aligned_1bit.dcm",
                                  "malformed/Philips_MR_BitsAllocated12_no_meta.dcm"])
def test_pixels_not_decoded_here_raise_a_pacs_error(tmp_path: Path, corpus: Path,
                                                    name: str) -> None:
    """Packed 1-bit and 12-bit samples: pixels() says it cannot (was a ValueError from
    numpy for the 1-bit segmentation); the object still converts as it is."""
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        sop = archive.store(corpus / name).sop_instance_uid
        with pytest.raises(UnsupportedTransferSyntaxError, match="no pixel data this archive"):
            archive.pixels(sop)
        assert archive.get(sop, "1.2.840.10008.1.2.1")[128:132] == b"DICM"
