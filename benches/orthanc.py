"""Orthanc (the Debian package) as a peer measured in the same run as pacscore, and
DCMTK's ``storescp`` as the floor of a native C-STORE receiver.

Each use starts Orthanc on a fresh storage folder with default settings but the ones
a benchmark must pin: loopback only, no HTTP server, no plugins, storage compression on
or off, and by default ``TCP_NODELAY=1`` in its environment.  Orthanc's DICOM server is
DCMTK's, and DCMTK keeps Nagle's algorithm on without that variable (FACTS.md): every
C-STORE then waits for a delayed ACK, and Orthanc stores 75-78 inst/s with 4
associations here instead of 254-259.  Comparing only against that would flatter us;
``nodelay=False`` runs it as shipped, the issue's "default settings", for that row.

``storescp`` (:func:`storescp_running`) receives and writes each instance as a file,
nothing else: no flush, no hash, no index, no codec.  Its CPU per instance is what a
native receiver spends on DIMSE and the file alone, the floor below any archive's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacscore.testing import free_port

__all__ = ["AE_TITLE", "BINARY", "DICOMWEB_PLUGIN", "STORESCP", "installed", "running",
           "running_dicomweb", "storescp_running"]

BINARY = Path("/usr/sbin/Orthanc")
AE_TITLE = "ORTHANC"


STORESCP = Path("/usr/bin/storescp")


def _listening(proc: subprocess.Popen[bytes], port: int, name: str, log: Path) -> None:
    """Wait until ``proc`` accepts connections on ``port`` (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start (exit {proc.poll()}); see "
                                   f"{log}") from None
            time.sleep(0.1)


def _stopped(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def storescp_running(folder: Path, ae_title: str, pids: list[int]) -> Iterator[int]:
    """Run DCMTK's storescp writing into ``folder`` (a process per association, as
    ``--fork``; Nagle off, as for Orthanc); yield its port; ``pids`` receives its
    process id."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (folder / "storescp.log").open("wb")
    proc = subprocess.Popen([str(STORESCP), "--fork", "-aet", ae_title, "-od", str(folder),
                             str(port)], env={**os.environ, "TCP_NODELAY": "1"},
                            stdout=log, stderr=subprocess.STDOUT)
    pids.append(proc.pid)
    try:
        _listening(proc, port, "storescp", folder / "storescp.log")
        yield port
    finally:
        _stopped(proc)
        log.close()


def installed() -> bool:
    """True when the Debian package's server binary is here."""
    return BINARY.exists()


@contextmanager
def running(folder: Path, *, compression: bool = False, nodelay: bool = True,
            pids: list[int] | None = None) -> Iterator[int]:
    """Run Orthanc with its storage and index in ``folder``; yield its DICOM port.
    ``nodelay``: with ``TCP_NODELAY=1`` in its environment (else as shipped); ``pids``
    receives its process id (for its CPU time)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "pacscore-bench", "DicomAet": AE_TITLE, "DicomPort": port,
        "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "StorageCompression": compression, "HttpServerEnabled": False,
        "RemoteAccessAllowed": False, "Plugins": [],
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    proc = subprocess.Popen([str(BINARY), str(folder / "orthanc.json")],
                            env={**env, "TCP_NODELAY": "1"} if nodelay else env,
                            stdout=log, stderr=subprocess.STDOUT)
    if pids is not None:
        pids.append(proc.pid)
    try:
        _listening(proc, port, "Orthanc", folder / "orthanc.log")
        yield port
    finally:
        _stopped(proc)
        log.close()


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@contextmanager
def running_dicomweb(folder: Path, *, compression: bool = False) -> Iterator[int]:
    """Run Orthanc with its HTTP server and the DICOMweb plugin (Debian
    ``orthanc-dicomweb``) on loopback, no authentication; yield its HTTP port (REST at
    ``/``, DICOMweb at ``/dicom-web/``).  Its HTTP server sets TCP_NODELAY by default
    (``TcpNoDelay``), so best-configured and as shipped differ only in
    ``compression``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "pacscore-bench", "DicomAet": AE_TITLE, "DicomPort": free_port(),
        "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "StorageCompression": compression, "HttpServerEnabled": True, "HttpPort": port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    proc = subprocess.Popen([str(BINARY), str(folder / "orthanc.json")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _listening(proc, port, "Orthanc", folder / "orthanc.log")
        yield port
    finally:
        _stopped(proc)
        log.close()
