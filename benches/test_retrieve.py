"""Frame retrieval: ``Archive.frames(sop, [0])`` in the stored syntax (a read, no
transcode) against reading the same codestream bytes from a plain file
(open + read + close).  p50 latency and MB/s; ratio = plain p50 / archive p50
(1.0 = no overhead over the file system).  Page cache warm for both.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib
import imagecodecs
import numpy as np
import pydicom
import pytest

from pacscore import Archive
from pacscore.archive import StoreResult
from pacscore.config import ArchiveConfig

KINDS = {
    "ct_512": "CT 512x512 slice",
    "cr_2140x1760": "CR/XA large (RG2, RG3, XA1)",
}


@pytest.fixture(scope="module")
def stored(corpus: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Archive, dict[str, list[tuple[str, str, str]]]]]:
    """Archive with the CT series and the radiography files, plus every frame 0
    codestream copied to a plain file: (archive, kind -> [(sop, plain file, source)])."""
    groups = {"ct_512": benchlib.series_files(corpus, benchlib.CT_SERIES),
              "cr_2140x1760": benchlib.files(corpus, benchlib.RADIOGRAPHY)}
    gone = [p for ps in groups.values() for p in benchlib.missing(ps)]
    if gone:
        pytest.skip(f"corpus files missing: {gone[0]}")
    base = tmp_path_factory.mktemp("retrieve")
    plain = base / "plain"
    plain.mkdir()
    out: dict[str, list[tuple[str, str, str]]] = {}
    archive = Archive(base / "archive", ArchiveConfig(fsync=True))
    for kind, paths in groups.items():
        results = [r for r in archive.store_many(paths, workers=0)
                   if isinstance(r, StoreResult)]
        assert len(results) == len(paths)
        rows = []
        for r in results:
            (stream,) = archive.frames(r.sop_instance_uid, [0])
            f = plain / f"{r.sop_instance_uid}.j2c"
            f.write_bytes(stream)
            rows.append((r.sop_instance_uid, str(f), r.source))
        out[kind] = rows
    yield archive, out
    archive.close()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("kind", list(KINDS))
def test_frame_retrieval_vs_plain_file(benchmark: Any, stored: tuple[Archive, dict[str, Any]],
                                       smoke: bool, kind: str) -> None:
    archive, by_kind = stored
    rows = by_kind[kind]
    rng = random.Random(7)
    pick = [0]

    def choose() -> None:
        pick[0] = rng.randrange(len(rows))

    def baseline(_: Any) -> None:
        _read(rows[pick[0]][1])

    run = benchlib.paired(
        benchmark, lambda i: archive.frames(rows[i][0], [0]),
        setup=lambda: pick[0], baseline=baseline, baseline_setup=choose,
        rounds=3 if smoke else 600, warmup=20)

    # Correctness: same bytes as the plain file, and they decode to the source pixels.
    sop, path, source = rows[pick[0]]
    (stream,) = run.result
    assert stream == _read(path)
    for sop, _, source in rows[:3]:
        (stream,) = archive.frames(sop, [0])
        want = pydicom.dcmread(source).pixel_array
        back = imagecodecs.htj2k_decode(stream).reshape(want.shape)
        assert np.array_equal(back.view(want.dtype), want)

    size = sum(Path(p).stat().st_size for _, p, _ in rows) / len(rows)
    p50_a, p50_b = benchlib.median(run.subject), benchlib.median(run.baseline)
    p99_a = benchlib.percentile(run.subject, 99)
    mbs_a, mbs_b = size / p50_a / 1e6, size / p50_b / 1e6
    benchlib.report(
        benchmark, f"frame 0 retrieval, {KINDS[kind]}: Archive.frames / plain file read",
        subject=f"p50 {p50_a * 1e3:.3f} ms ({mbs_a:.0f} MB/s), p99 {p99_a * 1e3:.3f} ms",
        baseline=f"open+read p50 {p50_b * 1e3:.3f} ms ({mbs_b:.0f} MB/s)",
        ratio=p50_b / p50_a, target="-",
        note=f"mean codestream {size / 1e3:.0f} KB, {len(rows)} instances, warm cache",
        p50_ms=p50_a * 1e3, plain_p50_ms=p50_b * 1e3, mb_s=mbs_a, plain_mb_s=mbs_b)
