"""``pacscore worklist list|add|cancel``: the Modality Worklist of sites without a RIS;
``pacscore worklist studies|unreconciled``: the status of ordered studies and the stored
studies that match no order (:mod:`pacscore.workflow.studies`);
``pacscore hl7 allow|deny|list``: the hosts a RIS may send HL7 (MLLP) from;
``pacscore hl7 outbox|resend``: the reports waiting for their receiver (ORU^R01 out).

Every change is recorded in the audit trail (Procedure Record, PS3.15 A.5.3.11) as
made by ``cli:<user>``; so are a report queued again (Export) and a sender allowed or
denied (Security Alert).  Works while ``pacscore serve`` runs (the worklist is its own
LMDB environment, see :mod:`pacscore.workflow.worklist`).
"""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .services.auth.security import AuditLog

__all__ = ["add_parser", "index_arg", "run", "run_hl7"]


def index_arg(sp: argparse.ArgumentParser) -> None:
    """``--index URL``: the archive's PostgreSQL index, which keeps the workflow state
    (worklist, corrections, HL7 outbox) of every front end sharing it."""
    sp.add_argument("--index", metavar="URL", help="the archive's index when it is "
                    "PostgreSQL (postgresql://...): its workflow state is kept there")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               archive_arg: object) -> None:
    """The ``worklist`` command and its subcommands."""
    wl = sub.add_parser("worklist", help="scheduled procedure steps the modalities query "
                                         "(Modality Worklist)")
    wl_sub = wl.add_subparsers(dest="worklist_command", required=True)
    add = wl_sub.add_parser("add", help="schedule steps: DICOM worklist files (e.g. made by "
                                        "dump2dcm from DCMTK's wklist*.dump), or one step "
                                        "from KEYWORD=VALUE pairs")
    add.add_argument("items", nargs="+", metavar="FILE|KEYWORD=VALUE",
                     help="files, or pairs such as PatientName=DOE^JANE PatientID=123 "
                          "AccessionNumber=A1 Modality=CT ScheduledStationAETitle=CT1 "
                          "ScheduledProcedureStepStartDate=20250101")
    ls = wl_sub.add_parser("list", help="the steps (scheduled and in progress; --all: every one)")
    ls.add_argument("--all", action="store_true", help="also cancelled and completed steps")
    ls.add_argument("--json", action="store_true")
    cancel = wl_sub.add_parser("cancel", help="cancel steps by key, Accession Number or "
                                              "Scheduled Procedure Step ID")
    cancel.add_argument("which", nargs="+")
    studies = wl_sub.add_parser("studies", help="ordered studies and their status (scheduled, "
                                                "arrived, in_progress, completed, reported, "
                                                "...), then stored studies no order matches")
    studies.add_argument("--status", help="only studies of this status (e.g. arrived, "
                                          "unreconciled)")
    unrec = wl_sub.add_parser("unreconciled", help="stored studies that match no order "
                                                   "(Study Instance UID, Accession Number)")
    for sp in (studies, unrec):
        sp.add_argument("--json", action="store_true")
    for sp in (add, ls, cancel, studies, unrec):
        archive_arg(sp)  # type: ignore[operator]
        index_arg(sp)
    wl.set_defaults(func=run)

    hl7 = sub.add_parser("hl7", help="the hosts HL7 senders (RIS/HIS) may connect from "
                                     "(MLLP: serve --hl7-port)")
    hl7_sub = hl7.add_subparsers(dest="hl7_command", required=True)
    allow = hl7_sub.add_parser("allow", help="allow a host (address or name)")
    deny = hl7_sub.add_parser("deny", help="remove a host")
    for sp in (allow, deny):
        sp.add_argument("host")
    hosts = hl7_sub.add_parser("list", help="the allowed hosts")
    outbox = hl7_sub.add_parser("outbox", help="reports waiting for their receiver "
                                               "(serve --hl7-report-to), refused ones too")
    outbox.add_argument("--json", action="store_true")
    resend = hl7_sub.add_parser("resend", help="send refused reports again (by key)")
    resend.add_argument("keys", nargs="+")
    for sp in (allow, deny, hosts, outbox, resend):
        archive_arg(sp)  # type: ignore[operator]
    for sp in (outbox, resend):
        index_arg(sp)
    hl7.set_defaults(func=run_hl7)


def run_hl7(args: argparse.Namespace) -> int:
    """Run one ``hl7`` subcommand; the exit code."""
    from .services.auth.security import SenderList

    if args.hl7_command in ("outbox", "resend"):
        return _run_outbox(args)
    senders = SenderList(Path(args.archive))
    if args.hl7_command == "allow":
        senders.allow(args.host)
    elif args.hl7_command == "deny" and not senders.deny(args.host):
        print(f"pacscore: {args.host!r} was not allowed")
        return 1
    if args.hl7_command in ("allow", "deny"):
        _audit(args).record("security", action="U", outcome="success",
                            user=f"cli:{getpass.getuser()}", host="", interface="cli",
                            detail=f"HL7 sender {args.host} "
                                   f"{'allowed' if args.hl7_command == 'allow' else 'denied'}")
    for host in senders.hosts() if args.hl7_command == "list" else []:
        print(host)
    return 0


def _audit(args: argparse.Namespace) -> AuditLog:
    from .services.auth.security import AuditLog

    return AuditLog(Path(args.archive))


def _run_outbox(args: argparse.Namespace) -> int:
    from .errors import NotFoundError
    from .index.spec import IndexSpec, remembered_index
    from .services.hl7.outbox import Outbox

    spec = remembered_index(Path(args.archive),  # given, or the one the folder names
                            IndexSpec.parse(args.index) if args.index else None)
    index = spec.open() if spec is not None else None
    try:
        outbox = Outbox(Path(args.archive), index=index)
    except BaseException:
        if index is not None:
            index.close()
        raise
    try:
        if args.hl7_command == "resend":
            missing = 0
            for key in args.keys:
                try:
                    entry = outbox.resend(key)
                    _audit(args).record(
                        "export", action="U", outcome="success",
                        user=f"cli:{getpass.getuser()}", host=entry.destination,
                        interface="cli", objects=[entry.sop_instance_uid],
                        detail=f"ORU^R01 {entry.control_id} to {entry.destination}: "
                               f"queued again by hand")
                    print(f"{entry.key} queued")
                except NotFoundError as exc:
                    print(f"pacscore: {exc}")
                    missing += 1
            return 1 if missing else 0
        rows = [{"key": e.key, "state": str(e.state), "sop_instance_uid": e.sop_instance_uid,
                 "destination": e.destination, "control_id": e.control_id,
                 "attempts": e.attempts, "error": e.error} for e in outbox.entries()]
    finally:
        outbox.close()
        if index is not None:
            index.close()
    if args.json:
        print(json.dumps({"reports": rows}))
    for r in [] if args.json else rows:
        print(f"{r['key']} {r['state']:<8} {r['control_id']:<22} {r['destination']} "
              f"attempts {r['attempts']} {r['sop_instance_uid']} {r['error']}".rstrip())
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one ``worklist`` subcommand; the exit code."""
    from .archive import Archive
    from .errors import NotFoundError
    from .services.auth.security import AuditLog
    from .workflow import LISTED, StepStatus, item_from_pairs, read_item
    from .workflow.items import summary
    from .workflow.studies import requested_procedures, study_states

    with Archive(args.archive, index=args.index) as archive:
        worklist = archive.worklist
        audit = AuditLog(Path(args.archive))
        worklist.on_change(lambda event: audit.workflow(event, interface="cli"))
        by = f"cli:{getpass.getuser()}"
        if args.worklist_command == "add":
            pairs = all("=" in i and not Path(i).exists() for i in args.items)
            items = [item_from_pairs(args.items)] if pairs else [read_item(p) for p in args.items]
            for item in items:
                print(worklist.add(item, by=by))
            return 0
        if args.worklist_command == "cancel":
            missing = 0
            for which in args.which:
                try:
                    for key in worklist.cancel(which, by=by):
                        print(f"{key} cancelled")
                except NotFoundError as exc:
                    print(f"pacscore: {exc}")
                    missing += 1
            return 1 if missing else 0
        if args.worklist_command in ("studies", "unreconciled"):
            return _studies(args, archive)
        statuses = frozenset(StepStatus) if args.all else LISTED
        study_of = {key: str(s.status) for s in study_states(
            worklist, archive.query, requested=requested_procedures(archive))
            for key in s.steps}
        rows = [{"key": i.key, "status": str(i.status), "study_status": study_of.get(i.key, ""),
                 **summary(i.dataset)} for i in worklist.items(statuses=statuses)]
        if args.json:
            print(json.dumps({"items": rows}))
        for r in [] if args.json else rows:
            print(f"{r['key']} {r['status']:<11} {r['study_status']:<11} {r['accession']:<16} "
                  f"{r['station']:<16} {r['modality']:<4} {r['date']} {r['time']:<6} "
                  f"{r['patient_id']:<16} {r['patient_name']}")
    return 0


def _studies(args: argparse.Namespace, archive: Any) -> int:
    """``worklist studies [--status S]`` and ``worklist unreconciled``."""
    from .workflow.studies import parse_status, requested_procedures, study_states

    text = "unreconciled" if args.worklist_command == "unreconciled" else args.status
    states = study_states(archive.worklist, archive.query,
                          status=parse_status(text) if text else None,
                          requested=requested_procedures(archive))
    if args.json:
        print(json.dumps({"studies": [s.as_json() for s in states]}))
    for s in [] if args.json else states:
        print(f"{s.status:<12} {s.accession:<16} {s.patient_id:<16} {s.instances:>6} "
              f"{s.study_uid}")
    return 0
