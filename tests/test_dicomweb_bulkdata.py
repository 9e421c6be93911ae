"""WADO-RS bulk data against `pacscore serve`: every BulkDataURI of the metadata answers
the value of the object as received (PS3.18 10.4.1.1.5), Pixel Data the pixels of all
frames; objects without pixels have no Pixel Data; refusals (401, 404, 406, 400)."""

from __future__ import annotations

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
from pydicom.encaps import generate_frames

from pacscore.services.dicomweb.multipart import encode_related
from pacscore.testing import cli, serving

from .conftest import corpus_root

FILES = {
    "pdf": "other/pdf/encapsulated_pdf.dcm",
    "ecg": "other/ecg/waveform_ecg.dcm",
    "ct2": "multiframe/enhanced_ct/NEMA_CT0012_2fr_explicit.dcm",
    "overlay": "odd/overlay_lut/MR-SIEMENS-DICOM-WithOverlays.dcm",
    "jpeg": "multiframe/us_cine/US_30fr_ybr422_jpeg.dcm",
}
OCTETS = 'multipart/related; type="application/octet-stream"'


def read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


class Service:
    def __init__(self, archive: Path, http: int):
        self.archive = archive
        self.url = f"http://127.0.0.1:{http}/dicom-web"
        self.admin = (archive / "security" / "admin-token").read_text().strip()
        self.paths: dict[str, Path] = {}

    def get(self, url: str, accept: str | None = OCTETS, token: str | None = "admin"
            ) -> requests.Response:
        headers = {"Accept": accept} if accept else {}
        if token:
            headers["Authorization"] = f"Bearer {self.admin if token == 'admin' else token}"
        return requests.get(url, headers=headers, timeout=60)

    def client(self) -> DICOMwebClient:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.admin}"
        return DICOMwebClient(self.url, session=session)

    def base(self, name: str) -> str:
        ds = read(self.paths[name])
        return (f"{self.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{ds.SOPInstanceUID}")

    def metadata(self, name: str) -> dict[str, Any]:
        response = self.get(self.base(name) + "/metadata", accept="application/dicom+json")
        assert response.status_code == 200, response.text
        (meta,) = response.json()
        return dict(meta)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    corpus = corpus_root()
    if corpus is None:
        pytest.skip("the shared corpus is not on this machine")
    archive = tmp_path_factory.mktemp("bulk") / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    with serving(archive) as ports:
        svc = Service(archive, ports["http"])
        svc.paths = {name: corpus / rel for name, rel in FILES.items()}
        body = encode_related([("application/dicom", p.read_bytes())
                               for p in svc.paths.values()], "b0undary")
        stored = requests.post(f"{svc.url}/studies", data=body, timeout=120, headers={
            "Authorization": f"Bearer {svc.admin}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'})
        assert stored.status_code == 200, stored.text
        yield svc


def parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(content type, body) of each part of a multipart/related answer."""
    assert response.status_code == 200, response.text
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related")
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"').encode()
    out = []
    for chunk in response.content.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        media = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-type:"))
        out.append((media, data[:-2]))  # the CRLF before the next boundary
    return out


def test_attribute_values_are_those_of_the_original(service: Service) -> None:
    client = service.client()
    pdf, overlay = read(service.paths["pdf"]), read(service.paths["overlay"])
    expected = {("pdf", "00420011"): pdf.EncapsulatedDocument,
                ("overlay", "60003000"): overlay[0x60003000].value,
                ("overlay", "00880200"): overlay.IconImageSequence[0].PixelData}
    for (name, tag), value in expected.items():
        entry = service.metadata(name)[tag]
        if entry["vr"] == "SQ":  # the icon's pixel data: a value inside a sequence
            entry = entry["Value"][0]["7FE00010"]
        uri = entry["BulkDataURI"]
        assert client.retrieve_bulkdata(uri) == [value]  # dicomweb-client's Accept
        for accept in (OCTETS, "*/*", None):
            ((media, data),) = parts(service.get(uri, accept=accept))
            assert (media, data) == ("application/octet-stream", value)
        single = service.get(uri, accept="application/octet-stream")
        assert single.headers["content-type"] == "application/octet-stream"
        assert single.content == value


def test_waveforms_in_a_sequence_each_have_their_own_uri(service: Service) -> None:
    ecg = read(service.paths["ecg"])
    items = service.metadata("ecg")["54000100"]["Value"]
    uris = [item["54001010"]["BulkDataURI"] for item in items]
    assert len(set(uris)) == len(ecg.WaveformSequence) == 2
    for uri, item in zip(uris, ecg.WaveformSequence, strict=True):
        ((_, data),) = parts(service.get(uri))
        assert data == item.WaveformData


def test_no_pixel_data_in_objects_without_pixels(service: Service) -> None:
    for name in ("pdf", "ecg"):
        meta = service.metadata(name)
        assert "7FE00010" not in meta
        response = service.get(service.base(name) + "/bulk/7FE00010")
        assert response.status_code == 404
        assert read(service.paths[name]).SOPInstanceUID in response.json()["error"]


def test_pixel_data_is_every_frame(service: Service) -> None:
    ds = read(service.paths["ct2"])
    meta = service.metadata("ct2")
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri == service.base("ct2") + "/bulk/7FE00010"
    ((media, data),) = parts(service.get(uri))
    assert media == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert len(data) == 2 * 512 * 512 * 2 and data == ds.PixelData
    assert service.client().retrieve_bulkdata(uri) == [ds.PixelData]
    # In the stored syntax: the stored codestreams, one part per frame, no transcode.
    stored = meta["00020010"]["Value"][0]
    assert stored == "1.2.840.10008.1.2.4.202"  # HTJ2K lossless RPCL, the default
    frames = parts(service.get(uri, accept='multipart/related; type="image/jphc"'))
    assert [m for m, _ in frames] == [f"image/jphc; transfer-syntax={stored}"] * 2
    decoded = [imagecodecs.jpeg2k_decode(d) for _, d in frames]
    assert np.array_equal(np.stack(decoded), ds.pixel_array)
    assert service.get(uri, accept=f"{OCTETS}; transfer-syntax={stored}").status_code == 406


def test_compressed_object_kept_as_received(service: Service) -> None:
    ds = read(service.paths["jpeg"])
    uri = service.metadata("jpeg")["7FE00010"]["BulkDataURI"]
    stored = parts(service.get(uri, accept='multipart/related; type="image/jpeg"'))
    fragments = list(generate_frames(ds.PixelData, number_of_frames=30))
    assert stored == [("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", f)
                      for f in fragments]
    ((_, native),) = parts(service.get(uri))  # decoded: every frame, colour by pixel
    pixels = np.frombuffer(native, np.uint8).reshape(30, 240, 320, 3)
    ds.pixel_array_options(as_rgb=False)  # as stored: YBR_FULL_422 decodes to YBR_FULL
    assert np.array_equal(pixels, ds.pixel_array)


def test_refusals(service: Service) -> None:
    base, sop = service.base("ct2"), read(service.paths["ct2"]).SOPInstanceUID
    missing = service.get(base + "/bulk/00420011")
    assert missing.status_code == 404
    assert sop in missing.json()["error"] and "00420011" in missing.json()["error"]
    assert service.get(base + "/bulk/52009230/7/00209111").status_code == 404
    assert service.get(base + "/bulk/7FE00010", token=None).status_code == 401
    assert service.get(base + "/bulk/7FE00010", token="pcs_x_y").status_code == 401
    assert service.get(base + "/bulk/7FE00010", accept="image/png").status_code == 406
    pdf = service.base("pdf") + "/bulk/00420011"
    assert service.get(pdf, accept='multipart/related; type="image/jpeg"').status_code == 406
    assert service.get(base + "/bulk/not-a-tag").status_code == 400
    other_series = base.replace(f"/series/{read(service.paths['ct2']).SeriesInstanceUID}",
                                "/series/1.2.3")
    assert service.get(other_series + "/bulk/7FE00010").status_code == 404
    audit = (service.archive / "audit" / "audit.jsonl").read_text()
    assert "/bulk/00420011" in audit
