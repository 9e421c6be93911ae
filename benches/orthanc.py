"""Orthanc (the Debian package) as a peer measured in the same run as pacscore.

Each use starts Orthanc on a fresh storage folder with default settings but the ones
a benchmark must pin: loopback only, no HTTP server, no plugins, storage compression on
or off, and by default ``TCP_NODELAY=1`` in its environment.  Orthanc's DICOM server is
DCMTK's, and DCMTK keeps Nagle's algorithm on without that variable (FACTS.md): every
C-STORE then waits for a delayed ACK, and Orthanc stores 75-78 inst/s with 4
associations here instead of 254-259.  Comparing only against that would flatter us;
``nodelay=False`` runs it as shipped, the issue's "default settings", for that row.
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

__all__ = ["AE_TITLE", "BINARY", "DICOMWEB_PLUGIN", "installed", "running", "running_dicomweb"]

BINARY = Path("/usr/sbin/Orthanc")
AE_TITLE = "ORTHANC"


def installed() -> bool:
    """True when the Debian package's server binary is here."""
    return BINARY.exists()


@contextmanager
def running(folder: Path, *, compression: bool = False, nodelay: bool = True) -> Iterator[int]:
    """Run Orthanc with its storage and index in ``folder``; yield its DICOM port.
    ``nodelay``: with ``TCP_NODELAY=1`` in its environment (else as shipped)."""
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
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start (exit {proc.poll()}); see "
                                       f"{folder / 'orthanc.log'}") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
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
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start (exit {proc.poll()}); see "
                                       f"{folder / 'orthanc.log'}") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
