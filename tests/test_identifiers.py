"""Patient identity and identifying values, as a user and a modality see them.

Audit 14.11: objects without a Patient ID were merged into one patient (``find --level
patient`` listed one "None" under the first one's name).  Audit 19.6: a Patient ID over
LMDB's key limit killed ``import`` with a traceback and, under ``serve``, failed every
other sender's instances of the same group commit (0xC211).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from pacscore import Archive, ArchiveConfig
from pacscore.errors import InvalidDicomError
from pacscore.testing import cli, serving

DCMTK = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK keeps Nagle on otherwise (FACTS.md)
needs_dcmtk = pytest.mark.skipif(not (DCMTK / "storescu").exists(),
                                 reason="DCMTK not installed (apt-get install dcmtk)")


def run(*args: str) -> tuple[int, Any, str]:
    proc = subprocess.run([sys.executable, "-m", "pacscore.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False)
    out = json.loads(proc.stdout) if "--json" in args else proc.stdout
    return proc.returncode, out, proc.stderr


def read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def variant(src: Path, dst: Path, *, new_study: bool = True, **values: Any) -> Path:
    """A copy of ``src`` with new UIDs (a new study unless told) and ``values`` set
    (None deletes the attribute)."""
    ds = read(src)
    if new_study:
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # pydicom warns about values over their maximum
        warnings.simplefilter("ignore")
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(dst)
    return dst


@pytest.fixture()
def ct(corpus: Path) -> Path:
    return corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm"


@pytest.fixture()
def no_id_archive(tmp_path: Path, ct: Path) -> Path:
    """The audit's case: seven patients without a Patient ID, imported."""
    for i in range(7):
        variant(ct, tmp_path / "in" / f"{i}.dcm", PatientID=None,
                PatientName=f"PERSON{i}^X", PatientBirthDate=f"1970010{i}")
    code, _, err = run("import", str(tmp_path / "in"), "--archive", str(tmp_path / "a"))
    assert code == 0, err
    return tmp_path / "a"


def test_patients_without_a_patient_id_stay_apart(no_id_archive: Path) -> None:
    archive = str(no_id_archive)
    code, out, _ = run("find", "--archive", archive, "--level", "patient", "--json")
    assert code == 0
    assert sorted(m["PatientName"] for m in out["matches"]) == [
        f"PERSON{i}^X" for i in range(7)]
    assert {m["PatientID"] for m in out["matches"]} == {None}
    for i in (0, 3, 6):
        for level in ("patient", "study"):
            code, found, _ = run("find", "--archive", archive, "--level", level,
                                 f"PatientName=PERSON{i}^X", "--json")
            assert [m["PatientBirthDate"] for m in found["matches"]] == [f"1970010{i}"]
    _, text, _ = run("find", "--archive", archive, "--level", "patient",
                     "PatientName=PERSON3^X")
    assert text.startswith("-  PatientName=PERSON3^X")  # no key shown as an ID


@needs_dcmtk
def test_cfind_patient_level_returns_each_patient_without_an_id(no_id_archive: Path
                                                                 ) -> None:
    """C-FIND Patient Root, PATIENT level (DCMTK findscu): each patient without an ID
    is its own match, with an empty Patient ID."""
    cli("ae", "add", "VIEWER", "--host", "127.0.0.1", "--rights", "echo,find",
        "--archive", str(no_id_archive))
    with serving(no_id_archive) as ports:
        found = subprocess.run(
            [str(DCMTK / "findscu"), "-aet", "VIEWER", "-aec", "PACSCORE", "-P",
             "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID", "-k", "PatientName=PERSON*",
             "-k", "PatientBirthDate=19700105", "-k", "NumberOfPatientRelatedStudies",
             "127.0.0.1", str(ports["dimse"])],
            capture_output=True, text=True, env=ENV, timeout=60, check=False)
    assert found.returncode == 0, found.stderr
    responses = found.stderr.split("Find Response:")[1:]
    pending = [r for r in responses if "(0010,0010)" in r]
    assert len(pending) == 1
    assert "[PERSON5^X" in pending[0] and "[19700105]" in pending[0]
    assert "(0010,0020) LO (no value available)" in pending[0]


def test_import_refuses_an_overlong_patient_id_and_stores_the_others(
        tmp_path: Path, corpus: Path) -> None:
    """One instance with a 600-character Patient ID among good ones: the others are
    stored, it is refused with the reason, exit 1, no traceback, nothing staged."""
    series = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))
    tree = tmp_path / "in"
    for p in series[:8]:
        (tree / p.name).parent.mkdir(parents=True, exist_ok=True)
        (tree / p.name).write_bytes(p.read_bytes())
    variant(series[8], tree / "long_id.dcm", PatientID="L" * 600)
    variant(series[9], tree / "long_issuer.dcm", IssuerOfPatientID="I" * 65)
    archive = tmp_path / "a"
    code, out, err = run("import", str(tree), "--archive", str(archive), "--json",
                         "--workers", "1")
    assert code == 1 and "Traceback" not in err
    assert out["stored"] == 8
    reasons = {Path(r["path"]).name: r["reason"] for r in out["rejected"]}
    assert set(reasons) == {"long_id.dcm", "long_issuer.dcm"}
    assert "Patient ID (0010,0020) is 600 characters long" in reasons["long_id.dcm"]
    assert "at most 64" in reasons["long_id.dcm"]
    assert "Issuer of Patient ID (0010,0021) is 65" in reasons["long_issuer.dcm"]
    assert list((archive / "frames" / "staging").iterdir()) == []
    _, stats, _ = run("stats", "--archive", str(archive), "--json")
    assert stats["instances"] == 8


def test_values_over_their_vr_maximum_are_kept_and_noted(tmp_path: Path, ct: Path) -> None:
    """Values other than the patient's identifiers over their VR maximum (PS3.5 Table
    6.2-1) are kept as received with a warning, and still matched; an identifier too
    long to be read at all (over 64 KiB) is refused."""
    accession = "A" * 300  # SH allows 16; real anonymisers write 56-character hashes
    description = "D" * 70_000  # LO allows 64; not even captured
    data = variant(ct, tmp_path / "long.dcm", AccessionNumber=accession,
                   StudyDescription=description).read_bytes()
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        result = archive.store(data)
        assert any("AccessionNumber (0008,0050) has a value of 300 characters, over the 16"
                   in w for w in result.warnings)
        assert any("StudyDescription (0008,1030) of 70000 bytes" in w
                   for w in result.warnings)
        assert archive.get(result.sop_instance_uid) == data
        [study] = archive.find("study", AccessionNumber=accession)
        assert study["StudyInstanceUID"] == result.study_uid
        assert archive.find("study", AccessionNumber="A" * 299 + "*") == [study]
        huge_id = variant(ct, tmp_path / "huge_id.dcm", PatientID="P" * 70_000)
        with pytest.raises(InvalidDicomError, match=r"Patient ID \(0010,0020\) is 70000 "
                                                    r"bytes long"):
            archive.store(huge_id)
        assert archive.stats()["instances"] == 1
        assert list(archive.store_.staging.iterdir()) == []


def _storescu(port: int, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DCMTK / "storescu"), "-aet", "MODALITY", "-aec", "PACSCORE", "-v", "+sd",
         "127.0.0.1", str(port), str(folder)],
        capture_output=True, text=True, env=ENV, timeout=600, check=False)


@needs_dcmtk
@pytest.mark.slow
def test_serve_one_bad_sender_never_fails_the_others(tmp_path: Path, corpus: Path) -> None:
    """Four DCMTK associations store 120 good CT instances while a fifth sends instances
    with a 600-character Patient ID: every good one is stored (0x0000), each bad one is
    refused with the reason, and nothing stays staged after a clean stop."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    series = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))
    for sender in range(4):
        study, series_uid = generate_uid(), generate_uid()
        for p in series:
            variant(p, tmp_path / f"good{sender}" / p.name, new_study=False,
                    StudyInstanceUID=study, SeriesInstanceUID=series_uid)
    bad = [read(variant(series[i % len(series)], tmp_path / "bad" / f"{i}.dcm",
                        PatientID="L" * 600)) for i in range(40)]
    archive = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    cli("ae", "add", "BADSENDER", "--host", "127.0.0.1", "--archive", str(archive))
    statuses: list[int] = []

    def send_bad(port: int) -> None:
        ae = AE(ae_title="BADSENDER")
        ae.add_requested_context(CTImageStorage, str(bad[0].file_meta.TransferSyntaxUID))
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
        assert assoc.is_established
        try:
            for ds in bad:
                response = assoc.send_c_store(ds)  # empty when the association failed
                statuses.append(int(response.Status) if "Status" in response else -1)
        finally:
            assoc.release()

    with serving(archive) as ports:
        port = ports["dimse"]
        results: list[subprocess.CompletedProcess[str]] = []
        threads = [threading.Thread(target=lambda s=s: results.append(
            _storescu(port, tmp_path / f"good{s}"))) for s in range(4)]
        threads.append(threading.Thread(target=send_bad, args=(port,)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stderr.count("Received Store Response (Success)") == 30, r.stderr[-2000:]
    assert len(statuses) == 40 and set(statuses) == {0xC000}
    _, stats, _ = run("stats", "--archive", str(archive), "--json")
    assert stats["instances"] == 120
    events = [json.loads(line) for line in
              (archive / "audit" / "audit.jsonl").read_text().splitlines()]
    refusals = [e for e in events if e.get("user") == "BADSENDER"
                and "Patient ID (0010,0020) is 600 characters long" in str(e.get("detail"))]
    assert len(refusals) == 40
    assert list((archive / "frames" / "staging").iterdir()) == []
