"""``pacscore import`` as an archive operator runs it (issue 18): the whole command on a
tree of many small files, against the bound of one core in the same run.

* The tree: copies of the corpus's 30-slice CT and 170-slice MR series with new UIDs,
  one study per patient per copy (full: 20 copies = 4,000 files, 760 MB of pixels, the
  issue's tree; smoke: 1 copy).
* The bound: HTJ2K encode + verify-decode of the same frames in this process (one core;
  the pixel arrays are read before the clock starts).
* The subject: ``pacscore import --workers 1`` (and ``--workers 2``), the whole command
  in a subprocess: start-up, walk, parse, hash, encode, verify, write, commit, journal.

Goals (issue 18.1): workers=1 >= 0.85 x the bound; workers=2 >= 1.8 x workers=1.

Beside them, the two goals' joint ceiling in this run, from the bound and what a
native tool spends just copying the tree (GNU ``cp -r``: read, create and write each
file; no flush) plus the integrity checks every imported file gets (SHA-256 of the
file, CRC-32 of its frames).  ``cp`` writes each file whole where an import writes
its compressed frames (about half the bytes), but it creates one file-system object
per file where an import creates three (a folder, ``zarr.json``, the chunk) and
renames one.
"""

from __future__ import annotations

import hashlib
import resource
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import benchlib
import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

SERIES = (benchlib.CT_SERIES, benchlib.MR_SERIES)


@pytest.fixture(scope="module")
def tree(corpus: Path, tmp_path_factory: pytest.TempPathFactory, smoke: bool
         ) -> tuple[Path, list[np.ndarray]]:
    """The import tree and the pixel arrays of its frames (one copy's: every copy has
    the same pixels)."""
    sources = [benchlib.series_files(corpus, s) for s in SERIES]
    if not all(sources) or any(benchlib.missing(s) for s in sources):
        pytest.skip("the corpus's CT or MR series is missing")
    copies = 1 if smoke else 20
    root = tmp_path_factory.mktemp("import-tree")
    arrays: list[np.ndarray] = []
    for k in range(copies):
        for s, files in enumerate(sources):
            study, series = generate_uid(), generate_uid()
            folder = root / f"p{k}_{s}"
            folder.mkdir()
            for i, path in enumerate(files):
                ds = pydicom.dcmread(path)
                if k == 0:
                    arrays.append(ds.pixel_array)
                uid = generate_uid()
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.PatientID, ds.PatientName = f"P18-{k}-{s}", f"Copy^{k}^{s}"
                ds.save_as(folder / f"{i:04d}.dcm")
    return root, arrays * copies


def _bound(arrays: list[np.ndarray]) -> float:
    """Seconds of HTJ2K encode + verify-decode of every frame, one core."""
    t0 = time.perf_counter()
    for a in arrays:
        back = imagecodecs.htj2k_decode(imagecodecs.htj2k_encode(a))
        assert np.array_equal(back.reshape(a.shape), a)
    return time.perf_counter() - t0


def _import(root: Path, archive: Path, workers: int) -> float:
    """Seconds of the whole ``pacscore import`` command."""
    shutil.rmtree(archive, ignore_errors=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pacscore.cli", "import", "--archive",
                           str(archive), "--workers", str(workers), "--json", str(root)],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    return seconds


def _copy_cpu(root: Path, dest: Path) -> float:
    """CPU seconds of ``cp -r`` of the tree (the page cache warm: it was just read)."""
    shutil.rmtree(dest, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["cp", "-r", str(root), str(dest)], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(dest, ignore_errors=True)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _checks_cpu(root: Path, arrays: list[np.ndarray]) -> float:
    """CPU seconds of SHA-256 of every file and CRC-32 of every frame."""
    start = time.process_time()
    for path in root.rglob("*.dcm"):
        hashlib.sha256(path.read_bytes()).digest()
    for a in arrays:
        zlib.crc32(a.data)
    return time.process_time() - start


def test_import_whole_command_vs_codec_bound(benchmark: Any, tree: tuple[Path, list[Any]],
                                             tmp_path: Path, smoke: bool) -> None:
    root, arrays = tree
    files = len(arrays)
    mb = sum(a.nbytes for a in arrays) / 1e6
    one: list[float] = []
    bound: list[float] = []

    def subject(_: Any) -> float:
        bound.append(_bound(arrays))
        seconds = _import(root, tmp_path / "archive", 1)
        one.append(seconds)
        return seconds

    benchmark.pedantic(subject, setup=lambda: ((None,), {}), rounds=1 if smoke else 3,
                       iterations=1)
    two = _import(root, tmp_path / "archive", 2)
    ratio = benchlib.median(bound) / benchlib.median(one)
    benchlib.report(
        benchmark, f"import --workers 1, whole command ({files} files)",
        subject=f"{mb / benchlib.median(one):.1f} MB/s ({benchlib.median(one):.1f} s, "
                f"{benchlib.median(one) / files * 1e3:.2f} ms/file)",
        baseline=f"HTJ2K encode + verify-decode {mb / benchlib.median(bound):.1f} MB/s "
                 f"({benchlib.median(bound) / files * 1e3:.2f} ms/file)",
        ratio=ratio, target=">= 0.85",
        note=f"{mb:.0f} MB raw; start-up included")
    benchlib.report(
        benchmark, f"import --workers 2 / --workers 1, whole command ({files} files)",
        subject=f"workers=2 {two:.1f} s", baseline=f"workers=1 {benchlib.median(one):.1f} s",
        ratio=benchlib.median(one) / two, target=">= 1.8", key="ratio_workers",
        note="2 cores")
    # Both goals at once: workers=1 takes T1 <= bound / 0.85, and workers=2 takes at
    # least half the CPU of a file, (bound + rest) / 2 on 2 cores, so T1 >= 1.8 x that
    # = 0.9 (bound + rest): workers=1's best ratio is bound / (0.9 (bound + rest)), and
    # ``rest`` is at least a native copy of the file plus its integrity checks.
    floor = _copy_cpu(root, tmp_path / "copy") + _checks_cpu(root, arrays)
    codec = benchlib.median(bound)
    benchlib.report(
        benchmark, f"import, the goals' ceiling ({files} files)",
        subject=f"cp -r + SHA-256 + CRC-32 {floor / files * 1e3:.2f} ms/file CPU",
        baseline=f"HTJ2K encode + verify-decode {codec / files * 1e3:.2f} ms/file; "
                 f"pacscore {benchlib.median(one) / files * 1e3:.2f} ms/file",
        ratio=codec / (0.9 * (codec + floor)), target=">= 0.85", key="ratio_ceiling",
        note="ratio: the best workers=1 figure that leaves workers=2 >= 1.8 x workers=1 "
             "possible, were everything beyond the codec as cheap as copying the tree "
             "natively with the integrity checks (no parse, index, flush or start-up)")


def _synthetic(folder: Path, count: int, per_series: int = 50) -> None:
    """``count`` small CT-like instances (64x64, 12 bits), ``per_series`` a series, one
    study per patient per 4 series."""
    template = pydicom.Dataset()
    template.file_meta = pydicom.dataset.FileMetaDataset()
    template.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    template.file_meta.MediaStorageSOPClassUID = template.SOPClassUID = \
        "1.2.840.10008.5.1.4.1.1.2"
    template.Modality, template.StudyDate = "CT", "20250101"
    template.Rows = template.Columns = 64
    template.BitsAllocated, template.BitsStored, template.HighBit = 16, 12, 11
    template.SamplesPerPixel, template.PhotometricInterpretation = 1, "MONOCHROME2"
    template.PixelRepresentation = 0
    rng = np.random.default_rng(18)
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint16) * 16
    study = series = ""
    for i in range(count):
        if i % per_series == 0:
            if i % (4 * per_series) == 0:
                study, patient = generate_uid(), f"G{i // (4 * per_series):06d}"
            series = generate_uid()
        template.PatientID, template.PatientName = patient, f"Grow^{patient}"
        template.StudyInstanceUID, template.SeriesInstanceUID = study, series
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = \
            generate_uid()
        template.InstanceNumber = i % per_series + 1
        template.PixelData = (ramp + rng.integers(0, 8, ramp.shape, dtype=np.uint16)
                              ).tobytes()
        template.save_as(folder / f"{i:07d}.dcm", enforce_file_format=True)


def test_import_rate_as_the_archive_grows(benchmark: Any, tmp_path: Path, smoke: bool) -> None:
    """Issue 18.3: import rate of the last 10% of the files vs the first 10%, one
    import of N synthetic instances (full: 100,000; smoke: 2,000), the whole job
    (``run_import``: walk, workers, commit, journal), one worker."""
    from pacscore import Archive
    from pacscore.jobs.importing import run_import

    count = 2_000 if smoke else 100_000
    folder = tmp_path / "tree"
    folder.mkdir()
    _synthetic(folder, count)
    stamps: list[float] = []

    def subject(_: Any) -> None:
        with Archive(tmp_path / "archive") as archive:
            report = run_import(archive, [str(folder)], workers=1,
                                progress=lambda size: stamps.append(time.perf_counter()))
        assert report.stored == count and not report.failed

    benchmark.pedantic(subject, setup=lambda: ((None,), {}), rounds=1, iterations=1)
    tenth = count // 10
    first = tenth / (stamps[tenth] - stamps[0])
    last = tenth / (stamps[-1] - stamps[-tenth - 1])
    benchlib.report(benchmark, f"import rate, last 10% / first 10% of {count:,} instances",
                    subject=f"last 10% {last:,.0f} inst/s", baseline=f"first 10% {first:,.0f} "
                    "inst/s", ratio=last / first, target=">= 0.9", key="ratio_growth",
                    note="64x64 CT-like, 50 a series; whole import job, one worker")
