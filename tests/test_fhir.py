"""The FHIR R4 read API (issue 16.6) against `pacscore serve`: every answer validated
with fhir.resources' R4B models (the R4 resources used here are unchanged in R4B;
fhir.resources 8 ships no R4 package and 6.x, the last R4 one, needs pydantic 1), and
read with fhirpy's sync client (a FHIR client we did not write)."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, OperationOutcome, ResourceNotFound
from pydicom.uid import generate_uid
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from pacscore import Archive
from pacscore.services.auth.access import check_routes, declared
from pacscore.services.dicomweb.answers import refusal
from pacscore.services.fhir import create_fhir_app
from pacscore.services.fhir.app import _outcome_refusals
from pacscore.services.fhir.ids import PatientKey, study_id
from pacscore.testing import cli, serving
from pacscore.workflow.items import item_from_pairs

# pydicom warns whenever the odd study's UID (see _odd_uid_copy) is read.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
DCM = "http://dicom.nema.org/resources/ontology/DCM"
# Studies of the corpus with what tells them apart (patient, date, modality, accession).
STUDIES = {
    "ct_series/dcmqi_ge_ct_3slice": 3,
    "ct_series/tcia_lung_pet_ct_dx_chest_30sl": 4,
    "mr_series/tcia_brain_t1post_24sl": 3,
    "radiography/cr/CR_ModalityLUTSequence_jpll.dcm": 1,
    "radiography/cr/Barre_CR-MONO1-10-chest.dcm": 1,  # no Patient ID
    "mr_series/single/Philips_MR_j2k.dcm": 1,
    "ct_series/single/GE_lung_signed.dcm": 1,  # a Patient ID with '-'
}


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True)


def _files(corpus: Path) -> list[Path]:
    out = []
    for rel, n in STUDIES.items():
        path = corpus / rel
        out += [path] if path.is_file() else sorted(path.glob("*.dcm"))[:n]
    return out


LONG_ID, ISSUER = "LONG_" + "_" * 30, "urn:oid:1.2.3.4"


def _long_id_copy(path: Path, to: Path) -> Path:
    """A copy of ``path`` as another study of a patient whose id is too long for the
    readable form (each '_' takes 3 characters there) and who has an issuer."""
    ds = pydicom.dcmread(path)
    ds.PatientID, ds.IssuerOfPatientID = LONG_ID, ISSUER
    ds.AccessionNumber = "LONG-ACC"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(to)
    return to


ODD_UID = "1.2.826.0.1.3680043.9_odd.1"


def _odd_uid_copy(path: Path, to: Path) -> Path:
    """A copy of ``path`` as a study whose UID the archive tolerates beyond the grammar
    (a '_'), which no FHIR id may hold."""
    ds = pydicom.dcmread(path)
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "ODD-UID", "ODD^UID", "ODD-ACC"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ODD_UID, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(to)
    return to


class Fhir:
    def __init__(self, archive: Path, http: int, files: list[Path]):
        self.archive = archive
        self.root = f"http://127.0.0.1:{http}"
        self.url = self.root + "/fhir"
        self.admin = (archive / "security" / "admin-token").read_text().strip()
        self.read_token = cli("token", "create", "--scope", "read", "--archive",
                              str(archive)).strip().split()[-1]
        self.headers = {"Authorization": f"Bearer {self.admin}"}
        self.data = [_read(p) for p in files]

    def client(self, token: str | None = None) -> SyncFHIRClient:
        return SyncFHIRClient(self.url, authorization=f"Bearer {token or self.read_token}")

    def get(self, path: str, **kw: Any) -> requests.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return requests.get(self.url + path, headers=headers, timeout=30, **kw)

    def studies(self, **match: str) -> set[str]:
        """ImagingStudy ids of the loaded files whose attributes are ``match``."""
        return {study_id(ds.StudyInstanceUID) for ds in self.data
                if all(str(ds.get(k, "")) == v for k, v in match.items())}


def valid(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` validated as its R4(B) resource (a Bundle: with its entries)."""
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    return body


@pytest.fixture(scope="module")
def fhir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fhir]:
    from tests.conftest import corpus_root

    corpus = corpus_root()
    if corpus is None:
        pytest.skip("shared corpus not found: set PACSCORE_CORPUS to ../shared/corpus")
    archive = tmp_path_factory.mktemp("fhir") / "archive"
    files = _files(corpus)
    copies = [_long_id_copy(files[0], archive.parent / "long.dcm"),
              _odd_uid_copy(corpus / "mr_series/single/Philips_MR_j2k.dcm",
                            archive.parent / "odd.dcm")]
    with Archive(archive) as a:
        for path in [*files, *copies]:
            a.store(path)
        a.worklist.add(item_from_pairs([
            "PatientID=99000", "PatientName=JANCT000", "AccessionNumber=03086212",
            "Modality=CT", "ScheduledStationAETitle=CT1", "RequestedProcedureDescription=CT chest",
            "ScheduledProcedureStepStartDate=20260105"]))
        second = a.worklist.add(item_from_pairs([
            "PatientID=PGBM-001", "PatientName=PGBM-001", "AccessionNumber=ACC-2",
            "Modality=MR", "ScheduledStationAETitle=MR1",
            "ScheduledProcedureStepStartDate=20260106"]))
        a.worklist.cancel(second)
        a.worklist.add(item_from_pairs([  # a patient without images yet
            "PatientID=NEW-1", "PatientName=NEW^PATIENT", "AccessionNumber=ACC-3",
            "Modality=CR", "ScheduledStationAETitle=CR1"]))
    with serving(archive) as ports:
        yield Fhir(archive, ports["http"], [*files, *copies])


def test_metadata_lists_what_is_supported(fhir: Fhir) -> None:
    answer = fhir.get("/metadata")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    cap = valid(answer.json())
    assert cap["fhirVersion"] == "4.0.1" and cap["kind"] == "instance"
    by_type = {res["type"]: res for res in cap["rest"][0]["resource"]}
    assert set(by_type) == {"ImagingStudy", "Patient", "ServiceRequest", "Endpoint"}
    assert {i["code"] for i in by_type["ImagingStudy"]["interaction"]} == {"read", "search-type"}
    assert {p["name"] for p in by_type["ImagingStudy"]["searchParam"]} >= {
        "patient", "identifier", "started", "modality"}


def test_imaging_study_read_has_series_instances_and_endpoint(fhir: Fhir) -> None:
    lung = [ds for ds in fhir.data if ds.get("PatientID") == "Lung_Dx-A0002"]
    uid = lung[0].StudyInstanceUID
    study = fhir.client().reference("ImagingStudy", uid).to_resource()
    body = valid(study.serialize())
    assert body["id"] == uid
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"} == {
        k: body["identifier"][0][k] for k in ("system", "value")}
    assert body["modality"] == [{"system": DCM, "code": "CT"}]
    assert body["started"] == "2007-04-25"
    assert body["subject"]["reference"] == "Patient/Lung.5FDx-A0002"
    assert body["numberOfSeries"] == 1 and body["numberOfInstances"] == len(lung)
    (series,) = body["series"]
    assert series["uid"] == lung[0].SeriesInstanceUID
    assert series["modality"] == {"system": DCM, "code": "CT"}
    assert series["numberOfInstances"] == len(lung)
    assert {i["uid"] for i in series["instance"]} == {ds.SOPInstanceUID for ds in lung}
    assert {i["sopClass"]["system"] for i in series["instance"]} == {"urn:ietf:rfc:3986"}
    assert series["instance"][0]["sopClass"]["code"] == f"urn:oid:{lung[0].SOPClassUID}"
    assert [i["number"] for i in series["instance"]] == sorted(
        int(ds.InstanceNumber) for ds in lung)
    # The endpoint reference resolves to the DICOMweb root, where the study is.
    assert body["endpoint"] == [{"reference": "Endpoint/dicomweb"}]
    endpoint = valid(fhir.get("/Endpoint/dicomweb").json())
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"] == fhir.root + "/dicom-web"
    qido = requests.get(f"{endpoint['address']}/studies", params={"StudyInstanceUID": uid},
                        headers=fhir.headers, timeout=30).json()
    assert len(qido) == 1


def _ids(bundle: list[Any]) -> set[str]:
    return {str(res["id"]) for res in bundle}


def test_search_by_patient_date_modality_accession(fhir: Fhir) -> None:
    studies = fhir.client().resources("ImagingStudy")
    key = PatientKey("99000").fhir_id
    assert _ids(studies.search(patient=f"Patient/{key}").fetch_all()) == \
        fhir.studies(PatientID="99000")
    assert _ids(studies.search(subject=key).fetch_all()) == fhir.studies(PatientID="99000")
    assert _ids(studies.search(modality=f"{DCM}|MR").fetch_all()) == fhir.studies(Modality="MR")
    assert _ids(studies.search(modality="CR,MR").fetch_all()) == \
        fhir.studies(Modality="MR") | fhir.studies(Modality="CR")
    assert studies.search(modality="http://other.example|CT").fetch_all() == []
    # A parameter given twice: both must hold (AND), commas are alternatives (OR).
    assert _ids(studies.search(modality=["CT,MR", "MR"]).fetch_all()) == \
        fhir.studies(Modality="MR")
    other = PatientKey("PGBM-001").fhir_id
    assert _ids(studies.search(patient=key, subject=key).fetch_all()) == \
        fhir.studies(PatientID="99000")
    assert studies.search(patient=key, subject=other).fetch_all() == []
    assert _ids(studies.search(identifier="03086212").fetch_all()) == \
        fhir.studies(AccessionNumber="03086212")
    uid = next(iter(fhir.studies(PatientID="PGBM-001")))
    assert _ids(studies.search(identifier=f"urn:dicom:uid|urn:oid:{uid}").fetch_all()) == {uid}
    assert _ids(studies.search(_id=uid, identifier=f"urn:oid:{uid}").fetch_all()) == {uid}
    assert studies.search(_id=uid, identifier="03086212").fetch_all() == []
    # Dates: the period of the value, prefixes as FHIR says, AND of two values.
    dated = {study_id(ds.StudyInstanceUID): str(ds.get("StudyDate", "")) for ds in fhir.data}

    def between(low: str, high: str) -> set[str]:
        return {u for u, d in dated.items() if d and low <= d <= high}

    assert _ids(studies.search(started="2007").fetch_all()) == between("20070101", "20071231")
    assert _ids(studies.search(started="ge2012-10-08").fetch_all()) == between("20121008", "9")
    assert _ids(studies.search(started="gt2012-10-08").fetch_all()) == between("20121009", "9")
    assert _ids(studies.search(started="lt2003-04-17").fetch_all()) == between("0", "20030416")
    assert _ids(studies.search(started=["ge2003", "le2012-10"]).fetch_all()) == \
        between("20030101", "20121031")
    assert between("20030101", "20121031")  # the corpus has studies there
    assert studies.search(started=["ge2013", "le2012"]).fetch_all() == []


def test_paging_follows_next_links(fhir: Fhir) -> None:
    everything = fhir.studies()
    first = valid(fhir.get("/ImagingStudy", params={"_count": "3"}).json())
    assert first["total"] == len(everything) and len(first["entry"]) == 3
    relations = {link["relation"]: link["url"] for link in first["link"]}
    assert "next" in relations and "previous" not in relations
    second = valid(requests.get(relations["next"], headers=fhir.headers, timeout=30).json())
    assert {link["relation"] for link in second["link"]} >= {"self", "previous"}
    # fhirpy walks the pages by their next links: each study once.
    found = fhir.client().resources("ImagingStudy").limit(2).fetch_all()
    assert len(found) == len(everything) and _ids(found) == everything
    counted = valid(fhir.get("/ImagingStudy", params={"_summary": "count"}).json())
    assert counted["total"] == len(everything) and not counted.get("entry")


def test_patient_read_and_search(fhir: Fhir) -> None:
    client = fhir.client()
    patients = client.resources("Patient")
    dashed = next(ds for ds in fhir.data if "-" in str(ds.get("PatientID", ""))
                  and len(str(ds.PatientID)) > 30)
    key = PatientKey(str(dashed.PatientID))
    body = valid(client.reference("Patient", key.fhir_id).to_resource().serialize())
    assert body["identifier"][0]["value"] == dashed.PatientID
    assert PatientKey.parse(str(key.fhir_id)) == key  # reversible
    philips = patients.search(identifier="14079").fetch_all()
    assert len(philips) == 1
    p = valid(philips[0].serialize())
    assert p["birthDate"] == "1952-03-22" and p["gender"] == "female"
    assert _ids(patients.search(birthdate="lt1953").fetch_all()) == {
        PatientKey(str(ds.PatientID)).fhir_id for ds in fhir.data
        if "0" < str(ds.get("PatientBirthDate", "")) < "1953"}
    assert _ids(patients.search(name="navega").fetch_all()) == {p["id"]}
    assert _ids(patients.search(name=["navega", "bra"]).fetch_all()) == {p["id"]}
    assert patients.search(name=["navega", "jan"]).fetch_all() == []
    # Objects without a Patient ID have no Patient; each patient is there once.
    with_id = {str(ds.PatientID) for ds in fhir.data if ds.get("PatientID")}
    assert len(patients.fetch_all()) == len(with_id)
    bundle = valid(fhir.get("/Patient", params={"gender": "male"}).json())
    assert all(e["resource"]["gender"] == "male" for e in bundle["entry"])


def test_patient_with_an_id_too_long_to_be_readable(fhir: Fhir) -> None:
    key = PatientKey(LONG_ID, ISSUER)
    assert key.fhir_id is not None and PatientKey.hashed(key.fhir_id)
    body = valid(fhir.client().reference("Patient", key.fhir_id).to_resource().serialize())
    assert body["identifier"][0] == {
        "type": body["identifier"][0]["type"], "system": ISSUER, "value": LONG_ID,
        "assigner": {"display": ISSUER}}
    studies = fhir.client().resources("ImagingStudy")
    assert _ids(studies.search(patient=f"Patient/{key.fhir_id}").fetch_all()) == \
        fhir.studies(PatientID=LONG_ID)
    found = fhir.client().resources("Patient").search(identifier=f"{ISSUER}|{LONG_ID}")
    assert [p["id"] for p in found.fetch_all()] == [key.fhir_id]
    assert fhir.client().resources("Patient").search(identifier=f"|{LONG_ID}").fetch_all() == []


def test_study_with_a_uid_no_fhir_id_can_hold(fhir: Fhir) -> None:
    hashed = study_id(ODD_UID)
    assert hashed.startswith("..") and hashed != ODD_UID
    client = fhir.client()
    body = valid(client.reference("ImagingStudy", hashed).to_resource().serialize())
    assert body["identifier"][0]["value"] == f"urn:oid:{ODD_UID}"
    studies = client.resources("ImagingStudy")
    assert _ids(studies.search(_id=hashed).fetch_all()) == {hashed}
    assert _ids(studies.search(identifier=f"urn:oid:{ODD_UID}").fetch_all()) == {hashed}
    assert _ids(studies.search(identifier="ODD-ACC").fetch_all()) == {hashed}


def test_patient_ids_are_reversible() -> None:
    for key in (PatientKey("PGBM-001"), PatientKey("Lung_Dx-A0002"),
                PatientKey("PAT.1", "HOSP"), PatientKey("x", ".y"), PatientKey("é ü/..")):
        assert key.fhir_id is not None and PatientKey.parse(key.fhir_id) == key
    assert PatientKey("PGBM-001").fhir_id == "PGBM-001"  # most ids stay as they are
    assert PatientKey("a" * 70).fhir_id == PatientKey("a" * 70).digest
    for bad in ("PAT..", "..", "a.2", "a.zz", "a..b..c", "a/b", "x" * 65):
        assert PatientKey.parse(bad) is None


def test_service_requests_from_the_worklist(fhir: Fhir) -> None:
    requests_ = fhir.client().resources("ServiceRequest")
    everything = requests_.fetch_all()
    assert len(everything) == 3
    for res in everything:
        valid(res.serialize())
    active = requests_.search(status="active").fetch_all()
    assert len(active) == 2
    body = next(r for r in active if r["identifier"][0]["value"] == "03086212").serialize()
    assert body["intent"] == "order"
    assert body["code"]["text"] == "CT chest"
    assert body["occurrenceDateTime"] == "2026-01-05"
    assert body["subject"]["reference"] == f"Patient/{PatientKey('99000').fhir_id}"
    assert body["performerType"]["coding"] == [{"system": DCM, "code": "CT"}]
    # No Patient resource yet (no image): the subject names the patient, refers to none.
    (new,) = requests_.search(identifier="ACC-3").fetch_all()
    assert "reference" not in new["subject"]
    assert new["subject"]["identifier"]["value"] == "NEW-1"
    assert new["subject"]["display"] == "NEW PATIENT"
    cancelled = requests_.search(identifier="ACC-2").fetch_all()
    assert [r["status"] for r in cancelled] == ["revoked"]
    read = fhir.client().reference("ServiceRequest", body["id"]).to_resource()
    assert read["id"] == body["id"]
    assert [r["id"] for r in requests_.search(_id=body["id"]).fetch_all()] == [body["id"]]
    assert requests_.search(_id=body["id"], identifier="ACC-2").fetch_all() == []
    # The study of that accession is based on it; the others on nothing.
    (study,) = fhir.client().resources("ImagingStudy").search(identifier="03086212").fetch_all()
    assert valid(study.serialize())["basedOn"] == [
        {"reference": f"ServiceRequest/{body['id']}"}]
    other = fhir.client().resources("ImagingStudy").search(identifier="1218096").fetch_all()
    assert [s.serialize().get("basedOn") for s in other] == [None]
    assert requests_.search(patient=f"Patient/{PatientKey('99000').fhir_id}").fetch_all()


def _outcome(answer: requests.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    body = valid(answer.json())
    assert body["resourceType"] == "OperationOutcome"
    return body


def test_errors_are_operation_outcomes(fhir: Fhir) -> None:
    client = fhir.client()
    for kind, bad in (("ImagingStudy", "1.2.3.4"), ("ImagingStudy", "not-a-uid"),
                      ("Patient", "NOBODY"), ("Patient", ".." + "0" * 40),
                      ("ServiceRequest", "000000000999"), ("Endpoint", "other")):
        with pytest.raises(ResourceNotFound):
            client.reference(kind, bad).to_resource()
        assert _outcome(fhir.get(f"/{kind}/{bad}"), 404)["issue"][0]["code"] == "not-found"
    # Strict handling: an unknown parameter, modifier or prefix is refused ...
    with pytest.raises(OperationOutcome):
        client.resources("ImagingStudy").search(bodysite="chest").fetch()
    for params in ({"bodysite": "chest"}, {"modality:not": "CT"}, {"started": "ne2020"},
                   {"started": "2020-13"}, {"_count": "-1"}):
        body = _outcome(fhir.get("/ImagingStudy", params=params), 400)
        assert body["issue"][0]["code"] == "invalid"
    # ... unless the client asks for lenient handling: then ignored, and not in self.
    lenient = fhir.get("/ImagingStudy", params={"bodysite": "chest", "_count": "1"},
                       headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    assert "bodysite" not in valid(lenient.json())["link"][0]["url"]
    assert _outcome(fhir.get("/metadata", params={"_format": "xml"}), 406)
    assert fhir.get("/metadata", params={"_format": "json"}).status_code == 200
    assert _outcome(fhir.get("/Nothing"), 404)


def test_same_tokens_as_dicomweb(fhir: Fhir) -> None:
    for path in ("/metadata", "/ImagingStudy", "/Patient/x", "/Endpoint/dicomweb"):
        answer = requests.get(fhir.url + path, timeout=30)
        assert _outcome(answer, 401)["issue"][0]["code"] == "login"
        assert answer.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(AuthorizationError):
        fhir.client("pcs_nothing_wrong").resources("ImagingStudy").fetch()
    # Every scope includes read (services/auth/tokens.py), so no token gets a 403 here;
    # a read token is enough.
    assert fhir.client(fhir.read_token).resources("ImagingStudy").limit(1).fetch()


def test_reads_and_searches_are_audited_as_fhir(fhir: Fhir) -> None:
    uid = next(iter(fhir.studies(PatientID="PGBM-001")))
    log = fhir.archive / "audit" / "audit.jsonl"
    before = len(log.read_text().splitlines())  # (the other tests of the module ran)
    assert fhir.get(f"/ImagingStudy/{uid}").status_code == 200
    assert fhir.get("/ImagingStudy", params={"_id": uid}).json()["total"] == 1
    assert requests.get(f"{fhir.url}/ImagingStudy/{uid}", timeout=30).status_code == 401
    events = [json.loads(line) for line in log.read_text().splitlines()[before:]]
    mine = [e for e in events if e["interface"] == "fhir" and uid in e.get("objects", [])]
    assert [(e["action"], e["event_id"]["code"]) for e in mine] == [
        ("R", "110103"), ("E", "110112")]  # DICOM Instances Accessed, Query
    refused = [e for e in events if e["interface"] == "fhir"
               and e["event_id"]["code"] == "110114"]  # User Authentication
    assert any(uid in e.get("detail", "") for e in refused)


def test_every_route_declares_the_read_scope(tmp_path: Path) -> None:
    with Archive(tmp_path / "archive") as archive:
        app = create_fhir_app(archive)
        assert {declared(route.endpoint) for route in app.routes  # type: ignore[attr-defined]
                } == {"read"}
        check_routes([Mount("/fhir", app=app)])  # what serve's app checks when it starts


def test_urls_start_with_the_public_url(tmp_path: Path) -> None:
    """Behind a reverse proxy (``--public-url``), the Endpoint's address and every
    link and fullUrl of a Bundle are the proxy's."""
    from tests.conftest import corpus_root

    corpus = corpus_root()
    if corpus is None:
        pytest.skip("shared corpus not found: set PACSCORE_CORPUS to ../shared/corpus")
    archive = tmp_path / "archive"
    with Archive(archive) as a:
        a.store(corpus / "mr_series/single/Philips_MR_j2k.dcm")
    public = "https://pacs.example.org/pacs"
    with serving(archive, "--public-url", public) as ports:
        token = (archive / "security" / "admin-token").read_text().strip()
        url = f"http://127.0.0.1:{ports['http']}/fhir"
        auth = {"Authorization": f"Bearer {token}"}
        endpoint = requests.get(f"{url}/Endpoint/dicomweb", headers=auth, timeout=30).json()
        bundle = valid(requests.get(f"{url}/ImagingStudy", headers=auth, timeout=30).json())
    assert endpoint["address"] == f"{public}/dicom-web"
    assert bundle["link"][0]["url"].startswith(f"{public}/fhir/ImagingStudy?")
    assert bundle["entry"][0]["fullUrl"].startswith(f"{public}/fhir/ImagingStudy/")


def test_a_403_refusal_becomes_an_outcome() -> None:
    """No scope lacks read (services/auth/tokens.py), so no served request gets a 403
    here: the conversion is checked on the refusal the access check would send."""
    async def refuse(request: Request) -> Response:
        return refusal(request, 403, "this token lacks the scope needed", "why not")

    scope = {"type": "http", "method": "GET", "path": "/fhir/Patient", "query_string": b"",
             "headers": [(b"accept", b"application/fhir+json")]}
    response = asyncio.run(_outcome_refusals(refuse)(Request(scope)))
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = valid(json.loads(bytes(response.body)))
    assert body["issue"][0]["code"] == "forbidden"
    assert "why not" in body["issue"][0]["diagnostics"]
