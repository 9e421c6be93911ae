"""The LMDB plumbing every embedded store of the archive shares (the index, the
worklist, the HL7 outbox): opening an environment with its named databases, and one
write transaction that grows the map when it is full and turns LMDB's failures into
:class:`~pacscore.errors.ArchiveStorageError` naming the likely cause."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from .errors import ArchiveStorageError
from .private import make_private_dir

__all__ = ["open_env", "write", "write_cause"]

T = TypeVar("T")
_DISK_FULL_BYTES = 16 << 20


def open_env(path: Path, names: Sequence[bytes], *, what: str, dupsort: Collection[bytes] = (),
             sync: bool = True, readonly: bool = False, map_size: int = 1 << 30,
             optional: Collection[bytes] = ()) -> tuple[lmdb.Environment, dict[bytes, Any]]:
    """Open (creating it unless ``readonly``, private to this user) the environment at
    ``path`` and its named databases; ArchiveStorageError naming ``what`` otherwise.
    ``optional`` databases that a read-only open does not find (written by a version of
    before them) are left out of the mapping."""
    try:
        if not readonly:
            make_private_dir(path)
        env = lmdb.open(str(path), map_size=map_size, max_dbs=len(names), subdir=True,
                        sync=sync, metasync=sync, readonly=readonly, max_readers=512,
                        mode=0o700)
        dbs: dict[bytes, Any] = {}
        for n in names:
            try:
                dbs[n] = env.open_db(n, dupsort=n in dupsort, create=not readonly)
            except lmdb.NotFoundError:
                if not (readonly and n in optional):
                    raise
        return env, dbs
    except lmdb.Error as exc:
        raise ArchiveStorageError(f"cannot open the {what} at {path}: {exc}",
                                  hint="check the archive folder's permissions and free "
                                       "space") from exc


def write_cause(path: Path) -> str:
    """What a failed write most likely met: LMDB reports a short write on a full disk
    as EIO, so look at the free space (a few pages of a transaction need MBs)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return "cannot write"
    return "disk full" if st.f_bavail * st.f_frsize < _DISK_FULL_BYTES else "cannot write"


def write(env: lmdb.Environment, path: Path, fn: Callable[[lmdb.Transaction], T], *,
          what: str, hint: str, passthrough: tuple[type[Exception], ...] = ()) -> T:
    """Run ``fn`` in one write transaction of ``env`` (at ``path``), growing the map when
    it is full; an LMDB failure (at a put or the commit: ENOSPC, EIO, a read-only disk)
    rolls the transaction back and raises ArchiveStorageError ``{what} failed ({cause}:
    ...)`` with ``hint``; ``passthrough`` errors are raised as they are."""
    while True:
        try:
            with env.begin(write=True) as txn:
                return fn(txn)
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)
        except passthrough:
            raise
        except lmdb.Error as exc:
            raise ArchiveStorageError(
                f"{what} failed ({write_cause(path)}: {exc}); the transaction was rolled back",
                hint=hint) from exc
