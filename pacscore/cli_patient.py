"""``pacscore patient correct|merge|corrections|undo``: patient corrections for sites
without a RIS (the HL7 door records ADT A08/A40 the same way).

Corrections are an overlay on what the archive serves (:mod:`pacscore.overlay`): the
stored objects are not changed, ``export --transfer-syntax original`` gives them as
received.  Every change is recorded in the audit trail (Patient Record, PS3.15
A.5.3.12) as made by ``cli:<user>``, and works while ``pacscore serve`` runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .cli_worklist import index_arg

__all__ = ["add_parser", "run"]

_OPTIONS = (("name", "PatientName", "the name, DICOM PN (FAMILY^GIVEN^MIDDLE)"),
            ("birth_date", "PatientBirthDate", "YYYYMMDD"),
            ("sex", "PatientSex", "M, F or O"))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               archive_arg: object) -> None:
    """The ``patient`` command and its four subcommands."""
    pt = sub.add_parser("patient", help="correct or merge patients on what the archive "
                                        "serves (the stored objects stay as received)")
    pt_sub = pt.add_subparsers(dest="patient_command", required=True)
    correct = pt_sub.add_parser("correct", help="serve other demographics for a Patient ID")
    correct.add_argument("patient_id")
    for option, _, text in _OPTIONS:
        correct.add_argument(f"--{option.replace('_', '-')}", dest=option, help=text)
    merge = pt_sub.add_parser("merge", help="serve the studies of OLD as NEW's (HL7 A40)")
    merge.add_argument("old", help="the Patient ID that goes away")
    merge.add_argument("new", help="the Patient ID that stays")
    ls = pt_sub.add_parser("corrections", help="every correction, merge and undo")
    ls.add_argument("--json", action="store_true")
    undo = pt_sub.add_parser("undo", help="undo the newest correction or merge of a "
                                          "Patient ID (again: the one before)")
    undo.add_argument("patient_id")
    for sp in (correct, merge, ls, undo):
        archive_arg(sp)  # type: ignore[operator]
        index_arg(sp)
    pt.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run one ``patient`` subcommand; the exit code (PacsError: the caller's)."""
    from .archive import Archive
    from .errors import InvalidRequestError
    from .overlay import cli_user
    from .services.auth.security import AuditLog

    with Archive(args.archive, index=args.index) as archive:
        audit = AuditLog(Path(args.archive))
        archive.worklist.on_change(lambda event: audit.workflow(event, interface="cli"))
        patients, by = archive.patients, cli_user()
        if args.patient_command == "correct":
            values = {kw: getattr(args, opt) for opt, kw, _ in _OPTIONS
                      if getattr(args, opt) is not None}
            if not values:
                raise InvalidRequestError("nothing to correct", hint="give --name, "
                                          "--birth-date and/or --sex")
            number = patients.correct(args.patient_id, values, by=by)
            print(f"correction {number}" if number else "unchanged (already so)")
        elif args.patient_command == "merge":
            number = patients.merge(args.old, args.new, by=by)
            print(f"correction {number}" if number else "unchanged (already merged)")
        elif args.patient_command == "undo":
            entry = patients.undo(args.patient_id, by=by)
            print(f"correction {entry.number}: undid {entry.undoes}")
        else:
            log = [e.as_dict() for e in patients.log()]
            if args.json:
                print(json.dumps({"corrections": log}))
            for e in [] if args.json else log:
                after = e["after"] or {}
                what = ", ".join(f"{k}={v}" for k, v in sorted(after.items()))
                state = f" (undone by {e['undone_by']})" if e["undone_by"] else \
                    f" (undoes {e['undoes']})" if e["undoes"] else ""
                print(f"{e['number']:>6} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(e['at']))}"
                      f" {e['action']:<7} {e['patient_id']:<16} {what or '-'}{state} "
                      f"by {e['by']}")
    return 0
