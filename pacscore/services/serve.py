"""``pacscore serve``: DIMSE, DICOMweb and gRPC on one archive, until SIGTERM."""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import math
import os
import resource
import shlex
import shutil
import signal
import ssl
import stat
import tempfile
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

import uvicorn

from ..archive import Archive
from ..config import ArchiveConfig
from ..errors import ArchiveBusyError
from ..store import Collectable, StoreSpec
from .auth.security import AuditLog
from .auth.tokens import TokenStore
from .auth.users import UserStore
from .dicomweb.app import create_app
from .dicomweb.http_limits import guarded_h11
from .dimse.server import DimseServer
from .fhir import create_fhir_app
from .grpc.server import start_grpc
from .viewer.install import AUTO_INSTALL_ENV
from .viewer.routes import ViewerSettings
from .viewer.static import ViewerBuild

__all__ = ["ServeConfig", "default_spool", "first_start_hint", "serve", "spool_folders"]

_SHM = Path("/dev/shm")
KILL_AFTER_COMMIT = "PACSCORE_TEST_HL7_KILL_AFTER_COMMIT"
"""Test hook: ``1`` makes the HL7 door SIGKILL the server after a message's commit,
before its ACK (the crash test of tests/test_hl7.py)."""
_SHM_FREE = 8 * 1024**3  # room for a few of the largest objects at once


def _is_tmpfs(path: Path) -> bool:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(m.split()[1:3] == [str(path), "tmpfs"] for m in mounts if len(m.split()) > 2)


_SPOOL_PREFIX = "pacscore-spool-"


def _spool_prefix(archive_root: Path) -> str:
    name = hashlib.sha256(str(archive_root.resolve()).encode()).hexdigest()[:16]
    return f"{_SPOOL_PREFIX}{name}-"


def spool_folders(archive_root: Path) -> list[Path]:
    """This archive's spool folders in ``/dev/shm`` (:func:`default_spool`) that belong
    to this user: while no server runs, those a killed one left."""
    prefix, uid = _spool_prefix(archive_root), os.geteuid()
    found = []
    for path in _SHM.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                found.append(path)
    return found


def default_spool(archive_root: Path) -> Path:
    """Where DIMSE data sets wait between arrival and storage: a new folder made for
    this server's run in ``/dev/shm`` when that is a memory file system with 8 GiB free
    (no disk work for files that live a few milliseconds; A/B runs here could not
    separate the gain from the machine's noise), else ``<archive>/spool``.  Nothing
    there is acknowledged yet, so a crash loses nothing the sender was told is stored.

    The folder in ``/dev/shm`` is made by ``mkdtemp``: a name nobody can predict and
    create first, mode 0700, so no other local user can read, add or swap a data set
    (a fixed name there was taken over by another user in the audit of 2026-12-03).
    Its name starts with the archive's hash, so the folders a killed server of this
    archive left are found and removed here first (the caller holds the archive's
    writer lock: no other server of it runs)."""
    if not (_is_tmpfs(_SHM) and shutil.disk_usage(_SHM).free >= _SHM_FREE):
        return archive_root / "spool"
    for left in spool_folders(archive_root):
        shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=_spool_prefix(archive_root), dir=_SHM))


def _raise_open_files_limit() -> None:
    """Let the process hold as many files as the hard limit allows: every connection
    (DIMSE, HTTP, gRPC) is one, and a server that runs out refuses all of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    return value


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError
    return float(value)


def _as_strings(value: object) -> tuple[str, ...]:
    """A list of strings; one string is a list of one (``cors = "https://a.example"``)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise TypeError
    return tuple(items)


# Setting type (the ServeConfig annotation) -> (what a value must be, an example, the
# conversion, which raises TypeError for a value of another type).
_SETTING_TYPES: dict[object, tuple[str, str, Callable[[object], object]]] = {
    str: ("a string", '"text"', _as_str),
    str | None: ("a string", '"/path/to/file"', _as_str),
    int | None: ("an integer", "2575", _as_int),
    int: ("an integer", "16", _as_int),
    float: ("a number", "60.0", _as_float),
    tuple[str, ...]: ("a list of strings", '["https://viewer.example"]', _as_strings),
}
# What TOML calls the type of a value found (TOML v1.0.0 names).
_TOML_KINDS: dict[type, str] = {
    str: "a string", int: "an integer", float: "a float", bool: "a boolean",
    list: "an array", dict: "a table", datetime.datetime: "a date-time",
    datetime.date: "a date", datetime.time: "a time",
}
_PORT = (lambda n: 1 <= n <= 65535, "a port number from 1 to 65535")
# Setting -> (the test its number must pass, what it must be).
_LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    "dimse_port": _PORT, "http_port": _PORT, "grpc_port": _PORT, "hl7_port": _PORT,
    "hl7_max_message": (lambda n: n > 0, "above 0 (bytes)"),
    "hl7_report_retry": (lambda n: 0 < n < math.inf, "above 0 and finite (seconds)"),
    "hl7_answers_days": (lambda n: 0 < n < math.inf, "above 0 and finite (days)"),
    "max_body": (lambda n: n > 0, "above 0 (bytes)"),
    # the PDU length field is 32 bits (PS3.8 9.3.1)
    "max_pdu": (lambda n: 0 <= n < 2**32, "0 (unlimited) or a length up to 4294967295"),
    "max_associations": (lambda n: n > 0, "above 0"),
    "worklist_max_answers": (lambda n: n >= 0, "0 (unlimited) or a count of answers"),
    "max_http_connections": (lambda n: n > 0, "above 0"),
    "max_connections_per_host": (lambda n: n > 0, "above 0"),
    "association_request_timeout": (lambda n: 0 < n < math.inf, "above 0 and finite (seconds)"),
    "idle_timeout": (lambda n: 0 < n < math.inf, "above 0 and finite (seconds)"),
    "gc_interval": (lambda n: 0 < n < math.inf, "above 0 and finite (seconds)"),
}


def _checked(cls: type, key: str, value: object, origin: str) -> object:
    """``value`` as setting ``key`` of ``cls`` takes it; ValueError naming the setting,
    what it must be and what was found when it does not fit."""
    field = next(f for f in fields(cls) if f.name == key)
    kind, example, convert = _SETTING_TYPES[get_type_hints(cls)[key]]
    if field.default not in (None, ()):
        example = str(field.default)
    cli = origin == "command line"
    name = f"--{key.replace('_', '-')}" if cli else key
    like = f"{name} {example}" if cli else f"{key} = {example}"
    try:
        converted = convert(value)
    except TypeError:
        found = next((v for t, v in _TOML_KINDS.items() if type(value) is t),
                     type(value).__name__)
        raise ValueError(f"{origin}: {name} must be {kind}, found {value!r} ({found}); "
                         f"write it like {like}") from None
    test, meaning = _LIMITS.get(key, (lambda n: True, ""))
    if isinstance(converted, int | float) and not test(converted):
        raise ValueError(f"{origin}: {name} must be {meaning}, found {value!r}; "
                         f"e.g. {like}")
    return converted


def _check_public_url(url: str) -> None:
    """ValueError unless ``url`` is an absolute http(s) URL without query or fragment."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and \
            not parts.query and not parts.fragment and (parts.port is None or parts.port > 0)
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"public_url must be an absolute http or https URL without query "
                         f"or fragment, found {url!r}; e.g. --public-url "
                         f"https://pacs.example.org (or https://example.org/pacs)")


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
    """Concurrent DIMSE associations (counted from their A-ASSOCIATE-RQ)."""
    max_http_connections: int = 256
    """Open HTTP connections; one more is answered 503 and closed at once."""
    max_connections_per_host: int = 8
    """Concurrent DIMSE connections from one source address (more are closed at once)."""
    association_request_timeout: float = 5.0
    """Seconds a DIMSE connection may take to send its A-ASSOCIATE-RQ."""
    idle_timeout: float = 60.0
    """Seconds a peer may send nothing before its DIMSE association, gRPC Store stream
    or STOW-RS request body is ended."""
    spool: str | None = None
    """Folder for DIMSE data sets while they are received and stored (default: see
    :func:`default_spool`)."""
    tls_cert: str | None = None
    """PEM certificate: enables TLS on all three services."""
    tls_key: str | None = None
    """PEM private key of ``tls_cert``."""
    tls_ca: str | None = None
    """PEM CA bundle: requires client certificates (mutual TLS) for DIMSE and gRPC."""
    worklist_max_answers: int = 5000
    """Modality Worklist C-FIND: a query matching more steps than this is refused
    (0xA700 with an Error Comment asking to narrow it; 0 = no limit)."""
    hl7_port: int | None = None
    """HL7 v2 over MLLP (off by default; senders are allowed by source address with
    ``pacscore hl7 allow HOST``)."""
    hl7_max_message: int = 64 * 1024**2
    """Largest HL7 message in bytes (a larger one is answered AR and its connection
    closed)."""
    hl7_answers_days: float = 30.0
    """Days the answer of each HL7 message is kept, so that a resend gets it again
    instead of being applied twice (older ones are dropped at start and daily)."""
    hl7_report_to: str | None = None
    """``HOST:PORT`` of the RIS/EMR that receives reports: every DICOM SR report stored
    is sent there as an ORU^R01 over MLLP, through a persistent outbox (off by
    default; ``pacscore hl7 outbox`` lists what waits)."""
    hl7_report_retry: float = 2.0
    """Seconds before the first retry of a report not delivered (then doubling, up to
    five minutes)."""
    index: str | None = None
    """The index, when it is not the archive's own LMDB index: a PostgreSQL URL
    (``postgresql://user@host:5432/database``; the frames stay in the archive folder
    unless ``store`` names an object store)."""
    store: str | None = None
    """The frames in object storage: ``s3://bucket/prefix?endpoint=URL`` (else where the
    archive folder keeps them).  With ``index`` a PostgreSQL URL too, several servers,
    each with its own archive folder (temp files, spool, tokens, users, audit), serve
    one archive at once (docs/scale.md)."""
    gc_interval: float = 3600.0
    """Seconds between two background collections of object-store orphans (what
    ``pacscore gc`` removes, after its one-hour grace period); with several servers,
    one of them runs each collection (a PostgreSQL advisory lock)."""
    public_url: str | None = None
    """The URL clients reach the HTTP service at (``https://pacs.example.org``, or
    with a path prefix, behind a reverse proxy): the URLs in DICOMweb answers
    (BulkDataURIs, Retrieve URLs) start with it.  Default: the request's own scheme,
    host and port."""

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any]) -> ServeConfig:
        """TOML file values, then explicit command-line values on top, each checked
        against its setting's type (:data:`_SETTING_TYPES`) and range
        (:data:`_LIMITS`); ValueError naming the setting otherwise."""
        values: dict[str, Any] = {}
        if path:
            with open(path, "rb") as f:
                try:
                    found = tomllib.load(f)
                except tomllib.TOMLDecodeError as exc:
                    raise ValueError(f"{path}: not valid TOML: {exc}") from None
            unknown = set(found) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
            values = {k: _checked(cls, k, v, path) for k, v in found.items()}
        values.update({k: _checked(cls, k, v, "command line")
                       for k, v in overrides.items() if v is not None})
        config = cls(**values)
        if bool(config.tls_cert) != bool(config.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if config.public_url is not None:
            _check_public_url(config.public_url)
        if config.hl7_report_to is not None:
            from .hl7.reports import parse_destination  # only when asked for
            parse_destination(config.hl7_report_to)
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


def _start_hl7(archive: Archive, audit: AuditLog, config: ServeConfig,
               cleanup: contextlib.ExitStack) -> str:
    """Start the HL7 doors asked for (MLLP in, reports out); what the start line says
    of them."""
    said = ""
    if config.hl7_port is not None:
        from .hl7 import MllpServer, MllpSettings  # only when asked for
        mllp = MllpServer(archive, audit, MllpSettings(
            max_message=config.hl7_max_message, idle_timeout=config.idle_timeout,
            kill_after_commit=os.environ.get(KILL_AFTER_COMMIT) == "1",
            answers_kept=config.hl7_answers_days * 86400))
        mllp.start(config.host, config.hl7_port)
        cleanup.callback(mllp.stop)
        said += f", HL7 (MLLP) on {config.host}:{config.hl7_port}"
    if config.hl7_report_to is not None:
        from .hl7.reports import ReportSender  # only when asked for
        sender = ReportSender(archive, config.hl7_report_to, audit=audit,
                              retry=config.hl7_report_retry)
        sender.start()
        cleanup.callback(sender.stop)
        said += f", reports (ORU^R01) to {config.hl7_report_to}"
    return said


def _start_gc(archive: Archive, config: ServeConfig, cleanup: contextlib.ExitStack) -> None:
    """Collect the object store's orphans every ``gc_interval`` seconds, on one server
    of the archive at a time (:mod:`pacscore.background`); nothing for a local store."""
    if not isinstance(archive.store_, Collectable):
        return
    from ..background import Periodic
    from ..gc import DEFAULT_GRACE, collect_garbage

    def collect() -> str:
        report = collect_garbage(archive.index, archive.store_, grace=DEFAULT_GRACE)
        return (f"{report.locations} locations, {len(report.removed)} orphans removed "
                f"({report.bytes_removed} bytes)")

    cleanup.callback(Periodic(archive.index, "gc", collect, config.gc_interval).start().stop)


def first_start_hint(admin_file: Path, archive_root: Path, url: str) -> str:
    """What ``serve`` prints when it wrote an admin token: where it is and commands
    that work as printed (absolute, shell-quoted paths); never the secret, which would
    end up in service logs."""
    token_file = shlex.quote(str(admin_file.absolute()))
    archive = shlex.quote(str(archive_root.absolute()))
    return (f"pacscore: first start (no admin token existed): a new one is in "
            f"{token_file} (mode 0600, readable by this user only; its secret is not "
            f"printed)\n"
            f"  use it as: curl -H \"Authorization: Bearer $(cat {token_file})\" {url}\n"
            f"  create narrower ones with: pacscore token create --scope read "
            f"--archive {archive}")


def _viewer(tls: bool) -> ViewerSettings:
    """The viewer door's settings; a missing OHIF build starts installing in the
    background (the server listens meanwhile; /viewer answers 503 until it is ready)."""
    settings = ViewerSettings(build=ViewerBuild(), tls=tls)
    if os.environ.get(AUTO_INSTALL_ENV, "1") != "0":
        settings.build.install_in_background()
    return settings


def serve(archive_dir: Path, config: ServeConfig) -> None:
    """Run until SIGTERM/SIGINT; acknowledged data is committed before any answer, so
    stopping never loses it."""
    host, ae_title, http_port = config.host, config.ae_title, config.http_port
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    workers = os.cpu_count() or 1
    _raise_open_files_limit()
    with Archive(archive_dir, ArchiveConfig(prepare_workers=workers), index=config.index,
                 store=StoreSpec.from_url(config.store) if config.store else None
                 ) as archive, \
            contextlib.ExitStack() as cleanup:  # also when a start fails
        if not archive.writable:
            raise ArchiveBusyError(
                f"{archive_dir} is already served or written by another process",
                hint="stop it first: one writer per archive folder (several servers of "
                     "one archive: each its own folder, with --index postgresql://... "
                     "and --store s3://...)")
        _start_gc(archive, config, cleanup)
        archive.start_workers()
        admin_file = TokenStore(archive.root).ensure_admin()
        scheme = "https" if config.tls_cert else "http"
        if admin_file is not None:
            print(first_start_hint(admin_file, archive.root,
                                   f"{scheme}://{host}:{http_port}/dicom-web/studies"),
                  flush=True)
        dimse = DimseServer(archive, ae_title=ae_title, max_pdu=config.max_pdu,
                            max_associations=config.max_associations,
                            max_connections_per_host=config.max_connections_per_host,
                            association_request_timeout=config.association_request_timeout,
                            idle_timeout=config.idle_timeout,
                            spool=Path(config.spool) if config.spool
                            else default_spool(archive.root),
                            worklist_max_answers=config.worklist_max_answers)
        archive.worklist.on_change(lambda event: dimse.audit.workflow(event, interface="serve"))
        cleanup.callback(dimse.stop)  # the spool goes with it
        dimse.start(host, config.dimse_port, ssl_context=config.server_ssl())
        viewer = _viewer(tls=bool(config.tls_cert))
        first_user = UserStore(archive.root).ensure_admin()
        app = create_app(archive, cors_origins=list(config.cors) or None,
                         max_body=config.max_body, idle_timeout=config.idle_timeout,
                         public_url=config.public_url, viewer=viewer)
        app.mount("/fhir", create_fhir_app(archive, public_url=config.public_url))
        # Connections are bounded in number, request heads in time (10 s, or the idle
        # timeout if shorter) and size (h11's 16 KiB), bodies in pauses (http_limits).
        protocol = guarded_h11(max_connections=config.max_http_connections,
                               header_timeout=min(config.idle_timeout, 10.0),
                               body_timeout=config.idle_timeout + 5.0)
        http = uvicorn.Server(uvicorn.Config(
            app, host=host, port=http_port, log_level="warning", lifespan="on",
            http=protocol, server_header=False, timeout_keep_alive=30,
            timeout_graceful_shutdown=5,
            ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key))
        web = threading.Thread(target=http.run, name="dicomweb", daemon=True)
        web.start()
        while not http.started and web.is_alive():
            stop.wait(0.05)
        if not http.started:  # uvicorn logged why (a port taken): no server without it
            raise OSError(f"the DICOMweb door did not start on {host}:{http_port}")
        rpc = start_grpc(archive, host, config.grpc_port, max_object=config.max_body,
                         idle_timeout=config.idle_timeout,
                         tls=(config.tls_cert, config.tls_key, config.tls_ca)
                         if config.tls_cert and config.tls_key else None)
        hl7 = _start_hl7(archive, dimse.audit, config, cleanup)
        print(f"pacscore: viewer at {scheme}://{host}:{http_port}/viewer/ "
              f"({viewer.build.dist or viewer.build.unavailable()}); "
              + (f"log in as admin with the password in "
                 f"{shlex.quote(str(first_user.absolute()))} (0600, not printed); "
                 if first_user else "")
              + f"users: pacscore user add NAME --archive "
                f"{shlex.quote(str(archive.root.absolute()))}", flush=True)
        registered = len(dimse.registry.list())
        print(f"pacscore: listening: DIMSE {ae_title} on {host}:{config.dimse_port} "
              f"({registered} registered AE(s)), DICOMweb on {scheme}://{host}:{http_port}"
              f"/dicom-web (FHIR R4 at /fhir), gRPC on {host}:{config.grpc_port}{hl7}"
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
