"""Issue 14.19: at every door (DICOMweb, DIMSE, gRPC) a malformed request is the
client's error with its reason, and a bare ``ValueError`` raised deep inside (a
library's bug) is an internal failure, logged with its traceback, its text kept from
the client.  In-process servers: the internal errors are made with monkeypatch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from pacscore import Archive
from pacscore.errors import InvalidRequestError, PacsError
from pacscore.services.auth.security import AeRegistry
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.dicomweb.app import create_app
from pacscore.services.dimse.server import DimseServer
from pacscore.services.grpc.generated import load
from pacscore.services.grpc.server import start_grpc
from pacscore.testing import free_port

SECRET = "numpy internals: axis 3 is out of bounds"  # must never reach a client


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise ValueError(SECRET)


@pytest.fixture()
def stored(archive: Archive, corpus: Path) -> tuple[Archive, Any]:
    return archive, archive.store(corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm")


def _traceback_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.exc_info and r.exc_info[0] is ValueError and SECRET in str(r.exc_info[1])
               for r in caplog.records)


def test_invalid_request_error_is_in_the_tree() -> None:
    """A PacsError with a hint, and a ValueError for callers that catch that; a bare
    ValueError is not one."""
    exc = InvalidRequestError("limit='x'")
    assert isinstance(exc, PacsError) and isinstance(exc, ValueError)
    assert exc.reason == "limit='x'" and "hint" in str(exc)
    assert not isinstance(ValueError("x"), PacsError)


# -- DICOMweb -----------------------------------------------------------------------
def _http(archive: Archive, path: str, headers: dict[str, str] | None = None,
          method: str = "GET", body: bytes = b"") -> tuple[int, bytes]:
    """One request to the ASGI app, in this process (no HTTP client needed)."""
    app = create_app(archive)
    token = TokenStore(archive.root).create("admin")
    path, _, query = path.partition("?")
    hdrs = [(b"authorization", f"Bearer {token}".encode()), (b"host", b"test")] + [
        (k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "", "headers": hdrs,
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    out: dict[str, Any] = {"body": b""}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    asyncio.run(run())
    return out["status"], out["body"]


@pytest.mark.parametrize(("url", "expected"), [
    ("/dicom-web/studies?limit=ten", "limit"),
    ("/dicom-web/studies?offset=-1", "offset"),
    ("/dicom-web/studies?includefield=NotAnAttribute", "NotAnAttribute"),
    ("{inst}/frames/one,2", "frame numbers"),
    ("{inst}/frames/99", "no frame 99"),
    ("{inst}/rendered?window=abc", "window="),
    ("{inst}/rendered?viewport=a,b", "viewport"),
    ("{inst}/rendered?quality=0", "quality"),
    ("{inst}/bulk/zz", "bulk data path"),
    ("/wado?requestType=NOPE", "WADO-URI needs"),
    ("/wado?requestType=WADO&objectUID={sop}&contentType=image/jpeg&windowCenter=1",
     "windowCenter"),
])
def test_http_malformed_request_is_400_with_reason(stored: tuple[Archive, Any], url: str,
                                                   expected: str) -> None:
    archive, r = stored
    inst = (f"/dicom-web/studies/{r.study_uid}/series/{r.series_uid}/instances/"
            f"{r.sop_instance_uid}")
    status, body = _http(archive, url.format(inst=inst, sop=r.sop_instance_uid))
    assert status == 400, body
    assert expected in body.decode()


def test_http_malformed_stow_body_is_400(stored: tuple[Archive, Any]) -> None:
    archive, _ = stored
    status, body = _http(archive, "/dicom-web/studies", {"content-type": "text/plain"},
                         "POST", b"hello")
    assert status == 400 and "multipart/related" in body.decode()


@pytest.mark.parametrize(("target", "url"), [
    ("query", "/dicom-web/studies?PatientID=x"),
    ("frames", "{inst}/frames/1"),
    ("record", "/wado?requestType=WADO&objectUID={sop}"),
])
def test_http_internal_value_error_is_500_logged(stored: tuple[Archive, Any], target: str,
                                                 url: str, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A ValueError from inside the archive: 500 (it was 400, "the client's fault"),
    the traceback in the log, the text not in the answer."""
    archive, r = stored
    inst = (f"/dicom-web/studies/{r.study_uid}/series/{r.series_uid}/instances/"
            f"{r.sop_instance_uid}")
    monkeypatch.setattr(Archive, target, _boom)
    with caplog.at_level(logging.ERROR):
        status, body = _http(archive, url.format(inst=inst, sop=r.sop_instance_uid))
    assert status == 500, body
    assert SECRET not in body.decode() and "internal error (ValueError)" in body.decode()
    assert _traceback_logged(caplog)


# -- DIMSE --------------------------------------------------------------------------
@pytest.fixture()
def dimse(stored: tuple[Archive, Any], tmp_path: Path) -> Iterator[tuple[int, Any]]:
    archive, r = stored
    AeRegistry(archive.root).add("VIEWER", "127.0.0.1")
    server = DimseServer(archive, spool=tmp_path / "spool")
    port = free_port()
    server.start("127.0.0.1", port)
    try:
        yield port, r
    finally:
        server.stop()


def _identifier(level: str, study: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study
    ds.PatientID = ""
    return ds


def _find(port: int, level: str, study: str) -> list[Dataset]:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_find(
            _identifier(level, study), StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()


def _get(port: int, level: str, study: str) -> Dataset:
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_get(
            _identifier(level, study), StudyRootQueryRetrieveInformationModelGet)][-1]
    finally:
        assoc.release()


def test_dimse_malformed_identifier_is_a900_with_comment(dimse: tuple[int, Any]) -> None:
    """Study Root has no PATIENT level: 0xA900 "identifier does not match SOP class"
    (PS3.4 C.4.1.1.4, C.4.3.1.4) with the reason in the Error Comment."""
    port, r = dimse
    final = _find(port, "PATIENT", r.study_uid)[-1]
    assert final.Status == 0xA900 and "QueryRetrieveLevel" in final.ErrorComment
    got = _get(port, "PATIENT", r.study_uid)
    assert got.Status == 0xA900 and "QueryRetrieveLevel" in got.ErrorComment
    assert [s.Status for s in _find(port, "STUDY", r.study_uid)] == [0xFF00, 0x0000]


def test_dimse_internal_value_error_is_c000_logged(dimse: tuple[int, Any],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A ValueError from the index: 0xC000 "unable to process" (it was 0xA900 for
    C-FIND), an Error Comment without its text, the traceback logged."""
    port, r = dimse
    monkeypatch.setattr(Archive, "query", _boom)
    with caplog.at_level(logging.ERROR):
        final = _find(port, "STUDY", r.study_uid)[-1]
        got = _get(port, "STUDY", r.study_uid)
    for status in (final, got):
        assert status.Status == 0xC000
        assert "internal error (ValueError)" in status.ErrorComment
        assert "numpy" not in status.ErrorComment
    assert _traceback_logged(caplog)


# -- gRPC ---------------------------------------------------------------------------
@pytest.fixture()
def grpc_stub(stored: tuple[Archive, Any]) -> Iterator[tuple[Any, Any, Any, Any]]:
    archive, r = stored
    pb, svc = load()
    port = free_port()
    server = start_grpc(archive, "127.0.0.1", port, workers=4)
    token = TokenStore(archive.root).create("admin")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield svc.ArchiveStub(channel), pb, (("authorization", f"Bearer {token}"),), r
    finally:
        channel.close()
        server.stop(None)


def test_grpc_malformed_request_is_invalid_argument(grpc_stub: tuple[Any, ...]) -> None:
    stub, pb, meta, r = grpc_stub
    with pytest.raises(grpc.RpcError) as frames:
        list(stub.GetFrames(pb.FramesRequest(sop_instance_uid=r.sop_instance_uid,
                                             frames=[99]), metadata=meta))
    assert frames.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no frame 99" in frames.value.details()
    with pytest.raises(grpc.RpcError) as level:
        list(stub.Find(pb.FindRequest(level="galaxy"), metadata=meta))
    assert level.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "galaxy" in level.value.details()


@pytest.mark.parametrize("target", ["query", "frames", "stats"])
def test_grpc_internal_value_error_is_internal_logged(grpc_stub: tuple[Any, ...],
                                                      target: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    """INTERNAL (it was INVALID_ARGUMENT, or UNKNOWN with the exception's text from
    grpcio), the traceback logged, the text not in the details."""
    stub, pb, meta, r = grpc_stub
    monkeypatch.setattr(Archive, target, _boom)
    call = {"query": lambda: list(stub.Find(pb.FindRequest(level="study"), metadata=meta)),
            "frames": lambda: list(stub.GetFrames(pb.FramesRequest(
                sop_instance_uid=r.sop_instance_uid), metadata=meta)),
            "stats": lambda: stub.Stats(pb.StatsRequest(), metadata=meta)}[target]
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.RpcError) as failed:
        call()
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in failed.value.details()
    assert "internal error (ValueError)" in failed.value.details()
    assert _traceback_logged(caplog)
