"""Orthanc 1.10.1 with its DICOMweb plugin as a client of `pacscore serve`: it asks for
``transfer-syntax=*`` and gets the stored syntax, intact; a bad token is reported by it
as refused credentials (with a JSON body its WADO-RS client failed on the Content-Type
instead, and said only "Error encountered within the plugin engine")."""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests

from pacscore.testing import free_port, peer_process, serving

ORTHANC = Path("/usr/sbin/Orthanc")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
BAD_CREDENTIALS = 29  # Orthanc's ErrorCode_Unauthorized: "Bad credentials were provided ..."

pytestmark = pytest.mark.skipif(not (ORTHANC.exists() and PLUGIN.exists()),
                                reason="Orthanc and its DICOMweb plugin are not installed")


@contextmanager
def orthanc(folder: Path, url: str, token: str) -> Iterator[str]:
    """Orthanc (HTTP only) with pacscore at ``url`` as DICOMweb server ``pacscore``;
    yields Orthanc's REST base URL."""
    folder.mkdir(parents=True)
    port = free_port()
    config = {
        "Name": "peer", "HttpPort": port, "DicomServerEnabled": False,
        "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Servers": {"pacscore": {
            "Url": url, "HttpHeaders": {"Authorization": f"Bearer {token}"}}}},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    base = f"http://127.0.0.1:{port}"
    with peer_process([str(ORTHANC), str(folder / "orthanc.json")], port,
                      folder / "orthanc.log", timeout=60) as proc:
        deadline = time.monotonic() + 60
        while True:  # listening is not yet answering: its REST API says when it is up
            try:
                requests.get(f"{base}/system", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (folder / "orthanc.log").read_text()[-2000:]
                time.sleep(0.1)
        yield base


def read(data: bytes | Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)


def job(base: str, answer: requests.Response) -> dict[str, Any]:
    """The finished Orthanc job an asynchronous call started."""
    job_id = answer.json()["ID"]
    deadline = time.monotonic() + 60
    while True:
        state: dict[str, Any] = requests.get(f"{base}/jobs/{job_id}", timeout=10).json()
        if state["State"] in ("Success", "Failure") or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def test_orthanc_retrieves_the_stored_syntax_intact_and_names_a_bad_token(
        tmp_path: Path, corpus: Path) -> None:
    files = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:3]
    originals = {str(read(p).SOPInstanceUID): read(p) for p in files}
    study = str(read(files[0]).StudyInstanceUID)
    archive = tmp_path / "archive"
    with serving(archive) as ports:
        url = f"http://127.0.0.1:{ports['http']}/dicom-web"
        token = (archive / "security" / "admin-token").read_text().strip()
        body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes()
                        + b"\r\n" for p in files) + b"--b--\r\n"
        assert requests.post(f"{url}/studies", data=body, timeout=60, headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        ).status_code == 200
        with orthanc(tmp_path / "orthanc", url, token) as base:
            got = requests.post(f"{base}/dicom-web/servers/pacscore/retrieve", timeout=120,
                                json={"Resources": [{"Study": study}]})
            assert got.status_code == 200, got.text
            ids = requests.get(f"{base}/instances", timeout=10).json()
            assert len(ids) == len(files)
            for orthanc_id in ids:
                ds = read(requests.get(f"{base}/instances/{orthanc_id}/file",
                                       timeout=30).content)
                assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.202"
                original = originals[str(ds.SOPInstanceUID)]
                assert np.array_equal(ds.pixel_array, original.pixel_array)
                assert ds.PatientID == original.PatientID
        with orthanc(tmp_path / "refused", url, "pcs_0000_wrong") as base:
            started = requests.post(f"{base}/dicom-web/servers/pacscore/retrieve", timeout=60,
                                    json={"Resources": [{"Study": study}],
                                          "Asynchronous": True})
            state = job(base, started)
            assert state["State"] == "Failure"
            assert state["Content"]["FunctionErrorCode"] == BAD_CREDENTIALS, state
            query = requests.post(f"{base}/dicom-web/servers/pacscore/get", timeout=60,
                                  json={"Uri": "/studies"})
            assert query.status_code == 401
            assert requests.get(f"{base}/instances", timeout=10).json() == []
