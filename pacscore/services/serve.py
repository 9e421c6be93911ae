"""``pacscore serve``: DIMSE, DICOMweb and gRPC on one archive, until SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import uvicorn

from ..archive import Archive
from .dicomweb import create_app
from .dimse import DimseServer
from .grpc_api.server import start_grpc
from .tokens import TokenStore

__all__ = ["serve"]


def serve(archive_dir: Path, *, host: str = "127.0.0.1", dimse_port: int = 11112,
          http_port: int = 8042, grpc_port: int = 50051, ae_title: str = "PACSCORE",
          cors_origins: list[str] | None = None, max_body: int = 4 * 1024**3) -> None:
    """Run until SIGTERM/SIGINT; acknowledged data is committed before any answer, so
    stopping never loses it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Archive(archive_dir) as archive:
        token = TokenStore(archive.root).ensure_admin()
        if token:
            print(f"pacscore: first start: admin token written to "
                  f"{archive.root / 'security' / 'admin-token'}\n"
                  f"  use it as: curl -H 'Authorization: Bearer {token}' "
                  f"http://{host}:{http_port}/dicom-web/studies\n"
                  f"  and create narrower ones with `pacscore token create --scope read`",
                  flush=True)
        dimse = DimseServer(archive, ae_title=ae_title)
        dimse.start(host, dimse_port)
        app = create_app(archive, cors_origins=cors_origins, max_body=max_body)
        http = uvicorn.Server(uvicorn.Config(app, host=host, port=http_port,
                                             log_level="warning", lifespan="on",
                                             timeout_keep_alive=30))
        web = threading.Thread(target=http.run, name="dicomweb", daemon=True)
        web.start()
        while not http.started and web.is_alive():
            stop.wait(0.05)
        rpc = start_grpc(archive, host, grpc_port, max_object=max_body)
        registered = len(dimse.registry.list())
        print(f"pacscore: listening: DIMSE {ae_title} on {host}:{dimse_port} "
              f"({registered} registered AE(s)), DICOMweb on http://{host}:{http_port}"
              f"/dicom-web, gRPC on {host}:{grpc_port}", flush=True)
        dimse.audit.record("application", action="E", outcome="success", user=ae_title,
                           host=host, interface="serve", detail="started")
        stop.wait()
        rpc.stop(grace=10).wait()
        http.should_exit = True
        dimse.stop()
        web.join(timeout=30)
        dimse.audit.record("application", action="E", outcome="success", user=ae_title,
                           host=host, interface="serve", detail="stopped")
