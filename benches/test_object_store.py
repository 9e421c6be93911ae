"""The S3 frame store (issue 17.1) against the local Zarr store, same frames, same run.

1. Frame retrieval: ``Archive.frames(sop, [0])`` in the stored syntax from an archive
   whose frames are on S3 (SeaweedFS on loopback, ``weed mini``) against the same
   call on an archive with the local Zarr store holding the same frames; p50 latency;
   ratio = local p50 / S3 p50.
2. Ingest: ``Archive.store_many(CT series, workers=0)`` (one process) into a fresh S3
   prefix against a fresh local archive (fsync on); ratio = local s / S3 s.
   Target (issue): >= 0.8.
3. The client library: PUT and GET p50 of the series' raw frames through obstore,
   zarr's ObjectStore over obstore and s3fs (those installed), same server.

SeaweedFS runs on the same two cores as the benchmark (its CPU is part of the figure).
"""

from __future__ import annotations

import itertools
import random
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib
import pytest

from pacscore import Archive
from pacscore.archive import StoreResult
from pacscore.config import ArchiveConfig
from pacscore.store import StoreSpec
from pacscore.testing.s3 import SeaweedS3


def _spec(server: SeaweedS3) -> StoreSpec:
    return StoreSpec.from_url(server.url(f"bench/{uuid.uuid4().hex}"))


@pytest.fixture(scope="module")
def both(corpus: Path, seaweedfs: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Archive, Archive, list[str]]]:
    """The CT series in a local archive and in an S3 one: (local, s3, SOP UIDs)."""
    paths = benchlib.series_files(corpus, benchlib.CT_SERIES)
    if not paths or benchlib.missing(paths):
        pytest.skip("corpus CT series missing")
    base = tmp_path_factory.mktemp("object-store")
    local = Archive(base / "local", ArchiveConfig(fsync=True))
    s3 = Archive(base / "s3", ArchiveConfig(fsync=True), store=_spec(seaweedfs))
    sops = []
    for archive in (local, s3):
        results = [r for r in archive.store_many(paths, workers=0)
                   if isinstance(r, StoreResult)]
        assert len(results) == len(paths)
        sops = [r.sop_instance_uid for r in results]
    yield local, s3, sops
    local.close()
    s3.close()


def test_frame_get_s3_vs_local(benchmark: Any, both: tuple[Archive, Archive, list[str]],
                               smoke: bool) -> None:
    local, s3, sops = both
    rng = random.Random(11)
    pick = [0]

    def choose() -> None:
        pick[0] = rng.randrange(len(sops))

    run = benchlib.paired(benchmark, lambda i: s3.frames(sops[i], [0]),
                          setup=lambda: pick[0], baseline_setup=choose,
                          baseline=lambda _: local.frames(sops[pick[0]], [0]),
                          rounds=3 if smoke else 300, warmup=10)
    (stream,) = run.result
    assert [stream] == local.frames(sops[pick[0]], [0])  # the same codestream
    p50_s3, p50_local = benchlib.median(run.subject), benchlib.median(run.baseline)
    benchlib.report(
        benchmark, "frame 0 GET, CT 512x512: S3 store / local Zarr store",
        subject=f"S3 p50 {p50_s3 * 1e3:.2f} ms, p99 "
                f"{benchlib.percentile(run.subject, 99) * 1e3:.2f} ms",
        baseline=f"local p50 {p50_local * 1e3:.3f} ms", ratio=p50_local / p50_s3,
        target="-", note="SeaweedFS weed mini on loopback, same frames",
        s3_p50_ms=p50_s3 * 1e3, local_p50_ms=p50_local * 1e3)


def test_ingest_s3_vs_local(benchmark: Any, corpus: Path, seaweedfs: SeaweedS3,
                            tmp_path: Path, smoke: bool) -> None:
    paths = benchlib.series_files(corpus, benchlib.CT_SERIES)
    if not paths or benchlib.missing(paths):
        pytest.skip("corpus CT series missing")
    n = itertools.count()
    config = ArchiveConfig(fsync=True)

    def fresh(store: StoreSpec | None) -> Archive:
        d = tmp_path / f"a{next(n)}"
        return Archive(d, config, store=store)

    def done(archive: Archive) -> None:
        archive.close()
        shutil.rmtree(archive.root, ignore_errors=True)

    def ingest(archive: Archive) -> list[Any]:
        return list(archive.store_many(paths, workers=0))

    run = benchlib.paired(benchmark, ingest, setup=lambda: fresh(_spec(seaweedfs)),
                          teardown=done, baseline=ingest,
                          baseline_setup=lambda: fresh(None), baseline_teardown=done,
                          rounds=1 if smoke else 7, warmup=1)
    assert all(isinstance(r, StoreResult) and r.status == "stored" for r in run.result)
    s3_s, local_s = benchlib.median(run.subject), benchlib.median(run.baseline)
    benchlib.report(
        benchmark, "ingest CT series (30 files), workers=0: S3 store / local Zarr store",
        subject=f"S3 {len(paths) / s3_s:.1f} files/s", baseline=f"local "
        f"{len(paths) / local_s:.1f} files/s (fsync)", ratio=local_s / s3_s,
        target=">= 0.8", note="SeaweedFS weed mini on loopback, same process",
        s3_files_s=len(paths) / s3_s, local_files_s=len(paths) / local_s)


def test_client_libraries(benchmark: Any, corpus: Path, seaweedfs: SeaweedS3,
                          smoke: bool) -> None:
    """Why obstore directly: PUT and GET of the CT series' frames (raw pixel data, 512
    KB each) through obstore, zarr's ObjectStore over obstore, and s3fs, same server,
    same run; p50 per request.  The figure is obstore's GET against s3fs's."""
    import statistics
    import time

    import obstore
    import pydicom

    from pacscore.store.object_store import ObjectFrameStore

    paths = benchlib.series_files(corpus, benchlib.CT_SERIES)
    if not paths or benchlib.missing(paths):
        pytest.skip("corpus CT series missing")
    frames = [bytes(pydicom.dcmread(p).PixelData) for p in paths]
    store = StoreSpec.from_url(seaweedfs.url(f"clients/{uuid.uuid4().hex}")).open()
    assert isinstance(store, ObjectFrameStore)
    raw = store.store

    def timed(put: Any, get: Any, name: str) -> tuple[float, float]:
        puts, gets = [], []
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            put(f"{name}/{i}", frame)
            puts.append(time.perf_counter() - t0)
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            assert get(f"{name}/{i}") == frame
            gets.append(time.perf_counter() - t0)
        return statistics.median(puts), statistics.median(gets)

    clients = _clients(raw, seaweedfs, store.prefix)
    figures: dict[str, tuple[float, float]] = {}
    for round_ in range(1 if smoke else 3):
        for name, (put, get) in clients.items():
            figures[f"{name}{round_}"] = timed(put, get, f"{name}{round_}")

    def best(name: str) -> tuple[float, float] | None:
        got = [v for k, v in figures.items() if k.startswith(name)]
        return (min(p for p, _ in got), min(g for _, g in got)) if got else None

    ob, zr, sf = best("obstore"), best("zarr"), best("s3fs")
    assert ob is not None
    text = {n: f"PUT {v[0] * 1e3:.2f} ms GET {v[1] * 1e3:.2f} ms" for n, v in
            (("obstore", ob), ("zarr ObjectStore", zr), ("s3fs", sf)) if v is not None}
    benchmark.pedantic(lambda: obstore.get(raw, "obstore0/0").bytes(), rounds=1, iterations=1)
    benchlib.report(
        benchmark, "S3 client, 512 KB CT frames p50: obstore / s3fs (GET)",
        subject="; ".join(f"{n} {t}" for n, t in text.items()),
        baseline=text.get("s3fs", "s3fs not installed"),
        ratio=(sf[1] / ob[1]) if sf else 0.0, target="-",
        note="best of 3 rounds' p50; SeaweedFS on loopback")


def _clients(raw: Any, seaweedfs: SeaweedS3, prefix: str) -> dict[str, tuple[Any, Any]]:
    """(put, get) through each S3 client library installed."""
    import asyncio
    import os

    import obstore

    clients: dict[str, tuple[Any, Any]] = {
        "obstore": (lambda k, d: obstore.put(raw, k, d, mode="create"),
                    lambda k: bytes(obstore.get(raw, k).bytes()))}
    try:
        from zarr.core.buffer import cpu, default_buffer_prototype
        from zarr.storage import ObjectStore

        zs, proto = ObjectStore(raw), default_buffer_prototype()

        def zget(k: str) -> bytes:
            got = asyncio.run(zs.get(k, proto))
            assert got is not None
            return got.to_bytes()

        clients["zarr"] = (lambda k, d: asyncio.run(zs.set(k, cpu.Buffer.from_bytes(d))),
                           zget)
    except ImportError:
        pass
    try:
        import s3fs  # type: ignore[import-untyped]

        fs = s3fs.S3FileSystem(endpoint_url=seaweedfs.endpoint,
                               key=os.environ["AWS_ACCESS_KEY_ID"],
                               secret=os.environ["AWS_SECRET_ACCESS_KEY"])
        base = f"{seaweedfs.bucket}/{prefix}"
        clients["s3fs"] = (lambda k, d: fs.pipe_file(f"{base}/{k}", d),
                           lambda k: fs.cat_file(f"{base}/{k}"))
    except ImportError:
        pass
    return clients
