"""Issue 20.5: what makes the viewer fast on a real network, over real HTTP.

JSON answers (QIDO-RS, metadata) are gzipped for clients that accept it, frames are
not (already compressed); series and study metadata carry a weak ETag from the
series' change stamp and ``Cache-Control: private, no-cache``, so a browser
revalidates and gets 304 until an instance arrives."""

from __future__ import annotations

import gzip
import http.client
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from pacscore import Archive
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.dicomweb.app import create_app
from tests.helpers.webapp import served

CT = "ct_series/dcmqi_ge_ct_3slice"
STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"


def _get(base: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A GET whose body comes as sent (``requests`` would decompress it)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture()
def stored(archive: Archive, corpus: Path) -> list[Path]:
    files = sorted((corpus / CT).glob("*.dcm"))
    for f in files[:2]:
        archive.store(f)
    return files


def test_json_is_gzipped_and_frames_are_not(archive: Archive, stored: list[Path]) -> None:
    auth = {"Authorization": f"Bearer {TokenStore(archive.root).create('read')}"}
    gz = {**auth, "Accept-Encoding": "gzip, deflate"}
    series = archive.find("series")[0]["SeriesInstanceUID"]
    meta = f"/dicom-web/studies/{STUDY}/series/{series}/metadata"
    with served(create_app(archive)) as base:
        plain = _get(base, meta, auth)
        packed = _get(base, meta, gz)
        qido = _get(base, "/dicom-web/instances?includefield=all", gz)
        small = _get(base, "/dicom-web/studies", gz)
        refused = _get(base, meta, {**auth, "Accept-Encoding": "gzip;q=0"})
        sop = archive.find("instance")[0]["SOPInstanceUID"]
        frame = _get(base, f"/dicom-web/studies/{STUDY}/series/{series}/instances/{sop}"
                     f"/frames/1", {**gz, "Accept": "multipart/related; "
                                    "type=application/octet-stream; transfer-syntax=*"})
    assert plain[0] == packed[0] == 200
    assert "content-encoding" not in plain[1]
    assert packed[1]["content-encoding"] == "gzip"
    assert "accept-encoding" in packed[1]["vary"].lower()
    assert gzip.decompress(packed[2]) == plain[2]
    assert int(packed[1]["content-length"]) == len(packed[2]) < len(plain[2]) / 5
    assert qido[1]["content-encoding"] == "gzip", len(qido[2])
    assert len(small[2]) < 1024 and "content-encoding" not in small[1]  # not worth it
    assert "content-encoding" not in refused[1]
    assert frame[0] == 200 and "content-encoding" not in frame[1]
    print(f"series metadata (2 CT instances): {len(plain[2])} B, gzip {len(packed[2])} B")


def test_series_metadata_revalidates_until_it_changes(archive: Archive,
                                                      stored: list[Path]) -> None:
    auth = {"Authorization": f"Bearer {TokenStore(archive.root).create('read')}"}
    series = archive.find("series")[0]["SeriesInstanceUID"]
    meta = f"/dicom-web/studies/{STUDY}/series/{series}/metadata"
    with served(create_app(archive)) as base:
        first = requests.get(base + meta, headers=auth, timeout=30)
        etag = first.headers["etag"]
        assert etag.startswith('W/"') and first.headers["cache-control"] == "private, no-cache"
        again = requests.get(base + meta, headers={**auth, "If-None-Match": etag}, timeout=30)
        assert (again.status_code, again.content) == (304, b"")
        assert again.headers["etag"] == etag
        study = requests.get(f"{base}/dicom-web/studies/{STUDY}/metadata", headers=auth,
                             timeout=30)
        assert study.headers["etag"] != etag
        archive.store(stored[2])  # a new instance in the series: a new validator
        after = requests.get(base + meta, headers={**auth, "If-None-Match": etag}, timeout=30)
        assert after.status_code == 200 and after.headers["etag"] != etag
        assert len(after.json()) == 3
        instance = requests.get(f"{base}/dicom-web/studies/{STUDY}/series/{series}/instances/"
                                f"{archive.find('instance')[0]['SOPInstanceUID']}/metadata",
                                headers=auth, timeout=30)
        assert instance.status_code == 200 and "etag" not in instance.headers
        refused = requests.get(base + meta, headers={"If-None-Match": etag}, timeout=30)
        assert refused.status_code == 401  # a validator is no credential
