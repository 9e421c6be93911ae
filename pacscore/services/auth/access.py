"""Who may use a door, and what a door answers for an error: one place for every door.

* :func:`bearer_token` reads ``Authorization: Bearer <token>`` (RFC 6750 2.1) from an
  HTTP header or gRPC metadata; :func:`identify` turns it into a :class:`TokenHolder`
  (its scope and its name for the audit trail) with one lookup in the
  :class:`~.tokens.TokenStore`.
* :data:`ERROR_STATUS` is the one table of error class -> HTTP status (PS3.18 8.6,
  10.5.3) and gRPC status code; :func:`http_status` and :func:`grpc_status_name` look
  an error up by its class and its bases.  Only classes of the :mod:`pacscore.errors`
  tree are in it: anything else (a bug, a library's bare ValueError) is a 500 or
  INTERNAL, logged with its traceback by the door.
* For a starlette app (DICOMweb), :class:`HttpAccess`: starlette's
  ``AuthenticationMiddleware`` with a backend that identifies the token of every
  request (or, without one, its viewer session cookie, :mod:`.sessions`; a request
  that changes state by cookie must carry the session's CSRF token), and a required
  scope declared per endpoint (:meth:`HttpAccess.requires`,
  like starlette's ``requires`` but answering 401/403 with the reason and auditing the
  refusal).  Access is denied by default: :func:`check_routes` refuses an app with an
  endpoint that declares neither a scope nor :func:`public`, when it is built and
  again when it starts.
* A share link's token (or the session it opened) is bound to one study
  (:attr:`TokenHolder.study`).  Each endpoint declares how it keeps to it
  (``requires(..., one_study=)``; a path naming another study is refused 403 in
  every case): :data:`STUDY_IN_PATH` (the default: a path naming no study is
  refused), :data:`STUDY_FILTERED` (the endpoint answers about that study only:
  QIDO-RS, WADO-URI, STOW-RS; :func:`bound_study`) or
  :data:`NO_STUDY_DATA` (the viewer's own files): denied by default here too.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Host, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import (
    ArchiveStorageError,
    ConflictError,
    IndexUnavailableError,
    InvalidDicomError,
    InvalidRequestError,
    NotFoundError,
    PacsError,
    UnsupportedTransferSyntaxError,
)
from ..dicomweb.answers import outcome, path_uids, refusal
from ..dicomweb.multipart import BodyTimeoutError, MultipartError, TooLargeError
from .security import AuditLog
from .sessions import COOKIE, CSRF_HEADER, Session, SessionStore
from .tokens import SCOPES, TokenStore, granted

__all__ = ["ERROR_STATUS", "EXCEPTION_HANDLERS", "HTTP_STATUS",
           "AccessUndeclaredError", "AuditTrail", "DoorStatus", "HttpAccess", "TokenHolder",
           "NO_STUDY_DATA", "STUDY_FILTERED", "STUDY_IN_PATH",
           "bearer_token", "bound_study", "check_routes", "declared", "grpc_status_name",
           "hl7_error_code", "http_status",
           "identify", "identify_session", "public"]

log = logging.getLogger(__name__)


# -- errors -> statuses ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DoorStatus:
    """What each door answers for one error class."""

    http: int
    """HTTP status (PS3.18 8.6 for WADO/QIDO, 10.5.3 for STOW)."""
    grpc: str
    """Name of the ``grpc.StatusCode`` (this module does not import grpc)."""
    hl7: int = 207
    """HL7 Table 0357 error code in the ERR of an MLLP ACK (207: internal error)."""


ERROR_STATUS: dict[type[Exception], DoorStatus] = {
    NotFoundError: DoorStatus(404, "NOT_FOUND", 204),
    UnsupportedTransferSyntaxError: DoorStatus(406, "FAILED_PRECONDITION"),
    ConflictError: DoorStatus(409, "ALREADY_EXISTS", 205),
    InvalidDicomError: DoorStatus(400, "INVALID_ARGUMENT", 102),
    ArchiveStorageError: DoorStatus(507, "RESOURCE_EXHAUSTED"),
    IndexUnavailableError: DoorStatus(503, "UNAVAILABLE"),
    InvalidRequestError: DoorStatus(400, "INVALID_ARGUMENT", 102),
    # Request bodies (HTTP only; a gRPC stream's limits are its own statuses).
    MultipartError: DoorStatus(400, "INVALID_ARGUMENT"),
    TooLargeError: DoorStatus(413, "RESOURCE_EXHAUSTED"),
    BodyTimeoutError: DoorStatus(408, "DEADLINE_EXCEEDED"),
}
"""The one table: error class -> status at each door; the nearest class counts."""
HTTP_STATUS: dict[type[Exception], int] = {cls: s.http for cls, s in ERROR_STATUS.items()}
"""The HTTP column of :data:`ERROR_STATUS`."""


def _status(exc: BaseException) -> DoorStatus | None:
    for cls in type(exc).__mro__:
        found = ERROR_STATUS.get(cls)
        if found is not None:
            return found
    return None


def http_status(exc: BaseException) -> int:
    """The HTTP status of ``exc``: 500 for anything outside the table."""
    found = _status(exc)
    return 500 if found is None else found.http


def hl7_error_code(exc: BaseException) -> int:
    """The HL7 Table 0357 code of ``exc``: 207 (internal error) outside the table."""
    found = _status(exc)
    return 207 if found is None else found.hl7


def grpc_status_name(exc: BaseException) -> str:
    """The ``grpc.StatusCode`` name of ``exc``: ``INTERNAL`` outside the table."""
    found = _status(exc)
    return "INTERNAL" if found is None else found.grpc


# -- tokens --------------------------------------------------------------------------
NO_TOKEN = ("no bearer token: send 'Authorization: Bearer <token>' (the archive's "
            "administrator makes one: pacscore token create --archive ARCHIVE --scope read)")
UNKNOWN_TOKEN = "the bearer token is unknown or revoked"
INVALID_SESSION = "invalid session"


def bearer_token(header: object) -> str:
    """The token of an ``Authorization`` value ``Bearer <token>`` (the scheme in any
    case, RFC 6750 2.1); ``''`` when there is none."""
    text = str(header or "")
    return text[7:].strip() if text.lower().startswith("bearer ") else ""


class TokenHolder(BaseUser):
    """Who sent a request: the scope of its token (None: no valid token) and its name
    for the audit trail (``token <id> (name)``, ``user <name> (session <id>)``,
    ``anonymous``, ``invalid token``); ``session`` when a viewer session cookie (not a
    bearer token) authenticated it."""

    __slots__ = ("name", "problem", "scope", "sent", "session", "study")

    def __init__(self, scope: str | None, name: str, sent: bool,
                 session: Session | None = None, study: str | None = None,
                 problem: str | None = None):
        self.scope, self.name, self.sent, self.session = scope, name, sent, session
        self.study, self.problem = study, problem

    @property
    def is_authenticated(self) -> bool:
        return self.scope is not None

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return self.name

    def grants(self, needed: str) -> bool:
        """The token's scope covers ``needed``."""
        return granted(self.scope, needed)

    @property
    def why(self) -> str:
        """Why it is not authenticated."""
        if self.problem:
            return self.problem
        if self.name == INVALID_SESSION:
            return "the session cookie is unknown, ended or expired: log in again (/login)"
        return UNKNOWN_TOKEN if self.sent else NO_TOKEN


def identify(tokens: TokenStore, token: str) -> TokenHolder:
    """The holder of ``token`` (``''``: none sent), with one store lookup."""
    if not token:
        return TokenHolder(None, "anonymous", sent=False)
    grant = tokens.check(token)
    return TokenHolder(grant.scope, grant.name, sent=True, study=grant.study,
                       problem=grant.problem)


def identify_session(sessions: SessionStore, cookie: str,
                     tokens: TokenStore | None = None) -> TokenHolder:
    """The holder of a viewer session cookie value (unknown, tampered, ended or
    expired: a holder without scope).  A session a share link opened lasts while the
    share does (``tokens``: revoked or expired, the session is refused at once)."""
    session = sessions.get(cookie)
    if session is None:
        return TokenHolder(None, INVALID_SESSION, sent=True)
    name = f"{session.user} (session {session.id})" if session.share else \
        f"user {session.user} (session {session.id})"
    if session.share is not None:
        grant = tokens.check_id(session.share) if tokens is not None else None
        if grant is None or grant.scope is None:
            return TokenHolder(None, name, sent=True, study=session.study,
                               problem=grant.problem if grant else INVALID_SESSION)
    return TokenHolder(session.scope, name, sent=True, session=session,
                       study=session.study)


def bound_study(request: Request) -> str | None:
    """The one study the sender of ``request`` may see (a share link), or None."""
    holder = request.scope.get("user")
    return holder.study if isinstance(holder, TokenHolder) else None


class _TokenBackend(AuthenticationBackend):
    """Identifies the bearer token of every request, or without one its session
    cookie.  It never refuses: whether a request needs a token is the endpoint's
    declaration (``/healthz`` answers with a revoked token too, as probes may send
    any), so a missing or unknown token gives a holder without scopes and the endpoint
    answers 401."""

    def __init__(self, tokens: TokenStore, sessions: SessionStore | None = None):
        self.tokens, self.sessions = tokens, sessions

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        token = bearer_token(conn.headers.get("authorization"))
        cookie = conn.cookies.get(COOKIE, "") if self.sessions is not None else ""
        if not token and cookie and self.sessions is not None:
            holder = identify_session(self.sessions, cookie, self.tokens)
        else:
            holder = identify(self.tokens, token)
        held = [s for s in SCOPES if holder.grants(s)]
        return AuthCredentials(held), holder


# -- per-endpoint declarations ---------------------------------------------------------
Endpoint = Callable[[Request], Awaitable[Response]]
_ACCESS = "__pacscore_access__"
PUBLIC = "public"
"""The declaration of an endpoint that answers without a token."""
STUDY_IN_PATH = "path"
"""A study-bound holder may use the endpoint on the study its path names only."""
STUDY_FILTERED = "filtered"
"""The endpoint answers a study-bound holder about that study only (:func:`bound_study`)."""
NO_STUDY_DATA = "none"
"""The endpoint tells nothing of any study (the viewer's files, logout)."""
_ONE_STUDY = (STUDY_IN_PATH, STUDY_FILTERED, NO_STUDY_DATA)


class AccessUndeclaredError(PacsError, TypeError):
    """An endpoint declares no access: the app is not built (access is denied by default)."""


def public(endpoint: Endpoint) -> Endpoint:
    """Declare ``endpoint`` open to anyone (``/healthz`` alone: it tells nothing)."""
    setattr(endpoint, _ACCESS, PUBLIC)
    return endpoint


def declared(endpoint: object) -> str | None:
    """The scope ``endpoint`` requires, :data:`PUBLIC`, or None when it declares none."""
    value = getattr(endpoint, _ACCESS, None)
    return value if isinstance(value, str) else None


def _endpoints(routes: Iterable[BaseRoute], prefix: str = ""
               ) -> Iterable[tuple[str, object]]:
    for route in routes:
        if isinstance(route, Route | WebSocketRoute):
            yield prefix + route.path, route.endpoint
        elif isinstance(route, Mount | Host):
            inner = getattr(route.app, "routes", None)
            path = prefix + getattr(route, "path", "")
            if inner is None:  # an ASGI app of its own: nothing here can check it
                yield path, route.app
            else:
                yield from _endpoints(inner, path)
        else:
            yield prefix + str(getattr(route, "path", route)), route


def check_routes(routes: Iterable[BaseRoute]) -> None:
    """Refuse routes (mounted ones too) whose endpoint declares no access.

    Raises
    ------
    AccessUndeclaredError
        Naming each such path.
    """
    missing = [path for path, endpoint in _endpoints(routes) if declared(endpoint) is None]
    if missing:
        raise AccessUndeclaredError(
            f"{len(missing)} route(s) declare no access: {', '.join(sorted(missing))}",
            hint="wrap the endpoint in HttpAccess.requires(<scope>), or in public() when "
                 "it may answer anyone")


class HttpAccess:
    """The access rules of one starlette app: who sent each request (middleware) and
    what each endpoint requires (:meth:`requires`); refusals are audited.

    Parameters
    ----------
    tokens
        The archive's tokens.
    audit
        Where refusals are recorded (PS3.15 A.5.3.11 User Authentication).
    interface
        The door's name in the audit trail.
    sessions
        Viewer sessions whose cookie is accepted beside bearer tokens (None: tokens only).
    """

    def __init__(self, tokens: TokenStore, audit: AuditLog, interface: str = "dicomweb",
                 sessions: SessionStore | None = None):
        self.tokens, self.audit, self.interface = tokens, audit, interface
        self.sessions = sessions

    def middleware(self) -> list[Middleware]:
        """Starlette's ``AuthenticationMiddleware`` over the token backend, then the
        audit of admitted requests (:class:`AuditTrail`)."""
        backend = _TokenBackend(self.tokens, self.sessions)
        return [Middleware(AuthenticationMiddleware, backend=backend),
                Middleware(AuditTrail, audit=self.audit, interface=self.interface)]

    def requires(self, scope: str, *, unauthenticated: Endpoint | None = None,
                 audited: bool = True, one_study: str = STUDY_IN_PATH
                 ) -> Callable[[Endpoint], Endpoint]:
        """Declare that ``endpoint`` needs a token with ``scope``: without a valid token
        401 (``WWW-Authenticate: Bearer``), with too little scope 403, each with its
        reason (:func:`..dicomweb.answers.refusal`) and audited; an admitted request is
        marked ``request.state.holder`` for the audit of its outcome (unless not
        ``audited``: the viewer's static files).  A request authenticated by session
        cookie that changes state (not GET/HEAD/OPTIONS) without the session's CSRF
        token is refused 403.  ``unauthenticated`` answers instead of the 401 (the
        viewer's pages: a redirect to the login page).  ``one_study``: how the endpoint
        keeps a share link's holder to its study (:data:`STUDY_IN_PATH`: refused 403
        unless the path names that study)."""
        if scope not in SCOPES:
            raise AccessUndeclaredError(f"unknown scope {scope!r}",
                                        hint=f"use one of {', '.join(SCOPES)}")
        if one_study not in _ONE_STUDY:
            raise AccessUndeclaredError(f"unknown one_study {one_study!r}",
                                        hint=f"use one of {', '.join(_ONE_STUDY)}")

        def declare(endpoint: Endpoint) -> Endpoint:
            @functools.wraps(endpoint, updated=())  # Stow, BulkData: objects
            async def checked(request: Request) -> Response:
                holder = request.user  # AssertionError without the middleware: a 500
                if not isinstance(holder, TokenHolder) or not holder.is_authenticated:
                    why = holder.why if isinstance(holder, TokenHolder) else NO_TOKEN
                    if unauthenticated is not None:  # a page: to the login
                        if isinstance(holder, TokenHolder) and holder.sent:
                            self._refused(request, why)  # a bad cookie or token: audited
                        return await unauthenticated(request)
                    self._refused(request, why)
                    return refusal(request, 401, "a valid bearer token is required", why,
                                   {"WWW-Authenticate": 'Bearer realm="pacscore"'})
                refused = await self._forbidden(request, holder, scope, one_study)
                if refused is not None:
                    return refused
                if audited:
                    request.state.holder = holder
                return await endpoint(request)

            setattr(checked, _ACCESS, scope)
            return checked

        return declare

    async def _forbidden(self, request: Request, holder: TokenHolder, scope: str,
                         one_study: str) -> Response | None:
        """The 403 of an authenticated request that may not do this (CSRF, scope,
        outside a share link's study), audited; None when it may."""
        if holder.session is not None and request.method not in _SAFE \
                and not await _csrf_ok(request, holder.session):
            why = (f"{request.method} by session cookie from another origin, or "
                   f"without Origin and the session's CSRF token (X-CSRF-Token)")
            title = "CSRF token missing or wrong"
        elif scope not in request.auth.scopes:
            why = f"{request.method} needs the {scope!r} scope; this token has {holder.scope!r}"
            title = "this token lacks the scope needed"
        elif holder.study is not None and _outside(request.path_params.get("study"),
                                                   holder.study, one_study):
            why = (f"this share link opens study {holder.study} only; {request.url.path} "
                   f"is not in it")
            title = "outside the shared study"
        else:
            return None
        self._refused(request, why)
        return refusal(request, 403, title, why)

    def _refused(self, request: Request, why: str) -> None:
        host = request.client.host if request.client else "?"
        self.audit.record("authentication", action="E", outcome="minor",
                          user=request.user.display_name, host=host,
                          interface=self.interface, objects=path_uids(request),
                          detail=f"{request.method} {request.url.path}: {why}")



_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM = "application/x-www-form-urlencoded"
_MAX_FORM = 4096


def _outside(named: str | None, shared: str, one_study: str) -> bool:
    """A share link's request strays from its study: its path names another, or names
    none on an endpoint that keeps to the study only by its path."""
    return named != shared if named is not None else one_study == STUDY_IN_PATH


async def _csrf_ok(request: Request, session: Session) -> bool:
    """The request comes from this server's own pages: its ``Origin`` header names this
    host (browsers send it with every POST/DELETE, same-origin ones included; OWASP's
    "verifying origin with standard headers": what lets OHIF store measurements by
    STOW-RS), or it carries ``session``'s CSRF token in the ``X-CSRF-Token`` header or as
    the ``csrf`` field of a small urlencoded form (an HTML form cannot set headers; the
    body is read only when it is a form of at most 4 KiB).  Another origin is refused
    whatever it sends."""
    origin = request.headers.get("origin")
    if origin is not None:
        return urlsplit(origin).netloc == request.headers.get("host", "")
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and request.headers.get("content-type", "").startswith(_FORM):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) <= _MAX_FORM:
            body = await request.body()
            sent = parse_qs(body.decode("latin-1")).get("csrf", [""])[0]
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())


# -- the outcome of an admitted HTTP request ----------------------------------------
async def _pacs_error(request: Request, exc: Exception) -> Response:
    """A :class:`PacsError` as its status (:data:`ERROR_STATUS`) with its reason."""
    assert isinstance(exc, PacsError)
    timeout = isinstance(exc, BodyTimeoutError)
    if timeout:  # 408: the rest of the body may still come; the connection is closed
        request.state.audit_error = ": client idle mid-body"
    return JSONResponse({"error": exc.reason}, http_status(exc),
                        headers={"Connection": "close"} if timeout else None)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """A client gone mid-body: parts already removed, nothing stored."""
    request.state.audit_error = ": client disconnected"
    return Response(status_code=400)


EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    PacsError: _pacs_error, ClientDisconnect: _client_gone}
"""Starlette exception handlers of the HTTP door (``Starlette(exception_handlers=)``)."""
# Audit event and action (PS3.15 A.5.3) of an admitted request by its method, unless
# its endpoint names one (``request.state.audit_event``, QIDO-RS: query).
_AUDIT_BY_METHOD = {"GET": ("accessed", "R"), "HEAD": ("accessed", "R"),
                    "POST": ("transferred", "C"), "DELETE": ("deleted", "D")}


class AuditTrail:
    """ASGI middleware between authentication and routing: every request its endpoint
    admitted (:meth:`HttpAccess.requires`) is audited with the status its client was
    told (:func:`..dicomweb.answers.outcome`), the UIDs it named (or those the endpoint
    lists in ``request.state.audit_objects``, STOW-RS) and ``audit_detail``, under the
    interface ``audit_interface`` names (a door mounted in the app, FHIR) or its own.  An
    admitted request that fails with an error outside the :mod:`pacscore.errors` tree
    (a bug, a library's bare ValueError) is answered 500 with the error's class only,
    its traceback logged: the client did nothing wrong.
    """

    def __init__(self, app: ASGIApp, audit: AuditLog, interface: str = "dicomweb"):
        self.app, self.audit, self.interface = app, audit, interface

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self._record(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # catch-all on purpose: the request's boundary
            state = scope.get("state") or {}
            if started or "holder" not in state:
                raise
            log.exception("%s %s failed", scope["method"], scope["path"])
            state["audit_error"] = f": internal error ({type(exc).__name__})"
            response = JSONResponse({"error": f"internal error ({type(exc).__name__}); "
                                              f"logged on the server"}, 500)
            await response(scope, receive, sending)

    def _record(self, scope: Scope, status: int) -> None:
        state = scope.get("state") or {}
        holder = state.get("holder")
        if not isinstance(holder, TokenHolder):  # refused (audited then), open, unrouted
            return
        request = Request(scope)
        kind, code = state.get("audit_event") or _AUDIT_BY_METHOD.get(
            request.method, ("accessed", "E"))
        detail = state.get("audit_error", "") + state.get("audit_detail", "")
        self.audit.record(
            kind, action=code, outcome=outcome(status), user=holder.name,
            host=request.client.host if request.client else "?",
            interface=state.get("audit_interface") or self.interface,  # a mounted door's
            objects=state.get("audit_objects") or path_uids(request),
            detail=f"{request.method} {request.url.path} -> {status}{detail}")
