"""gRPC service over :class:`~pacscore.Archive`, with health and reflection.

An interceptor checks the bearer token of every call (reflection too):
UNAUTHENTICATED without a valid token, PERMISSION_DENIED with too little scope.  The
standard health service (``grpc.health.v1.Health``) alone answers without one:
orchestrator probes cannot send a token, and it tells only SERVING or not.
Errors map to status codes through :data:`GRPC_STATUS`, the gRPC column of the one
table of every door (:data:`.access.ERROR_STATUS`); tokens are read and checked by
:mod:`.access` as at the DICOMweb door.

No client can hold the server: a Store stream that sends nothing for ``idle_timeout``
seconds ends with DEADLINE_EXCEEDED, Store streams may take only part of the worker
threads (the rest stay for queries and retrieves), calls beyond the threads are
refused at once with RESOURCE_EXHAUSTED instead of queueing, and keepalive pings find
peers that are gone.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ...archive import Archive
from ...errors import PacsError
from ...workflow.studies import parse_status, requested_procedures, study_states
from ..auth.access import ERROR_STATUS, bearer_token, grpc_status_name, identify
from ..auth.security import AuditLog
from ..auth.tokens import TokenStore
from .generated import load

__all__ = ["GRPC_STATUS", "start_grpc"]

log = logging.getLogger(__name__)

GRPC_STATUS: dict[type[Exception], grpc.StatusCode] = {
    cls: grpc.StatusCode[status.grpc] for cls, status in ERROR_STATUS.items()}
"""Only classes of the :mod:`pacscore.errors` tree; anything else (a bug, a library's
bare ValueError) is INTERNAL, logged with its traceback (:func:`_guarded`)."""
_SCOPE = {"Store": "write", "Delete": "delete"}  # everything else: read
_OPEN_SERVICES = ("/grpc.health.v1.Health/",)  # answered without a token (Check, Watch)
_CHUNK = 1 << 20
_PREFETCH = 4  # chunks a Store stream's reader may read ahead of the file writes
_STORE_SHARE = 0.75  # of the worker threads; the rest stay for every other call
_KEEPALIVE: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 60_000),  # ping each connection after 60 s of quiet
    ("grpc.keepalive_timeout_ms", 20_000),  # and drop it when the ping is unanswered
    ("grpc.http2.max_pings_without_data", 0),  # also during a stream that sends nothing
    ("grpc.keepalive_permit_without_calls", 1),
]


def _code(exc: Exception) -> grpc.StatusCode:
    return grpc.StatusCode[grpc_status_name(exc)]


def _ended(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    """End the call that ``exc`` ended, unless it has ended already (``abort`` raises
    a bare Exception once the status is set; a cancelled call raises an RpcError)."""
    if isinstance(exc, grpc.RpcError) or context.code() is not None:
        raise exc
    if isinstance(exc, PacsError):
        context.abort(_code(exc), exc.reason)
    log.exception("gRPC call failed")
    context.abort(grpc.StatusCode.INTERNAL,
                  f"internal error ({type(exc).__name__}); logged on the server")
    raise AssertionError("abort() raises")


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of the servicer with every error mapped by :func:`_ended` (grpcio
    would answer UNKNOWN with the exception's text)."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - the call's boundary (see _ended)
                _ended(context, exc)
        return stream

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the call's boundary (see _ended)
            _ended(context, exc)
    return unary


class _Auth(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, tokens: TokenStore, audit: AuditLog):
        self.tokens, self.audit = tokens, audit

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(_OPEN_SERVICES):
            return handler
        holder = identify(self.tokens, _bearer(details.invocation_metadata))
        method = details.method.rsplit("/", 1)[-1]
        needed = _SCOPE.get(method, "read")
        if not holder.is_authenticated:
            code, text = grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required"
        elif holder.study is not None:  # a share link: one study, in the viewer
            code, text = (grpc.StatusCode.PERMISSION_DENIED,
                          "a share link's token opens its study in the viewer only")
        elif not holder.grants(needed):
            code, text = grpc.StatusCode.PERMISSION_DENIED, f"token lacks the {needed!r} scope"
        else:
            return handler

        def refuse(context: grpc.ServicerContext) -> None:
            self.audit.record("authentication", action="E", outcome="minor",
                              user=holder.name, host=context.peer(),
                              interface="grpc", detail=f"{details.method}: {text}")
            context.abort(code, text)

        return _denied(handler, refuse)


def _bearer(metadata: Any) -> str:
    """The bearer token of a call's metadata ('' when there is none)."""
    return bearer_token(dict(metadata or ()).get("authorization"))


def _denied(handler: Any, refuse: Callable[[grpc.ServicerContext], None]) -> Any:
    """``handler`` with its behaviour replaced by ``refuse`` (which aborts the call)."""
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        refuse(context)

    kind = (handler.request_streaming, handler.response_streaming)
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[kind]
    return make(abort, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class _Chunks:
    """The data of a client stream's chunks; ``refuse`` (which ends the call) when none
    arrives for ``idle_timeout`` seconds.

    gRPC's request iterator waits without a time limit, so a thread outside the
    server's pool reads it (at most :data:`_PREFETCH` chunks ahead) while the handler
    waits on a queue with one.  Once the handler has ended the call, the blocked read
    returns and the reader stops.  Use it as a context manager: leaving it lets the
    reader go.
    """

    def __init__(self, requests: Iterator[Any], idle_timeout: float,
                 refuse: Callable[[grpc.StatusCode, str], NoReturn]):
        self._idle_timeout, self._refuse = idle_timeout, refuse
        self._queue: queue.SimpleQueue[bytes | Exception | None] = queue.SimpleQueue()
        self._credit = threading.Semaphore(_PREFETCH)
        self._closed = threading.Event()
        threading.Thread(target=self._read, args=(requests,), name="grpc-store-reader",
                         daemon=True).start()

    def _read(self, requests: Iterator[Any]) -> None:
        try:
            while self._credit.acquire() and not self._closed.is_set():
                chunk = next(requests, None)
                self._queue.put(None if chunk is None else bytes(chunk.data))
                if chunk is None:
                    return
        except Exception as exc:  # noqa: BLE001 - a thread boundary: what ends the read
            # goes to the handler, which raises it (an RpcError: the call was cancelled
            # or the server stops; anything else: INTERNAL, logged by _guarded)
            self._queue.put(exc)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_timeout)
            except queue.Empty:
                self._refuse(grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"no data for {self._idle_timeout:g} s (idle_timeout): the "
                             f"Store stream was ended and nothing stored; send the object "
                             f"without pauses that long, or raise idle_timeout in the "
                             f"serve settings")
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            self._credit.release()
            yield item

    def __enter__(self) -> _Chunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._credit.release()


def _servicer(archive: Archive, audit: AuditLog, max_object: int, idle_timeout: float,  # noqa: C901
              store_streams: int) -> Any:
    pb, svc = load()

    tokens = TokenStore(archive.root)
    storing = threading.BoundedSemaphore(store_streams)

    def record(context: grpc.ServicerContext, event: str, action: str,
               objects: list[str] | None = None, detail: str = "",
               outcome: str = "success") -> None:
        audit.record(event, action=action, outcome=outcome,
                     user=tokens.user(_bearer(context.invocation_metadata())),
                     host=context.peer(), interface="grpc", objects=objects, detail=detail)

    class Servicer(svc.ArchiveServicer):  # type: ignore[misc,name-defined]
        def _fail(self, context: grpc.ServicerContext, exc: PacsError) -> None:
            context.abort(_code(exc), exc.reason)

        def Store(self, request_iterator: Iterator[Any], context: grpc.ServicerContext
                  ) -> Any:
            def refuse(code: grpc.StatusCode, text: str) -> NoReturn:
                """End the call with ``code``; audited as a failed store."""
                record(context, "transferred", "C", detail=text, outcome="minor")
                context.abort(code, text)
                raise AssertionError("abort() raises")

            if not storing.acquire(blocking=False):
                refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"{store_streams} Store streams are running, the most this server "
                       f"takes at once (its other threads serve queries and retrieves); "
                       f"retry in a moment")
            try:
                return self._store(request_iterator, context, refuse)
            except grpc.RpcError:  # the client went away, or the server stops
                record(context, "transferred", "C", detail="the Store stream was "
                       "cancelled before its end; nothing stored", outcome="minor")
                raise
            finally:
                storing.release()

        def _store(self, request_iterator: Iterator[Any], context: grpc.ServicerContext,
                   refuse: Callable[[grpc.StatusCode, str], NoReturn]) -> Any:
            # In the archive's temp folder, which a restart empties (after a kill -9).
            fd, name = tempfile.mkstemp(prefix="grpc-", suffix=".dcm", dir=archive.tmp_dir)
            try:
                size = 0
                with os.fdopen(fd, "wb") as f, _Chunks(request_iterator, idle_timeout,
                                                       refuse) as chunks:
                    for data in chunks:
                        size += len(data)
                        if size > max_object:
                            refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"object larger than {max_object} bytes (max_body); "
                                   f"raise max_body in the serve settings to take it")
                        f.write(data)
                try:
                    r = archive.store(name, source="gRPC Store", strict_identity=True)
                except PacsError as exc:
                    refuse(_code(exc), exc.reason)
                record(context, "transferred", "C", [r.sop_instance_uid])
                return pb.StoreReply(
                    sop_instance_uid=r.sop_instance_uid, study_instance_uid=r.study_uid,
                    series_instance_uid=r.series_uid, status=r.status,
                    original_syntax=r.original_syntax, stored_syntax=r.stored_syntax,
                    bytes_in=r.bytes_in, bytes_stored=r.bytes_stored, verified=r.verified,
                    kept_reason=r.kept_reason or "")
            finally:
                Path(name).unlink(missing_ok=True)

        def Get(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                data = archive.get(request.sop_instance_uid,
                                   request.transfer_syntax or "original")
            except PacsError as exc:
                self._fail(context, exc)
            record(context, "transferred", "R", [request.sop_instance_uid])
            for i in range(0, len(data), _CHUNK):
                yield pb.Chunk(data=data[i : i + _CHUNK])

        def GetFrames(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            ts = request.transfer_syntax or "stored"
            numbers = list(request.frames)
            try:
                rec = archive.record(request.sop_instance_uid)  # the one index read
                data = archive.frames(request.sop_instance_uid,
                                      [n - 1 for n in numbers] if numbers else None, ts,
                                      record=rec)  # NoSuchFrameError: INVALID_ARGUMENT
                numbers = numbers or list(range(1, len(data) + 1))
            except PacsError as exc:
                self._fail(context, exc)
            record(context, "transferred", "R", [request.sop_instance_uid],
                   f"{len(numbers)} frame(s)")
            label = rec.stored_syntax if ts == "stored" else ts
            for n, d in zip(numbers, data, strict=True):
                yield pb.Frame(number=n, data=d, transfer_syntax=label)

        def Find(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                matches = archive.query(request.level, dict(request.keys),
                                        limit=request.limit or None, offset=request.offset)
            except PacsError as exc:
                self._fail(context, exc)
            record(context, "query", "E", detail=f"{request.level} level, {len(matches)} "
                                                 "matches")
            for m in matches:
                yield pb.Match(attributes={k: str(v) for k, v in m.items() if v is not None})

        def Delete(self, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                n = archive.delete(request.level, request.uid)
            except PacsError as exc:
                self._fail(context, exc)
            record(context, "deleted", "D", [request.uid], f"{request.level} level")
            return pb.DeleteReply(deleted_instances=n)

        def Stats(self, request: Any, context: grpc.ServicerContext) -> Any:
            s = archive.stats()
            return pb.StatsReply(instances=s["instances"],
                                 compressed_instances=s["compressed_instances"],
                                 bytes_in=s["bytes_in"], bytes_stored=s["bytes_stored"],
                                 transfer_syntaxes=s["transfer_syntaxes"])

        def Verify(self, request: Any, context: grpc.ServicerContext) -> Any:
            report = archive.verify()
            return pb.VerifyReply(checked=report.checked, failed=[
                pb.VerifyFailure(sop_instance_uid=u, reason=r) for u, r in report.failed])

        def StudyStatus(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            wanted = parse_status(request.status) if request.status else None
            states = study_states(archive.worklist, archive.query, status=wanted,
                                  requested=requested_procedures(archive))
            record(context, "query", "E", detail=f"study status {request.status or 'all'}, "
                                                 f"{len(states)} studies")
            for s in states:
                yield pb.StudyState(study_instance_uid=s.study_uid,
                                    accession_number=s.accession, patient_id=s.patient_id,
                                    status=str(s.status), steps=s.steps,
                                    performed=s.performed, stored=s.stored,
                                    instances=s.instances)

    for name in ("Store", "Get", "GetFrames", "Find", "Delete", "Stats", "Verify",
                 "StudyStatus"):
        setattr(Servicer, name, _guarded(getattr(Servicer, name)))
    return Servicer()


def start_grpc(archive: Archive, host: str, port: int, *, max_object: int = 4 * 1024**3,
               idle_timeout: float = 60.0, workers: int = 32,
               tls: tuple[str, str, str | None] | None = None) -> grpc.Server:
    """Start the gRPC server (Archive service, health, reflection); returns it running.

    ``idle_timeout``: seconds a Store stream may send nothing before it is ended.
    ``workers``: threads, and calls served at once (more are refused with
    RESOURCE_EXHAUSTED); Store streams get :data:`_STORE_SHARE` of them.
    ``tls`` = (certificate, key, client CA or None): TLS, mutual when a CA is given.
    """
    pb, svc = load()
    tokens, audit = TokenStore(archive.root), AuditLog(archive.root)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        interceptors=[_Auth(tokens, audit)],
        options=[("grpc.max_receive_message_length", 8 * _CHUNK),
                 ("grpc.max_send_message_length", 64 * _CHUNK), *_KEEPALIVE],
        maximum_concurrent_rpcs=workers,
    )
    store_streams = max(1, int(workers * _STORE_SHARE))
    svc.add_ArchiveServicer_to_server(
        _servicer(archive, audit, max_object, idle_timeout, store_streams), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("pacscore.v1.Archive", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    names = (pb.DESCRIPTOR.services_by_name["Archive"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}"
    if tls:
        cert, key, ca = tls
        creds = grpc.ssl_server_credentials(
            [(Path(key).read_bytes(), Path(cert).read_bytes())],
            root_certificates=Path(ca).read_bytes() if ca else None,
            require_client_auth=bool(ca))
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server
