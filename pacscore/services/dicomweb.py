"""DICOMweb front end (PS3.18): STOW-RS, QIDO-RS, WADO-RS and WADO-URI as an ASGI app.

Handlers translate requests into :class:`~pacscore.Archive` calls (in a thread pool)
and map errors to HTTP statuses through :data:`HTTP_STATUS`.  Every request needs a
bearer token with the scope of its method (401 without a valid token, 403 with too
little scope); every access is audited.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..archive import Archive
from ..errors import (
    ArchiveStorageError,
    ConflictError,
    InvalidDicomError,
    NotFoundError,
    PacsError,
    UnsupportedTransferSyntaxError,
)
from ..index import InstanceRecord
from ..kernels import window_to_uint8
from .metadata import SeriesMetadata
from .multipart import (
    MultipartError,
    TooLargeError,
    encode_related,
    parse_related,
    related_boundary,
    stream_related,
)
from .security import AuditLog
from .tokens import TokenStore

__all__ = ["HTTP_STATUS", "create_app"]

# One table: error class -> HTTP status (PS3.18 8.6 and 10.5.3).
HTTP_STATUS: dict[type[Exception], int] = {
    NotFoundError: 404,
    UnsupportedTransferSyntaxError: 406,
    ConflictError: 409,
    InvalidDicomError: 400,
    ArchiveStorageError: 507,
    MultipartError: 400,
    TooLargeError: 413,
    ValueError: 400,
}
_SCOPE_FOR_METHOD = {"GET": "read", "HEAD": "read", "POST": "write", "DELETE": "delete"}
_DICOM_JSON = "application/dicom+json"
# PS3.18 Table 8.7.3-5: media types of frames per transfer syntax.
_FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.202": "image/jphc", "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_LEVEL_UID = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID",
              "instance": "SOPInstanceUID"}


def _http_status(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def _json_attr(keyword: str, value: Any) -> tuple[str, dict[str, Any]] | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    vr = dictionary_VR(tag).split(" ")[0]
    entry: dict[str, Any] = {"vr": vr}
    if value not in (None, ""):
        values = str(value).split("\\") if isinstance(value, str) else [value]
        if vr == "PN":
            entry["Value"] = [{"Alphabetic": v} for v in values]
        elif vr in ("IS", "US", "UL", "SS", "SL"):
            entry["Value"] = [int(v) for v in values]
        else:
            entry["Value"] = values
    return f"{tag:08X}", entry


def _match_json(match: dict[str, Any], base: str, level: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kw, value in match.items():
        attr = _json_attr(kw, value)
        if attr:
            out[attr[0]] = attr[1]
    url = f"{base}/studies/{match.get('StudyInstanceUID')}"
    if level in ("series", "instance"):
        url += f"/series/{match.get('SeriesInstanceUID')}"
    if level == "instance":
        url += f"/instances/{match.get('SOPInstanceUID')}"
    out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


def _accepted_syntax(request: Request, default: str) -> str:
    """Transfer syntax asked for in Accept (``*`` or none: the stored one)."""
    accept = request.headers.get("accept", "")
    for item in accept.split(","):
        for param in item.split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "transfer-syntax":
                value = value.strip('"')
                return default if value == "*" else value
    return default


def _misplaced(rec: InstanceRecord, path: dict[str, str]) -> bool:
    """The path names the instance under a study or series it is not in."""
    return rec.study_uid != path["study"] or path.get("series", rec.series_uid) != \
        rec.series_uid


# DELETE .../studies/{study}[/series/{series}[/instances/{sop}]]: the most specific wins.
_DELETE_LEVELS = (("sop", "instance"), ("series", "series"), ("study", "study"))


class _Api:
    def __init__(self, archive: Archive, tokens: TokenStore, audit: AuditLog,
                 max_body: int, tmp_dir: Path):
        self.archive, self.tokens, self.audit = archive, tokens, audit
        self.max_body, self.tmp_dir = max_body, tmp_dir
        self.meta = SeriesMetadata(archive)

    # -- plumbing ---------------------------------------------------------------
    def guard(self, handler: Callable[..., Any]) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            needed = _SCOPE_FOR_METHOD.get(request.method, "admin")
            header = request.headers.get("authorization", "")
            token = header[7:].strip() if header.lower().startswith("bearer ") else ""
            scope = self.tokens.scope(token) if token else None
            host = request.client.host if request.client else "?"
            if scope is None:
                self.audit.record("authentication", action="E", outcome="minor",
                                  user="anonymous", host=host, interface="dicomweb",
                                  detail=f"{request.method} {request.url.path}: no valid token")
                return JSONResponse({"error": "a valid bearer token is required"}, 401,
                                    headers={"WWW-Authenticate": 'Bearer realm="pacscore"'})
            if not self.tokens.grants(scope, needed):
                self.audit.record("authentication", action="E", outcome="minor", user=scope,
                                  host=host, interface="dicomweb",
                                  detail=f"{request.method} {request.url.path}: needs {needed}")
                return JSONResponse({"error": f"this token lacks the {needed!r} scope"}, 403)
            try:
                response: Response = await handler(request)
            except (PacsError, MultipartError, TooLargeError, ValueError) as exc:
                text = exc.reason if isinstance(exc, PacsError) else str(exc)
                return JSONResponse({"error": text}, _http_status(exc))
            self.audit.record(
                {"GET": "accessed", "POST": "transferred", "DELETE": "deleted"}.get(
                    request.method, "accessed"),
                action={"GET": "R", "POST": "C", "DELETE": "D"}.get(request.method, "E"),
                outcome="success" if response.status_code < 400 else "minor",
                user=scope, host=host, interface="dicomweb",
                detail=f"{request.method} {request.url.path} -> {response.status_code}")
            return response

        return run

    def base(self, request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/dicom-web"

    # -- STOW-RS ----------------------------------------------------------------
    async def stow(self, request: Request) -> Response:
        declared = int(request.headers.get("content-length") or 0)
        if declared > self.max_body:
            raise TooLargeError(f"request body of {declared} bytes over {self.max_body}")
        boundary = related_boundary(request.headers.get("content-type", ""))
        parts = await parse_related(request.stream(), boundary, self.max_body, self.tmp_dir)
        study_filter = request.path_params.get("study")
        stored: list[Any] = []
        failed: list[tuple[str | None, int, str]] = []
        try:
            for part in parts:
                ctype = part.headers.get("content-type", "application/dicom").split(";")[0]
                if ctype.strip().lower() != "application/dicom":
                    failed.append((None, 0xC000, f"unsupported part type {ctype}"))
                    continue
                try:
                    result = await run_in_threadpool(self.archive.store, part.path,
                                                     source="STOW-RS part")
                except PacsError as exc:
                    code = 0xA700 if isinstance(exc, ArchiveStorageError) else 0xC000
                    failed.append((None, code, exc.reason))
                    continue
                if study_filter and result.study_uid != study_filter:
                    failed.append((result.sop_instance_uid, 0xC000,
                                   "instance belongs to another study than the URL names"))
                    continue
                stored.append(result)
        finally:
            for part in parts:
                part.path.unlink(missing_ok=True)
        body: dict[str, Any] = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": [{
                "00081150": {"vr": "UI", "Value": [r.sop_instance_uid]},
                "00081155": {"vr": "UI", "Value": [r.sop_instance_uid]},
                "00081190": {"vr": "UR", "Value": [
                    f"{self.base(request)}/studies/{r.study_uid}/series/{r.series_uid}"
                    f"/instances/{r.sop_instance_uid}"]},
            } for r in stored]}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": [{
                **({"00081155": {"vr": "UI", "Value": [uid]}} if uid else {}),
                "00081197": {"vr": "US", "Value": [code]},
                "00090010": {"vr": "LO", "Value": ["PACSCORE"]},
                "00091001": {"vr": "LT", "Value": [reason]},
            } for uid, code, reason in failed]}
        status = 200 if not failed else 202 if stored else 409
        return Response(json.dumps(body), status, media_type=_DICOM_JSON)

    # -- QIDO-RS ----------------------------------------------------------------
    async def qido(self, request: Request) -> Response:
        path = request.url.path
        level = ("instance" if path.endswith("/instances") else
                 "series" if path.endswith("/series") else "study")
        keys: dict[str, str] = {}
        limit, offset, include, fuzzy = None, 0, set(), False
        for key, value in request.query_params.multi_items():
            if key == "limit":
                limit = int(value)
            elif key == "offset":
                offset = int(value)
            elif key == "includefield":
                include.update(value.split(","))
            elif key == "fuzzymatching":
                fuzzy = value.strip().lower() == "true"
            else:
                keyword = key
                if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
                    from pydicom.datadict import keyword_for_tag

                    keyword = keyword_for_tag(int(key, 16)) or key
                keys[keyword] = value
        for name in ("study", "series"):
            if name in request.path_params:
                keys[_LEVEL_UID[name]] = request.path_params[name]
        matches = await run_in_threadpool(self.archive.query, level, keys, limit=limit,
                                          offset=offset, fuzzy=fuzzy)
        base = self.base(request)
        return Response(json.dumps([_match_json(m, base, level) for m in matches]),
                        200, media_type=_DICOM_JSON)

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
        first = await run_in_threadpool(self._part, request, sops[0])  # errors: a status

        def parts() -> Iterator[tuple[str, bytes]]:
            yield first
            for sop in sops[1:]:
                yield self._part(request, sop)

        # Streamed one instance at a time (from a worker thread): a whole study is
        # never built in memory, and the client starts receiving at once.
        boundary = uuid.uuid4().hex
        return StreamingResponse(stream_related(parts(), boundary), 200, media_type=(
            f'multipart/related; type="application/dicom"; boundary={boundary}'))

    def _part(self, request: Request, sop: str) -> tuple[str, bytes]:
        rec = self.archive.record(sop)
        ts = _accepted_syntax(request, rec.stored_syntax)
        choice = "stored" if ts == rec.stored_syntax else ts
        return f"application/dicom; transfer-syntax={ts}", self.archive.get(sop, choice)

    async def metadata(self, request: Request) -> Response:
        p = request.path_params
        await run_in_threadpool(self._scope_uids, request)  # 404 when nothing matches
        if "sop" in p:
            body = await run_in_threadpool(
                lambda: json.dumps([self.meta.instance(p["sop"])]).encode())
        elif "series" in p:
            body = await run_in_threadpool(self.meta.series, p["series"])
        else:
            body = await run_in_threadpool(self.meta.study, p["study"])
        return Response(self.meta.render(body, self.base(request)), 200,
                        media_type=_DICOM_JSON)

    async def frames(self, request: Request) -> Response:
        sop = request.path_params["sop"]
        try:
            numbers = [int(n) for n in request.path_params["frames"].split(",")]
        except ValueError as exc:
            raise ValueError("frame numbers must be integers separated by commas") from exc
        if any(n < 1 for n in numbers):
            raise ValueError("frame numbers start at 1")
        rec = await run_in_threadpool(self.archive.record, sop)
        if _misplaced(rec, request.path_params):
            raise NotFoundError("nothing matches the requested UIDs")
        wanted = _accepted_syntax(request, rec.stored_syntax)
        native = wanted in ("1.2.840.10008.1.2.1", "native") or ("octet-stream" in \
            request.headers.get("accept", "") and "transfer-syntax" not in \
            request.headers.get("accept", ""))
        ts = "native" if native else wanted
        data = await run_in_threadpool(self.archive.frames, sop, [n - 1 for n in numbers],
                                       "stored" if ts == rec.stored_syntax else ts)
        media = "application/octet-stream" if native else _FRAME_MEDIA.get(
            ts, "application/octet-stream")
        boundary = uuid.uuid4().hex
        label = "1.2.840.10008.1.2.1" if native else ts
        body = encode_related([(f"{media}; transfer-syntax={label}", d) for d in data],
                              boundary)
        return Response(body, 200, media_type=(
            f'multipart/related; type="{media}"; boundary={boundary}'))

    async def rendered(self, request: Request) -> Response:
        sop = request.path_params["sop"]
        await run_in_threadpool(self._scope_uids, request)  # 404 when misaddressed
        frame = int(request.path_params.get("frame", "1")) - 1
        thumbnail = request.url.path.endswith("/thumbnail")
        q = request.query_params

        def render() -> tuple[bytes, str]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(io.BytesIO(self.archive.header(sop)), force=True)
            pixels = self.archive.pixels(sop, frame)
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            if "window" in q:
                center, width = (float(v) for v in q["window"].split(",")[:2])
            elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
                wc, ww = ds.WindowCenter, ds.WindowWidth
                center = float(wc[0] if isinstance(wc, list | tuple) or (hasattr(wc, "__iter__")
                               and not isinstance(wc, str | float | int)) else wc)
                width = float(ww[0] if isinstance(ww, list | tuple) or (hasattr(ww, "__iter__")
                              and not isinstance(ww, str | float | int)) else ww)
            else:
                lo, hi = float(pixels.min()) * slope + intercept, \
                    float(pixels.max()) * slope + intercept
                center, width = (lo + hi) / 2, max(hi - lo, 1.0)
            if pixels.ndim == 3:  # colour: shown as stored (no VOI)
                image = pixels.astype(np.uint8) if pixels.dtype.itemsize == 1 else \
                    (pixels >> (pixels.dtype.itemsize * 8 - 8)).astype(np.uint8)
            else:
                invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
                image = window_to_uint8(pixels, slope, intercept, center, width, invert)
            size = (128, 128) if thumbnail else None
            if "viewport" in q:
                size = tuple(int(v) for v in q["viewport"].split(",")[:2])  # type: ignore
            if size:
                rows = max(1, min(size[1], image.shape[0] * 4))
                cols = max(1, min(size[0], image.shape[1] * 4))
                ri = (np.arange(rows) * image.shape[0] // rows)
                ci = (np.arange(cols) * image.shape[1] // cols)
                image = np.ascontiguousarray(image[ri][:, ci])
            accept = request.headers.get("accept", "image/jpeg")
            if "png" in accept:
                return bytes(imagecodecs.png_encode(image)), "image/png"
            return bytes(imagecodecs.jpeg8_encode(image, level=90)), "image/jpeg"

        data, media = await run_in_threadpool(render)
        return Response(data, 200, media_type=media)

    async def delete(self, request: Request) -> Response:
        p = request.path_params
        level, key = next((lvl, k) for k, lvl in _DELETE_LEVELS if k in p)
        uid = p[key]
        await run_in_threadpool(self._scope_uids, request)  # 404 when misaddressed
        removed = await run_in_threadpool(self.archive.delete, level, uid)
        return JSONResponse({"deleted_instances": removed})

    async def wado_uri(self, request: Request) -> Response:
        q = request.query_params
        if q.get("requestType") != "WADO" or "objectUID" not in q:
            raise ValueError("WADO-URI needs requestType=WADO and objectUID")
        ts = q.get("transferSyntax", "original")
        data = await run_in_threadpool(self.archive.get, q["objectUID"], ts)
        return Response(data, 200, media_type="application/dicom")


def create_app(archive: Archive, *, cors_origins: list[str] | None = None,
               max_body: int = 4 * 1024**3) -> Starlette:
    """The DICOMweb ASGI app over ``archive`` (routes under ``/dicom-web`` and ``/wado``)."""
    tmp_dir = Path(tempfile.mkdtemp(prefix="stow-", dir=archive.root))
    api = _Api(archive, TokenStore(archive.root), AuditLog(archive.root), max_body, tmp_dir)
    g = api.guard
    s, se, i = "/dicom-web/studies/{study}", "/series/{series}", "/instances/{sop}"
    routes = [
        Route("/dicom-web/studies", g(api.qido), methods=["GET"]),
        Route("/dicom-web/studies", g(api.stow), methods=["POST"]),
        Route("/dicom-web/series", g(api.qido), methods=["GET"]),
        Route("/dicom-web/instances", g(api.qido), methods=["GET"]),
        Route(s, g(api.retrieve), methods=["GET"]),
        Route(s, g(api.stow), methods=["POST"]),
        Route(s, g(api.delete), methods=["DELETE"]),
        Route(s + "/metadata", g(api.metadata), methods=["GET"]),
        Route(s + "/series", g(api.qido), methods=["GET"]),
        Route(s + "/instances", g(api.qido), methods=["GET"]),
        Route(s + se, g(api.retrieve), methods=["GET"]),
        Route(s + se, g(api.delete), methods=["DELETE"]),
        Route(s + se + "/metadata", g(api.metadata), methods=["GET"]),
        Route(s + se + "/instances", g(api.qido), methods=["GET"]),
        Route(s + se + i, g(api.retrieve), methods=["GET"]),
        Route(s + se + i, g(api.delete), methods=["DELETE"]),
        Route(s + se + i + "/metadata", g(api.metadata), methods=["GET"]),
        Route(s + se + i + "/frames/{frames}", g(api.frames), methods=["GET"]),
        Route(s + se + i + "/rendered", g(api.rendered), methods=["GET"]),
        Route(s + se + i + "/thumbnail", g(api.rendered), methods=["GET"]),
        Route(s + se + i + "/frames/{frame:int}/rendered", g(api.rendered), methods=["GET"]),
        Route("/wado", g(api.wado_uri), methods=["GET"]),
    ]
    middleware = [Middleware(CORSMiddleware, allow_origins=cors_origins,
                             allow_methods=["GET", "POST", "DELETE"],
                             allow_headers=["Authorization", "Content-Type", "Accept"])
                  ] if cors_origins else []
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        api.meta.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
