"""Index queries and put rate on a synthetic index built through the LmdbIndex API.

20,000 instances by default (PACSCORE_BENCH_FULL=1: 100,000; smoke run: 2,000), put in
batches of 1,000: 100 instances per series, 4 series per study, studies spread at
random over patients (about 2 studies each), study dates spread over 2020.  Every
record carries a 1 KB header blob (a real CT header packs to ~1-3 KB).

* find p50 of four queries against the 5 ms target: ratio = 5 ms / p50 (>= 1 meets
  it); the note gives p50 as a multiple of a raw LMDB get of one instance record
  measured in the same rounds (the floor).
* put rate of the last 10% of instances against the first 10%: ratio = last / first
  (target: within 10%, i.e. >= 0.9).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import pytest

from pacscore.index import InstanceRecord, LmdbIndex, StoreKind

PER_SERIES, SERIES_PER_STUDY, BATCH = 100, 4, 1000
ROOT = "1.2.826.0.1.3680043.10.1234"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MODALITIES = ("CT", "CT", "PT", "CT")
HEADER = bytes(range(256)) * 4
TARGET_S = 0.005


@dataclass
class Synthetic:
    """The built index and what it holds."""

    index: LmdbIndex
    n: int
    batch_seconds: list[float]
    patients: dict[str, list[str]] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)
    series: list[str] = field(default_factory=list)
    sops: list[str] = field(default_factory=list)
    next_study: int = 0
    n_patients: int = 1
    rng: random.Random = field(default_factory=lambda: random.Random(2020))


def _study_attrs(s: int, patient: int, date: str) -> dict[str, Any]:
    return {"PatientID": f"PID{patient:07d}", "PatientName": f"DOE^PATIENT{patient}",
            "PatientBirthDate": "19600101", "PatientSex": "O",
            "StudyInstanceUID": f"{ROOT}.{s}", "StudyDate": date, "StudyTime": "120000",
            "AccessionNumber": f"ACC{s:08d}", "StudyDescription": "CHEST",
            "ReferringPhysicianName": "", "StudyID": str(s)}


def _records(syn: Synthetic, count: int) -> Iterator[InstanceRecord]:
    """``count`` instances (whole studies) continuing the numbering of ``syn``."""
    per_study, rng = PER_SERIES * SERIES_PER_STUDY, syn.rng
    for _ in range(count // per_study):
        s = syn.next_study
        syn.next_study += 1
        patient = rng.randrange(syn.n_patients)
        day = 1 + rng.randrange(366)
        date = time.strftime("%Y%m%d", time.strptime(f"2020 {day}", "%Y %j"))
        study = _study_attrs(s, patient, date)
        syn.patients.setdefault(study["PatientID"], []).append(study["StudyInstanceUID"])
        syn.dates[study["StudyInstanceUID"]] = date
        for e in range(SERIES_PER_STUDY):
            series_uid = f"{ROOT}.{s}.{e + 1}"
            syn.series.append(series_uid)
            for i in range(PER_SERIES):
                sop = f"{series_uid}.{i + 1}"
                syn.sops.append(sop)
                attrs = {**study, "SeriesInstanceUID": series_uid,
                         "Modality": MODALITIES[e], "SeriesNumber": str(e + 1),
                         "SeriesDescription": "AXIAL", "SeriesDate": date,
                         "SOPInstanceUID": sop, "SOPClassUID": CT_CLASS,
                         "InstanceNumber": str(i + 1), "NumberOfFrames": None}
                yield InstanceRecord(
                    sop_instance_uid=sop, sop_class_uid=CT_CLASS,
                    study_uid=study["StudyInstanceUID"], series_uid=series_uid,
                    attributes=attrs, original_syntax="1.2.840.10008.1.2.1",
                    stored_syntax="1.2.840.10008.1.2.4.202", kind=StoreKind.FRAMES,
                    location=uuid.UUID(int=rng.getrandbits(128)).hex,
                    sha256=f"{rng.getrandbits(256):064x}", bytes_in=527_296,
                    bytes_stored=190_000 + rng.randrange(20_000),
                    layout={"rows": 512, "columns": 512, "samples": 1, "frames": 1,
                            "bits_allocated": 16, "bits_stored": 12, "high_bit": 11,
                            "signed": True, "photometric": "MONOCHROME2", "planar": False},
                    frame_crc32=(rng.getrandbits(32),))


def _size(smoke: bool) -> int:
    if smoke:
        return 2_000
    return 100_000 if benchlib.full_mode() else 20_000


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory, smoke: bool) -> Iterator[Synthetic]:
    n = _size(smoke)
    index = LmdbIndex(tmp_path_factory.mktemp("find") / "index.lmdb")
    syn = Synthetic(index, n, [], n_patients=max(1, n // (PER_SERIES * SERIES_PER_STUDY) // 2))
    batch: list[tuple[InstanceRecord, bytes]] = []

    def flush() -> None:
        t0 = time.perf_counter()
        outcomes = index.put(batch)
        syn.batch_seconds.append(time.perf_counter() - t0)
        assert all(o.status == "stored" for o in outcomes)
        batch.clear()

    for rec in _records(syn, n):
        batch.append((rec, HEADER))
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    yield syn
    index.close()


def test_put_rate_first_vs_last_10pct(benchmark: Any, synthetic: Synthetic, smoke: bool
                                      ) -> None:
    syn = synthetic
    tenth = max(1, len(syn.batch_seconds) // 10)
    first = tenth * BATCH / sum(syn.batch_seconds[:tenth])
    last = tenth * BATCH / sum(syn.batch_seconds[-tenth:])
    assert syn.index.stats()["instances"] == syn.n

    # Timed here: one more batch (3 new studies, 1,200 instances) into the full index.
    extra_n = 3 * PER_SERIES * SERIES_PER_STUDY

    def setup() -> list[tuple[InstanceRecord, bytes]]:
        return [(r, HEADER) for r in _records(syn, extra_n)]

    run = benchlib.paired(benchmark, syn.index.put, setup=setup,
                          rounds=1 if smoke else 3, warmup=0)
    assert all(o.status == "stored" for o in run.result)
    extra = extra_n / benchlib.median(run.subject)
    benchlib.report(
        benchmark, f"index put rate, last 10% / first 10% of {syn.n:,} instances",
        subject=f"last 10% {last:,.0f} inst/s", baseline=f"first 10% {first:,.0f} inst/s",
        ratio=last / first, target=">= 0.9",
        note=f"batches of {BATCH}, LMDB sync on; one more batch of 1,200 into the full index: "
             f"{extra:,.0f} inst/s",
        first_rate=first, last_rate=last, extra_batch_rate=extra)


Query = Callable[[Synthetic, random.Random], tuple[str, dict[str, str], int]]


def _by_patient(s: Synthetic, r: random.Random) -> tuple[str, dict[str, str], int]:
    pid = r.choice(sorted(s.patients))
    return "study", {"PatientID": pid}, len(s.patients[pid])


def _by_date(s: Synthetic, r: random.Random) -> tuple[str, dict[str, str], int]:
    low, high = "20200101", "20200131"
    return ("study", {"StudyDate": f"{low}-{high}"},
            sum(1 for d in s.dates.values() if low <= d <= high))


def _by_series(s: Synthetic, r: random.Random) -> tuple[str, dict[str, str], int]:
    return "instance", {"SeriesInstanceUID": r.choice(s.series)}, PER_SERIES


def _by_sop(s: Synthetic, r: random.Random) -> tuple[str, dict[str, str], int]:
    return "instance", {"SOPInstanceUID": r.choice(s.sops)}, 1


QUERIES: dict[str, Query] = {
    "study_by_PatientID": _by_patient,
    "study_by_StudyDate_range": _by_date,
    "instance_by_SeriesInstanceUID": _by_series,
    "instance_by_SOPInstanceUID": _by_sop,
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_find_p50_vs_5ms(benchmark: Any, synthetic: Synthetic, smoke: bool,
                         query: str) -> None:
    syn = synthetic
    rng = random.Random(query)
    make = QUERIES[query]
    env, inst_db = syn.index.env, syn.index.dbs[b"inst"]
    checked: list[int] = []

    def floor(_: Any) -> None:  # raw LMDB read of one instance record
        with env.begin() as txn:
            txn.get(rng.choice(syn.sops).encode(), db=inst_db)

    def setup() -> tuple[str, dict[str, str], int]:
        return make(syn, rng)

    def subject(q: tuple[str, dict[str, str], int]) -> list[dict[str, Any]]:
        level, keys, expect = q
        out = syn.index.find(level, keys)
        checked.append(len(out) - expect)
        return out

    run = benchlib.paired(benchmark, subject, setup=setup, baseline=floor,
                          rounds=3 if smoke else 300, warmup=5)
    assert run.result, "query matched nothing"
    assert not any(checked), f"wrong match counts (found - expected): {set(checked)}"
    p50, p99 = benchlib.median(run.subject), benchlib.percentile(run.subject, 99)
    floor_p50 = benchlib.median(run.baseline)
    level, keys, _ = make(syn, random.Random(0))
    benchlib.report(
        benchmark, f"find {level} by {next(iter(keys))} ({syn.n:,} instances)",
        subject=f"p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms",
        baseline="5 ms target", ratio=TARGET_S / p50, target=">= 1",
        note=f"{len(run.result)} matches; p50 = {p50 / floor_p50:.0f}x a raw LMDB get "
             f"({floor_p50 * 1e6:.0f} us)",
        p50_ms=p50 * 1e3, p99_ms=p99 * 1e3, lmdb_get_us=floor_p50 * 1e6)


def test_index_built(synthetic: Synthetic) -> None:
    """Sanity: the hierarchy counts of the synthetic index."""
    idx = synthetic.index
    studies = idx.find("study", {})
    assert len(studies) == synthetic.next_study  # the put test may have added some
    assert all(s["NumberOfStudyRelatedSeries"] == SERIES_PER_STUDY for s in studies)
    assert Path(idx.path).is_dir()
