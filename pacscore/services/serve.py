"""``pacscore serve``: DIMSE, DICOMweb and gRPC on one archive, until SIGTERM."""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import signal
import ssl
import threading
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import uvicorn

from ..archive import Archive
from ..config import ArchiveConfig
from ..errors import ArchiveBusyError
from .dicomweb import create_app
from .dimse import DimseServer
from .grpc_api.server import start_grpc
from .tokens import TokenStore

__all__ = ["ServeConfig", "default_spool", "serve"]

_SHM = Path("/dev/shm")
_SHM_FREE = 8 * 1024**3  # room for a few of the largest objects at once


def _is_tmpfs(path: Path) -> bool:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(m.split()[1:3] == [str(path), "tmpfs"] for m in mounts if len(m.split()) > 2)


def default_spool(archive_root: Path) -> Path:
    """Where DIMSE data sets wait between arrival and storage: a folder of this archive
    in ``/dev/shm`` when that is a memory file system with 8 GiB free (no disk work
    for files that live a few milliseconds; A/B runs here could not separate the gain
    from the machine's noise), else ``<archive>/spool``.  Nothing there is
    acknowledged yet, so a crash loses nothing the sender was told is stored."""
    if _is_tmpfs(_SHM) and shutil.disk_usage(_SHM).free >= _SHM_FREE:
        name = hashlib.sha256(str(archive_root.resolve()).encode()).hexdigest()[:16]
        return _SHM / f"pacscore-spool-{name}"
    return archive_root / "spool"


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Settings of ``pacscore serve`` (``--config FILE`` in TOML uses these names)."""

    host: str = "127.0.0.1"
    """Listen address (loopback unless told otherwise)."""
    dimse_port: int = 11112
    """DIMSE port."""
    http_port: int = 8042
    """DICOMweb port."""
    grpc_port: int = 50051
    """gRPC port."""
    ae_title: str = "PACSCORE"
    """Called AE title."""
    cors: tuple[str, ...] = ()
    """Browser origins allowed by CORS."""
    max_body: int = 4 * 1024**3
    """Largest STOW-RS body / gRPC object in bytes."""
    max_pdu: int = 16 * 1024**2
    """Largest DIMSE PDU we accept (0 = unlimited)."""
    max_associations: int = 16
    """Concurrent DIMSE associations."""
    idle_timeout: float = 60.0
    """Seconds before an idle DIMSE association is dropped."""
    spool: str | None = None
    """Folder for DIMSE data sets while they are received and stored (default: see
    :func:`default_spool`)."""
    tls_cert: str | None = None
    """PEM certificate: enables TLS on all three services."""
    tls_key: str | None = None
    """PEM private key of ``tls_cert``."""
    tls_ca: str | None = None
    """PEM CA bundle: requires client certificates (mutual TLS) for DIMSE and gRPC."""

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any]) -> ServeConfig:
        """TOML file values, then explicit command-line values on top."""
        values: dict[str, Any] = {}
        if path:
            with open(path, "rb") as f:
                values = tomllib.load(f)
            unknown = set(values) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "cors" in values:
            values["cors"] = tuple(values["cors"])
        config = cls(**values)
        if bool(config.tls_cert) != bool(config.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")
        return config

    def server_ssl(self) -> ssl.SSLContext | None:
        """TLS 1.2+ server context (PS3.15 B.9), client certificates if ``tls_ca``."""
        if not self.tls_cert or not self.tls_key:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_ca:
            ctx.load_verify_locations(self.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def serve(archive_dir: Path, config: ServeConfig) -> None:
    """Run until SIGTERM/SIGINT; acknowledged data is committed before any answer, so
    stopping never loses it."""
    host, ae_title, http_port = config.host, config.ae_title, config.http_port
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    workers = os.cpu_count() or 1
    with Archive(archive_dir, ArchiveConfig(prepare_workers=workers)) as archive:
        if not archive.writable:
            raise ArchiveBusyError(f"{archive_dir} is already served or written by another "
                                   f"process", hint="stop it first: one writer per archive")
        archive.start_workers()
        token = TokenStore(archive.root).ensure_admin()
        scheme = "https" if config.tls_cert else "http"
        if token:
            print(f"pacscore: first start: admin token written to "
                  f"{archive.root / 'security' / 'admin-token'}\n"
                  f"  use it as: curl -H 'Authorization: Bearer {token}' "
                  f"{scheme}://{host}:{http_port}/dicom-web/studies\n"
                  f"  and create narrower ones with `pacscore token create --scope read`",
                  flush=True)
        dimse = DimseServer(archive, ae_title=ae_title, max_pdu=config.max_pdu,
                            max_associations=config.max_associations,
                            idle_timeout=config.idle_timeout,
                            spool=Path(config.spool) if config.spool
                            else default_spool(archive.root))
        dimse.start(host, config.dimse_port, ssl_context=config.server_ssl())
        app = create_app(archive, cors_origins=list(config.cors) or None,
                         max_body=config.max_body, idle_timeout=config.idle_timeout)
        http = uvicorn.Server(uvicorn.Config(
            app, host=host, port=http_port, log_level="warning", lifespan="on",
            timeout_keep_alive=30, timeout_graceful_shutdown=5, ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key))
        web = threading.Thread(target=http.run, name="dicomweb", daemon=True)
        web.start()
        while not http.started and web.is_alive():
            stop.wait(0.05)
        rpc = start_grpc(archive, host, config.grpc_port, max_object=config.max_body,
                         tls=(config.tls_cert, config.tls_key, config.tls_ca)
                         if config.tls_cert and config.tls_key else None)
        registered = len(dimse.registry.list())
        print(f"pacscore: listening: DIMSE {ae_title} on {host}:{config.dimse_port} "
              f"({registered} registered AE(s)), DICOMweb on {scheme}://{host}:{http_port}"
              f"/dicom-web, gRPC on {host}:{config.grpc_port}"
              f"{' (TLS)' if config.tls_cert else ''}", flush=True)
        dimse.audit.record("application", action="E", outcome="success", user=ae_title,
                           host=host, interface="serve", detail="started")
        # Everything alive now (pydicom's data dictionary, numba, protobuf descriptors:
        # millions of objects) lives until exit: keep it out of the cyclic garbage
        # collector, whose full passes over it cost ~90 ms, every few QIDO-RS requests.
        gc.collect()
        gc.freeze()
        stop.wait()
        rpc.stop(grace=10).wait()
        http.should_exit = True
        dimse.stop()
        web.join(timeout=15)
        dimse.audit.record("application", action="E", outcome="success", user=ae_title,
                           host=host, interface="serve", detail="stopped")
