"""The duplicate policy: the same instance in another lossless encoding (the same data
set but for File Meta and pixel data, and pixels that decode to the same frames) is a
duplicate, the stored copy kept; anything else with the same SOP Instance UID is a
conflict whose reason names what differs."""

from __future__ import annotations

import io
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from pacscore import Archive, ArchiveConfig, ConflictError
from pacscore.testing import cli, serving

MR = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
      "MR_small_jp2klossless.dcm")
DCMTK = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}
SYNTAXES = {"+ti": "1.2.840.10008.1.2", "+te": "1.2.840.10008.1.2.1",
            "+tb": "1.2.840.10008.1.2.2", "+td": "1.2.840.10008.1.2.1.99"}


def _mr(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None
    return Path(path)


def _modified(path: Path, change: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    if change == "pixel":
        arr = ds.pixel_array.copy()
        arr[10, 10] += 1
        ds.PixelData = arr.tobytes()
    else:
        ds.SeriesDescription = "CORRECTED"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("first", MR)
def test_mr_small_in_every_lossless_encoding_is_one_instance(tmp_path: Path, first: str
                                                            ) -> None:
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        kept = archive.store(_mr(first))
        for name in MR:
            again = archive.store(_mr(name))
            assert again.status == ("stored" if again is kept else "duplicate"), name
            assert again.sop_instance_uid == kept.sop_instance_uid
        assert archive.stats()["instances"] == 1
        assert archive.get(kept.sop_instance_uid) == _mr(first).read_bytes()  # kept first


@pytest.mark.parametrize(("change", "named"), [
    ("pixel", "pixel data differs (frame 0"),
    ("header", "attribute (0008,103E) SeriesDescription"),
])
def test_another_content_is_a_conflict_naming_what_differs(tmp_path: Path, change: str,
                                                           named: str) -> None:
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        first = archive.store(_mr("MR_small_RLE.dcm"))
        with pytest.raises(ConflictError) as info:
            archive.store(_modified(_mr("MR_small.dcm"), change))
        assert named in str(info.value) and "the stored instance was kept" in str(info.value)
        assert archive.get(first.sop_instance_uid) == _mr("MR_small_RLE.dcm").read_bytes()
        assert archive.stats()["instances"] == 1
        assert list(archive.store_.staging.iterdir()) == []


def _resent(source: Path, option: str, out: Path) -> Path:
    done = subprocess.run([str(DCMTK / "dcmconv"), option, str(source), str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.skipif(not (DCMTK / "dcmconv").exists(), reason="DCMTK not installed")
def test_rtplan_resent_in_other_syntaxes_is_a_duplicate(tmp_path: Path, corpus: Path) -> None:
    """DCMTK writes the RT Plan (Implicit VR LE, no pixel data) in the other
    uncompressed syntaxes; each is the stored instance again."""
    rtplan = corpus / "other/rt/rtplan.dcm"
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        stored = archive.store(rtplan)
        for option, uid in SYNTAXES.items():
            copy = _resent(rtplan, option, tmp_path / f"rtplan{option}.dcm")
            assert pydicom.dcmread(copy).file_meta.TransferSyntaxUID == uid
            assert archive.store(copy).status == "duplicate", uid
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(rtplan, force=True)
        ds.RTPlanLabel = "OTHER PLAN"
        ds.file_meta.TransferSyntaxUID = SYNTAXES["+te"]
        other = tmp_path / "other.dcm"
        ds.save_as(other, implicit_vr=False)
        with pytest.raises(ConflictError, match=r"\(300A,0002\) RTPlanLabel differs"):
            archive.store(other)
        assert archive.get(stored.sop_instance_uid) == rtplan.read_bytes()


@pytest.mark.skipif(not (DCMTK / "storescu").exists(), reason="DCMTK not installed")
def test_duplicates_and_conflicts_through_pacscore_serve(tmp_path: Path, corpus: Path) -> None:
    """storescu (DIMSE) and STOW-RS: re-encodings succeed and store nothing new; a
    different content is refused (0xA900 / FailedSOPSequence)."""
    archive = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    changed = tmp_path / "changed.dcm"
    changed.write_bytes(_modified(_mr("MR_small.dcm"), "pixel"))
    rtplan = corpus / "other/rt/rtplan.dcm"
    with serving(archive) as ports:
        def store(path: Path) -> subprocess.CompletedProcess[str]:
            propose = {"RLE": "-xr", "jpeg_ls": "-xt", "jp2k": "-xv"}
            option = next((o for k, o in propose.items() if k in path.name), "-x=")
            return subprocess.run(
                [str(DCMTK / "storescu"), option, "-aet", "MODALITY", "-aec", "PACSCORE",
                 "127.0.0.1", str(ports["dimse"]), str(path)],
                capture_output=True, text=True, env=ENV, timeout=60, check=False)
        for name in MR:
            done = store(_mr(name))
            assert done.returncode == 0 and "Failed" not in done.stderr, (name, done.stderr)
        refused = store(changed)
        assert refused.returncode != 0  # storescu exits with the status' high byte
        session = requests.Session()
        token = (archive / "security" / "admin-token").read_text().strip()
        session.headers["Authorization"] = f"Bearer {token}"
        client = DICOMwebClient(f"http://127.0.0.1:{ports['http']}/dicom-web",
                                session=session)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # (pydicom's rtplan names another instance in its File Meta, which STOW-RS
            # refuses: the copies sent here carry their own UID there)
            plan = pydicom.dcmread(rtplan, force=True)
            plan.file_meta.MediaStorageSOPInstanceUID = plan.SOPInstanceUID
            first = client.store_instances([plan])
            big = pydicom.dcmread(_resent(rtplan, "+tb", tmp_path / "rtplan_be.dcm"))
            big.file_meta.MediaStorageSOPInstanceUID = big.SOPInstanceUID
            again = client.store_instances([big])
        assert len(first.ReferencedSOPSequence) == len(again.ReferencedSOPSequence) == 1
        assert "FailedSOPSequence" not in again
        stats = cli("stats", "--archive", str(archive), "--json")
    assert '"instances": 2' in stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not np.array_equal(pydicom.dcmread(changed).pixel_array,
                                  pydicom.dcmread(_mr("MR_small.dcm")).pixel_array)
