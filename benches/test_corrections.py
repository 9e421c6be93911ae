"""The cost of the patient corrections overlay (issue 16.4) on queries: the same
synthetic archive twice (5,000 studies of one instance, 2,500 patients; smoke run:
500 studies), one of them with corrections of 1% of its patients (half renamed, half
merged into another), queried in the same rounds, alternately.

* ``Archive.query`` (the core, every door's path): p50 with corrections / without,
  for a query by Patient ID, by a Patient Name prefix (both matched by the overlay
  for corrected patients) and by a study date range (no patient key: the index's
  page, shown corrected).
* QIDO-RS ``/studies?PatientID=...`` over HTTP against two ``pacscore serve``, one per
  archive: the same ratio as a viewer sees it.
* ``Archive.get`` of a real CT slice of a corrected patient against the same slice
  uncorrected (what writing the corrected attributes into a served object costs).
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib
import pytest
import requests

from pacscore import Archive, ArchiveConfig
from pacscore.index import InstanceRecord, LmdbIndex, StoreKind
from pacscore.testing import serve_process

ROOT = "1.2.826.0.1.3680043.10.5678"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _records(studies: int) -> Iterator[tuple[InstanceRecord, bytes]]:
    rng = random.Random(16)
    for s in range(studies):
        p = s // 2
        day = 1 + rng.randrange(365)
        attrs = {"PatientID": f"PID{p:07d}", "PatientName": f"DOE^PATIENT{p}",
                 "PatientBirthDate": "19600101", "PatientSex": "O",
                 "StudyInstanceUID": f"{ROOT}.{s}",
                 "StudyDate": time.strftime("%Y%m%d", time.strptime(f"2020 {day}", "%Y %j")),
                 "SeriesInstanceUID": f"{ROOT}.{s}.1", "Modality": "CT",
                 "SOPInstanceUID": f"{ROOT}.{s}.1.1", "SOPClassUID": CT}
        yield InstanceRecord(
            sop_instance_uid=attrs["SOPInstanceUID"], sop_class_uid=CT,
            study_uid=attrs["StudyInstanceUID"], series_uid=attrs["SeriesInstanceUID"],
            attributes=attrs, original_syntax="1.2.840.10008.1.2.1",
            stored_syntax="1.2.840.10008.1.2.1", kind=StoreKind.BLOB,
            location=f"{s:032x}", sha256=f"{s:064x}", bytes_in=1000,
            bytes_stored=1000), b"\0" * 1024


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, smoke: bool
             ) -> Iterator[tuple[Archive, Archive, int]]:
    studies = 500 if smoke else 5_000
    plain = tmp_path_factory.mktemp("plain") / "archive"
    plain.mkdir()
    index = LmdbIndex(plain / "index.lmdb")
    batch = list(_records(studies))
    for i in range(0, len(batch), 1000):
        index.put(batch[i:i + 1000])
    index.close()
    corrected = plain.parent.parent / "corrected"
    shutil.copytree(plain, corrected)
    a, b = Archive(plain), Archive(corrected)  # both writers: the same code paths
    patients = studies // 2
    chosen = random.Random(5).sample(range(patients), max(2, patients // 100))
    for n, p in enumerate(chosen):
        if n % 2:
            b.patients.merge(f"PID{p:07d}", f"PID{(p + 1) % patients:07d}", by="bench")
        else:
            b.patients.correct(f"PID{p:07d}", {"PatientName": f"ROE^CORRECTED{p}"}, by="bench")
    yield a, b, patients
    a.close()
    b.close()


# Keys from 40 patients: the matcher's compiled patterns (an LRU cache) are warm for
# both sides after the warm-up, so neither pays a compilation the other does not.
QUERIES = {
    "PatientID": lambda r, n: {"PatientID": f"PID{r.randrange(0, n, n // 40):07d}"},
    "PatientName prefix": lambda r, n: {"PatientName":
                                        f"DOE^PATIENT{r.randrange(0, n, n // 40)}*"},
    "StudyDate range": lambda r, n: {"StudyDate": "20200101-20200110"},
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_archive_query_with_vs_without_corrections(benchmark: Any, archives: Any,
                                                   smoke: bool, query: str) -> None:
    plain, corrected, patients = archives
    rng, same = random.Random(query), random.Random(query)  # the same keys for both
    make = QUERIES[query]
    run = benchlib.paired(
        benchmark, lambda keys: corrected.query("study", keys, limit=None, offset=0),
        setup=lambda: make(rng, patients),
        baseline=lambda keys: plain.query("study", keys, limit=None, offset=0),
        baseline_setup=lambda: make(same, patients), rounds=3 if smoke else 200, warmup=50)
    with_, without = benchlib.median(run.subject), benchlib.median(run.baseline)
    assert run.result, "the query matched nothing"
    benchlib.report(
        benchmark, f"Archive.query study by {query}, {len(corrected.patients.table().served)} "
                   f"corrected of {patients:,} patients",
        subject=f"with corrections p50 {with_ * 1e3:.3f} ms",
        baseline=f"without p50 {without * 1e3:.3f} ms", ratio=with_ / without,
        target="informative", note=f"same index, alternating rounds; last answer "
                                   f"{len(run.result)} studies",
        with_ms=with_ * 1e3, without_ms=without * 1e3)


def test_qido_with_vs_without_corrections(benchmark: Any, archives: Any, smoke: bool
                                          ) -> None:
    plain, corrected, patients = archives
    roots = [plain.root, corrected.root]
    plain.close()
    corrected.close()  # the servers take the archives
    rng, same = random.Random(1), random.Random(1)  # the same keys for both
    with serve_process(roots[0], doors=("dimse", "http", "grpc")) as (_, p0), \
            serve_process(roots[1], doors=("dimse", "http", "grpc")) as (_, p1):
        sessions = []
        for root, ports in ((roots[0], p0), (roots[1], p1)):
            s = requests.Session()
            token = (root / "security" / "admin-token").read_text().strip()
            s.headers["Authorization"] = f"Bearer {token}"
            sessions.append((s, f"http://127.0.0.1:{ports['http']}/dicom-web/studies"))

        def ask(which: int) -> Any:
            def run(pid: str) -> int:
                s, url = sessions[which]
                r = s.get(url, params={"PatientID": pid}, timeout=30)
                assert r.status_code in (200, 204)
                return r.status_code
            return run

        run = benchlib.paired(
            benchmark, ask(1), setup=lambda: f"PID{rng.randrange(patients):07d}",
            baseline=ask(0), baseline_setup=lambda: f"PID{same.randrange(patients):07d}",
            rounds=3 if smoke else 200, warmup=3)
    with_, without = benchlib.median(run.subject), benchlib.median(run.baseline)
    benchlib.report(
        benchmark, f"QIDO-RS /studies?PatientID over HTTP, {patients:,} patients",
        subject=f"with corrections p50 {with_ * 1e3:.2f} ms",
        baseline=f"without p50 {without * 1e3:.2f} ms", ratio=with_ / without,
        target="informative", note="two pacscore serve, same index, alternating",
        with_ms=with_ * 1e3, without_ms=without * 1e3)


@pytest.mark.parametrize("syntax", ["stored", "1.2.840.10008.1.2.1"])
def test_get_with_vs_without_correction(benchmark: Any, corpus: Path, smoke: bool,
                                        tmp_path: Path, syntax: str) -> None:
    """``Archive.get`` of a CT slice (512x512, stored HTJ2K) of a corrected patient
    against the same slice in an archive without corrections: the cost of writing the
    corrected attributes into the served object."""
    path = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[0]
    plain = Archive(tmp_path / "plain", ArchiveConfig(prepare_workers=0))
    corrected = Archive(tmp_path / "corrected", ArchiveConfig(prepare_workers=0))
    try:
        sop = plain.store(path).sop_instance_uid
        corrected.store(path)
        corrected.patients.correct("Lung_Dx-A0002", {"PatientName": "ROE^JANE"})
        run = benchlib.paired(benchmark, lambda _: corrected.get(sop, syntax),
                              baseline=lambda _: plain.get(sop, syntax),
                              rounds=3 if smoke else 100, warmup=3)
        assert b"ROE^JANE" in run.result
    finally:
        plain.close()
        corrected.close()
    with_, without = benchlib.median(run.subject), benchlib.median(run.baseline)
    benchlib.report(
        benchmark, f"Archive.get({syntax}) of a CT slice, corrected patient vs not",
        subject=f"corrected p50 {with_ * 1e3:.3f} ms",
        baseline=f"not corrected p50 {without * 1e3:.3f} ms", ratio=with_ / without,
        target="informative", note=f"{len(run.result):,} bytes served",
        with_ms=with_ * 1e3, without_ms=without * 1e3)
