"""``pacscore gc``: remove frame-store objects no committed record names (pacscore.gc)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               archive_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``gc`` command."""
    gc = sub.add_parser("gc", help="remove object-store (S3) objects that no committed "
                                   "instance names, after a grace period")
    archive_arg(gc)
    gc.add_argument("--grace", default="1h",
                    help="leave objects younger than this (default 1h; e.g. 30m, 2d, 0; "
                    "under a minute only while no server or job writes the archive: it "
                    "would take staged data of a store under way)")
    gc.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    gc.add_argument("--json", action="store_true")
    gc.set_defaults(func=_cmd_gc)


def _cmd_gc(args: argparse.Namespace) -> int:
    from .archive import Archive
    from .gc import collect_garbage, parse_duration

    grace = parse_duration(args.grace)
    with Archive(args.archive, readonly=True) as archive:
        report = collect_garbage(archive.index, archive.store_, grace=grace,
                                 dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    verb = "would remove" if report.dry_run else "removed"
    print(f"{report.locations} locations: {report.owned} in the index, {report.young} "
          f"younger than {args.grace}; {verb} {len(report.removed)} "
          f"({report.objects_removed} objects, {report.bytes_removed} bytes)")
    for loc in report.removed:
        print(f"  {loc}")
    return 0
