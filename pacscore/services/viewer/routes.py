"""The routes of the viewer door, each with its declared access (:mod:`..auth.access`).

=============================  ======  =====================================================
path                           method  access
=============================  ======  =====================================================
``/viewer``, ``/viewer/...``   GET     ``read`` (session or token); else to the login page
``/login``                     GET     public: the form
``/login``                     POST    public: checks the password (rate: lock-out)
``/logout``                    POST    ``read`` and, by cookie, the CSRF token
``/IHEInvokeImageDisplay``     GET     ``read``; else to the login page, then back
``/share/{token}``             GET     public: checks the share token itself (:mod:`.share`)
``/admin``                     GET     ``admin``; else to the login page (:mod:`.admin`)
``/admin/share``, ``/revoke``  POST    ``admin`` and, by cookie, the CSRF token
=============================  ======  =====================================================

A share link's session (one study) may fetch the viewer's files and log out; the IID
launch and every route of another door are refused to it (:mod:`..auth.access`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...archive import Archive
from ..auth.access import NO_STUDY_DATA, Endpoint, HttpAccess, public
from ..auth.users import UserStore
from .admin import ADMIN_PATH, AdminPage
from .install import PUBLIC_PATH
from .pages import IID_PATH, LOGIN_PATH, Pages
from .share import SHARE_PATH, ShareLinks
from .static import ViewerBuild, app_config, viewer_files

__all__ = ["ViewerSettings", "viewer_routes"]


@dataclass(frozen=True, slots=True)
class ViewerSettings:
    """How the viewer door behaves."""

    build: ViewerBuild = field(default_factory=ViewerBuild)
    """Where the OHIF build is (or why not yet)."""
    session_seconds: float = 8 * 3600.0
    """Lifetime of a login session (a working shift), then log in again."""
    max_failures: int = 5
    """Wrong passwords in a row that lock a user name."""
    lockout_seconds: float = 900.0
    """How long a locked name stays locked."""
    tls: bool = False
    """The server speaks TLS (the session cookie is then ``Secure``)."""
    kdf: dict[str, int] | None = None
    """scrypt parameters for new hashes (None: :mod:`..auth.users`' defaults)."""


def _function(method: Endpoint) -> Endpoint:
    """A plain function calling a bound method (declarations are set on functions)."""
    async def endpoint(request: Request) -> Response:
        return await method(request)
    return endpoint


def viewer_routes(archive: Archive, access: HttpAccess, settings: ViewerSettings,
                  dicomweb_path: str = "/dicom-web",
                  public_url: str | None = None) -> list[BaseRoute]:
    """The viewer's routes over ``archive``; ``access`` must have the session store;
    share links made on the admin page start with ``public_url`` (else the address
    the page was asked at)."""
    assert access.sessions is not None, "HttpAccess(sessions=...) reads the cookie"
    users = UserStore(archive.root, max_failures=settings.max_failures,
                      lockout_seconds=settings.lockout_seconds, kdf=settings.kdf)
    prefix = urlsplit(public_url).path.rstrip("/") if public_url else ""
    pages = Pages(archive, users, access.sessions, access.audit,
                  secure_cookie=lambda request: settings.tls or request.url.scheme == "https",
                  prefix=prefix)
    config_js = app_config(dicomweb_path, prefix)
    build = settings.build

    async def files(request: Request) -> Response:
        return viewer_files(build, request, request.path_params["path"], config_js, prefix)

    async def to_login_page(request: Request) -> Response:  # logged out already
        return RedirectResponse(prefix + LOGIN_PATH, 303)

    async def to_slash(request: Request) -> Response:
        return RedirectResponse(prefix + PUBLIC_PATH, 308)

    page = access.requires("read", unauthenticated=pages.to_login, audited=False,
                           one_study=NO_STUDY_DATA)
    shares = ShareLinks(access.tokens, access.sessions, access.audit, settings.tls, prefix)
    admin = AdminPage(archive, access.tokens, access.sessions, access.audit,
                      lambda request: public_url or str(request.base_url), prefix)
    admin_only = access.requires("admin", unauthenticated=pages.to_login,
                                 one_study=NO_STUDY_DATA)
    return [
        Route(PUBLIC_PATH.rstrip("/"), page(to_slash), methods=["GET"]),
        Route(PUBLIC_PATH + "{path:path}", page(files), methods=["GET"]),
        Route(LOGIN_PATH, public(_function(pages.login_page)), methods=["GET"]),
        Route(LOGIN_PATH, public(_function(pages.login)), methods=["POST"]),
        Route("/logout", access.requires("read", unauthenticated=to_login_page,
                                         one_study=NO_STUDY_DATA)(pages.logout),
              methods=["POST"]),
        Route(IID_PATH, access.requires("read", unauthenticated=pages.to_login)(
            pages.invoke_image_display), methods=["GET"]),
        Route(SHARE_PATH + "/{token}", public(_function(shares.__call__)), methods=["GET"]),
        Route(ADMIN_PATH, admin_only(admin.show), methods=["GET"]),
        Route(ADMIN_PATH + "/share", admin_only(admin.share), methods=["POST"]),
        Route(ADMIN_PATH + "/revoke", admin_only(admin.revoke), methods=["POST"]),
    ]

