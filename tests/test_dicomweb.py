"""DICOMweb against `pacscore serve` with dicomweb-client (a client we did not write),
plus the refusals: tokens, scopes, malformed and oversize bodies, bad DICOM parts."""

from __future__ import annotations

import http.client
import io
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from pacscore.services.dicomweb.app import _produced
from pacscore.services.dicomweb.multipart import encode_related, parse_related, stream_related
from pacscore.testing import cli, serving


class Service:
    def __init__(self, archive: Path, http: int, dimse: int):
        self.archive, self.http, self.dimse = archive, http, dimse
        self.url = f"http://127.0.0.1:{http}/dicom-web"
        self.admin = (archive / "security" / "admin-token").read_text().strip()

    def client(self, token: str | None = None) -> DICOMwebClient:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token or self.admin}"
        return DICOMwebClient(self.url, session=session)

    def stats(self) -> dict[str, Any]:
        return dict(json.loads(cli("stats", "--archive", str(self.archive), "--json")))


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    archive = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    with serving(archive, "--max-body", str(64 * 1024**2)) as ports:
        yield Service(archive, ports["http"], ports["dimse"])


@pytest.fixture()
def ct(corpus: Path) -> list[Path]:
    return sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:6]


def read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def test_stow_qido_wado_roundtrip(service: Service, ct: list[Path]) -> None:
    client = service.client()
    result = client.store_instances([read(p) for p in ct])
    assert len(result.ReferencedSOPSequence) == len(ct)
    studies = client.search_for_studies(search_filters={"PatientName": "lung*"})
    assert len(studies) == 1
    # PatientName is Lung_Dx-A0002: "dx" is a word of it only for fuzzy matching.
    assert client.search_for_studies(search_filters={"PatientName": "dx"}) == []
    fuzzy = client.search_for_studies(search_filters={"PatientName": "dx"}, fuzzymatching=True)
    assert [s["0020000D"] for s in fuzzy] == [studies[0]["0020000D"]]
    study = studies[0]["0020000D"]["Value"][0]
    assert studies[0]["00201208"]["Value"] == [len(ct)]
    instances = client.search_for_instances(study_instance_uid=study)
    assert len(instances) == len(ct)
    assert len(client.search_for_instances(study_instance_uid=study, limit=2, offset=1)) == 2
    sop, series = instances[0]["00080018"]["Value"][0], instances[0]["0020000E"]["Value"][0]
    original = {read(p).SOPInstanceUID: p for p in ct}[sop]
    ds = client.retrieve_instance(study, series, sop)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.202"  # stored: passthrough
    assert np.array_equal(ds.pixel_array, read(original).pixel_array)
    (stream,) = client.retrieve_instance_frames(
        study, series, sop, [1], media_types=(("application/octet-stream", "*"),))
    assert np.array_equal(imagecodecs.htj2k_decode(stream), read(original).pixel_array)
    (native,) = client.retrieve_instance_frames(study, series, sop, [1],
                                                media_types=("application/octet-stream",))
    assert native == read(original).pixel_array.astype("<u2").tobytes()
    metadata = client.retrieve_series_metadata(study, series)
    assert len(metadata) == len(ct)
    assert all("7FE00010" in m and "BulkDataURI" in m["7FE00010"] for m in metadata)
    raw = requests.get(f"{service.url}/studies/{study}/series/{series}/metadata",
                       headers={"Authorization": f"Bearer {service.admin}"}, timeout=30).json()
    uri = raw[0]["7FE00010"]["BulkDataURI"]  # absolute, with this request's host and port
    assert uri.startswith(f"{service.url}/studies/{study}/series/{series}/instances/")
    # A misaddressed request (right instance, wrong study or series) is a 404 and
    # deletes nothing.
    auth = {"Authorization": f"Bearer {service.admin}"}
    for wrong in (f"{service.url}/studies/1.2.3/series/{series}/instances/{sop}",
                  f"{service.url}/studies/{study}/series/1.2.3/instances/{sop}"):
        assert requests.delete(wrong, headers=auth, timeout=30).status_code == 404
        assert requests.get(f"{wrong}/frames/1", headers=auth, timeout=30).status_code == 404
        assert requests.get(f"{wrong}/metadata", headers=auth, timeout=30).status_code == 404
    assert requests.delete(f"{service.url}/studies/1.2.3/series/{series}", headers=auth,
                           timeout=30).status_code == 404
    assert service.stats()["instances"] == len(ct)
    # The precomputed series JSON follows later changes: a delete, then a new store.
    client.delete_instance(study, series, sop)
    assert len(client.retrieve_series_metadata(study, series)) == len(ct) - 1
    client.store_instances([read(original)])
    assert len(client.retrieve_series_metadata(study, series)) == len(ct)
    assert len(client.retrieve_study_metadata(study)) == len(ct)
    png = client.retrieve_instance_rendered(study, series, sop, media_types=("image/png",))
    assert imagecodecs.png_decode(png).dtype == np.uint8
    uri = requests.get(f"http://127.0.0.1:{service.http}/wado", params={
        "requestType": "WADO", "objectUID": sop, "contentType": "application/dicom"},
        headers={"Authorization": f"Bearer {service.admin}"}, timeout=30)
    assert uri.status_code == 200 and uri.content == original.read_bytes()


def test_whole_series_and_study_retrieval(service: Service, ct: list[Path]) -> None:
    """WADO-RS of a series and of a study (streamed in chunks of whole parts): every
    instance once, pixels equal to the originals, in the stored syntax or native."""
    client = service.client()
    client.store_instances([read(p) for p in ct])
    originals = {read(p).SOPInstanceUID: read(p) for p in ct}
    first = originals[next(iter(originals))]
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    for retrieved, syntax in (
            (client.retrieve_series(study, series, media_types=(("application/dicom", "*"),)),
             "1.2.840.10008.1.2.4.202"),  # any syntax: the stored one (HTJ2K), passthrough
            (client.retrieve_study(study, media_types=(
                ("application/dicom", "1.2.840.10008.1.2.1"),)), "1.2.840.10008.1.2.1")):
        assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(originals)
        for ds in retrieved:
            assert ds.file_meta.TransferSyntaxUID == syntax
            assert np.array_equal(ds.pixel_array, originals[ds.SOPInstanceUID].pixel_array)


@pytest.mark.parametrize("chunk", [1, 50, 1 << 21])
def test_streamed_body_is_whole_parts_in_fewer_chunks(tmp_path: Path, chunk: int) -> None:
    """The streamed multipart body equals the encoded one, parses back to the same
    parts, and each chunk but the last carries at least ``chunk`` payload bytes."""
    import asyncio

    items = [("application/dicom", bytes([i]) * (10 + 7 * i)) for i in range(9)]
    chunks = list(stream_related(items, "b0und", chunk=chunk))
    assert b"".join(chunks) == encode_related(items, "b0und")
    assert all(len(c) >= min(chunk, 10) for c in chunks[:-1])
    if chunk == 1 << 21:
        assert len(chunks) == 1

    async def body() -> Any:
        for c in chunks:
            yield c

    parts = asyncio.run(parse_related(body(), "b0und", 1 << 20, tmp_path))
    assert [(p.headers["content-type"], p.path.read_bytes()) for p in parts] == items


def test_tokens_and_scopes(service: Service, ct: list[Path]) -> None:
    url = f"{service.url}/studies"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer pcs_x_y"},
                        timeout=10).status_code == 401
    reader = cli("token", "create", "--scope", "read", "--archive", str(service.archive)).strip()
    assert service.client(reader).search_for_studies() == []
    body = encode_related([("application/dicom", ct[0].read_bytes())], "b0undary")
    headers = {"Authorization": f"Bearer {reader}",
               "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'}
    assert requests.post(url, data=body, headers=headers, timeout=30).status_code == 403
    cli("token", "revoke", reader, "--archive", str(service.archive))
    assert requests.get(url, headers={"Authorization": f"Bearer {reader}"},
                        timeout=10).status_code == 401
    audit = (service.archive / "audit" / "audit.jsonl").read_text()
    assert "110114" in audit and reader not in audit


def test_stow_refusals(service: Service, ct: list[Path], corpus: Path) -> None:
    url = f"{service.url}/studies"
    auth = {"Authorization": f"Bearer {service.admin}"}
    ctype = 'multipart/related; type="application/dicom"; boundary=XyZ'
    broken = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nDICM..."  # no closing boundary
    r = requests.post(url, data=broken, headers={**auth, "Content-Type": ctype}, timeout=30)
    assert r.status_code == 400
    r = requests.post(url, data=b"x", headers={**auth, "Content-Type": "application/dicom"},
                      timeout=30)
    assert r.status_code == 400
    conn = http.client.HTTPConnection("127.0.0.1", service.http, timeout=30)
    conn.putrequest("POST", "/dicom-web/studies")
    for key, value in {**auth, "Content-Type": ctype,
                       "Content-Length": str(65 * 1024**2)}.items():
        conn.putheader(key, value)
    conn.endheaders(b"--XyZ\r\n")  # refused before the 65 MB body is read
    assert conn.getresponse().status == 413
    conn.close()
    bad = (corpus / "malformed/MR_truncated.dcm").read_bytes()
    body = encode_related([("application/dicom", bad)], "XyZ")
    r = requests.post(url, data=body, headers={**auth, "Content-Type": ctype}, timeout=30)
    assert r.status_code == 409
    failed = r.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC000] and "8130" in failed["00091001"]["Value"][0]
    body = encode_related([("application/dicom", bad), ("application/dicom", ct[0].read_bytes())],
                          "XyZ")
    r = requests.post(url, data=body, headers={**auth, "Content-Type": ctype}, timeout=30)
    assert r.status_code == 202
    assert service.stats()["instances"] == 1


def test_mixed_interfaces_store_one_study(tmp_path: Path, corpus: Path) -> None:  # noqa: C901
    """8 clients (3 STOW-RS, 2 gRPC, 3 DCMTK storescu) send the same 50-instance study
    at once: one study, 50 instances, each stored once (one location each, nothing
    left staged), every data set byte-exact whichever interface won, and the archive's
    byte totals exactly the sum of the 50 copies it kept."""
    import grpc

    from pacscore import Archive
    from pacscore.services.dimse._fast.send import data_set_offset
    from pacscore.services.grpc.generated import load

    files = sorted((corpus / "mr_series/philips_3d_t1_mprage_sag_170sl").glob("*.dcm"))[:50]
    storescu = Path("/usr/bin/storescu")
    if not storescu.exists():
        pytest.skip("DCMTK storescu not installed")
    pb, svc = load()
    archive = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    errors: list[str] = []
    with serving(archive, "--max-body", str(64 * 1024**2)) as ports:
        service = Service(archive, ports["http"], ports["dimse"])

        def stow() -> None:
            try:
                service.client().store_instances([read(p) for p in files])
            except Exception as exc:  # collected and asserted below
                errors.append(repr(exc))

        def grpc_store() -> None:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
                    stub = svc.ArchiveStub(channel)
                    meta = (("authorization", f"Bearer {service.admin}"),)
                    for path in files:
                        stub.Store(iter([pb.StoreChunk(data=path.read_bytes())]),
                                   metadata=meta)
            except Exception as exc:  # collected and asserted below
                errors.append(repr(exc))

        threads = [threading.Thread(target=f) for f in (stow, stow, stow, grpc_store,
                                                        grpc_store)]
        procs = [subprocess.Popen([str(storescu), "-aet", "MODALITY", "-aec", "PACSCORE",
                                   "127.0.0.1", str(service.dimse), *map(str, files)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
                 for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert [p.wait(timeout=300) for p in procs] == [0] * 3
        assert errors == []
        studies = service.client().search_for_studies()
        assert len(studies) == 1 and studies[0]["00201208"]["Value"] == [50]
    with Archive(archive) as arch:
        sops = arch.instances("study", studies[0]["0020000D"]["Value"][0])
        assert len(sops) == 50
        records = [arch.record(sop) for sop in sops]
        stats = arch.stats()
        assert stats["instances"] == 50
        assert stats["bytes_in"] == sum(r.bytes_in for r in records)
        assert stats["bytes_stored"] == sum(r.bytes_stored for r in records)
        assert sorted(arch.store_.locations()) == sorted(r.location for r in records)
        assert arch.store_.staged() == []
        # What each client sent: gRPC the file; dicomweb-client pydicom's rewrite of it;
        # storescu DCMTK's (sequences with explicit lengths, as dcmconv writes them).
        sent: dict[str, set[bytes]] = {}
        for path in files:
            rewritten = io.BytesIO()
            pydicom.dcmwrite(rewritten, read(path))
            dcmtk = tmp_path / "dcmconv.dcm"
            subprocess.run(["/usr/bin/dcmconv", str(path), str(dcmtk)], check=True)
            for data in (path.read_bytes(), rewritten.getvalue(), dcmtk.read_bytes()):
                sent.setdefault(read(path).SOPInstanceUID, set()).add(
                    data[data_set_offset(data):])
        for rec in records:
            original = arch.get(rec.sop_instance_uid, "original")
            assert len(original) == rec.bytes_in
            assert original[data_set_offset(original):] in sent[rec.sop_instance_uid]


def test_series_metadata_is_precomputed_once_the_series_is_quiet(tmp_path: Path,
                                                                 ct: list[Path]) -> None:
    """Viewers open series through /metadata: its JSON is built in the background after
    the last store of the series, so the first viewer does not wait for it."""
    import time

    from pacscore import Archive
    from pacscore.metadata import SeriesMetadata

    with Archive(tmp_path / "a") as archive:
        meta = SeriesMetadata(archive, quiet=0.2)
        try:
            results = [archive.store(p) for p in ct]
            series = results[0].series_uid
            deadline = time.monotonic() + 30
            while series not in meta._series.items and time.monotonic() < deadline:
                time.sleep(0.05)
            stamp, body = meta._series.items[series]  # built without any request
            # (the series' change stamp, and the patient correction stamp: 16.4)
            assert stamp == (archive.changed("series", series), archive.patients.stamp())
            rendered = json.loads(meta.render(body, "https://pacs.example/dicom-web"))
            assert sorted(m["00080018"]["Value"][0] for m in rendered) == sorted(
                r.sop_instance_uid for r in results)
            assert rendered[0]["7FE00010"]["BulkDataURI"].startswith(
                "https://pacs.example/dicom-web/studies/")
            archive.delete("instance", results[0].sop_instance_uid)
            assert archive.changed("series", series) != stamp[0]
            assert len(json.loads(meta.series(series))) == len(ct) - 1
        finally:
            meta.close()


def test_series_metadata_reads_the_records_in_one_query(tmp_path: Path, ct: list[Path]
                                                        ) -> None:
    """Building a series' metadata asks the index for the records of all its instances
    at once, and for their headers at once: on a PostgreSQL index every look-up is a
    round trip (four per instance at first: record, then the record again for the header
    and for the pixel data tag; then one per instance, for the header).  Built again
    from the instances' cache, it asks for no header."""
    from pacscore import Archive
    from pacscore.metadata import SeriesMetadata

    with Archive(tmp_path / "a") as archive:
        results = [archive.store(p) for p in ct]
        meta = SeriesMetadata(archive, quiet=3600)
        calls: dict[str, int] = {"get": 0, "get_many": 0, "header": 0, "headers": 0}
        index = archive.index
        for name in calls:
            real = getattr(index, name)

            def counted(*args: object, _real: object = real, _name: str = name) -> object:
                calls[_name] += 1
                return _real(*args)  # type: ignore[operator]
            setattr(index, name, counted)
        try:
            body = json.loads(meta.series(results[0].series_uid))
            assert calls == {"get": 0, "get_many": 1, "header": 0, "headers": 1}
            meta._series = type(meta._series)(1024**2)  # the series' body forgotten
            assert json.loads(meta.series(results[0].series_uid)) == body
            assert calls == {"get": 0, "get_many": 2, "header": 0, "headers": 1}
        finally:
            meta.close()
        assert len(body) == len(ct)
        assert sorted(i["00080018"]["Value"][0] for i in body) == sorted(
            r.sop_instance_uid for r in results)


# -- fixes of the DICOMweb front end: each test failed before its fix -----------------
def _auth(service: Service) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.admin}"}


def _stow(service: Service, files: list[Path], study: str | None = None) -> requests.Response:
    body = encode_related([("application/dicom", p.read_bytes()) for p in files], "B0")
    return requests.post(
        f"{service.url}/studies" + (f"/{study}" if study else ""), data=body, timeout=60,
        headers={**_auth(service),
                 "Content-Type": 'multipart/related; type="application/dicom"; boundary=B0'})


def _multipart(response: requests.Response, tmp_path: Path) -> list[tuple[str, bytes]]:
    import asyncio

    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')

    async def body() -> Any:
        yield response.content

    parts = asyncio.run(parse_related(body(), boundary, 1 << 30, tmp_path))
    return [(p.headers["content-type"], p.path.read_bytes()) for p in parts]


def test_stow_to_a_study_stores_nothing_of_another_study(service: Service, ct: list[Path],
                                                         corpus: Path) -> None:
    """POST /studies/{study}: an instance of another study is refused before it is
    stored (Failure Reason A901, its UIDs named); the others of the request are stored."""
    other = corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm"
    study = str(read(ct[0]).StudyInstanceUID)
    r = _stow(service, [ct[0], other], study)
    assert r.status_code == 202
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA901]
    assert failed["00081155"]["Value"] == [read(other).SOPInstanceUID]
    assert failed["00081150"]["Value"] == [read(other).SOPClassUID]
    assert str(read(other).StudyInstanceUID) in failed["00091001"]["Value"][0]
    assert service.stats()["instances"] == 1
    assert service.client().search_for_studies(
        search_filters={"StudyInstanceUID": str(read(other).StudyInstanceUID)}) == []
    r = _stow(service, [other], study)  # nothing stored at all: 409
    assert r.status_code == 409 and service.stats()["instances"] == 1


def test_stow_reply_names_the_sop_class(service: Service, ct: list[Path]) -> None:
    result = service.client().store_instances([read(p) for p in ct[:2]])
    sent = {read(p).SOPInstanceUID: read(p).SOPClassUID for p in ct[:2]}
    assert {item.ReferencedSOPInstanceUID: item.ReferencedSOPClassUID
            for item in result.ReferencedSOPSequence} == sent


def test_qido_includefield_and_uid_lists(service: Service, ct: list[Path]) -> None:
    """includefield (comma-separated, repeated, keywords or tags) adds attributes the
    index does not keep, from the stored header; instance results carry Rows and
    Columns (PS3.18 Table 10.6.3-5); a UID list may be comma-separated (8.3.4.1)."""
    client = service.client()
    client.store_instances([read(p) for p in ct[:3]])
    first = read(ct[0])
    study = str(first.StudyInstanceUID)
    url = f"{service.url}/studies/{study}/instances"
    r = requests.get(url, headers=_auth(service), timeout=30, params=[
        ("includefield", "PatientAge,Manufacturer"), ("includefield", "00180050")])
    assert r.status_code == 200
    for match in r.json():
        assert match["00101010"] == {"vr": "AS", "Value": [first.PatientAge]}
        assert match["00080070"]["Value"] == [first.Manufacturer]
        assert float(match["00180050"]["Value"][0]) == float(first.SliceThickness)
        assert match["00280010"]["Value"] == [first.Rows]
        assert match["00280011"]["Value"] == [first.Columns]
    studies = requests.get(f"{service.url}/studies", headers=_auth(service), timeout=30,
                           params={"includefield": "PatientAge"}).json()
    assert studies[0]["00101010"]["Value"] == [first.PatientAge]
    every = requests.get(f"{service.url}/studies", headers=_auth(service), timeout=30,
                         params={"includefield": "all"}).json()
    assert {"00100010", "00100020", "00081030", "00201208"} <= set(every[0])
    r = requests.get(url, headers=_auth(service), timeout=30,
                     params={"includefield": "NoSuchThing"})
    assert r.status_code == 400 and "NoSuchThing" in r.json()["error"]
    sops = sorted(str(read(p).SOPInstanceUID) for p in ct[:3])
    for sep in (",", "\\"):
        found = client.search_for_instances(
            study_instance_uid=study, search_filters={"SOPInstanceUID": sep.join(sops[:2])})
        assert sorted(m["00080018"]["Value"][0] for m in found) == sops[:2]


def test_wado_uri_parameters(service: Service, ct: list[Path]) -> None:
    """WADO-URI: image/jpeg by default for a single-frame image; application/dicom in
    the asked transfer syntax; rendered PNG scaled to rows/columns with its aspect kept;
    404 for UIDs of another study or series; 406 for what it cannot send."""
    service.client().store_instances([read(ct[0])])
    ds = read(ct[0])
    params = {"requestType": "WADO", "studyUID": str(ds.StudyInstanceUID),
              "seriesUID": str(ds.SeriesInstanceUID), "objectUID": str(ds.SOPInstanceUID)}
    url = f"http://127.0.0.1:{service.http}/wado"

    def get(**extra: str) -> requests.Response:
        return requests.get(url, params={**params, **extra}, headers=_auth(service),
                            timeout=30)

    r = get()
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert imagecodecs.jpeg8_decode(r.content).shape == (ds.Rows, ds.Columns)
    r = get(contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.80")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    import io

    got = pydicom.dcmread(io.BytesIO(r.content))
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    r = get(contentType="image/png", rows="64", windowCenter="40", windowWidth="400")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert imagecodecs.png_decode(r.content).shape == (64, 64)
    assert get(studyUID="1.2.3").status_code == 404
    assert get(seriesUID="1.2.3").status_code == 404
    assert get(contentType="image/gif").status_code == 406
    r = get(contentType="image/jpeg", frameNumber="2")
    assert r.status_code == 400 and "1 to 1" in r.json()["error"]


def test_frames_follow_the_requested_media_type(service: Service, ct: list[Path],
                                               tmp_path: Path) -> None:
    """PS3.18 Table 8.7.3-5: a media type without transfer-syntax means its default
    syntax; an HTJ2K lossless request is served by the stored RPCL codestream; what no
    codec here writes is a 406."""
    service.client().store_instances([read(ct[0])])
    ds = read(ct[0])
    url = (f"{service.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/frames/1")

    def get(accept: str) -> requests.Response:
        return requests.get(url, headers={**_auth(service), "Accept": accept}, timeout=30)

    r = get('multipart/related; type="image/jls"')
    assert r.status_code == 200 and 'type="image/jls"' in r.headers["content-type"]
    ((ctype, data),) = _multipart(r, tmp_path)
    assert ctype == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"
    assert np.array_equal(imagecodecs.jpegls_decode(data), ds.pixel_array)
    stored = get('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    ((_, as_stored),) = _multipart(stored, tmp_path)
    for accept, label in (
            ('multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.201',
             "1.2.840.10008.1.2.4.201"),
            ('multipart/related; type="image/jphc"', "1.2.840.10008.1.2.4.201"),
            ('multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202',
             "1.2.840.10008.1.2.4.202")):
        ((ctype, data),) = _multipart(get(accept), tmp_path)
        assert ctype == f"image/jphc; transfer-syntax={label}" and data == as_stored
    r = get('multipart/related; type="image/jp2"')
    ((ctype, data),) = _multipart(r, tmp_path)
    assert ctype == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert np.array_equal(imagecodecs.jpeg2k_decode(data), ds.pixel_array)
    assert get('multipart/related; type="image/jpx"').status_code == 406
    assert get('multipart/related; type="image/jls"; '
               'transfer-syntax=1.2.840.10008.1.2.4.90').status_code == 406
    # Alternatives: the first the server can write wins.
    r = get('multipart/related; type="image/jpx", multipart/related; type="image/jls"')
    assert r.status_code == 200 and 'type="image/jls"' in r.headers["content-type"]


def test_rendered_media_viewport_and_frame_numbers(service: Service, ct: list[Path]) -> None:
    service.client().store_instances([read(ct[0])])
    ds = read(ct[0])
    url = (f"{service.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    auth = _auth(service)
    r = requests.get(f"{url}/rendered", headers={**auth, "Accept": "image/gif"}, timeout=30)
    assert r.status_code == 406
    r = requests.get(f"{url}/rendered", params={"viewport": "100,50"},
                     headers={**auth, "Accept": "image/png"}, timeout=30)
    assert imagecodecs.png_decode(r.content).shape == (50, 50)  # 512x512 fitted, not stretched
    for frame in (0, 2):
        r = requests.get(f"{url}/frames/{frame}/rendered", headers=auth, timeout=30)
        assert r.status_code == 400
        assert r.json()["error"] == (f"instance {ds.SOPInstanceUID} has no frame {frame}: "
                                     f"its frame numbers run from 1 to 1")
    r = requests.get(f"{url}/frames/1/rendered", headers=auth, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


def test_audit_names_the_token_and_logs_queries(service: Service) -> None:
    """Audit entries name the token (id and name, never the secret), so that users can
    be told apart; QIDO-RS is a Query event (PS3.15 A.5.3, 110112)."""
    reader = cli("token", "create", "--scope", "read", "--name", "viewer-7",
                 "--archive", str(service.archive)).strip()
    token_id = reader.split("_")[1]
    service.client(reader).search_for_studies()
    service.client().search_for_studies()
    entries = [json.loads(line) for line in
               (service.archive / "audit" / "audit.jsonl").read_text().splitlines()]
    queries = [e for e in entries if e["interface"] == "dicomweb"
               and e["event_id"]["code"] == "110112"]
    assert [e["user"] for e in queries][:1] == [f"token {token_id} (viewer-7)"]
    assert len({e["user"] for e in queries}) == 2
    assert not any(e["user"] in ("read", "admin") for e in entries)
    assert not any(e["event_id"]["code"] == "110103" for e in entries
                   if e["interface"] == "dicomweb")
    assert reader not in json.dumps(entries)


JPEG_LS = "1.2.840.10008.1.2.4.80"


def _ybr_in_study(corpus: Path, like: Path, tmp_path: Path) -> Path:
    """The native YBR_FULL_422 US object (no JPEG-LS of it: PS3.5 8.2.3) moved into
    the study (and patient) of ``like``."""
    ds, other = read(corpus / "odd/ybr/US_YBR_FULL_422_uncompressed.dcm"), read(like)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName"):
        setattr(ds, keyword, getattr(other, keyword))
    path = tmp_path / "us_ybr422.dcm"
    ds.save_as(path)
    return path


def test_study_retrieval_leaves_out_what_cannot_be_sent(service: Service, ct: list[Path],
                                                        corpus: Path, tmp_path: Path) -> None:
    """WADO-RS of a study in a syntax one instance cannot be sent in: 206 with a whole
    multipart body of the others (PS3.18 10.4.3), decided before the status
    line; 406 when none can be sent; never a connection cut mid-body."""
    study = str(read(ct[0]).StudyInstanceUID)
    us = _ybr_in_study(corpus, ct[0], tmp_path)
    assert _stow(service, [*ct[:3], us, *ct[3:]]).status_code == 200
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}'
    r = requests.get(f"{service.url}/studies/{study}", timeout=60,
                     headers={**_auth(service), "Accept": accept})
    assert r.status_code == 206, r.text[:300]
    assert read(us).SOPInstanceUID in r.headers["warning"]
    parts = _multipart(r, tmp_path)
    originals = {read(p).SOPInstanceUID: read(p) for p in ct}
    got = [pydicom.dcmread(io.BytesIO(data)) for _, data in parts]
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(originals)
    for (ctype, _), ds in zip(parts, got, strict=True):
        assert ctype.endswith(f"transfer-syntax={JPEG_LS}")
        assert ds.file_meta.TransferSyntaxUID == JPEG_LS
        assert np.array_equal(ds.pixel_array, originals[ds.SOPInstanceUID].pixel_array)
    us_series = str(read(us).SeriesInstanceUID)
    r = requests.get(f"{service.url}/studies/{study}/series/{us_series}", timeout=60,
                     headers={**_auth(service), "Accept": accept})
    assert r.status_code == 406 and read(us).SOPInstanceUID in r.json()["error"]
    # As stored, everything (passthrough streams without a pre-check).
    r = requests.get(f"{service.url}/studies/{study}", timeout=60,
                     headers={**_auth(service), "Accept": 'multipart/related; '
                              'type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200 and len(_multipart(r, tmp_path)) == len(ct) + 1


def test_a_part_that_fails_mid_stream_is_left_out_of_a_whole_body(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Once 200 is sent, an instance that cannot be made is logged and left out: the
    body still parses, closing boundary included (it was cut off mid-body)."""
    import asyncio

    from pacscore.errors import UnsupportedTransferSyntaxError

    def produce(sop: str) -> tuple[str, bytes]:
        if sop == "2":  # the archive's own refusal (a bare ValueError would be a bug)
            raise UnsupportedTransferSyntaxError("cannot encode instance 2")
        if sop == "3":
            raise RuntimeError("a bug")
        return "application/dicom", sop.encode() * 10

    left_out: list[str] = []
    with caplog.at_level(logging.WARNING, logger="pacscore.services.dicomweb.app"):
        body = b"".join(stream_related(_produced(produce, "1234", left_out), "B", chunk=1))
    assert body.endswith(b"--B--\r\n")
    assert left_out == ["2: cannot encode instance 2", "3: internal error (RuntimeError, "
                        "logged)"]
    assert "instance 2 left out" in caplog.text and "instance 3 left out" in caplog.text

    async def chunks() -> Any:
        yield body

    parts = asyncio.run(parse_related(chunks(), "B", 1 << 20, tmp_path))
    assert [p.path.read_bytes() for p in parts] == [b"1" * 10, b"4" * 10]


def _audit(archive: Path) -> list[dict[str, Any]]:
    path = archive / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] \
        if path.exists() else []


def _partial_stow(port: int, token: str, files: list[Path], keep: int) -> socket.socket:
    """A STOW-RS request whose body stops ``keep`` bytes before its end."""
    body = b"".join(b"--cut\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes()
                    + b"\r\n" for p in files) + b"--cut--\r\n"
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall((f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {token}\r\nContent-Type: multipart/related; "
                  f'type="application/dicom"; boundary=cut\r\n'
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:-keep])
    return sock


def test_a_stalled_stow_body_is_answered_408(tmp_path: Path, ct: list[Path]) -> None:
    """A client that stops sending mid-body gets 408 after the idle timeout: its
    spooled parts are removed, nothing is stored, and the request is audited (it was
    held open, spool file and all, for as long as the client liked)."""
    archive = tmp_path / "archive"
    config = tmp_path / "pacscore.toml"
    config.write_text("idle_timeout = 1.0\n")
    with serving(archive, "--config", str(config)) as ports:
        token = (archive / "security" / "admin-token").read_text().strip()
        with _partial_stow(ports["http"], token, ct[:3], 100_000) as sock:
            sock.settimeout(20)
            started = time.monotonic()
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert time.monotonic() - started < 10
        assert list((archive / "tmp").rglob("*.part")) == []
        assert json.loads(cli("stats", "--archive", str(archive), "--json"))[
            "instances"] == 0
    (entry,) = [e for e in _audit(archive) if e["interface"] == "dicomweb"]
    assert entry["outcome"] != "success" and "408" in json.dumps(entry)


def test_a_client_gone_mid_stow_is_audited_and_cleaned_up(service: Service,
                                                          ct: list[Path]) -> None:
    """A client that disconnects mid-body: an audit entry ('client disconnected'), no
    spooled part left, nothing stored (was: a traceback and no audit entry)."""
    _partial_stow(service.http, service.admin, ct[:3], 100_000).close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        gone = [e for e in _audit(service.archive) if "client disconnected" in json.dumps(e)]
        if gone:
            break
        time.sleep(0.1)
    assert len(gone) == 1 and gone[0]["outcome"] != "success"
    assert list((service.archive / "tmp").rglob("*.part")) == []
    assert service.stats()["instances"] == 0


def test_first_start_banner_names_https_with_tls(tmp_path: Path) -> None:
    """With TLS on, the first-start banner's example URL is https:// (was http://)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=localhost"],
                   cwd=tmp_path, check=True, capture_output=True)
    seen: list[str] = []
    with serving(tmp_path / "a", "--tls-cert", str(tmp_path / "c.pem"), "--tls-key",
                 str(tmp_path / "k.pem"), output=seen):
        text = "".join(seen)
    assert "first start" in text and "https://127.0.0.1:" in text, text
    assert "http://" not in text, text


def test_frames_of_an_object_kept_compressed_are_its_codestreams(service: Service,
                                                                 corpus: Path) -> None:
    """A JPEG Baseline cine is kept as received (lossy): WADO-RS frames in its stored
    syntax are its own codestreams, read, not decoded and re-encoded (was: 406, no
    encoder for JPEG Baseline)."""
    src = corpus / "multiframe/us_cine/US_30fr_ybr422_jpeg.dcm"
    ds = read(src)
    client = service.client()
    client.store_instances([ds])
    got = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[2, 30],
        media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=30))
    assert got == [frames[1], frames[29]]


def test_qido_instance_results_name_the_syntax_without_file_meta(service: Service,
                                                                 ct: list[Path]) -> None:
    """Instance results say the stored syntax in Available Transfer Syntax UID
    (0008,3002), a data set attribute, not in (0002,0010), which is File Meta."""
    client = service.client()
    client.store_instances([read(ct[0])])
    [result] = client.search_for_instances()
    assert "00020010" not in result
    assert result["00083002"]["Value"] == ["1.2.840.10008.1.2.4.202"]
    assert result["00280010"]["Value"] == [read(ct[0]).Rows]
