"""Compression ratio per corpus modality for each codec.

``ArchiveConfig(codec=...)`` and ``store_many(workers=0)`` over a modest subset of the
corpus; ratio = sum(bytes_in) / sum(bytes_stored) over the files that were actually
re-encoded (``StoreResult.kept_reason is None``): the baseline is the input as
received (uncompressed files: header + native pixels; the stored side counts the
codestreams, zarr.json and the header kept in the index).  JPEG 2000 (OpenJPEG,
~13 MB/s) gets a smaller subset.  The store time is what pytest-benchmark shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import benchlib
import pytest

from pacscore import Archive
from pacscore.archive import StoreResult
from pacscore.codecs import by_name
from pacscore.config import ArchiveConfig

CODECS = ("htj2k", "jpegls", "j2k", "rle")


def _subsets(corpus: Path) -> dict[str, tuple[list[str], list[str], list[str]]]:
    ct = benchlib.series_files(corpus, benchlib.CT_SERIES)
    mr = benchlib.series_files(corpus, benchlib.MR_SERIES, 30)
    rad = benchlib.files(corpus, benchlib.RADIOGRAPHY)
    us = benchlib.files(corpus, benchlib.US_RGB)
    # modality group -> (files, files for j2k = the common subset, smoke-run files)
    return {
        "CT 512x512 (12-bit signed)": (ct, ct[:5], ct[:2]),
        "MR 256x256 (12-bit)": (mr, mr[:10], mr[:2]),
        "CR/XA (RG2, RG3, XA1)": (rad, rad[2:], rad[2:]),
        "US RGB 8 frames": (us, us, us),
    }


@pytest.mark.parametrize("codec", CODECS)
def test_compression_ratio(benchmark: Any, corpus: Path, need_files: Any, tmp_path: Path,
                           smoke: bool, codec: str) -> None:
    pick = 2 if smoke else 1 if codec == "j2k" else 0
    subsets = _subsets(corpus)
    groups = {name: sets[pick] for name, sets in subsets.items()}
    common = {name: set(sets[1 if not smoke else 2]) for name, sets in subsets.items()}
    paths = need_files([p for ps in groups.values() for p in ps])
    ts = by_name(codec).transfer_syntax

    def subject(archive: Archive) -> list[Any]:
        return list(archive.store_many(paths, workers=0))

    archive = Archive(tmp_path / "archive", ArchiveConfig(codec=codec, fsync=True))
    try:
        run = benchlib.paired(benchmark, subject, setup=lambda: archive, rounds=1, warmup=0)
        results = run.result
        assert all(isinstance(r, StoreResult) for r in results), results
        by_source = {r.source: r for r in results}
        report = archive.verify()  # decodes every frame against its CRC-32
        assert report.checked == len(paths) and not report.failed, report.failed
    finally:
        archive.close()

    seconds = run.subject[0]
    mb_in = sum(r.bytes_in for r in results) / 1e6
    for name, group in groups.items():
        rs = [by_source[p] for p in group]
        done = [r for r in rs if r.kept_reason is None]
        assert all(r.stored_syntax == ts and r.verified for r in done)
        kept = sorted({r.kept_reason for r in rs if r.kept_reason})
        if not done:
            benchlib.report(benchmark, f"compression {codec}, {name}", subject="-",
                            baseline="-", ratio=float("nan"), target="-",
                            note=f"nothing re-encoded: {'; '.join(kept)}",
                            key=f"ratio {name}")
            continue
        bytes_in = sum(r.bytes_in for r in done)
        stored = sum(r.bytes_stored for r in done)
        same = [r for r in done if r.source in common[name]]
        on_common = (f"; on the j2k subset ({len(same)} files): "
                     f"{sum(r.bytes_in for r in same) / sum(r.bytes_stored for r in same):.3f}"
                     if same and len(same) < len(done) else "")
        benchlib.report(
            benchmark, f"compression {codec}, {name}",
            subject=f"stored {stored / 1e6:.2f} MB", baseline=f"bytes_in {bytes_in / 1e6:.2f} MB",
            ratio=bytes_in / stored, target="-",
            note=f"{len(done)}/{len(rs)} files re-encoded" + on_common
                 + (f"; kept: {'; '.join(kept)}" if kept else ""),
            key=f"ratio {name}")
    benchmark.extra_info["store_mb_s_input"] = round(mb_in / seconds, 2)
