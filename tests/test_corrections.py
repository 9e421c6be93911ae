"""Patient corrections as an overlay (issue 16.4): what ``Archive.query``, ``get``,
``header`` and the series metadata serve after a correction, a merge and an undo,
while ``get(uid, "original")`` stays the object as received (SHA-256)."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacscore import Archive, ArchiveConfig, ConflictError, NotFoundError
from pacscore.errors import InvalidRequestError
from pacscore.metadata import SeriesMetadata
from pacscore.testing import cli

SYNTAXES = ("stored", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.80")


def read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def stored(tmp_path: Path, corpus: Path, workflow_index: str | None
           ) -> Iterator[tuple[Archive, dict[str, list[Path]]]]:
    """Three patients: 99000 (JANCT000, implicit VR, no character set), Lung_Dx-A0002
    (explicit VR, ISO_IR 100) and PGBM-001."""
    files = {"99000": sorted((corpus / "ct_series/dcmqi_ge_ct_3slice").glob("*.dcm")),
             "Lung_Dx-A0002": sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl")
                                     .glob("*.dcm"))[:2],
             "PGBM-001": sorted((corpus / "mr_series/tcia_brain_t1post_24sl")
                                .glob("*.dcm"))[:1]}
    archive = Archive(tmp_path / "archive", ArchiveConfig(prepare_workers=0),
                      index=workflow_index)
    for paths in files.values():
        for p in paths:
            archive.store(p)
    yield archive, files
    archive.close()


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_correction_is_served_everywhere_and_undone(stored: tuple[Archive, dict[str, list[Path]]]
                                                    ) -> None:
    archive, files = stored
    path = files["99000"][0]
    sop, original = _sop(path), path.read_bytes()
    meta = SeriesMetadata(archive, quiet=60)
    try:
        series = str(read(original).SeriesInstanceUID)
        before = json.loads(meta.series(series))  # cached from here on
        assert before[0]["00100010"]["Value"] == [{"Alphabetic": "JANCT000"}]
        stamp = archive.patients.stamp()
        number = archive.patients.correct(
            "99000", {"PatientName": "ROE^JANE", "PatientBirthDate": "19800102",
                      "PatientSex": "F"}, by="test")
        assert number == archive.patients.stamp() == stamp + 1
        # queries: the new values match, the old name no longer does
        (study,) = archive.find("study", PatientName="roe*")
        assert (study["PatientID"], study["PatientName"], study["PatientSex"]) == \
            ("99000", "ROE^JANE", "F")
        assert archive.find("study", PatientName="JANCT000") == []
        assert archive.find("study", PatientBirthDate="19800101-19800131")
        assert [p["PatientName"] for p in archive.find("patient", PatientID="99000")] == \
            ["ROE^JANE"]
        assert len(archive.find("instance", PatientName="ROE^JANE")) == 3
        # retrieved objects, in every syntax but "original"
        for ts in SYNTAXES:
            ds = read(archive.get(sop, ts))
            assert (str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == \
                ("ROE^JANE", "19800102", "F"), ts
            assert np.array_equal(ds.pixel_array, read(original).pixel_array), ts
        assert sha(archive.get(sop, "original")) == sha(original)
        assert read(archive.header(sop)).PatientName == "ROE^JANE"
        assert archive.attributes(sop, ["PatientBirthDate"])["PatientBirthDate"]["Value"] \
            == ["19800102"]
        after = json.loads(meta.series(series))  # the cache saw the correction stamp
        assert after[0]["00100010"]["Value"] == [{"Alphabetic": "ROE^JANE"}]
        # other patients untouched
        assert archive.find("study", PatientID="Lung_Dx-A0002")[0]["PatientName"] == \
            "Lung_Dx-A0002"
        # undo: the original values on everything served
        undo = archive.patients.undo("99000", by="test")
        assert (undo.undoes, undo.after) == (number, None)
        assert archive.find("study", PatientName="ROE*") == []
        assert archive.find("study", PatientName="JANCT000")[0]["PatientSex"] == "M"
        assert sha(archive.get(sop, "original")) == sha(original)
        ds = read(archive.get(sop, "stored"))
        assert (str(ds.PatientName), ds.PatientSex) == ("JANCT000", "M")
        assert json.loads(meta.series(series)) == before
        with pytest.raises(NotFoundError, match="no correction or merge to undo"):
            archive.patients.undo("99000")
        log = archive.patients.log()
        assert [(e.action, e.undone_by) for e in log] == [("correct", number + 1),
                                                            ("undo", None)]
    finally:
        meta.close()


def test_merges_follow_chains_and_refusals_change_nothing(
        stored: tuple[Archive, dict[str, list[Path]]]) -> None:
    archive, files = stored
    sop = _sop(files["99000"][0])
    archive.patients.merge("99000", "Lung_Dx-A0002", by="test")
    # the survivor's ID finds both studies, shown under it with its demographics
    studies = archive.find("study", PatientID="Lung_Dx-A0002")
    assert len(studies) == 2
    assert {(s["PatientID"], s["PatientName"]) for s in studies} == \
        {("Lung_Dx-A0002", "Lung_Dx-A0002")}
    # the old ID still finds the merged study, answered under the surviving ID
    (old,) = archive.find("study", PatientID="99000")
    assert old["PatientID"] == "Lung_Dx-A0002"
    assert len(archive.find("series", PatientName="lung*")) == 2
    (patient,) = archive.find("patient", PatientID="Lung_Dx-A0002")
    assert patient["NumberOfPatientRelatedStudies"] == 2
    assert len(archive.find("patient")) == 2  # 99000 folded into Lung_Dx-A0002
    ds = read(archive.get(sop, "stored"))
    assert (ds.PatientID, str(ds.PatientName)) == ("Lung_Dx-A0002", "Lung_Dx-A0002")
    # a chain: Lung_Dx-A0002 into PGBM-001 takes 99000 with it
    archive.patients.merge("Lung_Dx-A0002", "PGBM-001", by="test")
    assert {s["PatientID"] for s in archive.find("study")} == {"PGBM-001"}
    assert read(archive.get(sop, "1.2.840.10008.1.2.1")).PatientID == "PGBM-001"
    stamp = archive.patients.stamp()
    for args, error in ((("PGBM-001", "99000"), ConflictError),  # a cycle
                        (("PGBM-001", "PGBM-001"), InvalidRequestError),  # itself
                        (("PGBM-001", "NOBODY"), NotFoundError),
                        (("NOBODY", "PGBM-001"), NotFoundError)):
        with pytest.raises(error):
            archive.patients.merge(*args)
        assert archive.patients.stamp() == stamp  # nothing changed
    # undo, newest first per patient
    archive.patients.undo("Lung_Dx-A0002")
    assert read(archive.get(sop, "stored")).PatientID == "Lung_Dx-A0002"
    archive.patients.undo("99000")
    assert read(archive.get(sop, "stored")).PatientID == "99000"
    assert archive.find("study", PatientID="Lung_Dx-A0002")[0]["PatientID"] == \
        "Lung_Dx-A0002"
    assert len(archive.find("study", PatientID="Lung_Dx-A0002")) == 1
    with pytest.raises(NotFoundError):
        archive.patients.undo("PGBM-001")


def test_non_ascii_values_declare_their_character_set(
        stored: tuple[Archive, dict[str, list[Path]]]) -> None:
    archive, files = stored
    archive.patients.correct("99000", {"PatientName": "MÜLLER^JÖRG"})
    archive.patients.correct("Lung_Dx-A0002", {"PatientName": "MÜLLER^JÖRG"})
    plain = read(archive.get(_sop(files["99000"][0]), "stored"))  # had none: UTF-8
    assert (plain.SpecificCharacterSet, str(plain.PatientName)) == ("ISO_IR 192",
                                                                    "MÜLLER^JÖRG")
    latin = read(archive.get(_sop(files["Lung_Dx-A0002"][0]), "stored"))  # ISO_IR 100 kept
    assert (latin.SpecificCharacterSet, str(latin.PatientName)) == ("ISO_IR 100",
                                                                    "MÜLLER^JÖRG")
    assert archive.find("study", PatientName="müller*")  # matched without regard to case


@pytest.mark.parametrize("name", ["odd/big_endian/CT1_explicit_big_endian.dcm",
                                  "odd/ts_ladder_ct/CTImage_DeflatedExplicitVRLittleEndian"
                                  "__1.2.840.10008.1.2.1.99.dcm"])
def test_big_endian_and_deflated_objects_are_patched(tmp_path: Path, corpus: Path,
                                                     name: str) -> None:
    path = corpus / name
    with Archive(tmp_path / "archive", ArchiveConfig(prepare_workers=0)) as archive:
        result = archive.store(path)
        pid = str(read(path.read_bytes()).get("PatientID", ""))
        archive.patients.correct(pid, {"PatientName": "ROE^JANE"})
        ds = read(archive.get(result.sop_instance_uid, result.original_syntax))
        assert ds.file_meta.TransferSyntaxUID == result.original_syntax
        assert str(ds.PatientName) == "ROE^JANE"
        assert np.array_equal(ds.pixel_array, read(path.read_bytes()).pixel_array)
        assert sha(archive.get(result.sop_instance_uid, "original")) == sha(path.read_bytes())


def test_bad_corrections_are_refused(stored: tuple[Archive, dict[str, list[Path]]]) -> None:
    archive, _ = stored
    for values in ({"PatientBirthDate": "1980-01-02"}, {"PatientSex": "X"},
                   {"PatientName": "A\\B"}, {"StudyDate": "20200101"}):
        with pytest.raises(InvalidRequestError):
            archive.patients.correct("99000", values)
    assert archive.patients.stamp() == 0


def test_cli_correct_list_undo_and_original_export(tmp_path: Path, corpus: Path) -> None:
    path = sorted((corpus / "ct_series/dcmqi_ge_ct_3slice").glob("*.dcm"))[0]
    root = tmp_path / "archive"
    cli("import", str(path), "--archive", str(root), "--workers", "0")
    assert cli("patient", "correct", "99000", "--name", "ROE^JANE", "--sex", "F",
               "--archive", str(root)).strip() == "correction 1"
    log = json.loads(cli("patient", "corrections", "--json", "--archive", str(root)))
    assert [(e["action"], e["after"]) for e in log["corrections"]] == \
        [("correct", {"PatientName": "ROE^JANE", "PatientSex": "F"})]
    sop = _sop(path)
    for ts, name in (("original", "JANCT000"), ("1.2.840.10008.1.2.1", "ROE^JANE")):
        out = tmp_path / ts
        cli("export", sop, "--out", str(out), "--transfer-syntax", ts, "--archive", str(root))
        data = (out / f"{sop}.dcm").read_bytes()
        assert str(read(data).PatientName) == name
        if ts == "original":
            assert sha(data) == sha(path.read_bytes())
    assert "undid 1" in cli("patient", "undo", "99000", "--archive", str(root))
    audit = [json.loads(line) for line in
             (root / "audit" / "audit.jsonl").read_text().splitlines()]
    patient = [e for e in audit if e["event_id"]["meaning"] == "Patient Record"]
    assert [e["action"] for e in patient] == ["U", "D"]
    assert "ROE" not in json.dumps(patient) and "JANCT" not in json.dumps(patient)


def test_worklist_serves_corrections_and_merges(stored: tuple[Archive, dict[str, list[Path]]]
                                                ) -> None:
    """A site without a RIS corrects from the CLI: the Modality Worklist shows it."""
    from pydicom.dataset import Dataset

    from pacscore.workflow import item_from_pairs

    archive, _ = stored
    archive.worklist.add(item_from_pairs([
        "PatientID=99000", "PatientName=JANCT000", "AccessionNumber=A1", "Modality=CT",
        "ScheduledStationAETitle=CT1", "ScheduledProcedureStepStartDate=20250101"]))

    def listed(**keys: str) -> list[tuple[str, str]]:
        q = Dataset()
        q.PatientID = q.PatientName = ""
        for k, v in keys.items():
            setattr(q, k, v)
        return [(str(r.PatientID), str(r.PatientName)) for _, r in archive.worklist.find(q)]

    archive.patients.correct("99000", {"PatientName": "MÜLLER^JANE"})
    assert listed(PatientName="MÜLLER*") == [("99000", "MÜLLER^JANE")]
    assert listed(PatientName="JANCT000") == []
    archive.patients.merge("99000", "PGBM-001")
    assert listed(PatientID="PGBM-001") == [("PGBM-001", "PGBM-001")]  # the survivor's
    archive.patients.undo("99000")
    archive.patients.undo("99000")
    assert listed(PatientName="JANCT000") == [("99000", "JANCT000")]
    assert listed(PatientID="PGBM-001") == []


def test_patch_declares_utf8_over_the_default_repertoire_and_drops_stale_group_length(
        ) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from pacscore.config import Limits
    from pacscore.dicom.patch import patch_attributes

    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 6"
    ds.add_new(0x00100000, "UL", 18)  # a group length the new name makes wrong
    ds.PatientName, ds.PatientID = "DOE^J", "1"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = \
        ds.SOPClassUID, ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    patched = read(patch_attributes(buf.getvalue(), {"PatientName": "DØE^JÖRG",
                                                     "PatientSex": "F"}, Limits()))
    assert (patched.SpecificCharacterSet, str(patched.PatientName), patched.PatientSex,
            patched.PatientID) == ("ISO_IR 192", "DØE^JÖRG", "F", "1")
    assert 0x00100000 not in patched
