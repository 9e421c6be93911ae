"""DICOMweb front end (PS3.18): STOW-RS, QIDO-RS, WADO-RS and WADO-URI as an ASGI app.

Handlers translate requests into :class:`~pacscore.Archive` calls (in a thread pool);
their errors become HTTP statuses through the exception handlers and the table of
:mod:`..auth.access` (:data:`HTTP_STATUS`).  Every route declares the scope its method needs
(:meth:`.access.HttpAccess.requires`; a route without one is refused when the app is
built or started): 401 without a valid token, 403 with too little scope, the reason in
a ``Warning`` header and a JSON body; every access is audited with the UIDs it names.
``/healthz`` alone is declared public, and says nothing but ``ok``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ...archive import Archive
from ...dicom.syntaxes import EXPLICIT_LE
from ...errors import (
    InvalidRequestError,
    NotFoundError,
    PacsError,
    RenderError,
    UnsupportedTransferSyntaxError,
)
from ...index import InstanceRecord
from ...metadata import SeriesMetadata
from ...render import Rendering, RenderOptions, display_order, render_frame
from ..auth.access import (
    EXCEPTION_HANDLERS,
    HTTP_STATUS,
    STUDY_FILTERED,
    HttpAccess,
    bound_study,
    check_routes,
    public,
)
from ..auth.security import AuditLog
from ..auth.tokens import TokenStore
from .answers import healthz, kept_as_stored, warning_left_out, warning_text
from .bulkdata import BulkData
from .compression import REVALIDATE, JsonGzip, metadata_etag
from .media import (
    frame_choices,
    render_options,
    rendered_media,
    wado_render_options,
)
from .multipart import encode_related, stream_related
from .qido import DICOM_JSON, Qido
from .stow import Stow
from .workflow import WorkflowStudies

if TYPE_CHECKING:
    from ..viewer.routes import ViewerSettings

__all__ = ["HTTP_STATUS", "create_app"]

# A transcoded WADO-RS answer is produced before its status line (200, or 206 when
# instances are left out, PS3.18 10.4.3): in memory up to this size, then in a file.
_SPOOL_IN_MEMORY = 32 * 1024**2
_SPOOL_READ = 1 << 21
log = logging.getLogger(__name__)


def _asked_syntax(request: Request) -> str | None:
    """Transfer syntax asked for in Accept: a UID, ``*`` (any: the stored one), or None
    when Accept names none (the default, Explicit VR Little Endian: PS3.18 8.7.3.4)."""
    accept = request.headers.get("accept", "")
    for item in accept.split(","):
        for param in item.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "transfer-syntax":
                return value.strip().strip('"')
    return None


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, PacsError) else str(exc) or type(exc).__name__


def _produced(produce: Callable[[str], tuple[str, bytes]], sops: Iterable[str],
              left_out: list[str]) -> Iterator[tuple[str, bytes]]:
    """The part of each instance that ``produce`` can make; each one it cannot is
    logged, named with its reason in ``left_out``, and skipped, so that a multipart
    body is always whole (closing boundary included) and never cut off mid-way."""
    for sop in sops:
        try:
            part = produce(sop)
        except PacsError as exc:
            left_out.append(f"{sop}: {_reason(exc)}")
            log.warning("WADO-RS: instance %s left out: %s", sop, _reason(exc))
            continue
        except Exception as exc:  # a bug: still a whole answer of the others
            left_out.append(f"{sop}: internal error ({type(exc).__name__}, logged)")
            log.exception("WADO-RS: instance %s left out", sop)
            continue
        yield part


def _misplaced(rec: InstanceRecord, path: dict[str, str]) -> bool:
    """The path names the instance under a study or series it is not in."""
    return rec.study_uid != path["study"] or path.get("series", rec.series_uid) != \
        rec.series_uid


# DELETE .../studies/{study}[/series/{series}[/instances/{sop}]]: the most specific wins.
_DELETE_LEVELS = (("sop", "instance"), ("series", "series"), ("study", "study"))


class _Api:
    def __init__(self, archive: Archive, tmp_dir: Path, public_url: str | None = None):
        self.archive, self.tmp_dir = archive, tmp_dir
        self.public_url = public_url.rstrip("/") if public_url else None
        self.meta = SeriesMetadata(archive)

    def base(self, request: Request) -> str:
        """The absolute URL of ``/dicom-web`` that the answer's URLs start with (Retrieve
        URLs, BulkDataURIs): the configured public URL (behind a reverse proxy), else
        the request's scheme, host and port.  A Host header without a port (as
        dicomweb-client sends it) means the port this server listens on, not 80."""
        if self.public_url:
            return self.public_url + "/dicom-web"
        url = request.base_url
        server = request.scope.get("server")
        if url.port is None and server and server[1] is not None and \
                server[1] != {"http": 80, "https": 443}.get(url.scheme):
            url = url.replace(port=int(server[1]))
        return str(url).rstrip("/") + "/dicom-web"

    # -- WADO-RS ----------------------------------------------------------------
    def _scope_uids(self, request: Request) -> list[str]:
        """SOP Instance UIDs the path names; 404 unless every UID in the path is where
        the path says (a series of another study, an instance of another series)."""
        p = request.path_params
        if "sop" in p:
            sops = self.archive.instances("instance", p["sop"])
        elif "series" in p:
            sops = self.archive.instances("series", p["series"])
        else:
            sops = self.archive.instances("study", p["study"])
        if sops and _misplaced(self.archive.record(sops[0]), p):
            sops = []
        if not sops:
            raise NotFoundError("nothing matches the requested UIDs")
        return sops

    async def retrieve(self, request: Request) -> Response:
        sops = await run_in_threadpool(self._scope_uids, request)
        boundary = uuid.uuid4().hex
        media = f'multipart/related; type="application/dicom"; boundary={boundary}'
        asked = _asked_syntax(request)
        if asked not in (None, "*") and not await run_in_threadpool(self._all_stored_as,
                                                                    sops, asked):
            # A transcode can fail for one instance (YBR_FULL_422 to JPEG-LS): the
            # status depends on every instance, so the answer is made before it.
            spool, left_out = await run_in_threadpool(self._spool, request, sops,
                                                      boundary)
            return StreamingResponse(
                _read_spool(spool), 206 if left_out else 200, media_type=media,
                headers={"Warning": warning_left_out(left_out, len(sops))} if left_out
                else None)
        first = await run_in_threadpool(self._part, request, sops[0])  # errors: a status

        def parts() -> Iterator[tuple[str, bytes]]:
            yield first
            yield from _produced(lambda sop: self._part(request, sop), sops[1:], [])

        # Passthrough (a read of what is stored) streamed one instance at a time (from
        # a worker thread): a whole study is never built in memory, and the client
        # starts receiving at once.  An instance that still fails (deleted meanwhile)
        # is logged and left out; the body stays whole.
        return StreamingResponse(stream_related(parts(), boundary), 200, media_type=media)

    def _all_stored_as(self, sops: list[str], ts: str) -> bool:
        return all(self.archive.record(sop).stored_syntax == ts for sop in sops)

    def _spool(self, request: Request, sops: list[str], boundary: str
               ) -> tuple[IO[bytes], list[str]]:
        """The multipart body of every instance that can be sent as asked, each one
        made once, in memory up to :data:`_SPOOL_IN_MEMORY` and in a file (unlinked at
        once) beyond it; and the instances left out, each with its reason.  Nothing at
        all: :class:`UnsupportedTransferSyntaxError` (406)."""
        left_out: list[str] = []
        # Handed on open to the response, which closes it once sent.
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY,  # noqa: SIM115
                                              dir=str(self.tmp_dir))
        try:
            parts = _produced(lambda sop: self._part(request, sop), sops, left_out)
            for chunk in stream_related(parts, boundary):
                spool.write(chunk)
            if len(left_out) == len(sops):
                raise UnsupportedTransferSyntaxError(
                    f"none of the {len(sops)} instances can be sent as "
                    f"{_asked_syntax(request)}: {'; '.join(left_out)}; ask for "
                    f"transfer-syntax=* (as stored) or 1.2.840.10008.1.2.1 (uncompressed)")
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool, left_out

    def _part(self, request: Request, sop: str) -> tuple[str, bytes]:
        rec = self.archive.record(sop)
        asked = _asked_syntax(request)
        if asked is None:
            ts, data = self._default_syntax(rec)
            return f"application/dicom; transfer-syntax={ts}", data
        ts = rec.stored_syntax if asked == "*" else asked
        choice = "stored" if ts == rec.stored_syntax else ts
        return f"application/dicom; transfer-syntax={ts}", self.archive.get(sop, choice)

    def _default_syntax(self, rec: InstanceRecord) -> tuple[str, bytes]:
        """An instance asked for without a transfer syntax (WADO-RS, WADO-URI): in
        Explicit VR Little Endian, the default of PS3.18 8.7.3.4 (9.4.2.4 for
        WADO-URI), unless it may stay in its stored syntax
        (:func:`.answers.kept_as_stored`).  One that this archive cannot
        convert (a data set without pixel data in another syntax, pixel data it cannot
        decode) goes out as stored rather than not at all, logged: every instance asked
        for is answered."""
        sop = rec.sop_instance_uid
        why = kept_as_stored(rec)
        if why is None:
            try:
                return EXPLICIT_LE, self.archive.get(
                    sop, "stored" if rec.stored_syntax == EXPLICIT_LE else EXPLICIT_LE)
            except NotFoundError:
                raise
            except Exception as exc:  # a conversion this archive cannot make
                why = f"it cannot be made in Explicit VR Little Endian: {_reason(exc)}"
                log.warning("instance %s sent as stored (%s): %s", sop, rec.stored_syntax,
                            why, exc_info=not isinstance(exc, PacsError))
        else:
            log.info("instance %s sent as stored (%s): %s", sop, rec.stored_syntax, why)
        return rec.stored_syntax, self.archive.get(sop, "stored")

    async def metadata(self, request: Request) -> Response:
        p = request.path_params
        sops = await run_in_threadpool(self._scope_uids, request)  # 404: nothing matches
        etag = await run_in_threadpool(metadata_etag, self.archive, p, self.base(request))
        cache = {"ETag": etag, "Cache-Control": REVALIDATE} if etag else {}
        if etag and etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=cache)  # RFC 9110 13.1.2
        if "sop" in p:
            body = await run_in_threadpool(
                lambda: json.dumps([self.meta.instance(p["sop"])]).encode())
        elif "series" in p:
            body = await run_in_threadpool(self.meta.series, p["series"])
        else:
            body = await run_in_threadpool(self.meta.study, p["study"])
        # What the stored headers hold is always answered; what could not be converted
        # is named (the elements went out as received, VR UN).
        problems = self.meta.problems(sops)
        headers = {"Warning": warning_text(
            f"{len(problems)} of {len(sops)} instances have values that are not valid "
            f"for their VR: " + " | ".join(problems))} if problems else None
        return Response(self.meta.render(body, self.base(request)), 200,
                        media_type=DICOM_JSON, headers={**cache, **(headers or {})})

    async def frames(self, request: Request) -> Response:
        sop = request.path_params["sop"]
        try:
            numbers = [int(n) for n in request.path_params["frames"].split(",")]
        except ValueError as exc:
            raise InvalidRequestError("frame numbers must be integers separated by "
                                      "commas") from exc
        rec = await run_in_threadpool(self.archive.record, sop)  # the one index read
        if _misplaced(rec, request.path_params):
            raise NotFoundError("nothing matches the requested UIDs")
        accept = request.headers.get("accept", "")
        choices, refused = frame_choices(accept, rec.stored_syntax)
        for choice in choices:  # the client's order of preference; 406 when none works
            try:  # (a frame number it has not: NoSuchFrameError, answered 400)
                data = await run_in_threadpool(self.archive.frames, sop,
                                               [n - 1 for n in numbers], choice.source,
                                               record=rec)
            except UnsupportedTransferSyntaxError as exc:
                refused.append(f"{choice.media} in {choice.syntax} ({exc.reason})")
                continue
            boundary = uuid.uuid4().hex
            body = encode_related(
                [(f"{choice.media}; transfer-syntax={choice.syntax}", d) for d in data],
                boundary)
            return Response(body, 200, media_type=(
                f'multipart/related; type="{choice.media}"; boundary={boundary}'))
        raise UnsupportedTransferSyntaxError(
            f"frames of instance {sop} (stored as {rec.stored_syntax}) cannot be sent as "
            f"{'; '.join(refused) or accept!r}; ask for application/octet-stream "
            f"(uncompressed) or transfer-syntax=* (as stored)")

    def _single_frame_image(self, sop: str) -> bool:
        return self.archive.frame_count(sop) == 1

    # -- rendered (PS3.18 10.4.1.1.3, 8.3.5.1; WADO-URI 9.5) ------------------------
    async def _render(self, sop: str, frame: int, options: RenderOptions) -> bytes:
        """Frame ``frame`` (1-based) of ``sop`` rendered, in a worker thread.  Errors
        of the archive and of the request (PacsError: a frame it does not have,
        InvalidRequestError) get their status from :data:`HTTP_STATUS`; anything else is logged with
        its traceback and answered 500 with a short reason."""
        try:
            return await run_in_threadpool(render_frame, self.archive, sop, frame - 1,
                                           options)
        except PacsError:
            raise
        except Exception as exc:
            log.exception("rendering instance %s frame %d failed", sop, frame)
            raise RenderError(f"instance {sop} frame {frame} could not be rendered: "
                              f"internal error ({type(exc).__name__}), logged") from exc

    async def rendered(self, request: Request) -> Response:
        sop = request.path_params["sop"]
        await run_in_threadpool(self._scope_uids, request)  # 404 when misaddressed
        frame = int(request.path_params.get("frame", "1"))
        options = render_options(request.headers.get("accept", ""), request.query_params,
                                 f"instance {sop}",
                                 thumbnail=request.url.path.endswith("/thumbnail"))
        data = await self._render(sop, frame, options)
        return Response(data, 200, media_type=options.media)

    async def rendered_many(self, request: Request) -> Response:
        """A study's or series' rendered resource (PS3.18 10.4.1.1.3, 10.4.3.3: "one
        or more representations"): every frame of every instance, in display order
        (series number, instance number), as parts of a multipart/related body of the
        rendered media type.  Made before the status line: 206 with a Warning naming
        each instance left out (no pixel data, undecodable) and why; when none renders,
        the first one's error."""
        sops = await run_in_threadpool(self._scope_uids, request)
        level = "series" if "series" in request.path_params else "study"
        options = render_options(request.headers.get("accept", ""), request.query_params,
                                 f"this {level}")
        boundary = uuid.uuid4().hex
        spool, left_out = await run_in_threadpool(self._render_spool, sops, options,
                                                  boundary)
        return StreamingResponse(
            _read_spool(spool), 206 if left_out else 200,
            media_type=f'multipart/related; type="{options.media}"; boundary={boundary}',
            headers={"Warning": warning_left_out(left_out, len(sops))} if left_out else None)

    def _render_spool(self, sops: list[str], options: RenderOptions, boundary: str
                      ) -> tuple[IO[bytes], list[str]]:
        left_out: list[str] = []
        errors: list[Exception] = []
        made = 0

        def parts() -> Iterator[tuple[str, bytes]]:
            nonlocal made
            for sop in display_order(self.archive, sops):
                done = 0
                try:
                    rendering = Rendering(self.archive, sop)
                    for done in range(rendering.frames):
                        yield options.media, rendering.frame(done, options)
                        made += 1
                except PacsError as exc:
                    errors.append(exc)
                    left_out.append(f"{sop}{f' from frame {done + 1}' if done else ''}: "
                                    f"{_reason(exc)}")
                except Exception as exc:  # a bug: logged, the others still rendered
                    log.exception("rendering instance %s left out", sop)
                    errors.append(exc)
                    left_out.append(f"{sop}: internal error ({type(exc).__name__}), logged")

        # Handed on open to the response, which closes it once sent.
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY,  # noqa: SIM115
                                              dir=str(self.tmp_dir))
        try:
            for chunk in stream_related(parts(), boundary):
                spool.write(chunk)
            if not made:
                first = errors[0]
                reason = (f"none of the {len(sops)} instances can be rendered as "
                          f"{options.media}: {'; '.join(left_out)}")
                if isinstance(first, PacsError):
                    raise type(first)(reason, hint=first.hint)
                raise RenderError(reason)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool, left_out

    async def delete(self, request: Request) -> Response:
        p = request.path_params
        level, key = next((lvl, k) for k, lvl in _DELETE_LEVELS if k in p)
        uid = p[key]
        await run_in_threadpool(self._scope_uids, request)  # 404 when misaddressed
        removed = await run_in_threadpool(self.archive.delete, level, uid)
        return JSONResponse({"deleted_instances": removed})

    async def wado_uri(self, request: Request) -> Response:
        """PS3.18 9 (WADO-URI): the object as application/dicom, or one frame rendered
        (image/jpeg by default for single-frame images, PS3.18 9.1.2.1)."""
        q = request.query_params
        if q.get("requestType") != "WADO" or "objectUID" not in q:
            raise InvalidRequestError("WADO-URI needs requestType=WADO, studyUID, "
                                      "seriesUID and objectUID")
        sop = q["objectUID"]
        rec = await run_in_threadpool(self.archive.record, sop)
        shared = bound_study(request)
        if shared is not None and rec.study_uid != shared:  # a share link: its study only
            raise NotFoundError(f"instance {sop} is not in the shared study")
        for param, have in (("studyUID", rec.study_uid), ("seriesUID", rec.series_uid)):
            if param in q and q[param] != have:
                raise NotFoundError(f"instance {sop} is not in {param} {q[param]}")
        asked = [m for m in q.get("contentType", "").split(",") if m.strip()]
        if not asked:
            single = await run_in_threadpool(self._single_frame_image, sop)
            asked = ["image/jpeg" if single else "application/dicom"]
        if any(m.strip().lower() == "application/dicom" for m in asked):
            if "transferSyntax" in q:
                data = await run_in_threadpool(self.archive.get, sop, q["transferSyntax"])
            else:  # PS3.18 9.4.2.4: Explicit VR Little Endian (8.7.3.4)
                _, data = await run_in_threadpool(self._default_syntax, rec)
            return Response(data, 200, media_type="application/dicom")
        media = rendered_media([m for m in asked if m.strip() not in ("*/*", "")]) \
            or rendered_media([m for m in asked if m.strip() == "*/*"])
        if media is None:
            raise UnsupportedTransferSyntaxError(
                f"cannot send instance {sop} as {', '.join(asked)}: use contentType="
                f"application/dicom, image/jpeg or image/png")
        options, frame = wado_render_options(media, q)
        data = await self._render(sop, frame, options)
        return Response(data, 200, media_type=media)


def _read_spool(spool: IO[bytes]) -> Iterator[bytes]:
    with spool:
        while chunk := spool.read(_SPOOL_READ):
            yield chunk


def create_app(archive: Archive, *, cors_origins: list[str] | None = None,
               max_body: int = 4 * 1024**3, idle_timeout: float = 60.0,
               public_url: str | None = None, viewer: ViewerSettings | None = None
               ) -> Starlette:
    """The DICOMweb ASGI app over ``archive`` (routes under ``/dicom-web`` and ``/wado``,
    and ``/healthz``); a request body that pauses longer than ``idle_timeout`` seconds is
    answered 408.  URLs in answers start with ``public_url`` when given (the address
    clients reach this server at, e.g. behind a reverse proxy), else with the request's
    own scheme, host and port.  Request bodies and transcoded answers wait in a folder
    of :attr:`Archive.tmp_dir`, which the archive empties when it is opened again.
    ``viewer``: also serve the OHIF viewer, its login (session cookies accepted beside
    bearer tokens) and IHE Invoke Image Display (:mod:`..viewer`)."""
    tmp_dir = Path(tempfile.mkdtemp(prefix="http-", dir=archive.tmp_dir))
    api = _Api(archive, tmp_dir, public_url)
    sessions = None
    if viewer is not None:
        from ..auth.sessions import SessionStore
        sessions = SessionStore(archive.root, viewer.session_seconds)
    access = HttpAccess(TokenStore(archive.root), AuditLog(archive.root), sessions=sessions)
    # Each endpoint declares the scope its method needs (GET read, POST write, DELETE
    # delete); one that declares none is refused by check_routes (when built, started).
    read, write, delete = (access.requires(scope) for scope in ("read", "write", "delete"))
    # A share link (one study): these answer about its study only, or store into it.
    query = access.requires("read", one_study=STUDY_FILTERED)(Qido(archive, api.base))
    find_instance = access.requires("read", one_study=STUDY_FILTERED)(api.wado_uri)
    stow = Stow(archive, max_body, tmp_dir, idle_timeout, api.base)
    store = access.requires("write", one_study=STUDY_FILTERED)(stow)
    s, se, i = "/dicom-web/studies/{study}", "/series/{series}", "/instances/{sop}"
    routes: list[BaseRoute] = [
        Route("/dicom-web/studies", query, methods=["GET"]),
        Route("/dicom-web/studies", store, methods=["POST"]),
        Route("/dicom-web/series", query, methods=["GET"]),
        Route("/dicom-web/instances", query, methods=["GET"]),
        Route(s, read(api.retrieve), methods=["GET"]),
        Route(s, write(stow), methods=["POST"]),
        Route(s, delete(api.delete), methods=["DELETE"]),
        Route(s + "/metadata", read(api.metadata), methods=["GET"]),
        Route(s + "/rendered", read(api.rendered_many), methods=["GET"]),
        Route(s + "/series", query, methods=["GET"]),
        Route(s + "/instances", query, methods=["GET"]),
        Route(s + se, read(api.retrieve), methods=["GET"]),
        Route(s + se, delete(api.delete), methods=["DELETE"]),
        Route(s + se + "/metadata", read(api.metadata), methods=["GET"]),
        Route(s + se + "/rendered", read(api.rendered_many), methods=["GET"]),
        Route(s + se + "/instances", query, methods=["GET"]),
        Route(s + se + i, read(api.retrieve), methods=["GET"]),
        Route(s + se + i, delete(api.delete), methods=["DELETE"]),
        Route(s + se + i + "/metadata", read(api.metadata), methods=["GET"]),
        Route(s + se + i + "/frames/{frames}", read(api.frames), methods=["GET"]),
        Route(s + se + i + "/bulk/{path:path}", read(BulkData(archive)), methods=["GET"]),
        Route(s + se + i + "/rendered", read(api.rendered), methods=["GET"]),
        Route(s + se + i + "/thumbnail", read(api.rendered), methods=["GET"]),
        Route(s + se + i + "/frames/{frame:int}/rendered", read(api.rendered),
              methods=["GET"]),
        Route("/wado", find_instance, methods=["GET"]),
        Route("/workflow/studies", read(WorkflowStudies(archive)), methods=["GET"]),
        Route("/healthz", public(healthz), methods=["GET"]),  # no token (see healthz)
    ]
    if viewer is not None:
        from ..viewer.routes import viewer_routes
        routes += viewer_routes(archive, access, viewer, public_url=public_url)
    check_routes(routes)
    # CORS outermost: a preflight (OPTIONS) is answered before any token is looked at.
    middleware = [Middleware(CORSMiddleware, allow_origins=cors_origins,
                             allow_methods=["GET", "POST", "DELETE"],
                             allow_headers=["Authorization", "Content-Type", "Accept"])
                  ] if cors_origins else []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            check_routes(app.routes)  # a route added after create_app: not started
            yield
        finally:
            api.meta.close()
            shutil.rmtree(tmp_dir, ignore_errors=True)

    middleware.append(Middleware(JsonGzip))  # QIDO-RS and metadata (compression.py)
    return Starlette(routes=routes, middleware=middleware + access.middleware(),
                     exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
