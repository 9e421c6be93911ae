"""Ingest throughput, as ratios.

1. ``Archive.store_many(paths, workers=0)`` (in process: one core) against pure
   ``imagecodecs.htj2k_encode(frame, reversible=True)`` of the same frames, decoded
   once with pydicom beforehand.  MB are raw pixel bytes.  Targets (issue): >= 0.7
   on 512x512 CT/MR, >= 0.9 on CR/DX/MG.
2. ``store_many(workers=2)`` against ``store_many(workers=1)`` on copies of the CT
   series (distinct SOP Instance UIDs).  Target: speed-up >= 1.8.

Every round stores into a fresh archive directory with ArchiveConfig(fsync=True).
"""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import Any

import benchlib
import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacscore import Archive
from pacscore.archive import StoreResult
from pacscore.config import ArchiveConfig

HTJ2K = "1.2.840.10008.1.2.4.202"

GROUPS = {
    # figure name, files, target
    "ct_mr_512": ("CT/MR 512x512 (CT series, 30 files)", ">= 0.7"),
    "cr_dx_mg": ("CR/DX/MG (RG2, RG3, XA1 uncompressed)", ">= 0.9"),
}


def _group_files(corpus: Path, group: str) -> list[str]:
    if group == "ct_mr_512":
        return benchlib.series_files(corpus, benchlib.CT_SERIES)
    return benchlib.files(corpus, benchlib.RADIOGRAPHY)


class _Rounds:
    """Fresh archive directories, one per round; all but the last removed after use."""

    def __init__(self, base: Path, config: ArchiveConfig):
        self.base, self.config = base, config
        self.n = itertools.count()
        self.last: Path | None = None
        self.current: Archive | None = None

    def open(self) -> Archive:
        self.finish()
        d = self.base / f"archive-{next(self.n)}"
        if self.last is not None:
            shutil.rmtree(self.last, ignore_errors=True)
        self.last = d
        self.current = Archive(d, self.config)
        return self.current

    def close(self, archive: Archive) -> None:
        archive.close()
        if archive is self.current:
            self.current = None

    def finish(self) -> None:
        """Close the archive of the last round (pytest-benchmark may skip teardown)."""
        if self.current is not None:
            self.close(self.current)


def _check_stored(results: list[Any], paths: list[str]) -> list[StoreResult]:
    assert len(results) == len(paths)
    bad = [r for r in results if not isinstance(r, StoreResult)]
    assert not bad, bad[:3]
    assert all(r.status == "stored" for r in results)
    return results


@pytest.mark.parametrize("group", list(GROUPS))
def test_ingest_vs_htj2k_encode(benchmark: Any, corpus: Path, need_files: Any,
                                tmp_path: Path, smoke: bool, group: str) -> None:
    paths = need_files(_group_files(corpus, group))
    name, target = GROUPS[group]
    frames = [np.ascontiguousarray(pydicom.dcmread(p).pixel_array) for p in paths]
    raw_mb = sum(f.nbytes for f in frames) / 1e6

    def baseline(_: Any) -> None:
        for f in frames:
            imagecodecs.htj2k_encode(f, reversible=True)

    # Informative: the verification decode that store_many does after every encode.
    streams = [imagecodecs.htj2k_encode(f, reversible=True) for f in frames]
    decode_s: list[float] = []
    rounds = _Rounds(tmp_path, ArchiveConfig(fsync=True))

    def setup() -> Archive:
        t0 = time.perf_counter()
        for s in streams:
            imagecodecs.htj2k_decode(s)
        decode_s.append(time.perf_counter() - t0)
        return rounds.open()

    run = benchlib.paired(
        benchmark, lambda a: list(a.store_many(paths, workers=0)),
        setup=setup, teardown=rounds.close, baseline=baseline,
        rounds=1 if smoke else 7, warmup=1)

    results = _check_stored(run.result, paths)
    # Correctness: the last archive holds every frame bit for bit, re-encoded.
    assert all(r.kept_reason is None and r.stored_syntax == HTJ2K for r in results)
    assert rounds.last is not None
    rounds.finish()
    with Archive(rounds.last, ArchiveConfig(fsync=True)) as archive:
        by_source = {r.source: r.sop_instance_uid for r in results}
        for path, frame in zip(paths, frames, strict=True):
            (stream,) = archive.frames(by_source[path], [0])
            back = imagecodecs.htj2k_decode(stream).reshape(frame.shape)
            assert np.array_equal(back.view(frame.dtype), frame), path
        first = paths[0]
        assert archive.get(by_source[first], "original") == Path(first).read_bytes()

    store_mbs = raw_mb / benchlib.median(run.subject)
    enc_s = benchlib.median(run.baseline)
    enc_mbs = raw_mb / enc_s
    # What encode + verify-decode alone allow (no parsing, hashing, I/O, index).
    ceiling = enc_s / (enc_s + benchlib.median(decode_s))
    benchlib.report(
        benchmark, f"ingest {name}, workers=0 / pure HTJ2K encode",
        subject=f"store_many {store_mbs:.1f} MB/s", baseline=f"htj2k_encode {enc_mbs:.1f} MB/s",
        ratio=store_mbs / enc_mbs, target=target,
        note=f"{raw_mb:.1f} MB raw pixels, {len(paths)} files, fsync on; encode + "
             f"verify-decode alone would give {ceiling:.2f}",
        store_mb_s=store_mbs, htj2k_encode_mb_s=enc_mbs, raw_mb=raw_mb,
        encode_plus_decode_ceiling=ceiling)


@pytest.fixture(scope="session")
def ct_copies(corpus: Path, tmp_path_factory: pytest.TempPathFactory, smoke: bool
              ) -> tuple[list[str], float]:
    """The CT series written ``copies`` times with distinct SOP Instance UIDs."""
    src = benchlib.series_files(corpus, benchlib.CT_SERIES)
    if not src or benchlib.missing(src):
        pytest.skip(f"CT series {benchlib.CT_SERIES} missing from the corpus")
    copies = 1 if smoke else 4
    out_dir = tmp_path_factory.mktemp("ct_copies")
    out: list[str] = []
    raw = 0
    for k in range(copies):
        for path in src:
            ds = pydicom.dcmread(path)
            raw += ds.Rows * ds.Columns * ds.BitsAllocated // 8
            dest = out_dir / f"{k}_{Path(path).name}"
            if k == 0:
                shutil.copyfile(path, dest)
            else:
                uid = generate_uid(entropy_srcs=[ds.SOPInstanceUID, f"copy {k}"])
                ds.SOPInstanceUID = uid
                ds.file_meta.MediaStorageSOPInstanceUID = uid
                ds.save_as(dest)
            out.append(str(dest))
    return out, raw / 1e6


def test_ingest_workers_2_vs_1(benchmark: Any, ct_copies: tuple[list[str], float],
                               tmp_path: Path, smoke: bool) -> None:
    paths, raw_mb = ct_copies
    subject_rounds = _Rounds(tmp_path / "w2", ArchiveConfig(fsync=True))
    baseline_rounds = _Rounds(tmp_path / "w1", ArchiveConfig(fsync=True))
    base_results: list[list[Any]] = []

    def baseline(a: Archive) -> None:
        base_results.append(list(a.store_many(paths, workers=1)))

    run = benchlib.paired(
        benchmark, lambda a: list(a.store_many(paths, workers=2)),
        setup=subject_rounds.open, teardown=subject_rounds.close,
        baseline=baseline, baseline_setup=baseline_rounds.open,
        baseline_teardown=baseline_rounds.close,
        rounds=1 if smoke else 7, warmup=1)

    for results in (run.result, base_results[-1]):
        _check_stored(results, paths)
    assert {r.sop_instance_uid for r in run.result} == \
        {r.sop_instance_uid for r in base_results[-1]}
    assert subject_rounds.last is not None
    subject_rounds.finish()
    baseline_rounds.finish()
    with Archive(subject_rounds.last) as archive:
        assert archive.stats()["instances"] == len(paths)

    w2 = raw_mb / benchlib.median(run.subject)
    w1 = raw_mb / benchlib.median(run.baseline)
    benchlib.report(
        benchmark, "ingest CT copies, workers=2 / workers=1",
        subject=f"workers=2 {w2:.1f} MB/s", baseline=f"workers=1 {w1:.1f} MB/s",
        ratio=w2 / w1, target=">= 1.8",
        note=f"{len(paths)} files, {raw_mb:.0f} MB raw; pool start-up included; 2 cores",
        workers2_mb_s=w2, workers1_mb_s=w1)
