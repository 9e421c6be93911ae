"""Pieces of the ``pacscore`` command kept out of :mod:`pacscore.cli`: which commands
write an archive (and so run with a private umask), the UIDs ``export`` takes, and what
happens when the reader of stdout goes away.

A closed pipe (``pacscore find ... | head``) is handled as coreutils handle it: the
command stops writing and dies of SIGPIPE, silently (the shell reports 141; ``set -o
pipefail`` sees it fail).  Python ignores SIGPIPE so that sockets raise EPIPE instead;
``serve`` relies on that, so the default action is restored only at that moment.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from .errors import NotFoundError

if TYPE_CHECKING:
    from .archive import Archive

__all__ = ["ARCHIVE_WRITERS", "die_of_sigpipe", "export_instances", "stdout_gone"]

ARCHIVE_WRITERS = frozenset({"import", "serve", "token", "ae", "worklist", "hl7", "patient",
                             "user", "share", "migrate"})
"""Commands that create files in an archive: they run with umask 077 (set before any
thread or worker process starts), so what they write is private to the user."""


def stdout_gone() -> bool:
    """stdout is a pipe whose reader has gone (poll reports POLLERR on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # closed, or not a real descriptor
        return False


def die_of_sigpipe() -> NoReturn:
    """End as ``seq 1 100000 | head -1``'s ``seq`` does: killed by SIGPIPE, no message
    (stdout is pointed at /dev/null first, so no buffered write complains at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.stderr.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(128 + signal.SIGPIPE)  # not reached: the signal ends the process


def export_instances(archive: Archive, uids: Sequence[str]) -> list[str]:
    """The SOP Instance UIDs ``export`` writes for ``uids``, each an instance, a series
    or a study UID (every instance of it), in order, without repeats.  Raises
    :class:`NotFoundError` naming every UID that is none of them in this archive (then
    nothing is written)."""
    sops: dict[str, None] = {}
    unknown = []
    for uid in uids:
        for level in ("instance", "series", "study"):
            found = archive.instances(level, uid)
            if found:
                sops.update(dict.fromkeys(found))
                break
        else:
            unknown.append(uid)
    if unknown:
        raise NotFoundError(
            f"not the UID of an instance, series or study in {archive.root}: "
            f"{', '.join(unknown)}; nothing exported",
            hint="check the UIDs with `pacscore find --archive DIR --level study` "
                 "(or series, instance)")
    return list(sops)
