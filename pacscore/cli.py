"""The ``pacscore`` command: a thin front end over :class:`pacscore.Archive`.

Exit codes: 0 ok; 1 some inputs rejected or some frames failed verification;
2 usage or archive error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .cli_gc import add_parser as add_gc_parser
from .cli_migrate import add_parser as add_migrate_parser
from .cli_patient import add_parser as add_patient_parser
from .cli_viewer import add_parser as add_viewer_parser
from .cli_worklist import add_parser as add_worklist_parser
from .config import DEFAULT_BUDGET, ArchiveConfig
from .errors import PacsError
from .jobs.walk import count_files
from .kinds import CODEC_NAMES, Level

if TYPE_CHECKING:
    from .archive import Archive

# The archive engine (numba kernels, zarr, pydicom, codecs) is imported by the commands
# that use it, not here: --help and a mistyped option answer at once (issue 14.2).

__all__ = ["main"]

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2


class _Progress:
    """One status line on stderr: files, MB, rate, ETA.  Silent when not a terminal."""

    def __init__(self, total_files: int, total_bytes: int, enabled: bool):
        self.total_files, self.total_bytes = total_files, total_bytes
        self.enabled = enabled
        self.files = self.bytes = 0
        self.start = self.last = time.monotonic()

    def advance(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and self.files < self.total_files):
            return
        self.last = now
        rate = self.bytes / max(now - self.start, 1e-9)
        eta = (self.total_bytes - self.bytes) / rate if rate else 0.0
        pct = 100.0 * self.files / max(self.total_files, 1)
        sys.stderr.write(
            f"\r{self.files}/{self.total_files} files ({pct:5.1f}%)  "
            f"{self.bytes / 1e6:8.1f}/{self.total_bytes / 1e6:.1f} MB  "
            f"{rate / 1e6:6.1f} MB/s  ETA {eta:5.0f} s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _config(args: argparse.Namespace) -> ArchiveConfig:
    return ArchiveConfig(codec=getattr(args, "codec", "htj2k") or "htj2k",
                         transcode_compressed=getattr(args, "transcode_compressed", False))


def _cmd_import(args: argparse.Namespace) -> int:
    n_files, total = count_files(args.paths)
    if n_files and args.workers > 0 and not args.dask:  # the workers' server imports the
        from .workers import forkserver_context  # pipeline (0.9 s) while this process

        forkserver_context()  # imports the archive and opens it: on 2 cores, at once
    from .archive import Archive
    from .jobs.importing import run_import
    from .store import StoreSpec

    progress = _Progress(n_files, total, enabled=not args.json and sys.stderr.isatty())
    started = time.monotonic()
    store = StoreSpec.from_url(args.store) if args.store else None
    with Archive(args.archive, _config(args), store=store, index=args.index) as archive:
        report = run_import(archive, args.paths, workers=args.workers,
                            dask_address=args.dask, resume=args.resume,
                            progress=progress.advance)
    progress.close()
    report.seconds = time.monotonic() - started
    print(json.dumps(report.to_dict()) if args.json else report.to_text())
    if report.accounted != report.files:  # every input ends in exactly one category
        print(f"pacscore: internal error: {report.files} files walked but "
              f"{report.accounted} accounted for", file=sys.stderr)
        return EXIT_ERROR
    if report.failed:
        first = report.failed[0]
        print(f"pacscore: {len(report.failed)} of {report.files} files failed (first: "
              f"{first['path']}: {first['reason']})", file=sys.stderr)
    return report.exit_code


def _reading(args: argparse.Namespace) -> Archive:
    """The archive of a read command, read-only; its index and store as given, else as
    its folder remembers them."""
    from .archive import Archive
    from .store import StoreSpec

    store = StoreSpec.from_url(args.store) if args.store else None
    return Archive(args.archive, readonly=True, store=store, index=args.index)


def _cmd_export(args: argparse.Namespace) -> int:
    from .cli_support import export_instances

    out = Path(args.out)
    failed = 0
    with _reading(args) as archive:
        sops = export_instances(archive, args.uids)
        out.mkdir(parents=True, exist_ok=True)
        for uid in sops:
            try:
                data = archive.get(uid, args.transfer_syntax)
            except PacsError as exc:
                print(f"{uid}: {exc}", file=sys.stderr)
                failed += 1
                continue
            # The file name is the UID, which get() proved to be an indexed, validated UID.
            target = out / f"{uid}.dcm"
            tmp = target.with_suffix(".dcm.part")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            print(target)
    return EXIT_PARTIAL if failed else EXIT_OK


def _cmd_compress(args: argparse.Namespace) -> int:
    from .jobs.compress import run_compress
    from .jobs.report import JobReport

    n_files, total = count_files(args.src)
    progress = _Progress(n_files, total, enabled=not args.json and sys.stderr.isatty())
    report = JobReport()
    started = time.monotonic()
    config = ArchiveConfig(codec=args.codec, transcode_compressed=args.transcode_compressed)
    for result in run_compress(args.src, args.out, config, workers=args.workers,
                               resume=args.resume, dask_address=args.dask,
                               budget=args.budget):
        progress.advance(result.bytes_in)
        report.add(result)
    progress.close()
    report.seconds = time.monotonic() - started
    html_path = Path(args.html) if args.html else Path(args.out) / ".pacscore-report.html"
    try:
        html_path.write_text(report.to_html(), encoding="utf-8")
        html = str(html_path)
    except OSError as exc:  # e.g. the disk that stopped the job: the report still prints
        print(f"pacscore: cannot write {html_path}: {exc}", file=sys.stderr)
        html = None
    if args.json:
        print(json.dumps({**report.to_dict(), "html_report": html}))
    else:
        print(report.to_text())
        print(f"report: {html or 'not written'}")
    if report.unfinished:
        first = report.unfinished[0]
        print(f"pacscore: {len(report.unfinished)} of {report.files} files are unfinished "
              f"(first: {first['path']}: {first['reason']})", file=sys.stderr)
    return report.exit_code


def _cmd_plan(args: argparse.Namespace) -> int:
    from .jobs.plan import plan

    result = plan(args.src, ArchiveConfig(), workers=args.workers, sample=args.sample)
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    print(f"{result['files']} files, {result['bytes'] / 1e6:.1f} MB; measured "
          f"{result['sampled_files']} files with {result['workers']} worker(s) assumed")
    print(f"{'codec':8s} {'ratio':>6s} {'MB after':>9s} {'time s':>7s} {'MB/s':>7s}")
    for name, c in result["codecs"].items():
        print(f"{name:8s} {c['ratio']:6.2f} {c['predicted_bytes_after'] / 1e6:9.1f} "
              f"{c['predicted_seconds']:7.1f} {c['sample_mb_per_s']:7.1f}")
    for mod, by_codec in result["modalities"].items():
        best = min(by_codec.items(), key=lambda kv: kv[1]["predicted_bytes_after"])
        print(f"  {mod:8s} best {best[0]}: saves {best[1]['predicted_savings'] / 1e6:.1f} MB "
              f"(ratio {best[1]['ratio']:.2f})")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from .services.serve import ServeConfig, serve

    overrides = {k: getattr(args, k) for k in (
        "host", "dimse_port", "http_port", "grpc_port", "ae_title", "cors", "max_body",
        "max_pdu", "max_associations", "idle_timeout", "spool", "tls_cert", "tls_key",
        "tls_ca", "public_url", "max_http_connections", "hl7_port", "hl7_max_message",
        "hl7_report_to", "index", "store", "gc_interval")}
    serve(Path(args.archive), ServeConfig.load(args.config, overrides))
    return EXIT_OK


def _cmd_token(args: argparse.Namespace) -> int:
    from .services.auth.tokens import TokenStore

    store = TokenStore(Path(args.archive))
    if args.token_command == "create":
        print(store.create(args.scope, args.name or ""))
    elif args.token_command == "revoke":
        if not store.revoke(args.token):
            print(f"pacscore: no token {args.token!r}", file=sys.stderr)
            return EXIT_PARTIAL
    else:
        print(json.dumps(store.list(), indent=2))
    return EXIT_OK


def _cmd_ae(args: argparse.Namespace) -> int:
    from .services.auth.security import RIGHTS, AeRegistry

    registry = AeRegistry(Path(args.archive))
    if args.ae_command == "add":
        rights = tuple(r.strip() for r in args.rights.split(",")) if args.rights else RIGHTS
        entry = registry.add(args.name, args.host, args.port, rights)
        print(f"{entry.name} {entry.host}:{entry.port or '-'} {','.join(entry.rights)}")
    elif args.ae_command == "remove":
        if not registry.remove(args.name):
            print(f"pacscore: no AE {args.name!r} registered", file=sys.stderr)
            return EXIT_PARTIAL
    else:
        entries = registry.list()
        if args.json:
            print(json.dumps({"aes": [{"name": e.name, "host": e.host, "port": e.port,
                                       "rights": list(e.rights)} for e in entries]}))
        for e in [] if args.json else entries:
            print(f"{e.name:16s} {e.host}:{e.port or '-'} {','.join(e.rights)}")
    return EXIT_OK


def _parse_keys(pairs: Sequence[str]) -> dict[str, str]:
    keys = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"pacscore find: expected KEY=VALUE, got {pair!r}")
        keys[key] = value
    return keys


def _cmd_find(args: argparse.Namespace) -> int:

    keys = _parse_keys(args.keys)
    with _reading(args) as archive:
        matches = archive.find(args.level, limit=args.limit, offset=args.offset, **keys)
    if args.json:
        print(json.dumps({"matches": matches}))
        return EXIT_OK
    uid_key = {"patient": "PatientID", "study": "StudyInstanceUID",
               "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}[args.level]
    for m in matches:
        rest = "  ".join(f"{k}={v}" for k, v in m.items() if v not in (None, "") and k != uid_key)
        print(f"{m.get(uid_key) or '-'}  {rest}")  # '-': a patient without a Patient ID
    print(f"{len(matches)} match(es)", file=sys.stderr)
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:

    with _reading(args) as archive:
        report = archive.verify()
    failed = [{"sop_instance_uid": u, "reason": r} for u, r in report.failed]
    if args.json:
        print(json.dumps({"checked": report.checked, "failed": failed}))
    else:
        print(f"checked {report.checked} instances, {len(failed)} failed")
        for f in failed:
            print(f"  {f['sop_instance_uid']}: {f['reason']}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _cmd_stats(args: argparse.Namespace) -> int:

    with _reading(args) as archive:
        stats = archive.stats()
    if args.json:
        print(json.dumps(stats))
    else:
        ratio = stats["bytes_in"] / stats["bytes_stored"] if stats["bytes_stored"] else 0.0
        print(f"instances            {stats['instances']}")
        print(f"compressed instances {stats['compressed_instances']}")
        print(f"bytes in / stored    {stats['bytes_in']} / {stats['bytes_stored']} "
              f"(ratio {ratio:.2f})")
        for ts, n in sorted(stats["transfer_syntaxes"].items()):
            print(f"  {ts:28s} {n}")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pacscore", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"pacscore {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def archive_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--archive", required=True, help="archive directory")

    def backend_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--index", metavar="URL", help="the archive's index in PostgreSQL "
                        "(default: the one its folder remembers, else its LMDB index)")
        sp.add_argument("--store", metavar="URL", help="the archive's frames in object "
                        "storage (default: where its folder keeps them)")

    imp = sub.add_parser("import", help="store DICOM files and folders (recursively)")
    imp.add_argument("paths", nargs="+")
    archive_arg(imp)
    imp.add_argument("--codec", choices=(*CODEC_NAMES, "keep"), default="htj2k")
    imp.add_argument("--transcode-compressed", action="store_true",
                     help="also re-encode losslessly compressed input (verified)")
    imp.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="worker processes (default: all cores; 0 = in process)")
    imp.add_argument("--resume", action="store_true",
                     help="skip files an earlier (interrupted) import of this archive finished")
    imp.add_argument("--dask", metavar="ADDRESS", help="run on a Dask distributed scheduler")
    imp.add_argument("--json", action="store_true")
    imp.add_argument("--store", metavar="URL", help="keep the frames in object storage: "
                     "s3://BUCKET/PREFIX?endpoint=URL (kept in the archive for later "
                     "commands; credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    imp.add_argument("--index", metavar="URL", help="the index in PostgreSQL "
                     "(postgresql://USER@HOST:PORT/DB) instead of the folder's LMDB index")
    imp.set_defaults(func=_cmd_import)

    comp = sub.add_parser("compress", help="recompress a tree into lossless DICOM files")
    comp.add_argument("src", nargs="+")
    comp.add_argument("--out", required=True, help="output root (same relative paths)")
    comp.add_argument("--codec", choices=(*CODEC_NAMES, "auto"), default="htj2k")
    comp.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                      help="auto: minimum encode speed as a fraction of the fastest codec's")
    comp.add_argument("--transcode-compressed", action="store_true")
    comp.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    comp.add_argument("--resume", action="store_true")
    comp.add_argument("--dask", metavar="ADDRESS", help="run on a Dask distributed scheduler")
    comp.add_argument("--html", help="HTML report path (default OUT/.pacscore-report.html)")
    comp.add_argument("--json", action="store_true")
    comp.set_defaults(func=_cmd_compress)

    pl = sub.add_parser("plan", help="dry run: predict size, time and savings of compress")
    pl.add_argument("src", nargs="+")
    pl.add_argument("--sample", type=int, default=24, help="files to measure")
    pl.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_cmd_plan)

    exp = sub.add_parser("export", help="write instances as <SOPInstanceUID>.dcm: each UID "
                         "is an instance's, or a series' or study's (all its instances)")
    exp.add_argument("uids", nargs="+")
    archive_arg(exp)
    backend_args(exp)
    exp.add_argument("--out", required=True)
    exp.add_argument("--transfer-syntax", default="original",
                     help="original, stored, or a Transfer Syntax UID")
    exp.set_defaults(func=_cmd_export)

    find = sub.add_parser("find", help="query the index (DICOM matching)")
    archive_arg(find)
    backend_args(find)
    find.add_argument("--level", choices=tuple(Level), required=True)
    find.add_argument("keys", nargs="*", metavar="KEY=VALUE")
    find.add_argument("--limit", type=int)
    find.add_argument("--offset", type=int, default=0)
    find.add_argument("--json", action="store_true")
    find.set_defaults(func=_cmd_find)

    srv = sub.add_parser("serve", help="run the DIMSE, DICOMweb (HTTP) and gRPC services "
                         "on the archive")
    archive_arg(srv)
    srv.add_argument("--config", help="TOML file with any of the settings below")
    srv.add_argument("--host", help="listen address (default 127.0.0.1)")
    srv.add_argument("--dimse-port", type=int, help="default 11112")
    srv.add_argument("--http-port", type=int, help="default 8042")
    srv.add_argument("--grpc-port", type=int, help="default 50051")
    srv.add_argument("--ae-title", help="default PACSCORE")
    srv.add_argument("--cors", action="append", metavar="ORIGIN",
                     help="allow this browser origin (repeatable)")
    srv.add_argument("--max-body", type=int, help="largest STOW-RS/gRPC object in bytes")
    srv.add_argument("--max-pdu", type=int, help="largest DIMSE PDU (default 16 MiB)")
    srv.add_argument("--max-associations", type=int,
                     help="concurrent DIMSE associations (default 16)")
    srv.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                     help="a DIMSE association, gRPC Store stream or STOW-RS body that "
                     "sends nothing this long is ended (default 60)")
    srv.add_argument("--spool", help="folder for DIMSE data sets being received (default: "
                     "in /dev/shm when it is a tmpfs with 8 GiB free, else ARCHIVE/spool)")
    srv.add_argument("--tls-cert", help="PEM certificate: TLS on DIMSE, HTTP and gRPC")
    srv.add_argument("--tls-key", help="PEM key of --tls-cert")
    srv.add_argument("--tls-ca", help="CA of client certificates (mutual TLS: DIMSE, gRPC)")
    srv.add_argument("--public-url", help="URL clients reach the HTTP service at (behind a "
                     "reverse proxy); DICOMweb answers' URLs start with it")
    srv.add_argument("--max-http-connections", type=int,
                     help="open HTTP connections (default 256); more are answered 503")
    srv.add_argument("--hl7-port", type=int, help="HL7 v2 over MLLP (default off; senders "
                     "allowed with `pacscore hl7 allow HOST`)")
    srv.add_argument("--hl7-max-message", type=int, help="largest HL7 message in bytes "
                     "(default 64 MiB)")
    srv.add_argument("--hl7-report-to", metavar="HOST:PORT", help="send every DICOM SR "
                     "report stored as an ORU^R01 to this HL7 receiver (MLLP)")
    srv.add_argument("--index", metavar="URL", help="the index in PostgreSQL "
                     "(postgresql://user@host:5432/database; needs pacscore[postgresql]) "
                     "instead of the archive's own LMDB; the frames stay in --archive")
    srv.add_argument("--store", metavar="URL", help="the frames in object storage "
                     "(s3://BUCKET/PREFIX?endpoint=URL); with --index, several servers "
                     "(each its own --archive folder) serve one archive")
    srv.add_argument("--gc-interval", type=float, metavar="SECONDS",
                     help="seconds between background collections of object-store "
                     "orphans (default 3600; one server of the archive runs each)")
    srv.set_defaults(func=_cmd_serve)

    tok = sub.add_parser("token", help="bearer tokens for DICOMweb and gRPC")
    tok_sub = tok.add_subparsers(dest="token_command", required=True)
    tok_create = tok_sub.add_parser("create", help="print a new token")
    tok_create.add_argument("--scope", choices=("read", "write", "delete", "admin"),
                            required=True)
    tok_create.add_argument("--name", help="who or what it is for")
    tok_revoke = tok_sub.add_parser("revoke", help="revoke a token (or its id)")
    tok_revoke.add_argument("token")
    tok_list = tok_sub.add_parser("list", help="token ids and scopes")
    for sp in (tok_create, tok_revoke, tok_list):
        archive_arg(sp)
    tok.set_defaults(func=_cmd_token)

    ae = sub.add_parser("ae", help="manage the DIMSE peers allowed to connect")
    ae_sub = ae.add_subparsers(dest="ae_command", required=True)
    ae_add = ae_sub.add_parser("add", help="register (or replace) a peer")
    ae_add.add_argument("name")
    ae_add.add_argument("--host", required=True)
    ae_add.add_argument("--port", type=int, help="its listening port (C-MOVE destinations)")
    ae_add.add_argument("--rights", help="comma-separated: echo,store,find,get,move,worklist,"
                        "mpps (default all)")
    ae_rm = ae_sub.add_parser("remove", help="unregister a peer")
    ae_rm.add_argument("name")
    ae_ls = ae_sub.add_parser("list", help="registered peers")
    ae_ls.add_argument("--json", action="store_true")
    for sp in (ae_add, ae_rm, ae_ls):
        archive_arg(sp)
    ae.set_defaults(func=_cmd_ae)

    add_worklist_parser(sub, archive_arg)
    add_gc_parser(sub, archive_arg)
    add_migrate_parser(sub)
    add_viewer_parser(sub, archive_arg)  # viewer, user (issue 20)
    add_patient_parser(sub, archive_arg)

    for name, func, text in (("verify", _cmd_verify, "decode every frame against its checksum"),
                             ("stats", _cmd_stats, "totals per transfer syntax")):
        sp = sub.add_parser(name, help=text)
        archive_arg(sp)
        backend_args(sp)
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=func)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pacscore`` console script."""
    from .cli_support import ARCHIVE_WRITERS, die_of_sigpipe, stdout_gone
    from .private import private_umask

    args = _parser().parse_args(argv)
    if args.command in ARCHIVE_WRITERS:
        private_umask()  # before any thread or worker starts (pacscore/private.py)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError as exc:
        if stdout_gone():  # `pacscore find ... | head`: end as coreutils do
            die_of_sigpipe()
        print(f"pacscore: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except PacsError as exc:
        print(f"pacscore: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:
        print(f"pacscore: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pacscore: interrupted; acknowledged instances are safe", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
