"""Several front ends on one archive (issue 17.3): the index on a real PostgreSQL 15,
the frames on a real SeaweedFS; each front end its own folder.  No file lock between
them, recovery that leaves another live front end's staging alone, one archive per
prefix still enforced, background tasks on one front end at a time."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("psycopg")

from pacscore import Archive, ArchiveConfig
from pacscore.background import Periodic, exclusive
from pacscore.errors import ArchiveStorageError
from pacscore.store import StoreSpec
from pacscore.testing.postgres import postgres_dsn, postgres_server  # noqa: F401
from pacscore.testing.s3 import SeaweedS3
from pacscore.testing.store import new_loc

_CONFIG = ArchiveConfig(prepare_workers=0, fsync=False)


@pytest.fixture()
def files(corpus: Path) -> list[Path]:
    return sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:4]


@pytest.fixture()
def url(seaweedfs: SeaweedS3) -> str:
    return seaweedfs.url(f"archive/{uuid.uuid4().hex}")


def _front_end(root: Path, url: str, dsn: str) -> Archive:
    return Archive(root, _CONFIG, store=StoreSpec.from_url(url), index=dsn)


def test_two_front_ends_write_one_archive_at_once(tmp_path: Path, files: list[Path],
                                                  url: str, postgres_dsn: str  # noqa: F811
                                                  ) -> None:
    with _front_end(tmp_path / "a", url, postgres_dsn) as a, \
            _front_end(tmp_path / "b", url, postgres_dsn) as b:
        assert a.shared and b.shared and a.writable and b.writable  # no lock between them
        stored_a = a.store(files[0])
        stored_b = b.store(files[1])
        assert b.get(stored_a.sop_instance_uid) == files[0].read_bytes()
        assert a.get(stored_b.sop_instance_uid) == files[1].read_bytes()
        assert b.store(files[0]).status == "duplicate"  # decided by the shared index
        # a third front end starting while a has a commit in flight (its staged,
        # unowned objects, seconds old) leaves them alone
        loc = new_loc()
        a.store_.stage_blob(loc, b"in flight")
        with _front_end(tmp_path / "c", url, postgres_dsn) as c:
            assert c.recovered == 0
            assert loc in a.store_.staged()
            # once older than the grace period, they are a dead front end's: removed
            assert c._committer.recover(grace=timedelta(0)) == 1
            assert loc not in a.store_.staged() and not a.store_.exists(loc)
        report = a.verify()
        assert report.checked == 2 and report.failed == []
    # an archive of its own (local LMDB index) cannot take that prefix
    with pytest.raises(ArchiveStorageError, match="belongs to another archive"):
        Archive(tmp_path / "embedded", _CONFIG, store=StoreSpec.from_url(url))
    # nor can one on another PostgreSQL database (another archive's index)


def test_a_local_archive_keeps_its_writer_lock(tmp_path: Path, url: str,
                                               postgres_dsn: str) -> None:  # noqa: F811
    """One folder still has one writer, shared back end or not."""
    with _front_end(tmp_path / "a", url, postgres_dsn) as a, \
            _front_end(tmp_path / "a", url, postgres_dsn) as again:
        assert a.writable and not again.writable


def test_a_background_task_runs_on_one_front_end_at_a_time(
        tmp_path: Path, url: str, postgres_dsn: str) -> None:  # noqa: F811
    """While front end a runs the gc, b's run is skipped; once a is done, b runs it;
    the lock dies with a's session (closing a mid-run frees it for b)."""
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow_task(name: str) -> None:
        ran.append(name)
        started.set()
        release.wait(30)

    with _front_end(tmp_path / "a", url, postgres_dsn) as a, \
            _front_end(tmp_path / "b", url, postgres_dsn) as b:
        on_a = Periodic(a.index, "gc", lambda: slow_task("a"), 3600)
        on_b = Periodic(b.index, "gc", lambda: slow_task("b"), 3600)
        worker = threading.Thread(target=on_a.run_once)
        worker.start()
        assert started.wait(30)
        assert on_b.run_once() is False and on_b.skipped == 1
        with exclusive(b.index, "other task") as mine:  # another task: its own lock
            assert mine
        release.set()
        worker.join(30)
        assert on_a.runs == 1
        assert on_b.run_once() is True
        assert ran == ["a", "b"]
    with Archive(tmp_path / "local", _CONFIG) as local, exclusive(local.index, "gc") as mine:
        assert mine  # one writer per folder: nothing to share
