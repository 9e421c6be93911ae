"""Frame requests (issue 15.6): every way of asking for frames raises the one error for a
frame number the instance does not have (NoSuchFrameError: a NotFoundError for API
callers, 400 / INVALID_ARGUMENT at the doors), checked by the archive before anything is
decoded, and a DICOMweb or gRPC frame request reads the index once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.errors import InvalidRequestError, NoSuchFrameError, NotFoundError
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.grpc.generated import load
from pacscore.services.grpc.server import start_grpc
from pacscore.testing import free_port

from .test_service_errors import _http

CT = "ct_series/dcmqi_ge_ct_3slice/01.dcm"
US_KEPT = "multiframe/us_cine/Acuson_US_65fr_jpeg.dcm"  # lossy JPEG: kept as received


@pytest.fixture()
def archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive(tmp_path / "archive", ArchiveConfig(prepare_workers=0)) as a:
        yield a


def _count_index_reads(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    original = archive.index.get

    def get(sop: str) -> Any:
        reads.append(sop)
        return original(sop)

    monkeypatch.setattr(archive.index, "get", get)
    return reads


@pytest.mark.parametrize("name", [CT, US_KEPT])
def test_the_archive_raises_one_error_for_a_frame_it_has_not(archive: Archive, corpus: Path,
                                                              name: str) -> None:
    r = archive.store(corpus / name)
    count = len(archive.frames(r.sop_instance_uid))
    assert count == archive.frame_count(r.sop_instance_uid) >= 1
    for syntax in ("stored", "native", "1.2.840.10008.1.2.1"):
        with pytest.raises(NoSuchFrameError) as raised:
            archive.frames(r.sop_instance_uid, [count], syntax)
        assert isinstance(raised.value, NotFoundError | InvalidRequestError)
        assert raised.value.reason == (f"instance {r.sop_instance_uid} has no frame "
                                       f"{count + 1}: its frame numbers run from 1 to {count}")
    with pytest.raises(NoSuchFrameError):
        archive.frames(r.sop_instance_uid, [-1])


def test_a_dicomweb_frame_request_reads_the_index_once(archive: Archive, corpus: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    r = archive.store(corpus / CT)
    rec = archive.record(r.sop_instance_uid)
    path = (f"/dicom-web/studies/{rec.study_uid}/series/{rec.series_uid}"
            f"/instances/{r.sop_instance_uid}/frames/1")
    reads = _count_index_reads(archive, monkeypatch)
    status, body = _http(archive, path, {"Accept": "multipart/related; type="
                                                   "\"application/octet-stream\""})
    assert status == 200 and len(body) > 512 * 512 * 2
    assert reads == [r.sop_instance_uid]
    reads.clear()
    status, body = _http(archive, path[:-1] + "2")
    assert status == 400 and b"has no frame 2: its frame numbers run from 1 to 1" in body
    assert reads == [r.sop_instance_uid]


def test_a_grpc_frame_request_reads_the_index_once(archive: Archive, corpus: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    r = archive.store(corpus / CT)
    pb, svc = load()
    port = free_port()
    server = start_grpc(archive, "127.0.0.1", port, workers=2)
    meta = (("authorization", f"Bearer {TokenStore(archive.root).create('admin')}"),)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = svc.ArchiveStub(channel)
        reads = _count_index_reads(archive, monkeypatch)
        frames = list(stub.GetFrames(pb.FramesRequest(sop_instance_uid=r.sop_instance_uid),
                                     metadata=meta))
        assert [f.number for f in frames] == [1] and len(frames[0].data) > 1000
        assert reads == [r.sop_instance_uid]
        with pytest.raises(grpc.RpcError) as bad:
            list(stub.GetFrames(pb.FramesRequest(sop_instance_uid=r.sop_instance_uid,
                                                 frames=[2]), metadata=meta))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has no frame 2: its frame numbers run from 1 to 1" in (bad.value.details()
                                                                       or "")
    finally:
        channel.close()
        server.stop(None)
