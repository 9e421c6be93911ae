"""Teleradiology share links (issue 20.3): one study, for a limited time, in the viewer.

``pacscore share STUDY_UID --expires 24h [--read-only]`` makes a token bound to that
study and ending then (:meth:`..auth.tokens.TokenStore.create` with ``study`` and
``expires``: the same tokens, scopes and middleware as every other request) and prints
``<url>/share/<token>``.  Opening the link (``GET /share/<token>``) checks the token and
starts a browser session bound to the same study, ending with the share (the
``HttpOnly``, ``SameSite=Strict`` cookie of a login), then sends the browser on to the
viewer on that study.  The answer is a small page that goes on by itself (a meta
refresh): a ``SameSite=Strict`` cookie is not sent with the redirect of a link followed
from another site (a mail, a chat), but is with a navigation this server's page starts.

Every route then keeps the holder to that study (:mod:`..auth.access`): a path naming
another study is refused 403, QIDO-RS answers about that study only (OHIF's prior
studies by PatientID too), WADO-URI 404 for instances elsewhere, gRPC, FHIR and the
worklist refuse it.  ``--read-only`` gives the ``read`` scope; without it ``write``
lets the reader save measurements (DICOM SR, STOW-RS) into that study only.

``pacscore share revoke ID`` marks the share revoked and ends the sessions it opened;
an expired or revoked link answers 410 with a page saying which.  Every use (opening,
refusal, and each request of its session) is in the audit trail with the client's
address, under ``share <id>``.
"""

from __future__ import annotations

import html
import re
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ...errors import InvalidRequestError
from ..auth.security import AuditLog
from ..auth.sessions import COOKIE, SessionStore
from ..auth.tokens import TokenStore
from .install import PUBLIC_PATH

__all__ = ["SHARE_PATH", "ShareLinks", "list_shares", "parse_duration", "revoke_share",
           "share_link", "share_study"]

SHARE_PATH = "/share"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_LONGEST = 90 * 86400.0  # a link is for a consultation, not a standing grant
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "frame-ancestors 'none'"}


def parse_duration(text: str) -> float:
    """Seconds of ``30m``, ``24h``, ``7d``, ``2w`` (at most 90 days).

    Raises
    ------
    InvalidRequestError
        Another form, zero, or longer than 90 days.
    """
    found = _DURATION.match(text)
    seconds = float(found.group(1)) * _UNITS[found.group(2)] if found else 0.0
    if not 0 < seconds <= _LONGEST:
        raise InvalidRequestError(f"--expires {text!r}: give a duration of up to 90 days "
                                  f"such as 30m, 24h, 7d")
    return seconds


def share_study(tokens: TokenStore, study: str, seconds: float, *, read_only: bool,
                name: str = "") -> str:
    """A new share token for ``study`` ending in ``seconds`` (shown only now)."""
    return tokens.create("read" if read_only else "write", name, study=study,
                         expires=time.time() + seconds)


def list_shares(tokens: TokenStore, now: float | None = None) -> dict[str, dict[str, Any]]:
    """The share tokens by id: name, study, ``expires`` (local time, ISO 8601) and
    ``state`` (active, expired or revoked)."""
    now = time.time() if now is None else now
    return {k: {**v, "state": "revoked" if "revoked" in v else
                "expired" if v.get("expires", now + 1) <= now else "active",
                "expires": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(v["expires"]))}
            for k, v in tokens.list().items() if "study" in v}


def revoke_share(tokens: TokenStore, sessions: SessionStore,
                 token_id: str) -> tuple[str, int] | None:
    """Revoke share ``token_id`` and end the sessions it opened: (its study, sessions
    ended), or None when there is no such active share."""
    entry = tokens.list().get(token_id)
    if entry is None or "study" not in entry or not tokens.revoke(token_id):
        return None
    return str(entry["study"]), sessions.end_share(token_id)


def share_link(base_url: str, token: str) -> str:
    """The link that opens a share token's study."""
    return f"{base_url.rstrip('/')}{SHARE_PATH}/{token}"


def _page(body: str, status: int, head: str = "") -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>pacscore</title>"
        + head + "<style>body{font-family:sans-serif;background:#111;color:#eee;display:flex;"
        "justify-content:center;margin-top:10vh}a{color:#8cf}.error{color:#f88}</style>"
        f"</head><body><main>{body}</main></body></html>", status, headers=_HEADERS)


class ShareLinks:
    """The endpoint of ``GET /share/{token}`` (see the module's docstring)."""

    def __init__(self, tokens: TokenStore, sessions: SessionStore, audit: AuditLog,
                 secure_cookie: bool, prefix: str = ""):
        self.tokens, self.sessions, self.audit = tokens, sessions, audit
        self.secure_cookie = secure_cookie
        self.prefix = prefix  # the path of public_url (a proxy strips it)

    def _audit(self, request: Request, user: str, outcome: str, detail: str,
               study: str | None) -> None:
        self.audit.record("authentication", action="E", outcome=outcome, user=user,
                          host=request.client.host if request.client else "?",
                          interface="viewer", objects=[study] if study else None,
                          detail=detail)

    async def __call__(self, request: Request) -> Response:
        grant = self.tokens.check(request.path_params["token"])
        if grant.scope is None or grant.study is None or grant.id is None:
            known = grant.study is not None  # its secret was right: say why
            why = grant.problem if known and grant.problem else "this link is unknown"
            self._audit(request, grant.name, "minor", f"share link refused: {why}",
                        grant.study if known else None)
            return _page(f"<h1>pacscore</h1><p class=error role=alert>{html.escape(why)}."
                         f"</p><p>Ask whoever sent it for a new link.</p>",
                         410 if known else 404)
        cookie, session = await run_in_threadpool(
            self.sessions.create, grant.name, grant.scope, study=grant.study,
            share=grant.id, ends=grant.expires)
        self._audit(request, f"{grant.name} (session {session.id})", "success",
                    f"share link opened (scope {grant.scope})", grant.study)
        target = html.escape(f"{self.prefix}{PUBLIC_PATH}viewer?StudyInstanceUIDs="
                             f"{grant.study}")
        response = _page(f"<h1>pacscore</h1><p><a href=\"{target}\">Open the study</a></p>",
                         200, f"<meta http-equiv=refresh content=\"0;url={target}\">")
        response.set_cookie(COOKIE, cookie, max_age=max(1, int(session.expires - time.time())),
                            path="/", httponly=True, samesite="strict",
                            secure=self.secure_cookie or request.url.scheme == "https")
        return response
