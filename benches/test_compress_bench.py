"""Bulk compress job figures (issue: bulk compression jobs), as same-run ratios.

1. ``run_compress(workers=0)`` raw-pixel throughput per core vs pure
   ``imagecodecs.htj2k_encode`` of the same frames (target >= 0.8 CT/MR, >= 0.9 CR/DX/MG).
2. ``workers=2`` vs ``workers=1`` on a tree of the CT and MR series (target >= 1.8).
3. The whole pipeline (``pacscore compress --codec jpegls --workers 2``, verifying) vs
   what an operator scripts today: ``find | xargs -P 2 dcmcjpls`` (DCMTK, no
   verification), end to end on the same tree (target >= 1.5x faster).
4. ``--codec auto`` output size vs the best single codec over the tree (>= 1.0 means
   never worse), and per modality.

3 always runs on the whole corpus; ``PACSCORE_BENCH_FULL=1`` uses it for 4 too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
import imagecodecs
import pydicom
import pytest

from pacscore.config import ArchiveConfig
from pacscore.jobs import JobReport, run_compress


def _tree(corpus: Path, dest: Path, folders: list[str]) -> Path:
    for folder in folders:
        shutil.copytree(corpus / folder, dest / folder.replace("/", "_"))
    return dest


def _job(src: Path, out: Path, codec: str, workers: int) -> JobReport:
    shutil.rmtree(out, ignore_errors=True)
    report = JobReport()
    start = time.perf_counter()
    for r in run_compress([str(src)], str(out), ArchiveConfig(codec=codec), workers=workers):
        report.add(r)
    report.seconds = time.perf_counter() - start
    return report


def _raw_encode_seconds(files: list[Path]) -> tuple[float, int]:
    frames = [pydicom.dcmread(f).pixel_array for f in files]
    start = time.perf_counter()
    for f in frames:
        imagecodecs.htj2k_encode(f, reversible=True)
    return time.perf_counter() - start, sum(f.nbytes for f in frames)


@pytest.mark.parametrize("group,folders,target", [
    ("CT/MR series", ["ct_series/tcia_lung_pet_ct_dx_chest_30sl"], ">= 0.8"),
    ("CR/DX/MG", ["radiography/cr", "radiography/xa"], ">= 0.9"),
])
def test_compress_throughput_vs_raw_codec(benchmark: Any, corpus: Path, tmp_path: Path,
                                          group: str, folders: list[str],
                                          target: str) -> None:
    src = _tree(corpus, tmp_path / "src", folders)
    # Only the files the job re-encodes count on both sides (uncompressed inputs).
    files = [p for p in src.rglob("*.dcm") if not pydicom.dcmread(
        p, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed]
    enc_s, raw = _raw_encode_seconds(files)
    report = benchmark.pedantic(_job, args=(src, tmp_path / "out", "htj2k", 0), rounds=1,
                                iterations=1)
    ours = report.raw_bytes / report.seconds
    baseline = raw / enc_s
    benchlib.report(benchmark, f"compress throughput per core, {group}",
                    subject="run_compress(workers=0), MB raw/s",
                    baseline="imagecodecs.htj2k_encode, MB raw/s",
                    ratio=ours / baseline, target=target,
                    note=f"{ours / 1e6:.0f} vs {baseline / 1e6:.0f} MB/s; includes the "
                         "verify decode and the output write")
    assert report.counts.get("failed", 0) == 0


def test_compress_two_workers_vs_one(benchmark: Any, corpus: Path, tmp_path: Path,
                                    smoke: bool) -> None:
    # CT-size work (512x512 slices), copied so that start-up costs do not dominate.
    src = tmp_path / "src"
    for i in range(2 if smoke else 24):
        shutil.copytree(corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl", src / f"ct{i}")
    _job(src, tmp_path / "warm", "htj2k", 2)  # forkserver, numba cache, page cache
    one = _job(src, tmp_path / "one", "htj2k", 1)
    two = benchmark.pedantic(_job, args=(src, tmp_path / "two", "htj2k", 2), rounds=1,
                             iterations=1)
    benchlib.report(benchmark, "compress, 2 workers vs 1", subject="workers=2 wall time",
                    baseline="workers=1 wall time", ratio=one.seconds / two.seconds,
                    target=">= 1.8", note=f"{two.total.files} files")
    assert two.total.files == one.total.files


@pytest.mark.skipif(shutil.which("dcmcjpls") is None, reason="DCMTK dcmcjpls not installed")
def test_compress_vs_dcmcjpls_xargs(benchmark: Any, corpus: Path, tmp_path: Path,
                                   smoke: bool) -> None:
    src = corpus  # the comparison: the whole corpus (146 MB, ~15 s in all)
    out_dcmtk = tmp_path / "dcmtk"

    def dcmtk() -> float:
        shutil.rmtree(out_dcmtk, ignore_errors=True)
        script = (f'cd "{src}" && find . -type f -name "*.dcm" -print0 | '
                  f'xargs -0 -P 2 -I{{}} sh -c \'mkdir -p "{out_dcmtk}/$(dirname "$1")" && '
                  f'dcmcjpls "$1" "{out_dcmtk}/$1" 2>/dev/null || true\' _ {{}}')
        start = time.perf_counter()
        subprocess.run(["bash", "-c", script], check=True, env={**os.environ,
                                                               "TCP_NODELAY": "1"})
        return time.perf_counter() - start

    def ours() -> float:
        out = tmp_path / "ours"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pacscore.cli", "compress", str(src), "--out",
                        str(out), "--codec", "jpegls", "--workers", "2", "--json"],
                       check=False, capture_output=True)
        return time.perf_counter() - start

    t_dcmtk = dcmtk()
    t_ours = benchmark.pedantic(ours, rounds=1, iterations=1)
    benchlib.report(benchmark, "compress vs DCMTK dcmcjpls with xargs -P 2",
                    subject="pacscore compress --codec jpegls --workers 2 (verified)",
                    baseline="dcmcjpls per file, xargs -P 2 (no verification)",
                    ratio=t_dcmtk / t_ours, target=">= 1.5",
                    note=f"{t_ours:.1f} s vs {t_dcmtk:.1f} s, whole corpus")


def test_auto_vs_best_single_codec(benchmark: Any, corpus: Path, tmp_path: Path) -> None:
    folders = ["ct_series/tcia_lung_pet_ct_dx_chest_30sl", "mr_series/tcia_brain_t1post_24sl",
               "odd/ybr", "radiography/xa", "multiframe/us_cine"]
    src = corpus if benchlib.full_mode() else _tree(corpus, tmp_path / "src", folders)
    singles = {c: _job(src, tmp_path / c, c, 2) for c in ("htj2k", "jpegls")}
    auto = benchmark.pedantic(_job, args=(src, tmp_path / "auto", "auto", 2), rounds=1,
                              iterations=1)
    best = min(singles, key=lambda c: singles[c].total.bytes_out)
    benchlib.report(benchmark, "auto vs best single codec (whole tree)",
                    subject="--codec auto bytes out", baseline=f"--codec {best} bytes out",
                    ratio=singles[best].total.bytes_out / auto.total.bytes_out,
                    target=">= 1.0")
    by_mod: dict[str, dict[str, int]] = {}
    for name, rep in (*singles.items(), ("auto", auto)):
        for (modality, _), g in rep.groups.items():
            by_mod.setdefault(modality, {}).setdefault(name, 0)
            by_mod[modality][name] += g.bytes_out
    for modality, sizes in sorted(by_mod.items()):
        best_m = min(v for k, v in sizes.items() if k != "auto")
        benchlib.report(benchmark, f"auto vs best single codec, {modality}",
                        subject="auto bytes out", baseline="best single codec bytes out",
                        ratio=best_m / sizes["auto"], target=">= 1.0",
                        key=f"ratio_{modality}")
