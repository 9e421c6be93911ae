"""``pacscore viewer install|status``: the pinned OHIF build served at ``/viewer``;
``pacscore user add|remove|list``: who may log in to it; ``pacscore share
STUDY_UID|list|revoke``: links that open one study for a limited time.

Users' changes apply to a running server at once (the file is re-read); removing a user
also ends their sessions.  Passwords are read without echo from the terminal, or from
standard input with ``--password-stdin`` (scripts), never from the command line (it
would be visible to other local users in the process list).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               archive_arg: object) -> None:
    """The ``viewer`` and ``user`` commands."""
    viewer = sub.add_parser("viewer", help="the web viewer (OHIF) served at /viewer")
    viewer_sub = viewer.add_subparsers(dest="viewer_command", required=True)
    for name, text in (("install", "fetch the pinned OHIF build with npm, verify its "
                                   "checksum and unpack it (outside the repository)"),
                       ("status", "where the build is, or that it is missing")):
        sp = viewer_sub.add_parser(name, help=text)
        sp.add_argument("--cache", help="folder of builds (default $PACSCORE_VIEWER_CACHE "
                                        "or ~/.cache/pacscore/viewer)")
    viewer.set_defaults(func=run_viewer)

    user = sub.add_parser("user", help="people who log in to the viewer")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="add (or replace) a user; asks for the password")
    add.add_argument("name")
    add.add_argument("--scope", default="read", choices=("read", "write", "delete", "admin"),
                     help="what they may do (default read; write: also save measurements)")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (one line)")
    rm = user_sub.add_parser("remove", help="remove a user and end their sessions")
    rm.add_argument("name")
    ls = user_sub.add_parser("list", help="user names and scopes")
    for sp in (add, rm, ls):
        archive_arg(sp)  # type: ignore[operator]
    user.set_defaults(func=run_user)

    share = sub.add_parser(
        "share", help="a link that opens one study in the viewer for a limited time: "
                      "share STUDY_UID --expires 24h [--read-only]; share list; "
                      "share revoke ID")
    share.add_argument("words", nargs="+", metavar="STUDY_UID | list | revoke ID")
    share.add_argument("--expires", default="24h",
                       help="how long the link works: 30m, 24h, 7d (default 24h, at most 90d)")
    share.add_argument("--read-only", action="store_true",
                       help="view only (else measurements may be saved into this study)")
    share.add_argument("--name", default="", help="who it is for (in the audit trail)")
    share.add_argument("--url", default="http://127.0.0.1:8042",
                       help="the address the recipient reaches the server at (its "
                            "--public-url; default http://127.0.0.1:8042)")
    archive_arg(share)  # type: ignore[operator]
    share.set_defaults(func=run_share)


def run_viewer(args: argparse.Namespace) -> int:
    """Run one ``viewer`` subcommand; the exit code."""
    from .services.viewer.install import OHIF_VERSION, install, installed

    root = Path(args.cache) if args.cache else None
    if args.viewer_command == "install":
        dist = install(root)
        print(f"pacscore: OHIF {OHIF_VERSION} installed in {dist}")
        return 0
    found = installed(root)
    if found is None:
        print(f"pacscore: OHIF {OHIF_VERSION} is not installed: run `pacscore viewer "
              f"install` (serve also installs it on its first start)")
        return 1
    print(f"pacscore: OHIF {OHIF_VERSION} installed in {found}")
    return 0


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ; nothing changed")
    return first


def run_user(args: argparse.Namespace) -> int:
    """Run one ``user`` subcommand; the exit code."""
    from .services.auth.security import AuditLog
    from .services.auth.sessions import SessionStore
    from .services.auth.users import UserStore

    root = Path(args.archive)
    users = UserStore(root)
    who = f"cli:{getpass.getuser()}"
    if args.user_command == "add":
        users.add(args.name, _password(args.password_stdin), args.scope)
        ended = SessionStore(root).end_user(args.name)  # replaced: new scope, password
        detail = (f"user {args.name} added or replaced (scope {args.scope}"
                  f"{f', {ended} session(s) ended' if ended else ''})")
    elif args.user_command == "remove":
        if not users.remove(args.name):
            print(f"pacscore: no user {args.name!r}", file=sys.stderr)
            return 1
        ended = SessionStore(root).end_user(args.name)
        detail = f"user {args.name} removed ({ended} session(s) ended)"
    else:
        print(json.dumps(users.list(), indent=2))
        return 0
    AuditLog(root).record("security", action="U", outcome="success", user=who,
                          host="localhost", interface="cli", detail=detail)
    print(f"pacscore: {detail}")
    return 0


def run_share(args: argparse.Namespace) -> int:
    """Run ``share STUDY_UID``, ``share list`` or ``share revoke ID``; the exit code."""
    from .archive import Archive
    from .services.auth.security import AuditLog
    from .services.auth.sessions import SessionStore
    from .services.auth.tokens import TokenStore
    from .services.viewer.share import (
        list_shares,
        parse_duration,
        revoke_share,
        share_link,
        share_study,
    )

    root = Path(args.archive)
    tokens = TokenStore(root)
    who = f"cli:{getpass.getuser()}"
    first, rest = args.words[0], args.words[1:]
    if first == "list" and not rest:
        print(json.dumps(list_shares(tokens), indent=2))
        return 0
    if first == "revoke" and len(rest) == 1:
        revoked = revoke_share(tokens, SessionStore(root), rest[0])
        if revoked is None:
            print(f"pacscore: no active share {rest[0]!r} (see pacscore share list)",
                  file=sys.stderr)
            return 1
        study, ended = revoked
        detail = f"share {rest[0]} of study {study} revoked ({ended} session(s) ended)"
        objects = [study]
    elif rest:
        print("pacscore: use `share STUDY_UID`, `share list` or `share revoke ID`",
              file=sys.stderr)
        return 2
    else:
        seconds = parse_duration(args.expires)
        with Archive(root, readonly=True) as archive:
            if not archive.instances("study", first):
                print(f"pacscore: no study {first!r} in {root} (pacscore find --level "
                      f"study lists them)", file=sys.stderr)
                return 1
        token = share_study(tokens, first, seconds, read_only=args.read_only,
                            name=args.name)
        token_id = token.split("_")[1]
        detail = (f"share {token_id} of study {first} created ("
                  f"{'read' if args.read_only else 'read and save measurements'}, "
                  f"for {args.expires})")
        objects = [first]
        print(share_link(args.url, token))
        print(f"pacscore: {detail}; revoke with: pacscore share revoke {token_id}",
              file=sys.stderr)
    AuditLog(root).record("security", action="U", outcome="success", user=who,
                          host="localhost", interface="cli", objects=objects, detail=detail)
    if first == "revoke":
        print(f"pacscore: {detail}")
    return 0
