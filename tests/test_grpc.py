"""gRPC against `pacscore serve` with a Python client built from the generated stubs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import imagecodecs
import numpy as np
import pydicom
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pacscore.services.grpc.generated import load
from pacscore.testing import cli, serving

pb, svc = load()


class Client:
    def __init__(self, port: int, token: str):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.meta = (("authorization", f"Bearer {token}"),)
        self.stub = svc.ArchiveStub(self.channel)

    def store(self, data: bytes) -> Any:
        chunks = (pb.StoreChunk(data=data[i : i + 65536]) for i in range(0, len(data), 65536))
        return self.stub.Store(chunks, metadata=self.meta)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    archive = tmp_path / "archive"
    with serving(archive) as ports:
        yield ports["grpc"], archive


def admin(archive: Path) -> str:
    return (archive / "security" / "admin-token").read_text().strip()


def test_store_get_frames_find_stats_verify_delete(server: tuple[int, Path],
                                                  corpus: Path) -> None:
    port, archive = server
    client = Client(port, admin(archive))
    src = corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm"
    reply = client.store(src.read_bytes())
    assert reply.status == "stored" and reply.verified
    assert reply.stored_syntax == "1.2.840.10008.1.2.4.202"
    again = client.store(src.read_bytes())
    assert again.status == "duplicate"
    got = b"".join(c.data for c in client.stub.Get(
        pb.GetRequest(sop_instance_uid=reply.sop_instance_uid), metadata=client.meta))
    assert got == src.read_bytes()
    (frame,) = list(client.stub.GetFrames(pb.FramesRequest(
        sop_instance_uid=reply.sop_instance_uid), metadata=client.meta))
    assert frame.number == 1 and frame.transfer_syntax == reply.stored_syntax
    assert np.array_equal(imagecodecs.htj2k_decode(frame.data),
                          pydicom.dcmread(src).pixel_array)
    matches = list(client.stub.Find(pb.FindRequest(
        level="series", keys={"Modality": "CT"}), metadata=client.meta))
    assert [m.attributes["SeriesInstanceUID"] for m in matches] == [reply.series_instance_uid]
    stats = client.stub.Stats(pb.StatsRequest(), metadata=client.meta)
    assert stats.instances == 1 and stats.transfer_syntaxes[reply.stored_syntax] == 1
    assert client.stub.Verify(pb.VerifyRequest(), metadata=client.meta).checked == 1
    deleted = client.stub.Delete(pb.DeleteRequest(level="study",
                                                  uid=reply.study_instance_uid),
                                 metadata=client.meta)
    assert deleted.deleted_instances == 1
    with pytest.raises(grpc.RpcError) as info:
        list(client.stub.Get(pb.GetRequest(sop_instance_uid=reply.sop_instance_uid),
                             metadata=client.meta))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_refusals(server: tuple[int, Path], corpus: Path) -> None:
    port, archive = server
    anonymous = Client(port, "nope")
    with pytest.raises(grpc.RpcError) as info:
        anonymous.stub.Stats(pb.StatsRequest(), metadata=anonymous.meta)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The standard health service answers without a token (orchestrator probes send
    # none) and says only SERVING; reflection still needs one.
    health = health_pb2_grpc.HealthStub(anonymous.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == \
        health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service="pacscore.v1.Archive"))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(reflection_pb2_grpc.ServerReflectionStub(anonymous.channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reader_token = cli("token", "create", "--scope", "read", "--archive", str(archive)).strip()
    reader = Client(port, reader_token)
    with pytest.raises(grpc.RpcError) as info:
        reader.store((corpus / "ct_series/dcmqi_ge_ct_3slice/02.dcm").read_bytes())
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert health_pb2_grpc.HealthStub(reader.channel).Check(
        health_pb2.HealthCheckRequest(service="pacscore.v1.Archive"),
        metadata=reader.meta).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(reader.channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), metadata=reader.meta)
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert "pacscore.v1.Archive" in names
    # A share link's token (one study, issue 20.3) opens its study in the viewer only.
    from pacscore.services.auth.tokens import TokenStore
    from pacscore.services.viewer.share import share_study

    shared = Client(port, share_study(TokenStore(archive), "1.2.3", 3600, read_only=False))
    with pytest.raises(grpc.RpcError) as info:
        shared.stub.Stats(pb.StatsRequest(), metadata=shared.meta)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "share link" in (info.value.details() or "")
    writer = Client(port, admin(archive))
    with pytest.raises(grpc.RpcError) as info:
        writer.store((corpus / "malformed/MR_truncated.dcm").read_bytes())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "8130" in (info.value.details() or "")
    stats = writer.stub.Stats(pb.StatsRequest(), metadata=writer.meta)
    assert stats.instances == 0


def _grpc_audit(archive: Path) -> list[dict[str, Any]]:
    lines = (archive / "audit" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["interface"] == "grpc"]


def test_every_call_is_audited_with_its_token_and_peer(server: tuple[int, Path],
                                                       corpus: Path) -> None:
    """Stores, reads, queries and deletes name the token that made them (its id, never
    the secret) and the peer's address; so do refused calls."""
    port, archive = server
    token = admin(archive)
    who = f"token {token.split('_')[1]}"
    client = Client(port, token)
    reply = client.store((corpus / "ct_series/dcmqi_ge_ct_3slice/01.dcm").read_bytes())
    sop = reply.sop_instance_uid
    b"".join(c.data for c in client.stub.Get(pb.GetRequest(sop_instance_uid=sop),
                                             metadata=client.meta))
    list(client.stub.GetFrames(pb.FramesRequest(sop_instance_uid=sop), metadata=client.meta))
    list(client.stub.Find(pb.FindRequest(level="study", keys={}), metadata=client.meta))
    client.stub.Delete(pb.DeleteRequest(level="instance", uid=sop), metadata=client.meta)
    with pytest.raises(grpc.RpcError):
        Client(port, "pcs_nope_nope").stub.Stats(pb.StatsRequest(), metadata=(
            ("authorization", "Bearer pcs_nope_nope"),))
    events = [(e["event_id"]["code"], e["action"], e["user"].split(" (")[0],  # its name
               tuple(e.get("objects", ()))) for e in _grpc_audit(archive)]
    assert events == [("110104", "C", who, (sop,)), ("110104", "R", who, (sop,)),
                      ("110104", "R", who, (sop,)), ("110112", "E", who, ()),
                      ("110105", "D", who, (sop,)),
                      ("110114", "E", "invalid token", ())]
    assert all(e["host"].startswith(("ipv4:127.0.0.1:", "ipv6:")) for e in _grpc_audit(archive))
    assert token.split("_", 2)[2] not in (archive / "audit" / "audit.jsonl").read_text()


def test_stalled_store_streams_end_and_others_are_served(tmp_path: Path) -> None:
    """Store streams that send a chunk and then nothing end after ``idle_timeout`` with
    DEADLINE_EXCEEDED (nothing stored, no temp file left, a failed store audited), and
    while they hang, more Stores than the server has threads are refused at once and
    Stats answers."""
    archive = tmp_path / "archive"
    config = tmp_path / "pacscore.toml"
    config.write_text("idle_timeout = 2.0\n")
    with serving(archive, "--config", str(config)) as ports:
        client = Client(ports["grpc"], admin(archive))
        release = threading.Event()

        def stalled() -> Iterator[Any]:
            yield pb.StoreChunk(data=b"\0" * 1000)
            release.wait(60)

        started = time.monotonic()
        calls = [client.stub.Store.future(stalled(), metadata=client.meta)
                 for _ in range(40)]
        time.sleep(0.5)
        # answered while they hang (before: never, every thread was taken)
        stats = client.stub.Stats(pb.StatsRequest(), metadata=client.meta, timeout=30)
        assert stats.instances == 0
        codes, ours = [], 0  # ours: ended or refused by pacscore, not by gRPC's limit
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call.result(timeout=30)
            codes.append(info.value.code())
            details = info.value.details() or ""
            if info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                assert "idle_timeout" in details
            ours += "idle_timeout" in details or "Store streams are running" in details
        release.set()
        elapsed = time.monotonic() - started
        # ended by the server's idle timeout (2 s), not by the client's 60 s stalls
        assert elapsed < 45, f"stalled streams took {elapsed:.1f} s to end"
        assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) >= 8
        assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert not list(archive.glob("grpc-*"))
        stats = client.stub.Stats(pb.StatsRequest(), metadata=client.meta, timeout=5)
        assert stats.instances == 0
    # Every call pacscore ended or refused is audited; calls over maximum_concurrent_rpcs
    # are refused by gRPC itself before any handler runs (how many depends on timing).
    failed = [e for e in _grpc_audit(archive)
              if e["event_id"]["code"] == "110104" and e["outcome"] != 0]
    assert len(failed) == ours


def test_get_frames_of_an_object_kept_as_received(server: tuple[int, Path],
                                                  corpus: Path) -> None:
    """A 30-frame JPEG ultrasound cine is kept as received: GetFrames without numbers
    sends all 30 stored codestreams (was: frame 1 only); frame 0 or 31 is
    INVALID_ARGUMENT naming the range (was: NOT_FOUND 'frame -1')."""
    port, archive = server
    client = Client(port, admin(archive))
    src = corpus / "multiframe/us_cine/US_30fr_ybr422_jpeg.dcm"
    reply = client.store(src.read_bytes())
    assert reply.stored_syntax == "1.2.840.10008.1.2.4.50"
    frames = list(client.stub.GetFrames(pb.FramesRequest(
        sop_instance_uid=reply.sop_instance_uid), metadata=client.meta))
    assert [f.number for f in frames] == list(range(1, 31))
    sent = pydicom.dcmread(src)
    assert [f.data for f in frames] == list(pydicom.encaps.generate_frames(
        sent.PixelData, number_of_frames=30))  # the codestreams as sent, not re-encoded
    for bad in (0, 31):
        with pytest.raises(grpc.RpcError) as info:
            list(client.stub.GetFrames(pb.FramesRequest(
                sop_instance_uid=reply.sop_instance_uid, frames=[bad]), metadata=client.meta))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "from 1 to 30" in (info.value.details() or "")
