"""Test helpers and contract suites for pacscore and its back ends (like zarr.testing).

``serving`` (``serve_process``: with the process, chosen doors, environment) starts
``pacscore serve`` on fresh loopback ports and always stops it
(SIGTERM and a check of the clean exit, then kill if needed); ``cli`` runs the command;
``peer_process`` runs a peer (Orthanc, DCMTK's storescp, ...) until it accepts
connections, its output in a log file, and always stops it.

The contract suites a new back end subclasses to prove it keeps the contract:

- :class:`pacscore.testing.store.FrameStoreTests` (override ``store_factory``),
- :class:`pacscore.testing.index.IndexTests` (override ``index_factory``).

Those two modules need pytest (the ``test`` extra: ``pip install pacscore[test]``);
this module and ``import pacscore`` do not import it.  Register them for pytest's
assertion rewriting (``pytest.register_assert_rewrite("pacscore.testing")`` in a
``conftest.py``) to get detailed assertion messages."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["cli", "free_port", "peer_process", "serve_process", "serving"]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> str:
    """Run the pacscore command; return its stdout (raises on a non-zero exit)."""
    return subprocess.run([sys.executable, "-m", "pacscore.cli", *args], check=True,
                          capture_output=True, text=True).stdout


_ALWAYS_OPEN = ("dimse", "http", "grpc")
"""Doors ``pacscore serve`` opens whatever it is told."""


@contextmanager
def serve_process(archive: Path, *extra: str, doors: Sequence[str] = ("dimse", "http", "grpc"),
                  env: Mapping[str, str] | None = None, output: list[str] | None = None
                  ) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """Run ``pacscore serve`` with each of ``doors`` on a fresh port (``--<door>-port``);
    yield the process and the ports; check the clean shutdown on SIGTERM (unless the
    caller ended the process itself).  ``output`` receives the lines the server printed
    until it listened; ``env`` is added to the environment.  The doors serve always
    opens get a fresh port too, asked for or not (never the defaults: a second server
    on the machine would find them taken)."""
    ports = {door: free_port() for door in dict.fromkeys((*doors, *_ALWAYS_OPEN))}
    flags = [arg for door, port in ports.items() for arg in (f"--{door}-port", str(port))]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacscore.cli", "serve", "--archive", str(archive), *flags,
         *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "listening" in line:
                break
        else:
            raise AssertionError("pacscore serve did not start:\n" + "".join(seen))
        if output is not None:
            output.extend(seen)
        yield proc, ports
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, "unclean shutdown"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@contextmanager
def serving(archive: Path, *extra: str,
            output: list[str] | None = None) -> Iterator[dict[str, int]]:
    """Run the services on fresh ports; yield the ports; check the clean shutdown.
    ``output`` receives the lines the server printed until it listened."""
    with serve_process(archive, *extra, output=output) as (_, ports):
        yield ports


@contextmanager
def peer_process(command: Sequence[str], port: int, log: Path, *,
                 env: Mapping[str, str] | None = None, timeout: float = 30
                 ) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (a peer server) with its output in the file ``log``; yield the
    process once it accepts TCP connections on loopback ``port``; always stop it
    (SIGTERM, then kill after 30 s).  A peer that exits or does not listen within
    ``timeout`` seconds raises RuntimeError with the end of its log."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                env=None if env is None else dict(env))
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{Path(command[0]).name} did not start (exit {proc.poll()}); "
                            f"{log}:\n{log.read_text(errors='replace')[-2000:]}") from None
                    time.sleep(0.1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
