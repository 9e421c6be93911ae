"""Issue 20.3's admin page button over real HTTP: ``/admin`` lists the studies with a
Share button and the share links with a Revoke button, for ``admin`` users only; the
forms need the session's CSRF token; the link it shows opens its study until revoked;
both are audited."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pacscore import Archive
from pacscore.services.auth.users import UserStore
from pacscore.services.dicomweb.app import create_app
from pacscore.services.viewer.routes import ViewerSettings
from pacscore.services.viewer.static import ViewerBuild
from tests.helpers.webapp import served
from tests.test_viewer import FAST_KDF, PASSWORD, fake_build  # noqa: F401  (a fixture)

CT = "ct_series/dcmqi_ge_ct_3slice"
STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"


@pytest.fixture()
def site(archive: Archive, corpus: Path, fake_build: ViewerBuild) -> Iterator[str]:  # noqa: F811
    for f in sorted((corpus / CT).glob("*.dcm")):
        archive.store(f)
    users = UserStore(archive.root, kdf=FAST_KDF)
    users.add("root", PASSWORD, "admin")
    users.add("alice", PASSWORD, "read")
    with served(create_app(archive, viewer=ViewerSettings(build=fake_build))) as base:
        yield base


def _session(base: str, user: str) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{base}/login", data={"username": user, "password": PASSWORD},
               allow_redirects=False, timeout=30)
    assert r.status_code == 303, r.text
    return s


def _csrf(page: str) -> str:
    found = re.search(r'name=csrf value="([^"]+)"', page)
    assert found, page
    return html.unescape(found.group(1))


def test_admin_page_shares_a_study_and_revokes_it(site: str, archive: Archive) -> None:
    assert requests.get(f"{site}/admin", allow_redirects=False, timeout=30).headers[
        "location"] == "/login?next=%2Fadmin"  # not logged in: log in first
    assert _session(site, "alice").get(f"{site}/admin", timeout=30).status_code == 403
    s = _session(site, "root")
    page = s.get(f"{site}/admin", timeout=30)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert STUDY in page.text and ">Share</button>" in page.text
    csrf = _csrf(page.text)
    form = {"study": STUDY, "expires": "1h", "read_only": "1", "name": "dr consult"}
    # Without the session's CSRF token (and no Origin header): refused, nothing made.
    assert s.post(f"{site}/admin/share", data=form, timeout=30).status_code == 403
    made = s.post(f"{site}/admin/share", data={**form, "csrf": csrf}, timeout=30)
    assert made.status_code == 200, made.text
    link = html.unescape(re.search(r'readonly value="([^"]+)"', made.text).group(1))
    assert link.startswith(f"{site}/share/pcs_")
    viewer = requests.Session()
    opened = viewer.get(link, timeout=30)
    assert opened.status_code == 200 and f"StudyInstanceUIDs={STUDY}" in opened.text
    assert viewer.get(f"{site}/dicom-web/studies/{STUDY}/metadata", timeout=30).ok
    listed = s.get(f"{site}/admin", timeout=30).text
    (share_id,) = re.findall(r'name=id value="([^"]+)"', listed)
    assert "dr consult" in listed and "active" in listed
    revoked = s.post(f"{site}/admin/revoke", data={"id": share_id, "csrf": csrf}, timeout=30)
    assert revoked.status_code == 200 and "1 session(s) ended" in revoked.text
    assert viewer.get(f"{site}/dicom-web/studies/{STUDY}/metadata",
                      timeout=30).status_code == 401  # its session ended
    assert requests.get(link, timeout=30).status_code == 410
    assert "revoked" in s.get(f"{site}/admin", timeout=30).text
    audit = [json.loads(line) for line in
             (archive.root / "audit" / "audit.jsonl").read_text().splitlines()]
    mine = [e["detail"] for e in audit if e["user"].startswith("user root")
            and "from the admin page" in e["detail"]]
    assert [d.split(" ", 2)[2].split(" (")[0] for d in mine] == \
        [f"of study {STUDY} created", f"of study {STUDY} revoked"], mine


def test_admin_page_refuses_bad_forms(site: str) -> None:
    s = _session(site, "root")
    csrf = _csrf(s.get(f"{site}/admin", timeout=30).text)
    share = f"{site}/admin/share"
    unknown = s.post(share, data={"study": "1.2.3", "expires": "1h", "csrf": csrf}, timeout=30)
    assert unknown.status_code == 404 and "no study 1.2.3" in unknown.text
    too_long = s.post(share, data={"study": STUDY, "expires": "1y", "csrf": csrf}, timeout=30)
    assert too_long.status_code == 400 and "90 days" in too_long.text
    huge = s.post(share, data={"study": STUDY, "expires": "1h", "csrf": csrf,
                               "name": "x" * 5000}, timeout=30)
    assert huge.status_code in (403, 413)  # too big to read its token, or refused whole
    assert s.post(f"{site}/admin/revoke", data={"id": "nope", "csrf": csrf},
                  timeout=30).status_code == 404
    assert "pcs_" not in s.get(f"{site}/admin", timeout=30).text  # no link was made


def test_admin_search_finds_studies_by_name_id_accession_and_date(
        site: str, archive: Archive, corpus: Path) -> None:
    archive.store(sorted((corpus / "mr_series/tcia_brain_t1post_24sl").glob("*.dcm"))[0])
    s = _session(site, "root")

    def listed(**query: str) -> tuple[int, list[str], str]:
        page = s.get(f"{site}/admin", params=query, timeout=30)
        return (page.status_code, re.findall(r'name=study value="([^"]+)"', page.text),
                page.text)

    code, everything, text = listed()
    assert code == 200 and len(everything) == 2 and "latest 50" in text
    assert 'type=search name=q' in text
    (brain,) = [u for u in everything if u != STUDY]
    for query, expected in ((dict(q="janct"), [STUDY]),      # the name, fuzzy
                            (dict(q="pgbm"), [brain]),       # the ID's start
                            (dict(q="99000"), [STUDY]),
                            (dict(q="5686274"), [brain]),    # the accession's start
                            (dict(q="nobody"), []),
                            (dict(**{"from": "2003-01-01"}), [STUDY]),
                            (dict(to="1999-12-31"), [brain]),
                            (dict(**{"from": "19920402", "to": "1992-04-02"}), [brain]),
                            (dict(q="janct", to="1999-12-31"), [])):
        code, found, text = listed(**query)
        assert (code, found) == (200, expected), query
        assert f"{len(expected)} found" in text
    for query, reason in ((dict(to="yesterday"), "YYYY-MM-DD"),
                          (dict(**{"from": "2004-01-01", "to": "2003-01-01"}), "swap"),
                          (dict(q="x" * 65), "at most 64"), (dict(q="a\\b"), "backslash")):
        code, found, text = listed(**query)
        assert code == 400 and reason in text and found == [], query
    code, _, text = listed(q='<script>"')
    assert code == 200 and "<script>" not in text and "&lt;script&gt;&quot;" in text
