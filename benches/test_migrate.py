"""``pacscore migrate`` (issue 17.5): an embedded archive (CT 30 slices + MPRAGE 170
slices, HTJ2K, fsync on) copied into the scaled archive (PostgreSQL 15 with durable
settings + SeaweedFS on loopback) against the same copy into another embedded folder,
same run; every instance checked in the source (decoded against its CRC-32s) and read
back from the target.  Ratio = embedded-target seconds / scaled-target seconds.

PostgreSQL, SeaweedFS and the migration share the same two cores.
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.archive import StoreResult
from pacscore.testing.s3 import SeaweedS3

pytest.importorskip("psycopg")

from pacscore.jobs.migrate import Endpoint, MigrateReport, migrate
from pacscore.testing.postgres import PostgresServer, start_postgres

DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    try:
        started = start_postgres(settings=DURABLE)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with started:
        yield started


@pytest.fixture(scope="module")
def source(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    paths = [*benchlib.series_files(corpus, benchlib.CT_SERIES),
             *benchlib.series_files(corpus, benchlib.MR_SERIES)]
    if not paths or benchlib.missing(paths):
        pytest.skip("corpus series missing")
    root = tmp_path_factory.mktemp("migrate") / "a"
    with Archive(root, ArchiveConfig(fsync=True)) as a:
        stored = [r for r in a.store_many(paths, workers=0) if isinstance(r, StoreResult)]
    assert len(stored) == len(paths)
    return root, len(paths)


def test_migrate_to_scaled_vs_embedded(benchmark: Any, source: tuple[Path, int],
                                       server: PostgresServer, seaweedfs: SeaweedS3,
                                       tmp_path: Path, smoke: bool) -> None:
    root, n = source
    count = itertools.count()
    reports: list[MigrateReport] = []

    def scaled_target() -> tuple[str, str]:
        return (server.dsn_of(server.create_database()),
                seaweedfs.url(f"migrate/{uuid.uuid4().hex}"))

    def embedded_target() -> Path:
        return tmp_path / f"t{next(count)}"

    def to_scaled(target: tuple[str, str]) -> MigrateReport:
        report = migrate(Endpoint.parse([str(root)]), Endpoint.parse(list(target)))
        reports.append(report)
        return report

    def to_embedded(target: Path) -> MigrateReport:
        return migrate(Endpoint.parse([str(root)]), Endpoint.parse([str(target)]))

    run = benchlib.paired(benchmark, to_scaled, setup=scaled_target, baseline=to_embedded,
                          baseline_setup=embedded_target,
                          baseline_teardown=lambda t: shutil.rmtree(t, ignore_errors=True),
                          rounds=1 if smoke else 3, warmup=0)
    report = run.result
    assert report.copied == n and report.mismatches == []
    mb = report.bytes_copied / 1e6
    scaled_s, local_s = benchlib.median(run.subject), benchlib.median(run.baseline)
    benchlib.report(
        benchmark, f"migrate {n} instances ({mb:.1f} MB stored): embedded -> PostgreSQL "
                   f"+ S3 / embedded -> embedded",
        subject=f"scaled {n / scaled_s:.0f} inst/s, {mb / scaled_s:.1f} MB/s",
        baseline=f"embedded {n / local_s:.0f} inst/s, {mb / local_s:.1f} MB/s",
        ratio=local_s / scaled_s, target="-",
        note="source decoded against its CRC-32s, target read back; PG durable, "
             "SeaweedFS on loopback", scaled_inst_s=n / scaled_s,
        local_inst_s=n / local_s, mb=mb)
