"""``/admin``: the share links of issue 20.3 from a page, for users with the ``admin`` scope.

* ``GET /admin`` (logged in with ``admin``; else to the login page) lists the archive's
  latest studies, each with a **Share** button (how long, read-only or not, for whom),
  and the share links made so far with their state and a **Revoke** button.  Its search
  form (``q``: the start of a patient ID or accession number, or words of the patient's
  name as QIDO-RS fuzzy matching takes them; ``from``/``to``: study dates, YYYY-MM-DD)
  lists the matching studies of the whole archive instead (at most 50).
* ``POST /admin/share`` (form: ``study``, ``expires`` as ``pacscore share --expires``,
  ``read_only``, ``name``) makes the link (:func:`.share.share_study`) and shows it, once.
* ``POST /admin/revoke`` (form: ``id``) revokes a share and ends the sessions it opened.

Both POSTs are forms of this page: the access layer refuses them without the session's
CSRF token (the form's hidden ``csrf`` field) or from another origin.  Each creation and
revocation is in the audit trail like ``pacscore share`` (user, client address, study).
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ...archive import Archive
from ...errors import InvalidRequestError
from ..auth.access import TokenHolder
from ..auth.security import AuditLog
from ..auth.sessions import SessionStore
from ..auth.tokens import TokenStore
from .install import PUBLIC_PATH
from .share import list_shares, parse_duration, revoke_share, share_link, share_study

__all__ = ["ADMIN_PATH", "AdminPage"]

ADMIN_PATH = "/admin"
_LATEST = 50  # studies listed
_MAX_FORM = 4096
_MAX_SEARCH = 64  # characters of the search box
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_DURATIONS = ("1h", "24h", "7d", "30d")
_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "form-action 'self'; frame-ancestors 'none'"}
_STYLE = ("body{font-family:sans-serif;background:#111;color:#eee;margin:2em}"
          "table{border-collapse:collapse}td,th{padding:.3em .6em;text-align:left;"
          "border-bottom:1px solid #333}form{display:inline}a{color:#8cf}"
          ".error{color:#f88}input[readonly]{width:60em}")


def _page(body: str, status: int = 200, prefix: str = "") -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>pacscore admin"
        f"</title><style>{_STYLE}</style></head><body><h1>pacscore: share links</h1>"
        f"{body}<p><a href=\"{_e(prefix + ADMIN_PATH)}\">Back</a> · "
        f"<a href=\"{_e(prefix + PUBLIC_PATH)}\">Viewer</a></p></body></html>", status,
        headers=_HEADERS)


def _e(value: object) -> str:
    return html.escape(str(value if value is not None else ""), quote=True)


class AdminPage:
    """The endpoints of this module (see its docstring).  ``base_url`` gives the
    address the links start with (``public_url``, else the request's own); ``prefix``
    the path of ``public_url`` (a proxy strips it), in the page's own links."""

    def __init__(self, archive: Archive, tokens: TokenStore, sessions: SessionStore,
                 audit: AuditLog, base_url: Callable[[Request], str], prefix: str = ""):
        self.archive, self.tokens, self.sessions, self.audit = archive, tokens, sessions, audit
        self.base_url, self.prefix = base_url, prefix
        self.action = _e(prefix + ADMIN_PATH)

    def _audit(self, request: Request, detail: str, study: str) -> None:
        holder = request.user
        self.audit.record("security", action="U", outcome="success",
                          user=holder.name if isinstance(holder, TokenHolder) else "?",
                          host=request.client.host if request.client else "?",
                          interface="viewer", objects=[study], detail=detail)

    def _search(self, text: str, dates: str) -> list[dict[str, Any]]:
        """Studies whose patient ID or accession number starts with ``text`` or whose
        patient name has its words (fuzzy), within ``dates`` (a DICOM range); at most
        :data:`_LATEST`, each once."""
        when = {"StudyDate": dates} if dates else {}
        if not text:
            return self.archive.query("study", when, limit=_LATEST)
        found: dict[str, dict[str, Any]] = {}
        for keys, fuzzy in (({"PatientID": text + "*"}, False),
                            ({"AccessionNumber": text + "*"}, False),
                            ({"PatientName": text}, True)):
            for study in self.archive.query("study", {**keys, **when}, limit=_LATEST,
                                            fuzzy=fuzzy):
                found.setdefault(study["StudyInstanceUID"], study)
        return list(found.values())[:_LATEST]

    async def show(self, request: Request) -> Response:
        holder = request.user
        assert isinstance(holder, TokenHolder)  # admitted
        csrf = holder.session.csrf if holder.session is not None else ""
        hidden = f"<input type=hidden name=csrf value=\"{_e(csrf)}\">"
        asked = request.query_params
        text = asked.get("q", "").strip()
        try:
            dates = _date_range(asked.get("from", ""), asked.get("to", ""))
            if len(text) > _MAX_SEARCH or "\\" in text:
                raise InvalidRequestError(
                    f"search for at most {_MAX_SEARCH} characters, without a backslash")
            studies = await run_in_threadpool(self._search, text, dates)
        except InvalidRequestError as exc:
            return _page(f"<p class=error>{_e(exc)}</p>", 400, prefix=self.prefix)
        searched = bool(text or dates)
        search = (f"<form method=get action=\"{self.action}\"><input type=search name=q "
                  f"value=\"{_e(text)}\" size=30 placeholder='patient name or ID, accession' "
                  f"aria-label=search> <label>from <input type=date name=from value=\""
                  f"{_e(asked.get('from', ''))}\"></label> <label>to <input type=date "
                  f"name=to value=\"{_e(asked.get('to', ''))}\"></label> "
                  f"<button type=submit>Search</button></form>")
        options = "".join(f"<option>{d}</option>" for d in _DURATIONS)
        rows = "".join(
            f"<tr><td>{_e(s.get('PatientName'))}</td><td>{_e(s.get('PatientID'))}</td>"
            f"<td>{_e(s.get('StudyDate'))}</td><td>{_e(s.get('StudyDescription'))}</td>"
            f"<td>{_e(s.get('ModalitiesInStudy'))}</td><td><form method=post "
            f"action=\"{self.action}/share\">{hidden}<input type=hidden name=study "
            f"value=\"{_e(s['StudyInstanceUID'])}\"><select name=expires "
            f"aria-label=expires>{options.replace('<option>24h', '<option selected>24h')}"
            f"</select> <label><input type=checkbox name=read_only value=1 checked> "
            f"read-only</label> <input name=name placeholder='for whom' size=12> "
            f"<button type=submit>Share</button></form></td></tr>" for s in studies)
        heading = (f"{len(studies)} found" + (f", the first {_LATEST}" if len(studies)
                                              >= _LATEST else "")
                   if searched else f"latest {_LATEST}")
        shares = await run_in_threadpool(list_shares, self.tokens)
        share_rows = "".join(
            f"<tr><td>{_e(k)}</td><td>{_e(v.get('name'))}</td><td>{_e(v['study'])}</td>"
            f"<td>{_e(v['expires'])}</td><td>{_e(v['state'])}</td><td>"
            + (f"<form method=post action=\"{self.action}/revoke\">{hidden}<input type=hidden "
               f"name=id value=\"{_e(k)}\"><button type=submit>Revoke</button></form>"
               if v["state"] == "active" else "") + "</td></tr>"
            for k, v in shares.items())
        return _page(
            f"<h2>Studies ({heading})</h2>{search}<table><tr><th>Patient</th><th>ID</th>"
            f"<th>Date</th><th>Description</th><th>Modalities</th><th></th></tr>{rows}"
            f"</table><h2>Share links</h2><table><tr><th>ID</th><th>For</th><th>Study</th>"
            f"<th>Expires</th><th>State</th><th></th></tr>{share_rows}</table>", prefix=self.prefix)

    async def _form(self, request: Request) -> dict[str, str] | Response:
        body = await request.body()
        if len(body) > _MAX_FORM:
            return _page("<p class=error>form too large</p>", 413, prefix=self.prefix)
        try:
            fields = parse_qs(body.decode("utf-8"), max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            return _page("<p class=error>malformed form</p>", 400, prefix=self.prefix)
        return {k: v[0] for k, v in fields.items()}

    async def share(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        study = form.get("study", "")
        try:
            seconds = parse_duration(form.get("expires", ""))
        except InvalidRequestError as exc:
            return _page(f"<p class=error>{_e(exc)}</p>", 400, prefix=self.prefix)
        if not study or not await run_in_threadpool(self.archive.instances, "study", study):
            return _page(f"<p class=error>no study {_e(study)!s} in this archive</p>", 404,
                         prefix=self.prefix)
        read_only = form.get("read_only") == "1"
        name = form.get("name", "")[:64]
        token = await run_in_threadpool(share_study, self.tokens, study, seconds,
                                        read_only=read_only, name=name)
        token_id = token.split("_")[1]
        self._audit(request, f"share {token_id} of study {study} created ("
                    f"{'read' if read_only else 'read and save measurements'}, for "
                    f"{form.get('expires')}) from the admin page", study)
        link = share_link(self.base_url(request), token)
        return _page(f"<p>Share link for study {_e(study)}, valid {_e(form.get('expires'))}"
                     f"{', read-only' if read_only else ''} (shown only now: copy it):</p>"
                     f"<p><input readonly value=\"{_e(link)}\" aria-label='share link'></p>"
                     f"<p>Revoke it here (share {_e(token_id)}) or with "
                     f"<code>pacscore share revoke {_e(token_id)}</code>.</p>",
                     prefix=self.prefix)

    async def revoke(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        token_id = form.get("id", "")
        revoked = await run_in_threadpool(revoke_share, self.tokens, self.sessions, token_id)
        if revoked is None:
            return _page(f"<p class=error>no active share {_e(token_id)}</p>", 404,
                         prefix=self.prefix)
        study, ended = revoked
        self._audit(request, f"share {token_id} of study {study} revoked ({ended} "
                    f"session(s) ended) from the admin page", study)
        return _page(f"<p>Share {_e(token_id)} revoked at "
                     f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))}; {ended} session(s) "
                     f"ended.</p>", prefix=self.prefix)


def _date_range(low: str, high: str) -> str:
    """The DICOM date range (``YYYYMMDD-YYYYMMDD``, either end open) of the form's
    ``from`` and ``to`` (``YYYY-MM-DD`` as a date input sends them, or ``YYYYMMDD``);
    '' when both are empty."""
    ends = []
    for name, value in (("from", low.strip()), ("to", high.strip())):
        found = _DATE.fullmatch(value)
        if value and found is None:
            raise InvalidRequestError(f"the {name} date {value[:20]!r} is not a date: "
                                      f"write it as YYYY-MM-DD")
        ends.append("".join(found.groups()) if found else "")
    if not any(ends):
        return ""
    if all(ends) and ends[0] > ends[1]:
        raise InvalidRequestError("the from date is after the to date: swap them")
    return "-".join(ends) if ends[0] != ends[1] else ends[0]
