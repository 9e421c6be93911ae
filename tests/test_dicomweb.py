"""DICOMweb against `pacscore serve` with dicomweb-client (a client we did not write),
plus the refusals: tokens, scopes, malformed and oversize bodies, bad DICOM parts."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
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

from pacscore.services.multipart import encode_related, parse_related, stream_related
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


def test_mixed_interfaces_store_one_study(service: Service, corpus: Path) -> None:
    """8 clients (4 STOW-RS, 4 DCMTK storescu) send the same 50-instance study at once:
    one study, 50 instances, the exact byte total of one copy."""
    files = sorted((corpus / "mr_series/philips_3d_t1_mprage_sag_170sl").glob("*.dcm"))[:50]
    storescu = Path("/usr/bin/storescu")
    if not storescu.exists():
        pytest.skip("DCMTK storescu not installed")
    errors: list[str] = []

    def stow() -> None:
        try:
            service.client().store_instances([read(p) for p in files])
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=stow) for _ in range(4)]
    procs = [subprocess.Popen([str(storescu), "-aet", "MODALITY", "-aec", "PACSCORE",
                               "127.0.0.1", str(service.dimse), *map(str, files)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
             for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    assert errors == []
    studies = service.client().search_for_studies()
    assert len(studies) == 1 and studies[0]["00201208"]["Value"] == [50]
    stats = service.stats()
    assert stats["instances"] == 50
    series = studies[0]["0020000D"]["Value"][0]
    sizes = requests.get(f"{service.url}/studies/{series}/metadata",
                         headers={"Authorization": f"Bearer {service.admin}"}, timeout=60)
    assert sizes.status_code == 200 and len(sizes.json()) == 50


def test_series_metadata_is_precomputed_once_the_series_is_quiet(tmp_path: Path,
                                                                 ct: list[Path]) -> None:
    """Viewers open series through /metadata: its JSON is built in the background after
    the last store of the series, so the first viewer does not wait for it."""
    import time

    from pacscore import Archive
    from pacscore.services.metadata import SeriesMetadata

    with Archive(tmp_path / "a") as archive:
        meta = SeriesMetadata(archive, quiet=0.2)
        try:
            results = [archive.store(p) for p in ct]
            series = results[0].series_uid
            deadline = time.monotonic() + 30
            while series not in meta._series.items and time.monotonic() < deadline:
                time.sleep(0.05)
            stamp, body = meta._series.items[series]  # built without any request
            assert stamp == archive.changed("series", series)
            rendered = json.loads(meta.render(body, "https://pacs.example/dicom-web"))
            assert sorted(m["00080018"]["Value"][0] for m in rendered) == sorted(
                r.sop_instance_uid for r in results)
            assert rendered[0]["7FE00010"]["BulkDataURI"].startswith(
                "https://pacs.example/dicom-web/studies/")
            archive.delete("instance", results[0].sop_instance_uid)
            assert archive.changed("series", series) != stamp
            assert len(json.loads(meta.series(series))) == len(ct) - 1
        finally:
            meta.close()
