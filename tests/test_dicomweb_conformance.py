"""DICOMweb as PS3.18 has it, seen by dicomweb-client against `pacscore serve`: the
default transfer syntax, absolute URLs that reach this server, refusals that say why,
metadata that serves what the archive holds, audit lines that name what was stored."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from starlette.routing import Route

from pacscore import Archive, ArchiveConfig
from pacscore.services.dicomweb.app import create_app
from pacscore.services.dicomweb.multipart import encode_related
from pacscore.testing import cli, serving

EXPLICIT_LE = "1.2.840.10008.1.2.1"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"


class Service:
    def __init__(self, archive: Path, http: int):
        self.archive, self.http = archive, http
        self.url = f"http://127.0.0.1:{http}/dicom-web"
        self.admin = (archive / "security" / "admin-token").read_text().strip()
        self.auth = {"Authorization": f"Bearer {self.admin}"}

    def client(self) -> DICOMwebClient:
        session = requests.Session()
        session.headers.update(self.auth)
        return DICOMwebClient(self.url, session=session)

    def stow(self, *objects: bytes) -> requests.Response:
        return requests.post(f"{self.url}/studies", timeout=60, data=encode_related(
            [("application/dicom", o) for o in objects], "b0und"), headers={
            **self.auth, "Content-Type": 'multipart/related; type="application/dicom"; '
                                         'boundary=b0und'})

    def audit(self) -> list[dict[str, Any]]:
        lines = (self.archive / "audit" / "audit.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["interface"] == "dicomweb"]


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    archive = tmp_path / "archive"
    with serving(archive) as ports:
        yield Service(archive, ports["http"])


def read(data: Path | bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)


@pytest.fixture()
def ct(corpus: Path) -> list[Path]:
    return sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:3]


def test_without_a_transfer_syntax_instances_come_in_explicit_vr_little_endian(
        service: Service, ct: list[Path], corpus: Path) -> None:
    """PS3.18 8.7.3.4: Accept without transfer-syntax (dicomweb-client's default for
    series and studies) means Explicit VR Little Endian, whatever is stored (here
    HTJ2K) or was received (Implicit VR); transfer-syntax=* (what Orthanc asks) gives
    the stored syntax; lossy pixel data may stay in its lossy syntax.  WADO-URI
    application/dicom without transferSyntax is Explicit VR Little Endian too."""
    implicit = corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm"
    lossy = corpus / "ct_series/single/Siemens_head_j2k_lossy.dcm"
    assert read(implicit).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    client = service.client()
    client.store_instances([read(p) for p in [*ct, implicit, lossy]])
    first = read(ct[0])
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    originals = {str(read(p).SOPInstanceUID): read(p) for p in [*ct, implicit, lossy]}

    default = client.retrieve_series(study, series)
    assert [ds.file_meta.TransferSyntaxUID for ds in default] == [EXPLICIT_LE] * len(ct)
    for ds in default:
        assert np.array_equal(ds.pixel_array, originals[ds.SOPInstanceUID].pixel_array)
    anything = client.retrieve_series(study, series, media_types=(("application/dicom", "*"),))
    assert {ds.file_meta.TransferSyntaxUID for ds in anything} == {HTJ2K_RPCL}

    for path, expected in ((implicit, EXPLICIT_LE), (lossy, "1.2.840.10008.1.2.4.91")):
        ds = originals[str(read(path).SOPInstanceUID)]
        (got,) = client.retrieve_series(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        assert got.file_meta.TransferSyntaxUID == expected
        assert got.PatientID == ds.PatientID and got.SliceLocation == ds.SliceLocation
        if expected == EXPLICIT_LE:
            assert np.array_equal(got.pixel_array, ds.pixel_array)

    for path in (ct[0], implicit):
        sop = str(read(path).SOPInstanceUID)
        uri = requests.get(f"http://127.0.0.1:{service.http}/wado", headers=service.auth,
                           timeout=30, params={"requestType": "WADO", "objectUID": sop,
                                               "contentType": "application/dicom"})
        assert uri.status_code == 200
        got = read(uri.content)
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert np.array_equal(got.pixel_array, originals[sop].pixel_array)
    asked = requests.get(f"http://127.0.0.1:{service.http}/wado", headers=service.auth,
                         timeout=30, params={"requestType": "WADO", "objectUID": sop,
                                             "contentType": "application/dicom",
                                             "transferSyntax": HTJ2K_RPCL})
    assert read(asked.content).file_meta.TransferSyntaxUID == HTJ2K_RPCL


def test_an_object_that_cannot_be_converted_still_comes(service: Service,
                                                        corpus: Path) -> None:
    """An object this archive cannot put in Explicit VR Little Endian is answered all
    the same, in the syntax its part names, with its content intact (not left out)."""
    plan = corpus / "other/rt/rtplan.dcm"
    ds = read(plan)
    # (pydicom's test file names another instance in its File Meta: refused as it is)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    service.client().store_instances([ds])
    r = requests.get(f"{service.url}/studies/{ds.StudyInstanceUID}", timeout=30, headers={
        **service.auth, "Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200
    (got,) = service.client().retrieve_study(str(ds.StudyInstanceUID))
    label = r.content.split(b"\r\n\r\n", 1)[0].decode()
    assert f"transfer-syntax={got.file_meta.TransferSyntaxUID}" in label
    assert got.SOPInstanceUID == ds.SOPInstanceUID and got.RTPlanLabel == ds.RTPlanLabel


def test_urls_reach_this_server_when_the_host_header_has_no_port(service: Service,
                                                                   ct: list[Path]) -> None:
    """dicomweb-client sends ``Host: 127.0.0.1`` without the port: BulkDataURIs, QIDO
    Retrieve URLs and STOW Retrieve URLs still name this server's port, so
    retrieve_bulkdata reaches it (was: port 80)."""
    client = service.client()
    stored = client.store_instances([read(ct[0])])
    assert stored.ReferencedSOPSequence[0].RetrieveURL.startswith(f"{service.url}/studies/")
    ds = read(ct[0])
    (study,) = client.search_for_studies()
    assert study["00081190"]["Value"][0].startswith(f"{service.url}/studies/")
    (meta,) = client.retrieve_series_metadata(str(ds.StudyInstanceUID),
                                              str(ds.SeriesInstanceUID))
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{service.url}/studies/")
    (pixels,) = client.retrieve_bulkdata(uri)
    assert pixels == ds.pixel_array.astype("<i2").tobytes()


def test_public_url_starts_every_url_and_is_checked(tmp_path: Path, ct: list[Path]) -> None:
    """Behind a reverse proxy, --public-url starts BulkDataURIs and Retrieve URLs; a
    value that is not an absolute http(s) URL is refused before anything starts."""
    public = "https://pacs.example.org/imaging"
    archive = tmp_path / "archive"
    with serving(archive, "--public-url", public) as ports:
        service = Service(archive, ports["http"])
        r = service.stow(ct[0].read_bytes())
        assert r.json()["00081199"]["Value"][0]["00081190"]["Value"][0].startswith(
            f"{public}/dicom-web/studies/")
        ds = read(ct[0])
        (meta,) = requests.get(f"{service.url}/studies/{ds.StudyInstanceUID}/metadata",
                               headers=service.auth, timeout=30).json()
        assert meta["7FE00010"]["BulkDataURI"].startswith(f"{public}/dicom-web/studies/")
    for bad in ("ftp://pacs.example.org", "pacs.example.org", "https://x.example/?a=1"):
        run = subprocess.run([sys.executable, "-m", "pacscore.cli", "serve", "--archive",
                              str(tmp_path / "other"), "--public-url", bad],
                             check=False, capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "public_url" in run.stderr + run.stdout, run


def _routes() -> list[tuple[str, str]]:
    """(method, path with every parameter filled) of every route of the app."""
    scratch = Path(__import__("tempfile").mkdtemp())
    with Archive(scratch / "archive", ArchiveConfig(fsync=False)) as archive:
        app = create_app(archive)

        async def lifespan() -> None:  # runs the app's shutdown (its threads stop)
            async with app.router.lifespan_context(app):
                pass

        asyncio.run(lifespan())
    __import__("shutil").rmtree(scratch)
    fill = {"{study}": "1.2.3", "{series}": "1.2.4", "{sop}": "1.2.5", "{frames}": "1",
            "{frame:int}": "1", "{path:path}": "7FE00010"}
    out = []
    for route in app.routes:
        assert isinstance(route, Route)
        path = route.path
        for key, value in fill.items():
            path = path.replace(key, value)
        out += [(m, path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return out


def test_refusals_say_why_and_only_healthz_is_open(service: Service) -> None:
    """Without a token every route but /healthz answers 401 with the reason (a Warning
    header; a JSON body when the client takes JSON, none when it asked only for
    multipart, which Orthanc's client could not parse); a token with too little scope
    gets 403 naming the scope.  /healthz says ``ok`` and nothing else."""
    base = f"http://127.0.0.1:{service.http}"
    routes = _routes()
    assert ("GET", "/healthz") in routes and len(routes) > 20
    for method, path in routes:
        r = requests.request(method, base + path, timeout=30,
                             headers={"Accept": "application/dicom+json"})
        if path == "/healthz":
            assert (r.status_code, r.text) == (200, "ok")
            assert r.headers["content-type"].startswith("text/plain")
            assert "server" not in r.headers
            continue
        assert r.status_code == 401, (method, path, r.status_code)
        assert "bearer token" in r.headers["Warning"]
        assert r.json()["status"] == 401 and "Authorization: Bearer" in r.json()["reason"]
    study = f"{service.url}/studies/1.2.3"
    multipart = requests.get(study, timeout=30, headers={
        "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert multipart.status_code == 401 and multipart.content == b""
    assert "no bearer token" in multipart.headers["Warning"]
    wrong = requests.get(study, timeout=30, headers={"Authorization": "Bearer pcs_a_b"})
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.json()["reason"]
    reader = cli("token", "create", "--scope", "read", "--archive", str(service.archive))
    post = requests.post(f"{service.url}/studies", timeout=30, data=b"",
                         headers={"Authorization": f"Bearer {reader.strip()}"})
    assert post.status_code == 403
    assert "'write'" in post.json()["reason"] and "'read'" in post.json()["reason"]


def _malformed(ct: Path) -> bytes:
    """``ct`` as another instance of its series with values pydicom cannot convert: a
    Slice Thickness of ``200&0``, a US of 3 bytes, a private US of 5 bytes."""
    ds = read(ct)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SliceThickness = "200.0"
    ds.add_new(0x00540081, "US", 7)  # Number of Slices
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    ds.add_new(0x00291001, "US", 1)
    out = io.BytesIO()
    ds.save_as(out)
    data = out.getvalue()
    for old, new in ((b"DS\x06\x00200.0 ", b"DS\x06\x00200&0 "),
                     (struct.pack("<HH2sHH", 0x54, 0x81, b"US", 2, 7),
                      struct.pack("<HH2sH", 0x54, 0x81, b"US", 3) + b"\x07\x00\x00"),
                     (struct.pack("<HH2sHH", 0x29, 0x1001, b"US", 2, 1),
                      struct.pack("<HH2sH", 0x29, 0x1001, b"US", 5) + b"\x01\x00\x00\x00\x00")):
        assert data.count(old) == 1
        data = data.replace(old, new)
    return data


def test_metadata_serves_a_series_with_malformed_values_and_deflated_objects(
        service: Service, ct: list[Path], corpus: Path) -> None:
    """One instance with values pydicom cannot convert does not fail its series (was
    400): the series, study and instance metadata answer 200, the other instances
    whole, the bad elements as received (VR UN) and named (by tag) in a Warning header.  A
    deflated object kept as received has metadata too (was 500)."""
    bad = _malformed(ct[0])
    deflated = corpus / "odd/deflate/image_dfl.dcm"
    assert service.stow(*(p.read_bytes() for p in ct), bad, deflated.read_bytes()
                        ).status_code == 200
    sop = str(read(bad).SOPInstanceUID)
    study, series = str(read(ct[0]).StudyInstanceUID), str(read(ct[0]).SeriesInstanceUID)
    for url in (f"{service.url}/studies/{study}/series/{series}/metadata",
                f"{service.url}/studies/{study}/metadata",
                f"{service.url}/studies/{study}/series/{series}/instances/{sop}/metadata"):
        r = requests.get(url, headers=service.auth, timeout=30)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        assert sop in r.headers["Warning"] and "00180050" in r.headers["Warning"]
        assert "200&0" not in r.headers["Warning"]  # tags, not values (patient data)
    metadata = service.client().retrieve_series_metadata(study, series)
    assert len(metadata) == len(ct) + 1
    by_sop = {m["00080018"]["Value"][0]: m for m in metadata}
    assert by_sop[sop]["00180050"] == {"vr": "UN", "InlineBinary": base64.b64encode(
        b"200&0 ").decode()}
    assert base64.b64decode(by_sop[sop]["00540081"]["InlineBinary"]) == b"\x07\x00\x00"
    assert base64.b64decode(by_sop[sop]["00291001"]["InlineBinary"]) == b"\x01\x00" + bytes(3)
    assert by_sop[sop]["00280010"] == {"vr": "US", "Value": [512]}
    for path in ct:
        ds = read(path)
        entry = by_sop[str(ds.SOPInstanceUID)]
        assert entry["00180050"] == {"vr": "DS", "Value": [float(ds.SliceThickness)]}
        assert entry["00200032"]["Value"] == [float(v) for v in ds.ImagePositionPatient]
    ds = read(deflated)
    (meta,) = service.client().retrieve_series_metadata(str(ds.StudyInstanceUID),
                                                        str(ds.SeriesInstanceUID))
    assert meta["00280010"]["Value"] == [ds.Rows] and meta["00100010"]["Value"][0][
        "Alphabetic"] == str(ds.PatientName)
    assert "7FE00010" in meta


def test_stow_audit_lines_name_every_instance_with_the_outcome_told(
        service: Service, ct: list[Path], corpus: Path) -> None:
    """Each STOW-RS audit line names the SOP Instance UIDs it stored and failed, with
    the PS3.15 A.5.3 outcome of what the client was told: 200 success (0), 202 some
    failed (4), 409 none stored (8)."""
    truncated = corpus / "malformed/MR_truncated.dcm"
    good = [str(read(p).SOPInstanceUID) for p in ct[:2]]
    bad = str(read(truncated).SOPInstanceUID)
    told = [service.stow(ct[0].read_bytes(), ct[1].read_bytes(), truncated.read_bytes()),
            service.stow(truncated.read_bytes()), service.stow(ct[0].read_bytes())]
    assert [r.status_code for r in told] == [202, 409, 200]
    lines = [e for e in service.audit() if e["event_id"]["code"] == "110104"]
    assert [e["outcome"] for e in lines] == [4, 8, 0]
    assert [sorted(e["objects"]) for e in lines] == [sorted([*good, bad]), [bad], good[:1]]
    assert "2 stored, 1 failed" in lines[0]["detail"] and "0xC000" in lines[0]["detail"]
