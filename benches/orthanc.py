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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacscore.testing import free_port, peer_process

__all__ = ["AE_TITLE", "BINARY", "DICOMWEB_PLUGIN", "STORESCP", "installed", "running",
           "running_dicomweb", "storescp_running"]

BINARY = Path("/usr/sbin/Orthanc")
AE_TITLE = "ORTHANC"


STORESCP = Path("/usr/bin/storescp")


@contextmanager
def storescp_running(folder: Path, ae_title: str, pids: list[int]) -> Iterator[int]:
    """Run DCMTK's storescp writing into ``folder`` (a process per association, as
    ``--fork``; Nagle off, as for Orthanc); yield its port; ``pids`` receives its
    process id."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with peer_process([str(STORESCP), "--fork", "-aet", ae_title, "-od", str(folder),
                       str(port)], port, folder / "storescp.log",
                      env={**os.environ, "TCP_NODELAY": "1"}) as proc:
        pids.append(proc.pid)
        yield port


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
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    with peer_process([str(BINARY), str(folder / "orthanc.json")], port,
                      folder / "orthanc.log",
                      env={**env, "TCP_NODELAY": "1"} if nodelay else env) as proc:
        if pids is not None:
            pids.append(proc.pid)
        yield port


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
    with peer_process([str(BINARY), str(folder / "orthanc.json")], port,
                      folder / "orthanc.log"):
        yield port
