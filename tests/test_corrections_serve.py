"""Patient corrections through a running ``pacscore serve`` (issue 16.4): ADT A08 and
A40 sent over MLLP by python-hl7's ``mllp_send``, then what every door serves: QIDO-RS
and WADO-RS (dicomweb-client), series metadata, DCMTK ``findscu -P`` (C-FIND) and
``getscu`` (C-GET); ``pacscore patient undo`` while the server runs brings the
received values back; ``pacscore export --transfer-syntax original`` stays the file
as received (SHA-256) throughout."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from pacscore import Archive, ArchiveConfig
from pacscore.services.auth.security import AeRegistry
from pacscore.services.fhir.ids import PatientKey
from pacscore.testing import cli, serve_process
from tests.test_hl7 import mllp_send, msa, msh, prepared

ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK keeps Nagle on otherwise (FACTS.md)


def adt(ctrl: str, event: str, pid: str, name: str, birth: str = "", sex: str = "",
        mrg: str = "") -> str:
    segs = [msh(ctrl, f"ADT^{event}"), f"EVN|{event}",
            f"PID|1||{pid}^^^HOSP||{name}||{birth}|{sex}"]
    return "\r".join(segs + ([f"MRG|{mrg}^^^HOSP"] if mrg else [])) + "\r"


def dcmtk(tool: str, port: int, *args: str) -> str:
    done = subprocess.run([f"/usr/bin/{tool}", "-aet", "VIEWER", "-aec", "PACSCORE", *args,
                           "127.0.0.1", str(port)], capture_output=True, text=True,
                          env=ENV, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stderr


def patients_found(port: int, **keys: str) -> list[dict[str, str]]:
    """``findscu -P`` at the patient level: one dict of (tag -> value) per answer."""
    args = ["-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID", "-k", "PatientName",
            "-k", "PatientSex", "-k", "NumberOfPatientRelatedStudies"]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    out = dcmtk("findscu", port, *args)
    answers = out.split("Find Response:")[1:]
    return [{t: v.strip() for t, v in re.findall(r"\((\w{4},\w{4})\) \w\w \[([^\]]*)\]", a)}
            for a in answers]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def value(attrs: dict[str, dict[str, list[object]]], tag: str) -> object:
    v = attrs.get(tag, {}).get("Value", [None])[0]
    return v["Alphabetic"] if isinstance(v, dict) else v


@pytest.mark.slow
def test_a08_a40_served_by_every_door_and_undone(tmp_path: Path, corpus: Path) -> None:
    root = prepared(tmp_path / "archive")
    AeRegistry(root).add("VIEWER", "127.0.0.1", rights=("echo", "find", "get"))
    files = sorted((corpus / "ct_series/dcmqi_ge_ct_3slice").glob("*.dcm")) \
        + sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:2]
    with Archive(root, ArchiveConfig(prepare_workers=0)) as archive:
        results = [archive.store(p) for p in files]
    first, original = results[0], files[0].read_bytes()  # patient 99000, JANCT000
    study, series, sop = first.study_uid, first.series_uid, first.sop_instance_uid

    def exported(ts: str) -> bytes:
        out = tmp_path / f"export-{ts}"
        cli("export", sop, "--out", str(out), "--transfer-syntax", ts, "--archive", str(root))
        return (out / f"{sop}.dcm").read_bytes()

    with serve_process(root, doors=("dimse", "http", "grpc", "hl7")) as (_, ports):
        session = requests.Session()
        token = (root / "security" / "admin-token").read_text().strip()
        session.headers["Authorization"] = f"Bearer {token}"
        web = DICOMwebClient(f"http://127.0.0.1:{ports['http']}/dicom-web", session=session)

        def served() -> tuple[object, object, object]:
            """(Patient ID, name, sex) of the first instance as WADO-RS retrieves it."""
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = web.retrieve_instance(study, series, sop)
            return ds.PatientID, str(ds.PatientName), ds.PatientSex

        assert served() == ("99000", "JANCT000", "M")
        web.retrieve_series_metadata(study, series)  # cached in the server from here on
        # ADT A08: a new name and sex for 99000
        (ack,) = mllp_send(ports["hl7"], tmp_path,
                           adt("C-1", "A08", "99000", "ROE^JANE", "19800102", "F"))
        assert msa(ack)[0] == "AA"
        (found,) = web.search_for_studies(search_filters={"PatientName": "roe*"})
        assert (value(found, "00100020"), value(found, "00100010")) == ("99000", "ROE^JANE")
        assert web.search_for_studies(search_filters={"PatientName": "JANCT000"}) == []
        assert served() == ("99000", "ROE^JANE", "F")
        meta = web.retrieve_series_metadata(study, series)
        assert {value(m, "00100010") for m in meta} == {"ROE^JANE"}
        assert {value(m, "00100030") for m in meta} == {"19800102"}
        fhir = f"http://127.0.0.1:{ports['http']}/fhir"
        patient = session.get(f"{fhir}/Patient/{PatientKey('99000').fhir_id}", timeout=30)
        assert (patient.json()["name"][0]["family"], patient.json()["gender"]) == \
            ("ROE", "female")
        (row,) = patients_found(ports["dimse"], PatientName="ROE*")
        assert (row["0010,0020"], row["0010,0010"], row["0010,0040"]) == ("99000",
                                                                         "ROE^JANE", "F")
        got = tmp_path / "got"
        got.mkdir()
        dcmtk("getscu", ports["dimse"], "-S", "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={study}", "-od", str(got))
        assert {str(pydicom.dcmread(p).PatientName) for p in got.iterdir()} == {"ROE^JANE"}
        assert sha(exported("original")) == sha(original)
        # ADT A40: 99000 merged into Lung_Dx-A0002 (registered first by A01)
        acks = mllp_send(ports["hl7"], tmp_path,
                         adt("C-2", "A01", "Lung_Dx-A0002", "Lung_Dx-A0002", sex="F"),
                         adt("C-3", "A40", "Lung_Dx-A0002", "Lung_Dx-A0002", sex="F",
                             mrg="99000"),
                         adt("C-4", "A40", "Lung_Dx-A0002", "X", mrg="Lung_Dx-A0002"),
                         adt("C-5", "A40", "NOBODY", "X", mrg="Lung_Dx-A0002"))
        assert [msa(a)[0] for a in acks] == ["AA", "AA", "AE", "AE"]
        log = json.loads(cli("patient", "corrections", "--json", "--archive", str(root)))
        assert [e["action"] for e in log["corrections"]] == ["correct", "merge"]
        both = web.search_for_studies(search_filters={"PatientID": "Lung_Dx-A0002"})
        assert len(both) == 2
        assert {value(s, "00100020") for s in both} == {"Lung_Dx-A0002"}
        (old,) = web.search_for_studies(search_filters={"PatientID": "99000"})
        assert value(old, "00100020") == "Lung_Dx-A0002"
        assert served() == ("Lung_Dx-A0002", "Lung_Dx-A0002", "F")
        (row,) = patients_found(ports["dimse"], PatientID="Lung_Dx-A0002")
        assert row["0020,1200"] == "2"
        lung = f"Patient/{PatientKey('Lung_Dx-A0002').fhir_id}"
        bundle = session.get(f"{fhir}/ImagingStudy", params={"patient": lung},
                             timeout=30).json()
        assert [e["resource"]["subject"]["reference"] for e in bundle["entry"]] == [lung] * 2
        assert sha(exported("original")) == sha(original)
        converted = _write(tmp_path, exported("1.2.840.10008.1.2.1"))
        assert pydicom.dcmread(converted).PatientID == "Lung_Dx-A0002"
        # undo both while the server runs: the received values everywhere
        assert "undid 2" in cli("patient", "undo", "99000", "--archive", str(root))
        assert served() == ("99000", "ROE^JANE", "F")
        assert "undid 1" in cli("patient", "undo", "99000", "--archive", str(root))
        assert served() == ("99000", "JANCT000", "M")
        (back,) = web.search_for_studies(search_filters={"PatientName": "JANCT000"})
        assert value(back, "00100020") == "99000"
        assert len(web.search_for_studies(search_filters={"PatientID": "Lung_Dx-A0002"})) == 1
        meta = web.retrieve_series_metadata(study, series)
        assert {value(m, "00100010") for m in meta} == {"JANCT000"}
        (row,) = patients_found(ports["dimse"], PatientID="99000")
        assert row["0010,0010"] == "JANCT000"
    assert sha(exported("original")) == sha(original)
    audit = [json.loads(line) for line in
             (root / "audit" / "audit.jsonl").read_text().splitlines()]
    patient = [(e["interface"], e["action"]) for e in audit
               if e["event_id"]["meaning"] == "Patient Record"]
    assert patient == [("serve", "U"), ("serve", "U"), ("cli", "D"), ("cli", "D")]


def _write(tmp: Path, data: bytes) -> Path:
    path = tmp / "exported.dcm"
    path.write_bytes(data)
    return path
