"""Issue 20.3: share links over real HTTP (uvicorn on loopback, ``requests``).

``pacscore share STUDY_UID`` prints a link; opening it starts a session bound to that
study; every route family then answers about that study only (403 for a path naming
another, QIDO-RS filtered, prior studies by PatientID included, WADO-URI 404), the same
for the share token sent as a bearer token; expired and revoked links are refused with
a page saying which; every use is audited with the client's address."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from pacscore import Archive
from pacscore.services.auth.sessions import COOKIE
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.dicomweb.app import create_app
from pacscore.services.fhir import create_fhir_app
from pacscore.services.viewer.routes import ViewerSettings
from pacscore.services.viewer.share import parse_duration, share_study
from pacscore.services.viewer.static import ViewerBuild
from tests.helpers.webapp import served
from tests.test_viewer import fake_build  # noqa: F401  (a fixture)

CT = "ct_series/dcmqi_ge_ct_3slice"
STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"
MULTIPART = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}


@dataclass
class Site:
    base: str
    archive: Archive
    other_study: str
    other_series: str
    other_sop: str
    series: str
    sop: str
    other_file: Path


@pytest.fixture()
def site(archive: Archive, corpus: Path, tmp_path: Path,
         fake_build: ViewerBuild) -> Iterator[Site]:  # noqa: F811
    files = sorted((corpus / CT).glob("*.dcm"))
    for f in files:
        archive.store(f)
    # A prior study of the same patient (same PatientID): what OHIF lists beside.
    ds = pydicom.dcmread(files[0])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    other = tmp_path / "prior.dcm"
    ds.save_as(other)
    archive.store(other)
    mine = pydicom.dcmread(files[0], stop_before_pixels=True)
    app = create_app(archive, viewer=ViewerSettings(build=fake_build))
    app.mount("/fhir", create_fhir_app(archive))
    with served(app) as base:
        yield Site(base, archive, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                   ds.SOPInstanceUID, mine.SeriesInstanceUID, mine.SOPInstanceUID, other)


def _cli(*argv: str) -> tuple[int, str, str]:
    """``pacscore ARGV`` in its own process (the server's process has the archive open)."""
    done = subprocess.run([sys.executable, "-m", "pacscore.cli", *argv],
                          capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, done.stdout, done.stderr


def _audit(archive: Archive) -> list[dict[str, Any]]:
    path = archive.root / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _open(link: str) -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    return s, s.get(link, allow_redirects=False, timeout=30)


def _study_uids(r: requests.Response) -> list[str]:
    assert r.status_code == 200, (r.status_code, r.text)
    return sorted({m["0020000D"]["Value"][0] for m in r.json()})


def _paths(site: Site, study: str, series: str, sop: str) -> dict[str, str]:
    """One URL of each route family that names a study."""
    s = f"/dicom-web/studies/{study}"
    i = f"{s}/series/{series}/instances/{sop}"
    return {"retrieve study": s, "retrieve series": f"{s}/series/{series}",
            "retrieve instance": i, "study metadata": f"{s}/metadata",
            "series metadata": f"{s}/series/{series}/metadata",
            "frames": f"{i}/frames/1", "rendered": f"{i}/rendered",
            "thumbnail": f"{i}/thumbnail", "study rendered": f"{s}/rendered",
            "bulk": f"{i}/bulk/7FE00010", "series of study (QIDO)": f"{s}/series",
            "instances of study (QIDO)": f"{s}/instances"}


def test_a_share_link_opens_its_study_and_nothing_else(site: Site) -> None:
    code, out, err = _cli("share", STUDY, "--expires", "2h", "--read-only", "--name",
                          "dr consult", "--archive", str(site.archive.root),
                          "--url", site.base)
    assert code == 0, err
    link = out.strip()
    assert link.startswith(f"{site.base}/share/pcs_") and "revoke with" in err
    s, page = _open(link)
    assert page.status_code == 200
    target = f"/viewer/viewer?StudyInstanceUIDs={STUDY}"
    assert f'content="0;url={target}"' in page.text  # goes on by itself (SameSite=Strict)
    cookie = page.headers["set-cookie"].lower()
    assert all(p in cookie for p in ("httponly", "samesite=strict", "path=/"))
    assert page.headers["referrer-policy"] == "no-referrer"
    viewer = s.get(site.base + target, allow_redirects=False, timeout=30)
    assert viewer.status_code == 200 and "window.PUBLIC_URL" in viewer.text
    assert s.get(f"{site.base}/viewer/app-config.js", timeout=30).status_code == 200

    # QIDO-RS: its study only, whatever is asked (OHIF's priors: by PatientID).
    patient = pydicom.dcmread(site.other_file, stop_before_pixels=True).PatientID
    q = f"{site.base}/dicom-web"
    assert _study_uids(s.get(f"{q}/studies", timeout=30)) == [STUDY]
    assert _study_uids(s.get(f"{q}/studies", params={"PatientID": patient},
                             timeout=30)) == [STUDY]
    both = f"{STUDY},{site.other_study}"
    assert _study_uids(s.get(f"{q}/studies", params={"StudyInstanceUID": both},
                             timeout=30)) == [STUDY]
    assert s.get(f"{q}/studies", params={"StudyInstanceUID": site.other_study},
                 timeout=30).json() == []
    assert _study_uids(s.get(f"{q}/series", timeout=30)) == [STUDY]
    assert _study_uids(s.get(f"{q}/instances", params={"PatientID": patient},
                             timeout=30)) == [STUDY]

    # Every route family: 200 on its study, 403 on the other (nothing is looked up).
    mine = _paths(site, STUDY, site.series, site.sop)
    theirs = _paths(site, site.other_study, site.other_series, site.other_sop)
    for family, path in mine.items():
        headers = MULTIPART if family in ("frames", "retrieve instance", "bulk") else {}
        if family.startswith("retrieve"):
            headers = {"Accept": 'multipart/related; type="application/dicom"; '
                                 'transfer-syntax=*'}
        r = s.get(site.base + path, headers=headers, timeout=60)
        assert r.status_code == 200, (family, r.status_code, r.text[:300])
    for family, path in theirs.items():
        r = s.get(site.base + path, headers=MULTIPART, timeout=30)
        assert r.status_code == 403, (family, r.status_code)
        assert "share link opens study" in r.headers["warning"], family
    # WADO-URI names the instance alone: 404 outside the shared study.
    wado = {"requestType": "WADO", "contentType": "application/dicom"}
    assert s.get(f"{site.base}/wado", params={**wado, "objectUID": site.other_sop},
                 timeout=30).status_code == 404
    assert s.get(f"{site.base}/wado", params={**wado, "objectUID": site.sop},
                 timeout=30).status_code == 200
    # Doors that cannot keep to one study refuse it; a read-only link deletes nothing.
    for path in ("/workflow/studies", f"/fhir/ImagingStudy/{STUDY}",
                 f"/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY}"):
        assert s.get(site.base + path, allow_redirects=False, timeout=30).status_code == 403
    assert s.delete(f"{q}/studies/{STUDY}", headers={"Origin": site.base},
                    timeout=30).status_code == 403
    assert len(site.archive.instances("study", STUDY)) == 3

    # Every use is audited, with the client's address, under the share's name.
    share_id = link.rsplit("/", 1)[1].split("_")[1]
    mine_audit = [e for e in _audit(site.archive)
                  if e["user"].startswith(f"share {share_id} (dr consult)")]
    assert any(e["detail"] == "share link opened (scope read)" for e in mine_audit)
    assert any(e["detail"].startswith("GET /dicom-web/studies ->") for e in mine_audit)
    assert any("share link opens study" in e["detail"] and e["outcome"] == 4
               for e in mine_audit)
    assert all(e["host"] == "127.0.0.1" for e in mine_audit)
    listed = json.loads(_cli("share", "list", "--archive", str(site.archive.root))[1])
    assert listed[share_id]["study"] == STUDY and listed[share_id]["state"] == "active"
    assert listed[share_id]["scope"] == "read"


def test_the_share_token_as_a_bearer_token_is_confined_too(site: Site) -> None:
    token = share_study(TokenStore(site.archive.root), STUDY, 3600, read_only=False)
    auth = {"Authorization": f"Bearer {token}"}
    q = f"{site.base}/dicom-web"
    assert _study_uids(requests.get(f"{q}/studies", headers=auth, timeout=30)) == [STUDY]
    r = requests.get(f"{q}/studies/{site.other_study}/metadata", headers=auth, timeout=30)
    assert r.status_code == 403
    # Not read-only: it may store into its study only (a measurement, DICOM SR).
    body, boundary = site.other_file.read_bytes(), "b0undary"
    payload = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body
               + f"\r\n--{boundary}--\r\n".encode())
    r = requests.post(f"{q}/studies", data=payload, timeout=30, headers={
        **auth, "Content-Type": f'multipart/related; type="application/dicom"; '
                                f'boundary={boundary}'})
    assert r.status_code == 409, r.text  # the instance is in another study: not stored
    assert "not in" in r.text


def test_expired_and_revoked_links_are_refused_with_a_clear_page(site: Site) -> None:
    tokens = TokenStore(site.archive.root)
    expired = share_study(tokens, STUDY, 1, read_only=True)
    time.sleep(1.2)
    page = _open(f"{site.base}/share/{expired}")[1]
    assert page.status_code == 410 and "this link expired on" in page.text
    assert "set-cookie" not in page.headers
    r = requests.get(f"{site.base}/dicom-web/studies", timeout=30,
                     headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.headers["warning"]

    code, link, _ = _cli("share", STUDY, "--archive", str(site.archive.root),
                         "--url", site.base)
    s, opened = _open(link.strip())
    assert opened.status_code == 200 and s.cookies.get(COOKIE)
    assert s.get(f"{site.base}/dicom-web/studies", timeout=30).status_code == 200
    share_id = link.strip().rsplit("/", 1)[1].split("_")[1]
    code, out, _ = _cli("share", "revoke", share_id, "--archive", str(site.archive.root))
    assert code == 0 and "1 session(s) ended" in out
    assert s.get(f"{site.base}/dicom-web/studies", timeout=30).status_code == 401
    again = _open(link.strip())[1]
    assert again.status_code == 410 and "this link was revoked" in again.text
    assert _open(f"{site.base}/share/pcs_000000000000_guess")[1].status_code == 404
    assert _cli("share", "revoke", share_id, "--archive", str(site.archive.root))[0] == 1
    refused = [e for e in _audit(site.archive) if "share link refused" in e["detail"]]
    assert [e["detail"].split(": ", 1)[1][:21] for e in refused] == [
        "this link expired on ", "this link was revoked", "this link is unknown"]
    assert all(e["host"] == "127.0.0.1" and e["outcome"] == 4 for e in refused)
    listed = json.loads(_cli("share", "list", "--archive", str(site.archive.root))[1])
    assert sorted(v["state"] for v in listed.values()) == ["expired", "revoked"]


def test_share_cli_refuses_unknown_studies_and_bad_durations(site: Site) -> None:
    root = str(site.archive.root)
    code, out, err = _cli("share", "1.2.3.4", "--archive", root)
    assert code == 1 and "no study '1.2.3.4'" in err and out == ""
    code, _, err = _cli("share", STUDY, "--expires", "forever", "--archive", root)
    assert code != 0 and "30m, 24h, 7d" in err
    assert parse_duration("30m") == 1800 and parse_duration("7d") == 7 * 86400
    with pytest.raises(ValueError):
        parse_duration("100d")
