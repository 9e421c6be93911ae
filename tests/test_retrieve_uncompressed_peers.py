"""Objects kept in Implicit VR (RT Plan, RT Structure Set, RT Dose) reach peers that
take them in another uncompressed syntax: C-MOVE into Orthanc and into DCMTK's
storescp through ``pacscore serve``, and WADO-RS with transfer-syntax=Explicit VR LE.
(Was: "has no pixel data to transcode", C-MOVE 0xA702, WADO-RS 406.)"""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from pacscore import Archive, ArchiveConfig
from pacscore.testing import cli, free_port, peer_process, serving

from .helpers.values import element_values

DCMTK = Path("/usr/bin")
ORTHANC = Path("/usr/sbin/Orthanc")
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK keeps Nagle on otherwise (FACTS.md)
RT = ("rtplan.dcm", "rtstruct.dcm", "rtdose_32bit_15fr.dcm")
EXPLICIT_LE = "1.2.840.10008.1.2.1"

pytestmark = pytest.mark.skipif(not (DCMTK / "movescu").exists(),
                                reason="DCMTK not installed (apt-get install dcmtk)")


@contextmanager
def orthanc(folder: Path) -> Iterator[int]:
    """Orthanc (the Debian package) on a fresh folder, DICOM only, as benches/orthanc.py
    starts it; yields its DICOM port."""
    folder.mkdir()
    port = free_port()
    config = {"Name": "pacscore-test", "DicomAet": "ORTHANC", "DicomPort": port,
              "StorageDirectory": str(folder / "storage"),
              "IndexDirectory": str(folder / "index"), "StorageCompression": False,
              "HttpServerEnabled": False, "RemoteAccessAllowed": False, "Plugins": []}
    (folder / "orthanc.json").write_text(json.dumps(config))
    with peer_process([str(ORTHANC), str(folder / "orthanc.json")], port,
                      folder / "orthanc.log", env=ENV):
        yield port


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _received(folder: Path, count: int) -> dict[str, Path]:
    """The DICOM files under ``folder`` by SOP Instance UID, once ``count`` are there."""
    deadline = time.monotonic() + 20
    while True:
        found = {}
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix not in (".json", ".log") and \
                    path.read_bytes()[128:132] == b"DICM":
                found[str(_read(path).SOPInstanceUID)] = path
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _move(port: int, destination: str, study: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DCMTK / "movescu"), "-aet", "MODALITY", "-aec", "PACSCORE", "-aem", destination,
         "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
         "127.0.0.1", str(port)], capture_output=True, text=True, env=ENV, timeout=120,
        check=False)


@pytest.mark.skipif(not ORTHANC.exists(), reason="Orthanc not installed")
def test_rt_objects_move_to_orthanc_storescp_and_wado_rs(corpus: Path, tmp_path: Path
                                                         ) -> None:
    sources = [corpus / "other/rt" / name for name in RT]
    archive = tmp_path / "archive"
    with Archive(archive, ArchiveConfig()) as a:
        results = [a.store(p) for p in sources]
    assert {r.stored_syntax for r in results} == {"1.2.840.10008.1.2"}
    scp_port = free_port()
    with orthanc(tmp_path / "orthanc") as orthanc_port:
        cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
        cli("ae", "add", "ORTHANC", "--host", "127.0.0.1", "--port", str(orthanc_port),
            "--archive", str(archive))
        cli("ae", "add", "DEST", "--host", "127.0.0.1", "--port", str(scp_port),
            "--archive", str(archive))
        out = tmp_path / "storescp"
        out.mkdir()
        scp = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "DEST", "-od", str(out),
                                str(scp_port)], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            with serving(archive) as ports:
                for r in results:
                    for destination in ("ORTHANC", "DEST"):
                        moved = _move(ports["dimse"], destination, r.study_uid)
                        assert moved.returncode == 0, moved.stderr
                        assert "Failed" not in moved.stderr or \
                            "Number of Failed Suboperations : 0" in moved.stderr, moved.stderr
                wado = _wado_explicit(archive, ports["http"], results)
            in_orthanc = _received(tmp_path / "orthanc" / "storage", len(results))
            in_storescp = _received(out, len(results))
        finally:
            scp.terminate()
            scp.wait()
    for source, r in zip(sources, results, strict=True):
        expected = element_values(source.read_bytes(), syntax=r.original_syntax)
        for peer, received in (("Orthanc", in_orthanc), ("storescp", in_storescp)):
            assert r.sop_instance_uid in received, f"{peer} did not get {source.name}"
            data = received[r.sop_instance_uid].read_bytes()
            # both take the Explicit VR LE they are offered first: a conversion
            assert _read(received[r.sop_instance_uid]).file_meta.TransferSyntaxUID == \
                EXPLICIT_LE
            assert element_values(data) == expected, f"{peer}: {source.name}"
        got = wado[r.sop_instance_uid]
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert _read_values(got) == expected, f"WADO-RS: {source.name}"


def _wado_explicit(archive: Path, http: int, results: list[object]) -> dict[str, pydicom.Dataset]:
    """Each instance by WADO-RS, asked for in Explicit VR Little Endian."""
    session = requests.Session()
    token = (archive / "security" / "admin-token").read_text().strip()
    session.headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(f"http://127.0.0.1:{http}/dicom-web", session=session)
    out = {}
    for r in results:
        ds = client.retrieve_instance(
            r.study_uid, r.series_uid, r.sop_instance_uid,  # type: ignore[attr-defined]
            media_types=(("application/dicom", EXPLICIT_LE),))
        out[str(ds.SOPInstanceUID)] = ds
    return out


def _read_values(ds: pydicom.Dataset) -> list[tuple[tuple[int, ...], bytes]]:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return element_values(buffer.getvalue())
