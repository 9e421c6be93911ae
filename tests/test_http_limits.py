"""HTTP connections of `pacscore serve` are bounded: in number (one more is answered 503
and closed, the server's descriptors stay bounded), in the time a request head may take
(slow or silent clients get 408 and are closed) and in how a body may trickle; normal
requests are answered meanwhile."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pacscore.testing import free_port

HEAD = b"GET /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: unfinished


@contextmanager
def server(archive: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`pacscore serve` (its process, to count its descriptors) on fresh ports."""
    http = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacscore.cli", "serve", "--archive", str(archive),
         "--dimse-port", str(free_port()), "--http-port", str(http),
         "--grpc-port", str(free_port()), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if "listening" in line:
                break
        else:
            raise AssertionError("pacscore serve did not start")
        yield proc, http
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "unclean shutdown"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ask(port: int, request: bytes = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
    """One whole request on a fresh connection; the answer's first line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        return s.recv(65536).split(b"\r\n", 1)[0]


def closed_with(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing ``sock`` within ``within`` seconds (None: it
    is still open)."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


@contextmanager
def sockets() -> Iterator[Callable[[socket.socket], socket.socket]]:
    """Closes every socket handed to the function it yields."""
    opened: list[socket.socket] = []

    def keep(s: socket.socket) -> socket.socket:
        opened.append(s)
        return s

    try:
        yield keep
    finally:
        for s in opened:
            s.close()


@pytest.fixture(autouse=True)
def _enough_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


def test_slow_and_silent_request_heads_are_closed(tmp_path: Path) -> None:
    """Connections that never finish their request head (silent ones, ones that send a
    byte now and then) get 408 and are closed after the head timeout (here 2 s, the
    idle timeout); a normal request is answered while they wait."""
    with server(tmp_path / "archive", "--idle-timeout", "2") as (_proc, port), \
            sockets() as opened:
        slow = [opened(socket.create_connection(("127.0.0.1", port))) for _ in range(30)]
        for i, s in enumerate(slow):
            if i % 2:
                s.sendall(HEAD)  # half a request; the others say nothing at all
        trickle = opened(socket.create_connection(("127.0.0.1", port)))
        started = time.monotonic()
        assert ask(port) == b"HTTP/1.1 200 OK"  # served meanwhile
        try:
            for byte in HEAD:  # a byte every 0.5 s: each arrival must not re-arm it
                trickle.sendall(bytes([byte]))
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answers = [closed_with(s, 20) for s in [*slow, trickle]]
        elapsed = time.monotonic() - started
        assert all(a is not None and a.startswith(b"HTTP/1.1 408") for a in answers), answers
        assert elapsed < 20
        assert ask(port) == b"HTTP/1.1 200 OK"


def test_connections_beyond_the_bound_get_503_and_descriptors_stay_bounded(
        tmp_path: Path) -> None:
    """1,100 connections that send half a request head and no token: the server keeps
    at most --max-http-connections of them (each one more is answered 503 and closed at
    once), so its open descriptors stay bounded; once the held ones time out, a normal
    request is answered again."""
    with server(tmp_path / "archive", "--idle-timeout", "3",
                "--max-http-connections", "100") as (proc, port), sockets() as opened:
        baseline = descriptors(proc.pid)
        held: list[socket.socket] = []
        for _ in range(1100):
            s = opened(socket.create_connection(("127.0.0.1", port), timeout=30))
            s.sendall(HEAD)
            held.append(s)
        time.sleep(0.5)
        assert descriptors(proc.pid) <= baseline + 100 + 10
        refused = [a for a in (closed_with(s, 0.2) for s in held[200:]) if a is not None]
        assert len(refused) == 900 and all(a.startswith(b"HTTP/1.1 503") for a in refused)
        answers = [closed_with(s, 20) for s in held[:100]]
        assert all(a is not None and a.startswith(b"HTTP/1.1 408") for a in answers)
        assert ask(port) == b"HTTP/1.1 200 OK"
        for s in held:
            s.close()
        time.sleep(0.5)
        assert descriptors(proc.pid) <= baseline + 5


def test_trickling_and_unwanted_bodies_are_closed(tmp_path: Path) -> None:
    """A body that the answer did not need (refused: no token) may linger a few seconds,
    not indefinitely however slowly it trickles; a body read by the server that comes
    slower than the minimum rate is ended too."""
    with server(tmp_path / "archive", "--idle-timeout", "2") as (_proc, port), \
            sockets() as opened:
        refused = opened(socket.create_connection(("127.0.0.1", port)))
        refused.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: multipart/related; boundary=b\r\n"
                        b"Content-Length: 100000\r\n\r\n")
        refused.settimeout(10)
        assert refused.recv(65536).startswith(b"HTTP/1.1 401")
        started = time.monotonic()
        refused.settimeout(1)
        while time.monotonic() - started < 30:
            try:
                refused.sendall(b"x")  # a byte a second
                if refused.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        assert time.monotonic() - started < 15  # LINGER (5 s) and one check period
        assert ask(port) == b"HTTP/1.1 200 OK"


def test_a_stow_body_slower_than_the_minimum_rate_is_ended(tmp_path: Path) -> None:
    """A STOW-RS body that never pauses as long as the idle timeout but comes at a byte a
    second is ended once it has taken the body timeout (idle timeout + 5 s): its
    connection does not stay open for the days 100 kB would take; nothing is stored."""
    archive = tmp_path / "archive"
    with server(archive, "--idle-timeout", "2") as (_proc, port), sockets() as opened:
        token = (archive / "security" / "admin-token").read_text().strip()
        slow = opened(socket.create_connection(("127.0.0.1", port)))
        slow.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + token.encode() + b"\r\n"
                     b"Content-Type: multipart/related; type=\"application/dicom\"; "
                     b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
                     b"Content-Type: application/dicom\r\n\r\n")
        started = time.monotonic()
        slow.settimeout(1)
        ended = False
        while time.monotonic() - started < 40 and not ended:
            try:
                slow.sendall(b"x")
                ended = slow.recv(65536) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                ended = True
        assert ended and time.monotonic() - started < 20
        assert ask(port) == b"HTTP/1.1 200 OK"
    assert not list((archive / "tmp").rglob("*.part"))
