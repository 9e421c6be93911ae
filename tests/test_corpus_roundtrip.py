"""The whole corpus (but malformed/) round-trips: import -> export original.

Byte equality for everything whose original is kept or was uncompressed, pixel
equality (decoded by pydicom, an independent reader) for the stored syntax, and the
stored syntax is lossless-compressed wherever the rules allow.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from pacscore import Archive, ArchiveConfig, StoreResult
from pacscore.dicom.syntaxes import syntax
from pacscore.errors import ConflictError
from pacscore.ingest.pool import Rejected, Skipped

from .conftest import corpus_files

GOOD = [f for f in corpus_files() if not f.malformed]


def _pixels(data: bytes) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        return ds.pixel_array


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Archive, StoreResult]]:
    """Import the corpus with 2 workers.  Files that share a SOP Instance UID with
    other content (the transfer-syntax ladders) go to further archives, because the
    archive's policy refuses such conflicts."""
    if not GOOD:
        pytest.skip("shared corpus not found")
    base = tmp_path_factory.mktemp("corpus")
    placed: dict[str, tuple[Archive, StoreResult]] = {}
    todo = [str(f.path) for f in GOOD]
    n = 0
    while todo:
        archive = Archive(base / f"a{n}", ArchiveConfig())
        conflicts = []
        for outcome in archive.store_many(todo, workers=2):
            if isinstance(outcome, StoreResult):
                placed[outcome.source] = (archive, outcome)
            elif isinstance(outcome, Rejected) and outcome.error is ConflictError:
                conflicts.append(outcome.source)
            else:
                placed[outcome.source] = (archive, outcome)  # type: ignore[assignment]
        todo, n = conflicts, n + 1
        assert n < 20
    return placed


def test_every_good_file_is_stored(imported: dict[str, Any]) -> None:
    refused = {s: o for s, (_, o) in imported.items() if not isinstance(o, StoreResult)}
    assert refused == {}, "\n".join(f"{s}: {getattr(o, 'reason', o)}" for s, o in refused.items())
    assert len(imported) == len(GOOD)


@pytest.mark.parametrize("entry", GOOD, ids=[f.relative for f in GOOD])
def test_original_roundtrips_byte_for_byte(imported: dict[str, Any], entry: Any) -> None:
    archive, result = imported[str(entry.path)]
    original = entry.path.read_bytes()
    out = archive.get(result.sop_instance_uid, "original")
    source_syntax = syntax(result.original_syntax)
    if result.status == "duplicate":  # the same instance arrived earlier in another encoding
        assert np.array_equal(_pixels(out), _pixels(original))
    elif result.kept_reason is not None or source_syntax.native:
        assert out == original
    else:  # transcoded compressed input would only promise pixels; default keeps it
        assert np.array_equal(_pixels(out), _pixels(original))


@pytest.mark.parametrize("entry", GOOD, ids=[f.relative for f in GOOD])
def test_stored_syntax_decodes_to_the_same_pixels(imported: dict[str, Any], entry: Any) -> None:
    archive, result = imported[str(entry.path)]
    if result.kept_reason is not None:
        assert result.stored_syntax == result.original_syntax
        assert not result.verified
        return
    assert result.verified
    assert syntax(result.stored_syntax).encapsulated
    stored = archive.get(result.sop_instance_uid, "stored")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd character sets in the corpus
        ds = pydicom.dcmread(io.BytesIO(stored))
        ds.decode()
    assert ds.file_meta.TransferSyntaxUID == result.stored_syntax
    assert ds.SOPInstanceUID == result.sop_instance_uid
    assert np.array_equal(_pixels(stored), _pixels(entry.path.read_bytes()))


def test_uncompressed_images_are_compressed_where_rules_allow(imported: dict[str, Any]) -> None:
    """Native 8/16-bit monochrome or RGB images without junk bits must not stay raw."""
    raw_kept = []
    for source, (_, result) in imported.items():
        src = syntax(result.original_syntax)
        if not src.native or src.deflated or result.kept_reason is None:
            continue
        reason = result.kept_reason
        allowed = ("Bits Allocated", "Bits Stored", "non-image", "no pixel data", "Image Pixel",
                   "float", "bits set above", "YBR_FULL_422", "8-bit samples in big-endian",
                   "Photometric Interpretation", "more than Rows")
        if not any(a in reason for a in allowed):
            raw_kept.append(f"{Path(source).name}: {reason}")
    assert raw_kept == []


def test_stats_equal_sum_of_parts(imported: dict[str, Any]) -> None:
    archives = {id(a): a for a, _ in imported.values()}
    for a in archives.values():
        records = list(a.index.records())
        stats = a.stats()
        assert stats["instances"] == len(records)
        assert stats["bytes_stored"] == sum(r.bytes_stored for r in records)
        assert stats["bytes_in"] == sum(r.bytes_in for r in records)
        assert sum(stats["transfer_syntaxes"].values()) == len(records)
        assert a.verify().failed == []


def test_skipped_files_are_not_dicom(imported: dict[str, Any]) -> None:
    assert not [s for s, (_, o) in imported.items() if isinstance(o, Skipped)]
