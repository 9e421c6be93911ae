"""Issue 15.2: access to the DICOMweb door is declared per route and denied by default.

Every route of the app the server builds (:func:`create_app`, enumerated from
``app.routes``, mounted apps included) is requested with each method it takes: without
a token it answers 401 with ``WWW-Authenticate``, with a token whose scope does not
cover the route 403, and its endpoint does not run (nothing is audited but the
refusal); ``/healthz`` alone answers without a token.  A route added without a
declared scope is refused when the app is built or started.  In process, over ASGI.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Message

from pacscore import Archive
from pacscore.services.auth.security import AuditLog
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.dicomweb.app import create_app

UIDS = {"study": "1.2.826.0.1.3680043.8.498.1", "series": "1.2.826.0.1.3680043.8.498.2",
        "sop": "1.2.826.0.1.3680043.8.498.3", "frames": "1", "frame": "1",
        "path": "7FE00010", "token": "pcs_000000000000_unknown"}
"""A syntactically valid value for each path parameter a route may have."""
SCOPE_OF = {"GET": "read", "HEAD": "read", "POST": "write", "DELETE": "delete"}
OTHER_SCOPE = {"write": "read", "delete": "write"}
"""For a route needing the key, a real scope that does not cover it."""
Answer = tuple[int, dict[str, str], bytes]


def _requests(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path with every parameter filled) of every route, mounts included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from _requests(list(route.routes), prefix + route.path)
            continue
        assert isinstance(route, Route), route
        names = re.findall(r"{(\w+)(?::\w+)?}", route.path)
        unknown = set(names) - set(UIDS)
        assert not unknown, f"{route.path}: add a value for {unknown} to UIDS"
        path = prefix + route.path_format.format(**{n: UIDS[n] for n in names})
        for method in sorted(route.methods or ()):
            yield method, path


def _ask(app: Starlette, asks: list[tuple[str, str, dict[str, str]]]) -> list[Answer]:
    """Each (method, path, headers) through the app, in one lifespan (as served)."""
    async def one(method: str, target: str, headers: dict[str, str]) -> Answer:
        path, _, query = target.partition("?")
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path,
                 "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
                 "headers": [(b"host", b"test")] + [
                     (k.lower().encode(), v.encode()) for k, v in headers.items()],
                 "client": ("127.0.0.1", 1), "server": ("test", 80)}
        out: dict[str, Any] = {"body": b""}
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
                out["headers"] = {k.decode().lower(): v.decode()
                                  for k, v in message["headers"]}
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        try:
            await app(scope, receive, send)
        except Exception as exc:
            # (starlette sent its 500 and re-raised for the server to log)
            out.setdefault("status", 500)
            out.setdefault("headers", {"x-raised": type(exc).__name__})
        return out["status"], out["headers"], out["body"]

    async def run() -> list[Answer]:
        async with app.router.lifespan_context(app):
            return [await one(*ask) for ask in asks]

    return asyncio.run(run())


def _token(archive: Archive, scope: str) -> str:
    """A token with ``scope``; ``none``: a token whose scope grants nothing (the only
    way to be refused a read: every real scope includes it), e.g. one written by a
    later release with a scope this one does not know."""
    store = TokenStore(archive.root)
    token = store.create("read" if scope == "none" else scope)
    if scope == "none":
        data = json.loads(store.path.read_text())
        data[token.split("_")[1]]["scope"] = "none"
        store.path.write_text(json.dumps(data))
    return token


def _audit(archive: Archive) -> list[dict[str, Any]]:
    path = archive.root / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() \
        else []


@pytest.fixture()
def tokens(archive: Archive) -> dict[str, str]:
    return {scope: _token(archive, scope)
            for scope in ("none", "read", "write", "delete", "admin")}


def test_every_route_refuses_a_missing_and_an_insufficient_token(
        archive: Archive, tokens: dict[str, str]) -> None:
    app = create_app(archive)
    asks = list(_requests(list(app.routes)))
    assert len(asks) > 40 and ("GET", "/healthz") in asks and ("HEAD", "/healthz") in asks
    json_accept = {"Accept": "application/dicom+json"}
    plan: list[tuple[str, str, dict[str, str]]] = []
    for method, path in asks:
        needed = SCOPE_OF[method]
        plan.append((method, path, json_accept))  # no token
        plan.append((method, path, {**json_accept, "Authorization": "Bearer pcs_a_b"}))
        weaker = tokens[OTHER_SCOPE.get(needed, "none")]
        plan.append((method, path, {**json_accept, "Authorization": f"Bearer {weaker}"}))
    answers = _ask(app, plan)
    open_routes = set()
    for i, (method, path) in enumerate(asks):
        missing, unknown, weak = answers[3 * i: 3 * i + 3]
        if missing[0] != 401:
            open_routes.add(path)
            continue
        for status, headers, body in (missing, unknown):
            assert status == 401, (method, path, status)
            assert headers["www-authenticate"] == 'Bearer realm="pacscore"', (method, path)
            assert "bearer token" in headers["warning"]
            if method != "HEAD":
                assert json.loads(body)["status"] == 401
        assert "no bearer token" in missing[1]["warning"]
        assert "unknown or revoked" in unknown[1]["warning"]
        status, headers, body = weak
        assert status == 403, (method, path, status)
        assert f"{method} needs the {SCOPE_OF[method]!r} scope" in headers["warning"]
        assert "www-authenticate" not in headers
    assert open_routes == {"/healthz"}
    # Nothing ran: every audit line is a refusal (User Authentication, PS3.15 A.5.3.11).
    entries = _audit(archive)
    assert len(entries) == 3 * (len(asks) - 2)
    assert {e["event_id"]["code"] for e in entries} == {"110114"}


def test_healthz_answers_anyone_and_tells_nothing(archive: Archive) -> None:
    app = create_app(archive)
    answers = _ask(app, [("GET", "/healthz", {}),
                         ("GET", "/healthz", {"Authorization": "Bearer pcs_revoked_x"})])
    assert [(s, b) for s, _, b in answers] == [(200, b"ok"), (200, b"ok")]
    assert _audit(archive) == []


def test_a_sufficient_token_reaches_every_route(archive: Archive,
                                                 tokens: dict[str, str]) -> None:
    """The scope a route declares is the one its method needed before (read for
    GET/HEAD, write for POST, delete for DELETE): the right token is never refused,
    and each admitted request is audited once, with its status."""
    app = create_app(archive)
    asks = [(m, p) for m, p in _requests(list(app.routes)) if p != "/healthz"]
    answers = _ask(app, [(m, p, {"Authorization": f"Bearer {tokens[SCOPE_OF[m]]}"})
                         for m, p in asks])
    for (method, path), (status, _, _) in zip(asks, answers, strict=True):
        assert status not in (401, 403), (method, path, status)
    entries = _audit(archive)
    assert len(entries) == len(asks)
    assert all(e["user"].startswith("token ") for e in entries)
    assert [e["detail"].split(" -> ")[1][:3] for e in entries] == [
        str(s) for s, _, _ in answers]


def test_a_route_without_a_declared_scope_is_refused(archive: Archive) -> None:
    """Fails closed: an endpoint that declares no access is not served, whether it is
    added to the app after it was built (the app does not start) or built into it."""
    from pacscore.services.auth.access import AccessUndeclaredError, HttpAccess, check_routes

    async def forgot(request: Request) -> Response:
        return PlainTextResponse("secret")

    app = create_app(archive)
    app.add_route("/dicom-web/forgotten/{study}", forgot, methods=["GET"])
    with pytest.raises(AccessUndeclaredError, match="/dicom-web/forgotten"):
        _ask(app, [("GET", f"/dicom-web/forgotten/{UIDS['study']}", {})])
    with pytest.raises(AccessUndeclaredError, match="/sub/x"):
        check_routes([Mount("/sub", routes=[Route("/x", forgot)])])
    with pytest.raises(AccessUndeclaredError, match="/raw"):
        check_routes([Mount("/raw", app=PlainTextResponse("an ASGI app of its own"))])
    access = HttpAccess(TokenStore(archive.root), AuditLog(archive.root))
    check_routes([Route("/x", access.requires("read")(forgot))])  # declared: accepted
    with pytest.raises(AccessUndeclaredError, match="unknown scope"):
        access.requires("reed")


def test_cors_preflight_needs_no_token(archive: Archive) -> None:
    """A browser's preflight (OPTIONS) carries no credentials: CORS answers it before
    any token is looked at; the actual request still needs one."""
    app = create_app(archive, cors_origins=["https://viewer.example"])
    preflight = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    (status, headers, _), (refused, refused_headers, _) = _ask(app, [
        ("OPTIONS", "/dicom-web/studies", preflight),
        ("GET", "/dicom-web/studies", {"Origin": "https://viewer.example"})])
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://viewer.example"
    assert refused == 401
    assert refused_headers["access-control-allow-origin"] == "https://viewer.example"


def test_errors_map_through_the_one_table() -> None:
    """The DICOMweb and gRPC doors take their statuses from one table."""
    import grpc

    from pacscore.errors import NotFoundError, PacsError, UndecodablePixelDataError
    from pacscore.services.auth.access import ERROR_STATUS, grpc_status_name, http_status
    from pacscore.services.dicomweb.app import HTTP_STATUS
    from pacscore.services.grpc.server import GRPC_STATUS

    assert {cls: s.http for cls, s in ERROR_STATUS.items()} == HTTP_STATUS
    assert {cls: grpc.StatusCode[s.grpc] for cls, s in ERROR_STATUS.items()} == GRPC_STATUS
    assert (http_status(NotFoundError("x")), grpc_status_name(NotFoundError("x"))) == \
        (404, "NOT_FOUND")
    # The nearest class counts; outside the table: a failure of the server.
    assert http_status(UndecodablePixelDataError("x")) == 406
    assert (http_status(PacsError("x")), grpc_status_name(ValueError("x"))) == \
        (500, "INTERNAL")


def test_bearer_token_parsing() -> None:
    from pacscore.services.auth.access import bearer_token

    assert bearer_token("Bearer pcs_a_b") == "pcs_a_b"
    assert bearer_token("bearer   pcs_a_b ") == "pcs_a_b"
    assert bearer_token("Basic dXNlcjpwdw==") == ""
    assert bearer_token(None) == ""
    assert bearer_token("Bearerpcs_a_b") == ""


def test_refused_and_admitted_requests_are_audited(archive: Archive,
                                                   tokens: dict[str, str]) -> None:
    app = create_app(archive)
    study = f"/dicom-web/studies/{UIDS['study']}"
    _ask(app, [("GET", study, {}),
               ("DELETE", study, {"Authorization": f"Bearer {tokens['read']}"}),
               ("GET", f"/dicom-web/studies?StudyInstanceUID={UIDS['study']}",
                {"Authorization": f"Bearer {tokens['read']}"})])
    missing, weak, query = _audit(archive)
    assert (missing["event_id"]["code"], missing["user"], missing["objects"]) == \
        ("110114", "anonymous", [UIDS["study"]])
    assert missing["detail"].startswith(f"GET {study}: no bearer token")
    assert (weak["event_id"]["code"], weak["outcome"]) == ("110114", 4)
    assert weak["detail"] == (f"DELETE {study}: DELETE needs the 'delete' scope; this "
                              f"token has 'read'")
    assert weak["user"] == query["user"] and weak["user"].startswith("token ")
    assert (query["event_id"]["code"], query["action"], query["outcome"]) == \
        ("110112", "E", 0)
    assert query["detail"] == "GET /dicom-web/studies -> 200"

