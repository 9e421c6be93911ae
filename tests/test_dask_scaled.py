"""``pacscore import --dask`` into the scaled archive (issue 17.4): the Dask workers (a
real LocalCluster of worker processes) stage the frames straight into the object store
(a real SeaweedFS), the importing process commits them into the index (a real
PostgreSQL 15); every instance retrieves byte-identical, nothing staged is left."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psycopg")
from pacscore import Archive, ArchiveConfig
from pacscore.cli import main
from pacscore.store import StoreSpec
from pacscore.testing.postgres import postgres_dsn, postgres_server  # noqa: F401
from pacscore.testing.s3 import FaultProxy, SeaweedS3

distributed = pytest.importorskip("distributed")


@pytest.fixture()
def cluster() -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                         dashboard_address=":0")
    try:
        yield local
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local.close()


def _import(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["import", *args, "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_import_on_dask_into_postgres_and_s3(tmp_path: Path, corpus: Path,
                                             seaweedfs: SeaweedS3, cluster: Any,
                                             postgres_dsn: str,  # noqa: F811
                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl"
    files = sorted(src.glob("*.dcm"))[:12]
    folder = tmp_path / "in"
    folder.mkdir()
    for f in files:
        shutil.copyfile(f, folder / f.name)
    extra = corpus / "multiframe/us_cine/HP_echo_34fr_jpeg.dcm"  # kept as received
    shutil.copyfile(extra, folder / extra.name)
    url = seaweedfs.url(f"dask/{uuid.uuid4().hex}")
    with FaultProxy(seaweedfs.endpoint) as proxy:  # to see who talks to the store
        via = url.replace(seaweedfs.endpoint, proxy.endpoint)
        code, report = _import(capsys, str(folder), "--archive", str(tmp_path / "fe"),
                               "--store", via, "--index", postgres_dsn,
                               "--dask", cluster.scheduler_address)
        puts = [path for method, path, status in proxy.seen
                if method == "PUT" and "/arrays/" in path and status == 200]
        # again: every file is a duplicate, decided by the shared index
        code2, again = _import(capsys, str(folder), "--archive", str(tmp_path / "fe"),
                               "--store", via, "--index", postgres_dsn,
                               "--dask", cluster.scheduler_address)
    assert code == 0, report
    assert (report["files"], report["stored"], report["failed"]) == (13, 13, [])
    assert code2 == 0 and (again["stored"], again["duplicates"]) == (0, 13)
    assert len(puts) >= 12 * 2  # each CT: its zarr.json and its frame (the echo: a blob)
    # staged by the Dask workers: each worker process opened the S3 store itself
    with distributed.Client(cluster.scheduler_address) as client:
        opened = client.run(lambda: "pacscore.store.object_store" in __import__("sys").modules)
    assert list(opened.values()) == [True, True]
    with Archive(tmp_path / "fe2", ArchiveConfig(prepare_workers=0, fsync=False),
                 store=StoreSpec.from_url(url), index=postgres_dsn) as a:
        assert a.stats()["instances"] == 13
        for f in [*files, extra]:
            sop = a.identify(f.read_bytes(), str(f))
            assert sop is not None
            data = a.get(sop.sop_instance_uid, "original")
            assert hashlib.sha256(data).digest() == hashlib.sha256(f.read_bytes()).digest()
        assert a.store_.staged() == []  # every staged location was published
        assert a.verify().failed == []
