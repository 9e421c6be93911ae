"""Partial uploads live only in the archive's temp folder: a `pacscore serve` killed
with -9 mid-STOW-RS and mid-gRPC-Store leaves their bytes (patient data) nowhere else,
and the next start empties the folder."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from pacscore import Archive
from pacscore.services.grpc.generated import load
from pacscore.testing import free_port


def wait_for(check: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kill_mid_stow_and_mid_grpc_store_leaves_files_only_in_tmp(
        tmp_path: Path, corpus: Path) -> None:
    archive = tmp_path / "archive"
    data = (corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl/1-01.dcm").read_bytes()
    ports = {"http": free_port(), "grpc": free_port()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacscore.cli", "serve", "--archive", str(archive),
         "--dimse-port", str(free_port()), "--http-port", str(ports["http"]),
         "--grpc-port", str(ports["grpc"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    release = threading.Event()
    pb, svc = load()

    def chunks() -> Iterator[object]:  # half the object, then nothing until released
        yield pb.StoreChunk(data=data[: len(data) // 2])
        release.wait(60)

    channel = None
    sock = None
    try:
        assert any("listening" in line for line in proc.stdout)
        token = (archive / "security" / "admin-token").read_text().strip()
        body = b"--cut\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--cut--\r\n"
        sock = socket.create_connection(("127.0.0.1", ports["http"]))
        sock.sendall((f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {token}\r\nContent-Type: multipart/related; "
                      f'type="application/dicom"; boundary=cut\r\n'
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) // 2])
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}")
        call = svc.ArchiveStub(channel).Store.future(
            chunks(), metadata=(("authorization", f"Bearer {token}"),))
        wait_for(lambda: any(p.stat().st_size > 0 for p in archive.rglob("*.part"))
                 and any(p.stat().st_size > 0 for p in archive.rglob("grpc-*.dcm")))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        partial = [p for p in archive.rglob("*") if p.is_file() and (
            p.suffix == ".part" or p.name.startswith("grpc-"))]
        assert partial and all((archive / "tmp") in p.parents for p in partial), partial
        assert not list(archive.glob("stow-*"))
        release.set()
        call.cancel()
    finally:
        release.set()
        if sock is not None:
            sock.close()
        if channel is not None:
            channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    (archive / "stow-old").mkdir()  # what earlier versions left in the archive root
    (archive / "stow-old" / "tmp1.part").write_bytes(data[:100])
    (archive / "grpc-old.dcm").write_bytes(data[:100])
    with Archive(archive) as reopened:  # the next writer (a restart) empties it
        assert reopened.writable
        assert list(reopened.tmp_dir.iterdir()) == []
        assert stat.S_IMODE(reopened.tmp_dir.stat().st_mode) == 0o700
    assert not [p for p in archive.rglob("*") if p.suffix == ".part"
                or p.name.startswith(("grpc-", "stow-"))]
