"""Crash-test workload: store DICOM files into an archive, printing one ACK per result.

Run as ``python import_loop.py ARCHIVE_DIR LIST_FILE`` (LIST_FILE: one path a line).
``tests/test_crash.py`` kills this process with SIGKILL, at random moments or at an
injection point, and then checks the archive's invariants.

Output protocol (stdout, one line each, flushed at once)::

    OPENING                      about to construct Archive (start-up recovery runs)
    OPEN                         Archive constructed
    DELETING <sop_uid>           the instance may be gone from here on
    DELETED <sop_uid>            Archive.delete returned
    ACK <sop_uid> <sha256>       a StoreResult was yielded (acknowledged)
    REJ <source> <error> <why>   a Rejected outcome
    SKIP <source>                a Skipped outcome
    FAIL <source> <error> <why>  a Failed outcome (not stored; may be retried)
    DONE                         everything finished

Environment:

``CRASH_AT``         ``point:N`` -- kill this process with SIGKILL at the N-th (1-based)
                     non-empty call of an injection point (see ``POINTS``).
``HELPER_SEED``      seed for file order and deletions (default 0).
``HELPER_DELETE``    instances to delete (Archive.delete, instance level) before storing.
``HELPER_DELETE_SERIES``  1: also delete one whole series before storing.
``HELPER_BATCH``     ArchiveConfig.commit_batch (default 32).
``HELPER_FSYNC``     0 to turn fsync off (default on).

Everything here patches pacscore in this process only; pacscore itself is untouched.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacscore import Archive, ArchiveConfig, StoreResult
from pacscore.index.lmdb_index import LmdbIndex
from pacscore.ingest.pool import Failed, Rejected, Skipped
from pacscore.store import zarr_store
from pacscore.store.zarr_store import ZarrFrameStore

POINTS = (
    "stage",          # after a stage_frames/stage_blob call returned
    "flush",          # after ZarrFrameStore.flush returned (before the index put)
    "put",            # after LmdbIndex.put committed (before the renames)
    "rename",         # after one os.replace inside ZarrFrameStore.publish (partial publish)
    "publish",        # after ZarrFrameStore.publish returned (before the ACK)
    "index_delete",   # after LmdbIndex.delete committed (frames still on disk)
    "rmtree",         # inside ZarrFrameStore.delete, after one chunk file was removed
    "store_delete",   # after ZarrFrameStore.delete returned (pending not cleared yet)
    "clean_staging",  # after ZarrFrameStore.clean_staging returned (start-up recovery)
    "clear_pending",  # before LmdbIndex.clear_pending runs
)


def emit(*parts: object) -> None:
    """One protocol line in one write."""
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def die() -> None:
    """What ``kill -9`` does: no cleanup, no atexit, no flush of anything."""
    os.kill(os.getpid(), signal.SIGKILL)


class Injector:
    """Counts calls of one injection point and dies at the N-th."""

    def __init__(self, spec: str | None):
        self.point, self.n, self.calls = None, 0, 0
        if spec:
            point, _, n = spec.partition(":")
            if point not in POINTS:
                raise SystemExit(f"unknown crash point {point!r}; known: {POINTS}")
            self.point, self.n = point, int(n or 1)

    def hit(self, point: str) -> bool:
        """Count one call of ``point``; True when this is the one to die at."""
        if point != self.point:
            return False
        self.calls += 1
        return self.calls == self.n

    def after(self, point: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap ``fn`` (first argument after self: a sequence, or anything) to die after it."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            first = args[1] if len(args) > 1 else None
            empty = isinstance(first, list | tuple) and not first
            if not empty and self.hit(point):
                die()
            return out

        return wrapper

    def before(self, point: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            first = args[1] if len(args) > 1 else None
            empty = isinstance(first, list | tuple) and not first
            if not empty and self.hit(point):
                die()
            return fn(*args, **kwargs)

        return wrapper

    def install(self) -> None:
        if self.point is None:
            return
        zs, li = ZarrFrameStore, LmdbIndex
        zs.stage_frames = self.after("stage", zs.stage_frames)  # type: ignore[method-assign]
        zs.stage_blob = self.after("stage", zs.stage_blob)  # type: ignore[method-assign]
        zs.flush = self.after("flush", zs.flush)  # type: ignore[method-assign]
        zs.publish = self.after("publish", zs.publish)  # type: ignore[method-assign]
        li.put = self.after("put", li.put)  # type: ignore[method-assign]
        li.delete = self.after("index_delete", li.delete)  # type: ignore[method-assign]
        zs.delete = self.after("store_delete", zs.delete)  # type: ignore[method-assign]
        zs.clean_staging = self.after("clean_staging", zs.clean_staging)  # type: ignore[method-assign]
        li.clear_pending = self.before("clear_pending", li.clear_pending)  # type: ignore[method-assign]
        if self.point == "rename":
            self._patch_rename()
        if self.point == "rmtree":
            self._patch_rmtree()

    def _patch_rename(self) -> None:
        real_replace = os.replace
        publish = ZarrFrameStore.publish

        def publishing(store: ZarrFrameStore, locs: Any) -> None:
            def replace(src: Any, dst: Any) -> None:
                real_replace(src, dst)
                if self.hit("rename"):
                    die()

            zarr_store.os.replace = replace  # type: ignore[assignment]
            try:
                publish(store, locs)
            finally:
                zarr_store.os.replace = real_replace

        ZarrFrameStore.publish = publishing  # type: ignore[method-assign]

    def _patch_rmtree(self) -> None:
        real_rmtree = shutil.rmtree
        delete = ZarrFrameStore.delete

        def deleting(store: ZarrFrameStore, locs: Any) -> None:
            def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
                path = Path(path)
                chunks = sorted(p for p in path.rglob("*") if p.is_file()) \
                    if path.is_dir() else []
                if chunks and self.hit("rmtree"):
                    chunks[-1].unlink()  # half-deleted array: one chunk gone
                    die()
                real_rmtree(path, *args, **kwargs)

            zarr_store.shutil.rmtree = rmtree  # type: ignore[assignment]
            try:
                delete(store, locs)
            finally:
                zarr_store.shutil.rmtree = real_rmtree

        ZarrFrameStore.delete = deleting  # type: ignore[method-assign]


def main() -> None:  # noqa: C901
    root, list_file = sys.argv[1], sys.argv[2]
    paths = [p for p in Path(list_file).read_text().splitlines() if p]
    rng = random.Random(int(os.environ.get("HELPER_SEED", "0")))
    digest = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    Injector(os.environ.get("CRASH_AT")).install()
    config = ArchiveConfig(commit_batch=int(os.environ.get("HELPER_BATCH", "32")),
                           fsync=os.environ.get("HELPER_FSYNC", "1") != "0")
    emit("OPENING")
    archive = Archive(root, config)
    emit("OPEN", archive.recovered)
    n_delete = int(os.environ.get("HELPER_DELETE", "0"))
    if n_delete or os.environ.get("HELPER_DELETE_SERIES") == "1":
        stored = sorted(r.sop_instance_uid for r in archive.index.records())
        if os.environ.get("HELPER_DELETE_SERIES") == "1" and stored:
            rec = archive.index.get(rng.choice(stored))
            assert rec is not None
            members = archive.index.instances("series", rec.series_uid)
            for uid in members:
                emit("DELETING", uid)
            archive.delete("series", rec.series_uid)
            for uid in members:
                emit("DELETED", uid)
            stored = sorted(set(stored) - set(members))
        for uid in rng.sample(stored, min(n_delete, len(stored))):
            emit("DELETING", uid)
            archive.delete("instance", uid)
            emit("DELETED", uid)
    rng.shuffle(paths)
    for outcome in archive.store_many(paths, workers=0):
        if isinstance(outcome, StoreResult):
            emit("ACK", outcome.sop_instance_uid, digest[outcome.source])
        elif isinstance(outcome, Rejected):
            emit("REJ", outcome.source, outcome.error.__name__,
                 outcome.reason.replace("\n", " "))
        elif isinstance(outcome, Skipped):
            emit("SKIP", outcome.source)
        elif isinstance(outcome, Failed):
            emit("FAIL", outcome.source, outcome.error.__name__,
                 outcome.reason.replace("\n", " "))
    archive.close()
    emit("DONE")


if __name__ == "__main__":
    main()
