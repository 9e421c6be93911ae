"""FHIR ImagingStudy search latency (issue 16.6) next to the equivalent QIDO-RS in the
same run, on the same served archive.

The archive holds PATIENTS x STUDIES studies of one series of INSTANCES CT instances
(the 30-slice CT series cloned with new UIDs).  One patient's studies are asked for
round by round, alternately:

* ``ImagingStudy?patient=Patient/<id>``: a Bundle of that patient's studies with every
  series and instance (what an EMR needs to show them and open them);
* QIDO-RS ``/studies?PatientID=<id>``: the same search at study level only;
* the QIDO-RS requests that give the same content as the Bundle: studies, then each
  study's series, then each series' instances.

And one study of one 500-instance series (the issue's series size) read as
``ImagingStudy/<uid>`` next to QIDO-RS of its series and their instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib
import pydicom
import requests
from pydicom.uid import generate_uid

from pacscore import Archive
from pacscore.services.fhir.ids import PatientKey
from pacscore.testing import serving

ROUNDS = 20


def _clone(src: list[Path], out: Path, patients: int, studies: int, instances: int
           ) -> list[str]:
    paths = []
    for p in range(patients):
        for s in range(studies):
            study, series = generate_uid(), generate_uid()
            for i in range(instances):
                ds = pydicom.dcmread(src[i % len(src)])
                ds.PatientID, ds.PatientName = f"BENCH-{p:03d}", f"BENCH^P{p}"
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.StudyDate = f"2020{1 + s % 12:02d}15"
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.InstanceNumber = i + 1
                path = out / f"{p:03d}-{s:02d}-{i:03d}.dcm"
                ds.save_as(path)
                paths.append(str(path))
    return paths


def _ms(fn: Callable[[], Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def test_imaging_study_search_vs_qido(benchmark: Any, corpus: Path, smoke: bool,
                                      tmp_path: Path) -> None:
    patients, studies, instances = (2, 2, 3) if smoke else (10, 5, 20)
    src = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))
    files = tmp_path / "files"
    files.mkdir()
    paths = _clone(src, files, patients, studies, instances)
    archive = tmp_path / "archive"
    with Archive(archive) as a:
        outcomes = list(a.store_many(paths))
    assert len(outcomes) == len(paths)
    with serving(archive) as ports:
        token = (archive / "security" / "admin-token").read_text().strip()
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        root = f"http://127.0.0.1:{ports['http']}"
        patient = "BENCH-001"
        fhir_url = f"{root}/fhir/ImagingStudy?patient=Patient/{PatientKey(patient).fhir_id}"
        qido = f"{root}/dicom-web"

        def fhir() -> int:
            bundle = http.get(fhir_url, timeout=60).json()
            return sum(e["resource"]["numberOfInstances"] for e in bundle["entry"])

        def qido_studies() -> int:
            return len(http.get(f"{qido}/studies", params={"PatientID": patient},
                                timeout=60).json())

        def qido_everything() -> int:
            total = 0
            for st in http.get(f"{qido}/studies", params={"PatientID": patient},
                               timeout=60).json():
                uid = st["0020000D"]["Value"][0]
                for se in http.get(f"{qido}/studies/{uid}/series", timeout=60).json():
                    total += len(http.get(f"{qido}/studies/{uid}/series/"
                                          f"{se['0020000E']['Value'][0]}/instances",
                                          timeout=60).json())
            return total

        assert fhir() == qido_everything() == studies * instances  # same content
        assert qido_studies() == studies
        rounds = 3 if smoke else ROUNDS
        times: dict[str, list[float]] = {"fhir": [], "studies": [], "everything": []}
        for _ in range(rounds):  # alternately: the machine's noise hits all three
            times["studies"] += _ms(qido_studies, 1)
            times["everything"] += _ms(qido_everything, 1)
            times["fhir"] += _ms(fhir, 1)
        benchmark.pedantic(fhir, rounds=rounds, iterations=1)  # (its own table)
    p50 = {k: benchlib.median(v) for k, v in times.items()}
    note = (f"{patients * studies} studies x {instances} instances; p50 FHIR "
            f"{p50['fhir']:.1f} ms, QIDO studies {p50['studies']:.1f} ms, QIDO "
            f"studies+series+instances {p50['everything']:.1f} ms")
    print(note)
    benchlib.report(benchmark, "FHIR ImagingStudy?patient (with series, instances)",
                    subject="pacscore FHIR", baseline="QIDO-RS studies+series+instances",
                    ratio=p50["everything"] / p50["fhir"], target=">= 1 (not slower)",
                    note=note, fhir_ms=p50["fhir"], qido_studies_ms=p50["studies"],
                    qido_all_ms=p50["everything"])
    benchlib.report(benchmark, "FHIR ImagingStudy?patient vs study-level QIDO",
                    subject="pacscore FHIR", baseline="QIDO-RS /studies?PatientID",
                    ratio=p50["studies"] / p50["fhir"], key="ratio_studies",
                    note="QIDO answers the study level only")


def test_imaging_study_read_500_vs_qido(benchmark: Any, corpus: Path, smoke: bool,
                                        tmp_path: Path) -> None:
    n = 20 if smoke else 500
    src = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))
    files = tmp_path / "files"
    files.mkdir()
    paths = _clone(src, files, 1, 1, n)
    archive = tmp_path / "archive"
    with Archive(archive) as a:
        assert len(list(a.store_many(paths))) == n
    study = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    with serving(archive) as ports:
        token = (archive / "security" / "admin-token").read_text().strip()
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        root = f"http://127.0.0.1:{ports['http']}"

        def fhir() -> int:
            return int(http.get(f"{root}/fhir/ImagingStudy/{study}", timeout=60
                                ).json()["numberOfInstances"])

        def qido() -> int:
            base = f"{root}/dicom-web/studies/{study}"
            return sum(len(http.get(f"{base}/series/{se['0020000E']['Value'][0]}/instances",
                                    timeout=60).json())
                       for se in http.get(f"{base}/series", timeout=60).json())

        assert fhir() == qido() == n
        rounds = 3 if smoke else ROUNDS
        times: dict[str, list[float]] = {"fhir": [], "qido": []}
        for _ in range(rounds):
            times["qido"] += _ms(qido, 1)
            times["fhir"] += _ms(fhir, 1)
        benchmark.pedantic(fhir, rounds=rounds, iterations=1)
    p50 = {k: benchlib.median(v) for k, v in times.items()}
    note = f"1 series of {n} instances; p50 FHIR {p50['fhir']:.1f} ms, QIDO {p50['qido']:.1f} ms"
    print(note)
    benchlib.report(benchmark, f"FHIR ImagingStudy read, {n} instances",
                    subject="pacscore FHIR", baseline="QIDO-RS series + instances",
                    ratio=p50["qido"] / p50["fhir"], target=">= 1 (not slower)", note=note,
                    fhir_ms=p50["fhir"], qido_ms=p50["qido"])
