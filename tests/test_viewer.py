"""Issue 20.1-20.3 over real HTTP (uvicorn on loopback, ``requests``): the viewer at
``/viewer`` behind a login, its session cookie accepted by DICOMweb beside bearer
tokens, CSRF on state-changing requests, logout, expiry, lock-out (audited), and IHE
Invoke Image Display.  The OHIF build here is a small fake one (tests/
test_viewer_install.py builds it); tests/test_viewer_browser.py uses the real one."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from pacscore import Archive
from pacscore.services.auth.sessions import COOKIE
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.auth.users import UserStore
from pacscore.services.dicomweb.app import create_app
from pacscore.services.viewer.install import install
from pacscore.services.viewer.routes import ViewerSettings
from pacscore.services.viewer.share import share_study
from pacscore.services.viewer.static import ViewerBuild
from tests.helpers.webapp import served
from tests.test_viewer_install import _tarball

FAST_KDF = {"n": 2**10, "r": 8, "p": 1}  # hashes made here: the login path is the same
PASSWORD = "correct horse battery"
CT = "ct_series/dcmqi_ge_ct_3slice"
STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"


@pytest.fixture()
def fake_build(tmp_path: Path) -> ViewerBuild:
    tgz = tmp_path / "ohif.tgz"
    install(tmp_path / "cache", tarball=tgz, integrity=_tarball(tgz))
    return ViewerBuild(tmp_path / "cache")


@pytest.fixture()
def site(archive: Archive, corpus: Path, fake_build: ViewerBuild) -> Iterator[str]:
    for f in sorted((corpus / CT).glob("*.dcm")):
        archive.store(f)
    UserStore(archive.root, kdf=FAST_KDF).add("alice", PASSWORD, "read")
    settings = ViewerSettings(build=fake_build, max_failures=3, lockout_seconds=2.0,
                              session_seconds=3.0)
    with served(create_app(archive, viewer=settings)) as base:
        yield base


def _audit(archive: Archive) -> list[dict[str, Any]]:
    path = archive.root / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _login(base: str, user: str = "alice", password: str = PASSWORD,
           nxt: str = "") -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    r = s.post(f"{base}/login", data={"username": user, "password": password, "next": nxt},
               allow_redirects=False, timeout=30)
    return s, r


def _raw(base: str, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """A request sent exactly as written (no client-side path normalisation)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_login_then_viewer_and_dicomweb_by_cookie(site: str, archive: Archive) -> None:
    anonymous = requests.get(f"{site}/viewer/studies", allow_redirects=False, timeout=30)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/login?next=%2Fviewer%2Fstudies"
    assert requests.get(f"{site}/dicom-web/studies", timeout=30).status_code == 401
    s, r = _login(site, nxt="/viewer/studies")
    assert (r.status_code, r.headers["location"]) == (303, "/viewer/studies")
    cookie = r.headers["set-cookie"]
    for part in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=3"):
        assert part.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower()  # plain HTTP here (Secure with TLS)
    page = s.get(f"{site}/viewer/studies", timeout=30)  # a route of the app: index.html
    assert page.status_code == 200 and 'window.PUBLIC_URL="/viewer/"' in page.text
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    assert page.headers["cross-origin-embedder-policy"] == "require-corp"
    assert page.headers["cache-control"] == "no-cache"
    asset = s.get(f"{site}/viewer/app.bundle.0123456789abcdef.js", timeout=30)
    assert asset.status_code == 200
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert s.get(f"{site}/viewer/missing.js", timeout=30).status_code == 404
    config = s.get(f"{site}/viewer/app-config.js", timeout=30).text
    for needed in ("routerBasename: \"/viewer\"", "qidoSupportsIncludeField: true",
                   "supportsFuzzyMatching: true", "supportsWildcard: true",
                   "thumbnailRendering: 'thumbnail'", "transfer-syntax=*",
                   "qidoRoot: window.location.origin + \"/dicom-web\"",
                   "cornerstone3D#2844"):  # the VOI LUT Function work-around
        assert needed in config
    studies = s.get(f"{site}/dicom-web/studies", timeout=30)
    assert studies.status_code == 200
    assert [st["0020000D"]["Value"][0] for st in studies.json()] == [STUDY]
    entries = _audit(archive)
    assert any(e["detail"] == "logged in" and e["user"].startswith("user alice (session ")
               for e in entries)
    assert any(e["event_id"]["code"] == "110112" or e["detail"].startswith(
        "GET /dicom-web/studies") for e in entries if e["user"].startswith("user alice"))


def test_a_revalidated_viewer_file_is_answered_304_until_it_changes(
        site: str, fake_build: ViewerBuild) -> None:
    s, _ = _login(site)
    for path in ("studies", "app-config.js", "app.bundle.0123456789abcdef.js"):
        first = s.get(f"{site}/viewer/{path}", timeout=30)
        etag = first.headers["etag"]
        again = s.get(f"{site}/viewer/{path}", headers={"If-None-Match": etag}, timeout=30)
        assert (again.status_code, again.content) == (304, b""), path
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == first.headers["cache-control"]
        assert again.headers["cross-origin-embedder-policy"] == "require-corp"
        other = s.get(f"{site}/viewer/{path}", headers={"If-None-Match": '"old"'}, timeout=30)
        assert (other.status_code, other.content) == (200, first.content), path
    page = s.get(f"{site}/viewer/", timeout=30)
    dist = fake_build.current()
    assert dist is not None
    index = dist / "index.html"
    index.write_text(index.read_text() + "<!-- a new build -->")
    changed = s.get(f"{site}/viewer/", headers={"If-None-Match": page.headers["etag"]},
                    timeout=30)
    assert changed.status_code == 200 and changed.text.endswith("<!-- a new build -->")
    assert changed.headers["etag"] != page.headers["etag"]
    assert requests.get(f"{site}/viewer/app-config.js", allow_redirects=False, timeout=30,
                        headers={"If-None-Match": page.headers["etag"]}).status_code == 303


def test_wrong_password_and_unknown_user_answer_alike(site: str, archive: Archive) -> None:
    answers = [_login(site, password="wrong password")[1], _login(site, user="bob")[1]]
    assert [r.status_code for r in answers] == [401, 401]
    assert answers[0].text == answers[1].text  # no hint which part was wrong
    assert "wrong user name or password" in answers[0].text
    assert all("set-cookie" not in r.headers for r in answers)
    fails = [e for e in _audit(archive) if "login failed" in e.get("detail", "")]
    assert [e["user"] for e in fails] == ["alice", "bob"]
    assert all(PASSWORD not in json.dumps(e) and "wrong password" not in json.dumps(e)
               for e in _audit(archive))


def test_lockout_after_repeated_failures(site: str, archive: Archive) -> None:
    statuses = [_login(site, password=f"guess {i}")[1].status_code for i in range(3)]
    assert statuses == [401, 401, 429]  # the third failure locks (max_failures=3)
    locked = _login(site)[1]  # even the right password, while locked
    assert locked.status_code == 429 and "too many failed attempts" in locked.text
    assert [_login(site, user="nobody", password=f"g{i}")[1].status_code
            for i in range(3)] == [401, 401, 429]  # unknown names lock alike
    lock = [e for e in _audit(archive) if "locked out after" in e.get("detail", "")]
    assert [(e["user"], e["outcome"]) for e in lock] == [("alice", 8), ("nobody", 8)]
    time.sleep(2.1)
    assert _login(site)[1].status_code == 303


def test_lockout_counts_are_shared_by_processes_and_survive_a_restart(
        site: str, archive: Archive) -> None:
    # Two wrong passwords in another process (a `pacscore` command, a second server) ...
    code = ("import sys; from pathlib import Path; "
            "from pacscore.services.auth.users import UserStore; "
            "s = UserStore(Path(sys.argv[1])); "
            "print([s.login('alice', f'guess {i}').user for i in range(2)])")
    done = subprocess.run([sys.executable, "-c", code, str(archive.root)], check=True,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[None, None]"
    # ... and the server's third locks the name (max_failures=3).
    assert _login(site, password="guess 2")[1].status_code == 429
    assert _login(site)[1].status_code == 429
    restarted = UserStore(archive.root)  # a restart does not forgive
    assert restarted.login("alice", PASSWORD).locked > 0
    assert (archive.root / "security" / "lockouts.json").stat().st_mode & 0o777 == 0o600


def test_tampered_expired_and_logged_out_cookies_are_refused(site: str,
                                                             archive: Archive) -> None:
    s, _ = _login(site)
    value = s.cookies[COOKIE]
    tampered = value[:-1] + ("A" if value[-1] != "A" else "B")
    for bad in (tampered, value.split(".")[0] + ".x", "garbage", "a" * 5000):
        r = requests.get(f"{site}/dicom-web/studies", cookies={COOKIE: bad}, timeout=30)
        assert r.status_code == 401, bad
        assert "session cookie is unknown" in r.headers["warning"]
    page = requests.get(f"{site}/viewer/", cookies={COOKIE: tampered},
                        allow_redirects=False, timeout=30)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    refused = [e for e in _audit(archive) if e["user"] == "invalid session"]
    assert len(refused) == 5 and all("session cookie is unknown" in e["detail"]
                                     for e in refused)
    assert all(value.split(".")[1] not in json.dumps(e) for e in _audit(archive))
    assert s.get(f"{site}/dicom-web/studies", timeout=30).status_code == 200
    # Logout needs the CSRF token (a form field on the login page)
    assert s.post(f"{site}/logout", allow_redirects=False, timeout=30).status_code == 403
    page = s.get(f"{site}/login", timeout=30).text
    csrf = page.split('name=csrf value="')[1].split('"')[0]
    out = s.post(f"{site}/logout", data={"csrf": csrf}, allow_redirects=False, timeout=30)
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    assert requests.get(f"{site}/dicom-web/studies", cookies={COOKIE: value},
                        timeout=30).status_code == 401  # ended on the server
    s2, _ = _login(site)
    time.sleep(3.2)  # session_seconds=3
    assert s2.get(f"{site}/dicom-web/studies", timeout=30).status_code == 401


def test_csrf_is_needed_for_state_changes_by_cookie(site: str, archive: Archive) -> None:
    write = TokenStore(archive.root).create("delete")
    s, _ = _login(site)
    target = f"{site}/dicom-web/studies/{STUDY}"
    refused = s.delete(target, timeout=30)
    assert refused.status_code == 403 and "CSRF" in refused.headers["warning"]
    wrong = s.delete(target, headers={"X-CSRF-Token": "forged"}, timeout=30)
    assert wrong.status_code == 403 and "CSRF" in wrong.headers["warning"]
    host = urlsplit(site).netloc
    for origin in ("https://evil.example", f"http://{host}.evil.example", "null"):
        other = s.delete(target, headers={"Origin": origin, "X-CSRF-Token": "forged"},
                         timeout=30)
        assert other.status_code == 403 and "CSRF" in other.headers["warning"], origin
    # From the viewer's own page (Origin: this host) the CSRF check passes: here the
    # scope then refuses (alice reads only), as it would a token's.
    own = s.delete(target, headers={"Origin": f"http://{host}"}, timeout=30)
    assert own.status_code == 403 and "needs the 'delete' scope" in own.headers["warning"]
    stow = s.post(f"{site}/dicom-web/studies", data=b"--x--",
                  headers={"Content-Type": "multipart/related; type=application/dicom; "
                                           "boundary=x"}, timeout=30)
    assert stow.status_code == 403  # refused before the body is read
    assert archive.find("study")  # nothing deleted
    # With the session's token the cookie holder still needs the scope: read only.
    page = s.get(f"{site}/login", timeout=30).text
    csrf = page.split('name=csrf value="')[1].split('"')[0]
    scoped = s.delete(target, headers={"X-CSRF-Token": csrf}, timeout=30)
    assert scoped.status_code == 403 and "needs the 'delete' scope" in scoped.headers["warning"]
    # A bearer token needs no CSRF token (no ambient credential).
    assert requests.get(target + "/series", headers={"Authorization": f"Bearer {write}"},
                        timeout=30).status_code == 200


def test_bad_login_bodies_are_refused_clearly(site: str, archive: Archive) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    huge = _raw(site, "POST", "/login", form, b"username=a&password=" + b"x" * 100_000)
    assert huge[0] == 413
    chunked = requests.post(f"{site}/login", data=iter([b"username=a&password=", b"x" * 9000]),
                            headers=form, timeout=30)
    assert chunked.status_code == 413
    assert _raw(site, "POST", "/login", form, b"%%%&&&==\xff")[0] == 400
    assert _raw(site, "POST", "/login", {"Content-Type": "application/json"},
                b'{"username": "alice"}')[0] == 415
    assert _raw(site, "POST", "/login", form, b"username=alice")[0] == 400
    cross = _raw(site, "POST", "/login", {**form, "Origin": "https://evil.example"},
                 f"username=alice&password={PASSWORD.replace(' ', '+')}".encode())
    assert cross[0] == 403 and "set-cookie" not in cross[1]
    # An open redirect is not possible through next=
    _, r = _login(site, nxt="//evil.example/x")
    assert r.headers["location"] == "/viewer/"
    assert all(e["event_id"]["code"] == "110114" for e in _audit(archive))


def test_path_traversal_under_viewer_is_refused(site: str, archive: Archive) -> None:
    s, _ = _login(site)
    cookie = {"Cookie": f"{COOKIE}={s.cookies[COOKIE]}"}
    secret = (archive.root / "security" / "users.json").read_bytes()
    for path in ("/viewer/../security/users.json", "/viewer/%2e%2e/%2e%2e/etc/passwd",
                 "/viewer/..%2f..%2fetc%2fpasswd", "/viewer/assets/../../index.html",
                 "/viewer//etc/passwd", "/viewer/%00"):
        status, _, body = _raw(site, "GET", path, cookie)
        assert status in (400, 404), (path, status)
        assert b"root:" not in body and secret not in body


def test_viewer_answers_503_until_installed(site: str, archive: Archive,
                                            tmp_path: Path) -> None:
    empty = ViewerBuild(tmp_path / "no-build-here")
    settings = ViewerSettings(build=empty)
    with served(create_app(archive, viewer=settings)) as base:
        s, _ = _login(base)
        r = s.get(f"{base}/viewer/", timeout=30)
        assert r.status_code == 503 and "pacscore viewer install" in r.text
        assert r.headers["retry-after"] == "30"
        tgz = tmp_path / "ohif.tgz"
        install(tmp_path / "no-build-here", tarball=tgz, integrity=_tarball(tgz))
        assert s.get(f"{base}/viewer/", timeout=30).status_code == 200  # no restart


def test_invoke_image_display_logs_in_first_then_opens_the_study(site: str) -> None:
    iid = f"/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY}"
    r = requests.get(site + iid, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    s, login = _login(site, nxt=iid)
    assert login.headers["location"] == iid  # back to the launch after logging in
    opened = s.get(site + iid, allow_redirects=False, timeout=30)
    assert opened.headers["location"] == f"/viewer/viewer?StudyInstanceUIDs={STUDY}"
    for query in ("requestType=PATIENT&patientID=99000",
                  "requestType=ACCESSION&accessionNumber=03086212"):
        r = s.get(f"{site}/IHEInvokeImageDisplay?{query}", allow_redirects=False, timeout=30)
        assert r.headers["location"] == f"/viewer/viewer?StudyInstanceUIDs={STUDY}", query
    assert s.get(f"{site}/IHEInvokeImageDisplay?requestType=PATIENT&patientID=nobody",
                 timeout=30).status_code == 404
    assert s.get(f"{site}/IHEInvokeImageDisplay?requestType=SERIES&seriesUID=1",
                 timeout=30).status_code == 400


def test_user_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "archive"
    run = [sys.executable, "-m", "pacscore.cli", "user"]
    subprocess.run([*run, "add", "carol", "--scope", "write", "--password-stdin",
                    "--archive", str(root)], input="a long passphrase\n", text=True,
                   check=True, capture_output=True)
    listed = json.loads(subprocess.run([*run, "list", "--archive", str(root)], check=True,
                                       capture_output=True, text=True).stdout)
    assert listed["carol"]["scope"] == "write" and "password" not in listed["carol"]
    stored = (root / "security" / "users.json")
    assert stored.stat().st_mode & 0o077 == 0
    assert "a long passphrase" not in stored.read_text()
    assert UserStore(root).login("carol", "a long passphrase").user == "carol"
    short = subprocess.run([*run, "add", "dave", "--password-stdin", "--archive", str(root)],
                           input="short\n", text=True, capture_output=True, check=False)
    assert short.returncode == 2 and "8 to 1024 bytes" in short.stderr
    from pacscore.services.auth.sessions import SessionStore
    cookie, _ = SessionStore(root).create("carol", "write")
    subprocess.run([*run, "add", "carol", "--scope", "read", "--password-stdin",
                    "--archive", str(root)], input="another passphrase\n", text=True,
                   check=True, capture_output=True)
    assert SessionStore(root).get(cookie) is None  # replaced: her sessions ended
    cookie, _ = SessionStore(root).create("carol", "read")
    subprocess.run([*run, "remove", "carol", "--archive", str(root)], check=True,
                   capture_output=True)
    assert SessionStore(root).get(cookie) is None
    assert UserStore(root).list() == {}


def test_with_the_viewer_only_login_and_healthz_are_open(archive: Archive,
                                                         fake_build: ViewerBuild) -> None:
    """Access stays denied by default with the viewer's routes added: without
    credentials each answers 401, or (pages) a redirect to the login page."""
    from tests.test_auth_middleware import _ask, _requests

    app = create_app(archive, viewer=ViewerSettings(build=fake_build))
    asks = [(m, p.replace("{path}", "x")) for m, p in _requests(list(app.routes))]
    answers = _ask(app, [(m, p, {}) for m, p in asks])
    open_routes = set()
    for (method, path), (status, headers, _) in zip(asks, answers, strict=True):
        if status == 303:
            assert headers["location"].startswith("/login"), path
        elif status != 401:
            open_routes.add((method, path))
    share = "/share/pcs_000000000000_unknown"  # checks its token itself: 404 here
    assert open_routes == {("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/login"),
                           ("HEAD", "/login"), ("POST", "/login"), ("GET", share),
                           ("HEAD", share)}
    assert answers[asks.index(("GET", share))][0] == 404


def test_a_login_flood_waits_outside_the_thread_pool_and_is_capped(
        site: str, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """Password hashes run two at a time; the other logins wait in the event loop (not
    in the thread pool every DICOMweb request needs), up to 32 in progress; more are
    answered 503."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pacscore.services.auth.users import LoginResult

    release, running = threading.Event(), []

    def slow_login(self: UserStore, name: str, password: str,
                   now: float | None = None) -> LoginResult:
        running.append(name)
        release.wait(30)
        return LoginResult(None, None)

    monkeypatch.setattr(UserStore, "login", slow_login)
    token = TokenStore(archive.root).create("read")
    with ThreadPoolExecutor(40) as pool:
        logins = [pool.submit(_login, site, f"user{i}", "pw") for i in range(40)]
        deadline = time.monotonic() + 20
        while sum(f.done() for f in logins) < 8:  # 40 - 2 hashing - 30 waiting
            assert time.monotonic() < deadline, "no login refused"
            time.sleep(0.05)
        assert len(running) == 2  # the semaphore holds the others
        qido = requests.get(f"{site}/dicom-web/studies", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
        assert qido.status_code == 200  # the thread pool is free for DICOMweb
        release.set()
        statuses = sorted(f.result()[1].status_code for f in logins)
    assert statuses == [401] * 32 + [503] * 8


def test_the_cookie_is_secure_when_the_server_speaks_tls(archive: Archive,
                                                         fake_build: ViewerBuild) -> None:
    UserStore(archive.root, kdf=FAST_KDF).add("alice", PASSWORD, "read")
    with served(create_app(archive, viewer=ViewerSettings(build=fake_build, tls=True))) \
            as base:
        _, r = _login(base)
    assert r.status_code == 303
    assert "; secure" in r.headers["set-cookie"].lower()


def test_behind_a_proxy_at_a_path_every_link_keeps_the_prefix(
        archive: Archive, corpus: Path, fake_build: ViewerBuild) -> None:
    # public_url https://host/pacs, the proxy stripping /pacs: the browser must be sent
    # to /pacs/... everywhere (the requests below come in without it, as proxied).
    for f in sorted((corpus / CT).glob("*.dcm")):
        archive.store(f)
    UserStore(archive.root, kdf=FAST_KDF).add("alice", PASSWORD, "read")
    app = create_app(archive, viewer=ViewerSettings(build=fake_build),
                     public_url="https://pacs.example.org/pacs/")
    with served(app) as site:
        first = requests.get(f"{site}/viewer/", allow_redirects=False, timeout=30)
        assert first.headers["location"] == "/pacs/login?next=%2Fpacs%2Fviewer%2F"
        form = requests.get(f"{site}/login?next=/pacs/viewer/", timeout=30).text
        assert 'action="/pacs/login"' in form
        s, r = _login(site, nxt="")
        assert r.headers["location"] == "/pacs/viewer/"  # the default goes under it too
        config = s.get(f"{site}/viewer/app-config.js", timeout=30).text
        assert 'routerBasename: "/pacs/viewer"' in config
        assert 'qidoRoot: window.location.origin + "/pacs/dicom-web"' in config
        assert 'wadoRoot: window.location.origin + "/pacs/dicom-web"' in config
        index = s.get(f"{site}/viewer/", timeout=30).text
        assert 'window.PUBLIC_URL="/pacs/viewer/"' in index
        assert 'src="/pacs/viewer/app.bundle.0123456789abcdef.js"' in index
        assert 'href="//elsewhere.example/x"' in index  # another host's link untouched
        bundle = s.get(f"{site}/viewer/app.bundle.0123456789abcdef.js", timeout=30)
        assert '__webpack_require__.p = "/pacs/viewer/"' in bundle.text
        assert bundle.headers["content-type"].startswith(("text/javascript",
                                                          "application/javascript"))
        assert bundle.headers["cache-control"] == "public, max-age=31536000, immutable"
        css = s.get(f"{site}/viewer/app.bundle.css", timeout=30).text
        assert "url(/pacs/viewer/a1.woff2)" in css and "url(//x/y)" in css
        iid = s.get(f"{site}/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY}",
                    allow_redirects=False, timeout=30)
        assert iid.headers["location"].startswith("/pacs/viewer/viewer?StudyInstanceUIDs=")
        token = share_study(TokenStore(archive.root), STUDY, 60, read_only=True)
        shared = requests.get(f"{site}/share/{token}", timeout=30).text
        assert f'url=/pacs/viewer/viewer?StudyInstanceUIDs={STUDY}"' in shared
        out = s.post(f"{site}/logout", headers={"X-CSRF-Token": _csrf_of(s, site)},
                     allow_redirects=False, timeout=30)
        assert out.headers["location"] == "/pacs/login"
    # Without a prefix the build is served as installed.
    assert 'src="/viewer/app.bundle' in (fake_build.current() / "index.html").read_text()


def _csrf_of(s: requests.Session, site: str) -> str:
    """The session's CSRF token, from the logged-in login page's log-out form."""
    page = s.get(f"{site}/login", timeout=30).text
    return page.split('name=csrf value="', 1)[1].split('"', 1)[0]
