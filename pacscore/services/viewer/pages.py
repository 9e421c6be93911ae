"""The viewer's own pages: log in, log out, and IHE Invoke Image Display.

* ``GET /login`` shows the form (or, logged in, who and a log-out button);
  ``POST /login`` checks the name and password (:class:`..auth.users.UserStore`), sets
  the session cookie and sends the browser back where it was going (a path on this
  server only: no open redirect).  A wrong name or password is answered the same way
  (401, "wrong user name or password"), a locked name 429 for existing and unknown
  names alike.  Bodies: ``application/x-www-form-urlencoded``, at most 4 KiB (413),
  well formed (400); a login posted from another origin is refused (403, login CSRF).
* ``POST /logout`` (session and CSRF token) ends the session and clears the cookie.
* ``GET /IHEInvokeImageDisplay`` (IHE RAD TF-2 4.106: requestType STUDY with studyUID,
  PATIENT with patientID, ACCESSION with accessionNumber) redirects to the viewer on
  the matching studies; not logged in: to the login page first, then back.

Every login, failure, lock-out and logout is in the audit trail (PS3.15 A.5.3.11 User
Authentication), with the client's address and never the password.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ...archive import Archive
from ..auth.access import TokenHolder
from ..auth.security import AuditLog
from ..auth.sessions import COOKIE, SessionStore
from ..auth.users import MAX_PASSWORD, UserStore
from .install import PUBLIC_PATH

__all__ = ["IID_PATH", "LOGIN_PATH", "Pages", "safe_next"]

LOGIN_PATH = "/login"
IID_PATH = "/IHEInvokeImageDisplay"
_MAX_BODY = 4096
_MAX_LOGINS = 32  # logins in progress (hashing or waiting for it); more: 503
_FORM = "application/x-www-form-urlencoded"
_WRONG = "wrong user name or password"
_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "form-action 'self'; frame-ancestors 'none'"}
# IID requestType -> (its parameter, the study attribute it matches).
IID_REQUESTS = {"STUDY": ("studyUID", "StudyInstanceUID"),
                "PATIENT": ("patientID", "PatientID"),
                "ACCESSION": ("accessionNumber", "AccessionNumber")}


def safe_next(value: str | None, prefix: str = "") -> str:
    """Where to go after logging in: a path on this server, else the viewer (at
    ``prefix``, the path of ``public_url``)."""
    if not value or not value.startswith("/") or value.startswith("//") or \
            "\\" in value or any(ord(c) < 0x20 for c in value):
        return prefix + PUBLIC_PATH
    return value


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>pacscore</title>"
        "<style>body{font-family:sans-serif;background:#111;color:#eee;display:flex;"
        "justify-content:center;margin-top:10vh}form{display:grid;gap:.6em;width:18em}"
        "input,button{font-size:1em;padding:.4em}.error{color:#f88}</style></head><body>"
        f"{body}</body></html>", status, headers=_HEADERS)


class Pages:
    """The endpoints of this module over one archive (see the module's docstring)."""

    def __init__(self, archive: Archive, users: UserStore, sessions: SessionStore,
                 audit: AuditLog, secure_cookie: Callable[[Request], bool],
                 prefix: str = ""):
        self.archive, self.users, self.sessions, self.audit = archive, users, sessions, audit
        self.secure_cookie = secure_cookie
        self.prefix = prefix  # the path of public_url (a proxy strips it): in our links
        self._kdf = asyncio.Semaphore(2)
        self._waiting = 0

    # -- login ------------------------------------------------------------------------
    def _form(self, nxt: str, error: str = "", status: int = 200) -> HTMLResponse:
        message = f"<p class=error role=alert>{html.escape(error)}</p>" if error else ""
        action = html.escape(self.prefix + LOGIN_PATH)
        return _page(f"<form method=post action=\"{action}\"><h1>pacscore</h1>{message}"
                     f"<input name=username autocomplete=username placeholder='user name' "
                     f"required autofocus><input name=password type=password "
                     f"autocomplete=current-password placeholder=password required>"
                     f"<input type=hidden name=next value=\"{html.escape(nxt)}\">"
                     f"<button type=submit>Log in</button></form>", status)

    async def login_page(self, request: Request) -> Response:
        holder = request.user
        nxt = safe_next(request.query_params.get("next"), self.prefix)
        if isinstance(holder, TokenHolder) and holder.session is not None:
            user = holder.session.user
            return _page(
                f"<form method=post action=\"{html.escape(self.prefix)}/logout\"><h1>"
                f"pacscore</h1><p>Logged in as "
                f"{html.escape(user)}.</p><a href=\"{html.escape(nxt)}\" "
                f"style=color:#8cf>Open the viewer</a><input type=hidden name=csrf "
                f"value=\"{html.escape(holder.session.csrf)}\"><button type=submit>"
                f"Log out</button></form>")
        return self._form(nxt)

    def _audit(self, request: Request, user: str, outcome: str, detail: str) -> None:
        host = request.client.host if request.client else "?"
        self.audit.record("authentication", action="E", outcome=outcome, user=user,
                          host=host, interface="viewer", detail=detail)

    async def _body(self, request: Request) -> bytes | Response:
        """The form body, or the refusal of a body that is not one."""
        if not request.headers.get("content-type", "").startswith(_FORM):
            return _page("<p class=error>send the login form "
                         "(application/x-www-form-urlencoded)</p>", 415)
        length = request.headers.get("content-length", "")
        if length and (not length.isdigit() or int(length) > _MAX_BODY):
            return _page("<p class=error>login form too large</p>", 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_BODY:
                return _page("<p class=error>login form too large</p>", 413)
        return body

    @staticmethod
    def _cross_origin(request: Request) -> bool:
        """The form was posted by a page of another origin (browsers send ``Origin``
        with every POST; behind a TLS proxy the scheme may differ, so hosts compare)."""
        origin = request.headers.get("origin")
        if origin is None:
            return False
        return urlsplit(origin).netloc != request.headers.get("host", "")

    async def login(self, request: Request) -> Response:
        if self._cross_origin(request):
            self._audit(request, "anonymous", "minor", "login posted from another origin "
                        f"({request.headers.get('origin')!r}): refused")
            return _page("<p class=error>log in from this server's own page</p>", 403)
        body = await self._body(request)
        if isinstance(body, Response):
            self._audit(request, "anonymous", "minor",
                        f"malformed login request (answered {body.status_code})")
            return body
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=bool(body),
                              max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            self._audit(request, "anonymous", "minor", "malformed login form (400)")
            return _page("<p class=error>malformed login form</p>", 400)
        name = fields.get("username", [""])[0]
        password = fields.get("password", [""])[0]
        nxt = safe_next(fields.get("next", [""])[0], self.prefix)
        if not name or not password or len(password.encode()) > MAX_PASSWORD or \
                len(name) > 64:
            self._audit(request, "anonymous", "minor", "login form without a usable user "
                        "name and password (400)")
            return self._form(nxt, "enter a user name and a password", 400)
        shown = name if name.isprintable() else repr(name)
        if self._waiting >= _MAX_LOGINS:  # a flood: refuse, do not queue without end
            self._audit(request, shown, "minor", "login refused: too many at once (503)")
            return _page("<p class=error>too many logins at once: try again</p>", 503)
        self._waiting += 1
        try:
            # Two hashes at a time (128 MiB each); the others wait here, in the event
            # loop, not in the thread pool that every DICOMweb request needs.
            async with self._kdf:
                result = await run_in_threadpool(self.users.login, name, password)
        finally:
            self._waiting -= 1
        if result.locked:
            minutes = max(1, round(result.locked / 60))
            if result.locked_now:
                self._audit(request, shown, "serious", f"locked out after "
                            f"{self.users.max_failures} failed logins for {minutes} min")
            else:
                self._audit(request, shown, "minor", "login refused: locked out")
            return self._form(nxt, f"too many failed attempts: try again in {minutes} "
                                   f"minute(s)", 429)
        if result.user is None or result.scope is None:
            self._audit(request, shown, "minor", "login failed: wrong user name or password")
            return self._form(nxt, _WRONG, 401)
        cookie, session = await run_in_threadpool(self.sessions.create, result.user,
                                                  result.scope)
        self._audit(request, f"user {result.user} (session {session.id})", "success",
                    "logged in")
        response = RedirectResponse(nxt, 303, headers={"Cache-Control": "no-store"})
        response.set_cookie(COOKIE, cookie, max_age=int(self.sessions.lifetime), path="/",
                            httponly=True, samesite="strict",
                            secure=self.secure_cookie(request))
        return response

    async def logout(self, request: Request) -> Response:
        holder = request.user
        assert isinstance(holder, TokenHolder)  # admitted: a session or a token
        if holder.session is not None:
            await run_in_threadpool(self.sessions.end, holder.session.id)
            self._audit(request, holder.name, "success", "logged out")
        response = RedirectResponse(self.prefix + LOGIN_PATH, 303,
                                    headers={"Cache-Control": "no-store"})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                               secure=self.secure_cookie(request))
        return response

    async def to_login(self, request: Request) -> Response:
        """A request without a valid session: to the login page, then back."""
        target = self.prefix + request.url.path + (
            f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{self.prefix}{LOGIN_PATH}?{urlencode({'next': target})}", 303,
                                headers={"Cache-Control": "no-store"})

    # -- IHE Invoke Image Display ------------------------------------------------------
    async def invoke_image_display(self, request: Request) -> Response:
        q = request.query_params
        kind = q.get("requestType", "").upper()
        if kind not in IID_REQUESTS:
            return _page("<p class=error>requestType must be STUDY, PATIENT or ACCESSION"
                         "</p>", 400)
        param, keyword = IID_REQUESTS[kind]
        value = q.get(param, "")
        if not value or len(value) > 1024:
            return _page(f"<p class=error>requestType={kind} needs {param}</p>", 400)
        wanted = [v.strip() for v in value.split(",") if v.strip()] if kind == "STUDY" \
            else [value]
        uids: list[str] = []
        for one in wanted:
            found = await run_in_threadpool(self.archive.query, "study", {keyword: one},
                                            limit=100)
            uids += [str(s["StudyInstanceUID"]) for s in found
                     if s.get("StudyInstanceUID") not in uids]
        if not uids:
            return _page(f"<p class=error>no study matches {html.escape(param)}="
                         f"{html.escape(value)}</p>", 404)
        request.state.audit_objects = uids
        return RedirectResponse(f"{self.prefix}{PUBLIC_PATH}viewer?StudyInstanceUIDs="
                                f"{quote(','.join(uids), safe=',')}", 303)
