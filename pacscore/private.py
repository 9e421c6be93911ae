"""Permissions of what an archive creates: it holds patient data, so its folders are
0700 and its files 0600 whatever the umask.

Folders pacscore makes itself get their mode explicitly (:func:`make_private_dir`).
Files are written by many hands (the frame store, LMDB, the journal, worker processes),
so the command line also sets the umask to 077 once, before any thread or worker
process starts (:func:`private_umask`): the umask is process-wide, and changing it
while threads create files would race.  Python programs using :class:`pacscore.Archive`
get private folders (others cannot reach anything inside), and private files too when
they run with a umask of 077.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "make_private_dir", "private_umask"]

PRIVATE_UMASK = 0o077


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700 whatever the umask (an
    existing folder is left as its owner set it)."""
    missing = []
    for p in (path, *path.parents):
        if p.is_dir():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process: theirs
            continue
        os.chmod(p, 0o700)  # mkdir's mode passes through the umask


def private_umask() -> int:
    """Set the umask to 077 (call it before any thread starts); return the old one."""
    return os.umask(PRIVATE_UMASK)
