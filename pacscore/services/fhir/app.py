"""The FHIR R4 read API (issue 16.6) as starlette routes: ``metadata``, read and search
of ImagingStudy, Patient, ServiceRequest and Endpoint, answered in
``application/fhir+json``.

Mounted by ``pacscore serve`` under ``/fhir`` on the DICOMweb port, inside the
DICOMweb app's middleware: the same bearer tokens, each route declared with the
``read`` scope (:meth:`..auth.access.HttpAccess.requires`), refusals audited.  Every
error is an OperationOutcome with its HTTP status (:data:`..auth.access.ERROR_STATUS`:
404 unknown id, 400 bad or unknown search parameter), 401/403 included.  Requests
become :class:`~pacscore.Archive` queries and worklist reads (in a thread pool).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from ... import __version__
from ...archive import Archive
from ...errors import NotFoundError, PacsError, UnsupportedTransferSyntaxError
from ...workflow.items import summary
from ...workflow.worklist import WorklistItem
from ..auth.access import HttpAccess, http_status
from ..auth.security import AuditLog
from ..auth.tokens import TokenStore
from ..dicomweb.media import parse_accept
from . import resources as r
from .ids import DICOMWEB_ENDPOINT, PatientKey, is_fhir_id, is_hashed, study_id, study_uid
from .search import PARAMS, Criteria, Search, parse_search

__all__ = ["FHIR_JSON", "create_fhir_app"]

FHIR_JSON = "application/fhir+json"
"""The media type of every answer (R4 http.html#mime-type)."""
FHIR_VERSION = "4.0.1"
log = logging.getLogger(__name__)
Json = dict[str, Any]
Endpoint = Callable[[Request], Awaitable[Response]]
# _format / Accept values answered in JSON (R4 http.html#mime-type); XML is not made.
_JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json",
                           "*/*", "application/*"})


def _answer(body: Json, status: int = 200, request: Request | None = None,
            headers: dict[str, str] | None = None) -> Response:
    pretty = request is not None and request.query_params.get("_pretty") == "true"
    text = json.dumps(body, indent=2 if pretty else None, ensure_ascii=False)
    return Response(text.encode(), status, media_type=FHIR_JSON, headers=headers)


def _check_format(request: Request) -> None:
    """``_format`` (which overrides Accept) or Accept must admit JSON: 406 otherwise."""
    asked = request.query_params.get("_format")
    if asked is not None:
        media = asked.split(";")[0].strip().lower()
        if media in _JSON_FORMATS:
            return
        raise UnsupportedTransferSyntaxError(  # the error table's 406 (Not Acceptable)
            f"_format={asked!r}: this server answers in JSON only",
            hint="use _format=json (or application/fhir+json)")
    accept = request.headers.get("accept", "")
    if accept.strip() and not any(a.media in _JSON_FORMATS for a in parse_accept(accept)):
        raise UnsupportedTransferSyntaxError(
            f"Accept {accept!r}: this server answers in JSON only",
            hint="accept application/fhir+json")


def _answered(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` with every error as an OperationOutcome: a :class:`PacsError` with
    its status (:func:`..auth.access.http_status`) and reason, anything else 500 with
    its class only (traceback logged)."""
    @functools.wraps(endpoint)
    async def answered(request: Request) -> Response:
        request.state.audit_interface = "fhir"  # (the app's AuditTrail records it)
        try:
            _check_format(request)
            return await endpoint(request)
        except PacsError as exc:
            status = http_status(exc)
            text = exc.reason + (f" ({exc.hint})" if exc.hint != PacsError.hint else "")
            return _answer(r.operation_outcome(status, text), status, request)
        except Exception as exc:  # the request's boundary: a bug is still FHIR
            log.exception("FHIR %s failed", request.url.path)
            return _answer(r.operation_outcome(
                500, f"internal error ({type(exc).__name__}); logged on the server"), 500)
    return answered


def _outcome_refusals(checked: Endpoint) -> Endpoint:
    """A refusal of the access check (401/403, its reason in a Warning header) as an
    OperationOutcome, its headers (WWW-Authenticate, Warning) kept.  The declared scope
    goes along (``functools.wraps`` copies it), so :func:`..auth.access.check_routes`
    sees it."""
    @functools.wraps(checked)
    async def refused(request: Request) -> Response:
        response = await checked(request)
        if response.status_code not in (401, 403):
            return response
        warning = response.headers.get("warning", "")
        reason = warning.split('"', 1)[1].rstrip('"') if '"' in warning else "refused"
        headers = {k: v for k, v in response.headers.items()
                   if k in ("www-authenticate", "warning")}
        return _answer(r.operation_outcome(response.status_code, reason),
                       response.status_code, headers=headers)
    return refused


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    response = _answer(r.operation_outcome(
        404, f"no such FHIR interaction: {scope.get('path')}; see /fhir/metadata"), 404)
    await response(scope, receive, send)


class _Fhir:
    def __init__(self, archive: Archive, public_url: str | None):
        self.archive = archive
        self.public_url = public_url.rstrip("/") if public_url else None

    # -- addresses ---------------------------------------------------------------
    def origin(self, request: Request) -> str:
        """Scheme, host and port of this server as the client reached it (or the
        configured public URL); a Host without a port means the port listened on."""
        if self.public_url:
            return self.public_url
        url = request.url.replace(path="", query="", fragment="")
        server = request.scope.get("server")
        if url.port is None and server and server[1] is not None and \
                server[1] != {"http": 80, "https": 443}.get(url.scheme):
            url = url.replace(port=int(server[1]))
        return str(url).rstrip("/")

    def base(self, request: Request) -> str:
        """The FHIR base URL (``.../fhir``)."""
        return self.origin(request) + str(request.scope.get("root_path", "")).rstrip("/")

    # -- lookups (in a worker thread) --------------------------------------------
    def _patient_of(self, fhir_id: str) -> Json:
        matches = []
        if PatientKey.hashed(fhir_id):
            matches = [m for m in self.archive.find("patient")
                       if r.patient_key(m).fhir_id == fhir_id]
        elif (key := PatientKey.parse(fhir_id)) is not None:
            matches = [m for m in self.archive.find("patient", PatientID=key.patient_id)
                       if r.patient_key(m) == key]
        if not matches:
            raise NotFoundError(f"no Patient {fhir_id!r}",
                                hint="search Patient?identifier=<Patient ID>")
        return matches[0]

    def _study_uid(self, fhir_id: str) -> str | None:
        """The Study Instance UID of an ImagingStudy id; a hashed one (a UID no FHIR id
        can hold) by comparing the digests of every study's UID."""
        if not is_hashed(fhir_id):
            return study_uid(fhir_id)
        return next((m["StudyInstanceUID"] for m in self.archive.find("study")
                     if study_id(m["StudyInstanceUID"]) == fhir_id), None)

    def _resolve(self, fhir_id: str) -> PatientKey | None:
        try:
            return r.patient_key(self._patient_of(fhir_id))
        except NotFoundError:
            return None

    def _study(self, match: Json) -> Json:
        uid = match["StudyInstanceUID"]
        series = self.archive.find("series", StudyInstanceUID=uid)
        instances = {s["SeriesInstanceUID"]: self.archive.find(
            "instance", StudyInstanceUID=uid, SeriesInstanceUID=s["SeriesInstanceUID"])
            for s in series}
        study = r.imaging_study(r.ImagingStudyParts(match, series, instances))
        orders = self._orders(str(match.get("AccessionNumber") or ""))
        if orders:
            study["basedOn"] = [{"reference": f"ServiceRequest/{key}"} for key in orders]
        return study

    def _orders(self, accession: str) -> list[str]:
        """Keys of the worklist items of this Accession Number (the ServiceRequests an
        ImagingStudy is based on; R4 ImagingStudy.basedOn)."""
        if not accession:
            return []
        worklist = self.archive.worklist
        return [key for key in worklist.lookup(accession)
                if summary(worklist.get(key).dataset)["accession"] == accession]

    def _service_request(self, item: WorklistItem, known: dict[str, bool]) -> Json:
        """The item's ServiceRequest; its subject refers to ``Patient/<id>`` only when
        the archive has that patient (one scheduled before any image arrived is named
        by identifier and display: no reference that would answer 404)."""
        resource = r.service_request(item.key, item.status, item.dataset)
        subject = resource["subject"]
        if "reference" in subject:
            ref = subject["reference"]
            if ref not in known:
                known[ref] = self._resolve(ref.partition("/")[2]) is not None
            if not known[ref]:
                del subject["reference"]
        return resource

    def _candidates(self, keys: dict[str, str]) -> Iterable[WorklistItem]:
        """The worklist items a ServiceRequest search may match: those of one key or
        Accession Number through the worklist's identity index, else every one."""
        worklist = self.archive.worklist
        for hint in ("ItemKey", "AccessionNumber"):
            if hint in keys:  # key, accession or SPS ID: the tests narrow it down
                return [worklist.get(key) for key in worklist.lookup(keys[hint])]
        return worklist.items()

    def read_resource(self, kind: str, fhir_id: str, request: Request) -> Json:
        if not is_fhir_id(fhir_id):
            raise NotFoundError(f"{fhir_id!r} is not a FHIR id")
        if kind == "ImagingStudy":
            uid = self._study_uid(fhir_id)
            found = self.archive.find("study", StudyInstanceUID=uid) if uid else []
            if not found:
                raise NotFoundError(f"no ImagingStudy {fhir_id!r}",
                                    hint="its id is the Study Instance UID")
            request.state.audit_objects = [uid]
            return self._study(found[0])
        if kind == "Patient":
            return r.patient(self._patient_of(fhir_id))
        if kind == "ServiceRequest":
            try:
                item = self.archive.worklist.get(fhir_id)
            except NotFoundError:
                raise NotFoundError(f"no ServiceRequest {fhir_id!r}") from None
            return self._service_request(item, {})
        if fhir_id != DICOMWEB_ENDPOINT:
            raise NotFoundError(f"no Endpoint {fhir_id!r}", hint=f"it is {DICOMWEB_ENDPOINT}")
        return r.endpoint(self.origin(request) + "/dicom-web")

    def search_resources(self, kind: str, search: Search, request: Request
                         ) -> tuple[int, list[Json]]:
        """The total and the page's resources."""
        c: Criteria = search.criteria
        if c.nothing:
            return 0, []
        page = slice(search.offset, search.offset + search.count)
        if kind in ("ImagingStudy", "Patient"):
            level = "study" if kind == "ImagingStudy" else "patient"
            matches = [m for m in self.archive.query(level, c.keys, fuzzy=c.fuzzy)
                       if all(test(m) for test in c.tests)]
            if kind == "Patient":  # objects without a Patient ID have no Patient
                matches = [m for m in matches if m.get("PatientID")]
                return len(matches), [r.patient(m) for m in matches[page]]
            chosen = matches[page]
            request.state.audit_objects = [m["StudyInstanceUID"] for m in chosen]
            return len(matches), [self._study(m) for m in chosen]
        if kind == "ServiceRequest":
            items = [item for item in self._candidates(c.keys)
                     if all(t(cols) for cols in [r.ItemColumns(item.key, item.status,
                                                               item.dataset)]
                            for t in c.tests)]
            known: dict[str, bool] = {}
            return len(items), [self._service_request(i, known) for i in items[page]]
        cols = {"id": DICOMWEB_ENDPOINT}
        found = [r.endpoint(self.origin(request) + "/dicom-web")] \
            if all(t(cols) for t in c.tests) else []
        return len(found), found[page]

    # -- endpoints ---------------------------------------------------------------
    async def read(self, request: Request) -> Response:
        kind = request.url.path.rstrip("/").split("/")[-2]
        body = await run_in_threadpool(self.read_resource, kind, request.path_params["id"],
                                       request)
        return _answer(body, 200, request)

    async def search(self, request: Request) -> Response:
        kind = request.url.path.rstrip("/").split("/")[-1]
        request.state.audit_event = ("query", "E")  # PS3.15 A.5.3.7
        prefer = request.headers.get("prefer", "").replace(" ", "").lower()
        search = await run_in_threadpool(
            parse_search, kind, list(request.query_params.multi_items()),
            strict="handling=lenient" not in prefer, resolve=self._resolve,
            resolve_study=self._study_uid)
        total, found = await run_in_threadpool(self.search_resources, kind, search, request)
        return _answer(self.bundle(request, kind, search, total, found), 200, request)

    def bundle(self, request: Request, kind: str, search: Search, total: int,
               found: list[Json]) -> Json:
        """A searchset Bundle with ``self``, ``next`` and ``previous`` links (R4
        http.html#paging) that carry ``_offset``."""
        base = self.base(request)

        def link(relation: str, offset: int) -> Json:
            query = urlencode([*search.used, ("_count", str(search.count)),
                               ("_offset", str(offset))])
            return {"relation": relation, "url": f"{base}/{kind}?{query}"}

        links = [link("self", search.offset)]
        if search.count and search.offset + search.count < total:
            links.append(link("next", search.offset + search.count))
        if search.offset > 0 and search.count:
            links.append(link("previous", max(0, search.offset - search.count)))
        return {"resourceType": "Bundle", "type": "searchset", "total": total,
                "link": links,
                "entry": [{"fullUrl": f"{base}/{kind}/{res['id']}", "resource": res,
                           "search": {"mode": "match"}} for res in found]}

    async def metadata(self, request: Request) -> Response:
        return _answer(self.capabilities(request), 200, request)

    def capabilities(self, request: Request) -> Json:
        """The CapabilityStatement (R4): read and search-type of each resource type,
        its search parameters from :data:`.search.PARAMS`, JSON only, no writes."""
        resources = [{
            "type": kind,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "versioning": "no-version", "readHistory": False,
            "conditionalRead": "not-supported",
            "searchParam": [{"name": name, "type": p.type, "documentation": p.documentation}
                            for name, p in params.items()],
        } for kind, params in PARAMS.items()]
        return {
            "resourceType": "CapabilityStatement", "status": "active",
            "date": datetime.date.today().isoformat(), "publisher": "pacscore",
            "kind": "instance",
            "software": {"name": "pacscore", "version": __version__},
            "implementation": {"description": "pacscore FHIR R4 read API (read-only)",
                               "url": self.base(request)},
            "fhirVersion": FHIR_VERSION, "format": [FHIR_JSON, "json"],
            "rest": [{
                "mode": "server",
                "documentation": "Read-only.  Searches: unknown parameters are refused "
                                 "(400) unless 'Prefer: handling=lenient'; pages with "
                                 "_count and _offset.",
                "security": {"description": "Authorization: Bearer <token> with the "
                                            "read scope (the DICOMweb tokens)"},
                "resource": resources,
            }],
        }


_TYPES = tuple(PARAMS)


def create_fhir_app(archive: Archive, *, public_url: str | None = None) -> Router:
    """The FHIR routes, to be mounted (``Mount("/fhir", app=...)``) inside an app that
    runs the token middleware (:meth:`..auth.access.HttpAccess.middleware`, as the
    DICOMweb app does).  Every route requires the ``read`` scope."""
    api = _Fhir(archive, public_url)
    access = HttpAccess(TokenStore(archive.root), AuditLog(archive.root), interface="fhir")
    need_read = access.requires("read")

    def read(endpoint: Endpoint) -> Endpoint:
        return _outcome_refusals(need_read(_answered(endpoint)))

    routes = [Route("/metadata", read(api.metadata), methods=["GET"])]
    for kind in _TYPES:
        routes += [Route(f"/{kind}", read(api.search), methods=["GET"]),
                   Route(f"/{kind}/{{id}}", read(api.read), methods=["GET"])]
    return Router(routes, default=_not_found)

