"""``pacscore migrate``: copy an archive into another, verified (pacscore.jobs.migrate)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``migrate`` command."""
    mig = sub.add_parser(
        "migrate", help="copy every instance of an archive into another (embedded folder "
                        "<-> PostgreSQL + S3), resumable, verified")
    mig.add_argument("--from", dest="source", nargs="+", required=True, metavar="WHERE",
                     help="the source: its folder, and/or postgresql://... and "
                          "s3://BUCKET/PREFIX?endpoint=URL (read only, never written)")
    mig.add_argument("--to", dest="target", nargs="+", required=True, metavar="WHERE",
                     help="the target, the same way (PostgreSQL + S3 need no folder)")
    mig.add_argument("--batch", type=int, default=32,
                     help="instances per target commit (default 32)")
    mig.add_argument("--threads", type=int, default=2,
                     help="threads reading, checking and verifying (default 2)")
    mig.add_argument("--part", metavar="I/N", type=_part,
                     help="only part I of N (by a hash of the SOP Instance UID): N processes "
                          "share a big migration into PostgreSQL + S3")
    mig.add_argument("--json", action="store_true")
    mig.set_defaults(func=_cmd_migrate)


def _part(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    try:
        part = int(i), int(n)
    except ValueError:
        part = (0, 0)
    if not sep or not 1 <= part[0] <= part[1]:
        raise argparse.ArgumentTypeError(f"{text!r} is no part: give I/N, 1 <= I <= N")
    return part


def _cmd_migrate(args: argparse.Namespace) -> int:
    from .jobs.migrate import Endpoint, migrate

    report = migrate(Endpoint.parse(args.source), Endpoint.parse(args.target),
                     batch=args.batch, threads=args.threads, part=args.part)
    print(json.dumps(report.to_dict()) if args.json else report.to_text())
    if report.mismatches:
        print(f"pacscore: {len(report.mismatches)} of {report.instances} instances not "
              f"copied or not verified (listed above); run the same command again after "
              f"fixing them", file=sys.stderr)
    return report.exit_code
