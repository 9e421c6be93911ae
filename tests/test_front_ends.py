"""Several front ends on one archive (issue 17.3): the index on a real PostgreSQL 15,
the frames on a real SeaweedFS; each front end its own folder.  No file lock between
them, recovery that leaves another live front end's staging alone, one archive per
prefix still enforced, background tasks on one front end at a time."""

from __future__ import annotations

import contextlib
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("psycopg")

from pacscore import Archive, ArchiveConfig
from pacscore.background import Periodic, exclusive
from pacscore.errors import ArchiveStorageError
from pacscore.gc import collect_garbage
from pacscore.index.spec import IndexSpec
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
        a.store_.flush([loc])
        with _front_end(tmp_path / "c", url, postgres_dsn) as c:
            assert c.recovered == 0 and c.store_.staged() == []  # (a's alone knows)
            assert loc in a.store_.staged() and c.store_.exists(loc)
            assert collect_garbage(c.index, c.store_).removed == []  # young
            # once older than the grace period, they are a dead front end's: collected
            assert collect_garbage(c.index, c.store_, grace=timedelta(0)).removed == [loc]
            assert not a.store_.exists(loc)
            # a dead front end's committed location whose marker stayed: published
            loc_a = a.record(stored_a.sop_instance_uid).location
            a.store_._create([(a.store_.marker_key(loc_a), b"blob")], "test")  # type: ignore[attr-defined]
            assert loc_a in c.store_.staged()
            assert c._committer.recover(grace=timedelta(0)) == 1
            assert c.store_.staged() == []
            assert c.get(stored_a.sop_instance_uid) == files[0].read_bytes()
        report = a.verify()
        assert report.checked == 2 and report.failed == []
    # an archive of its own (local LMDB index) cannot take that prefix; a front end's
    # folder opened without the index opens the index it remembers (index.json), never
    # an empty LMDB index of its own (to which every object would be an orphan)
    with pytest.raises(ArchiveStorageError, match="belongs to another archive"):
        Archive(tmp_path / "embedded", _CONFIG, store=StoreSpec.from_url(url))
    for folder in ("a", "b"):
        with Archive(tmp_path / folder, _CONFIG) as again:
            assert again.shared and again.index_spec == IndexSpec.parse(postgres_dsn)
            assert again.verify().checked == 2
        assert not (tmp_path / folder / "index.lmdb").exists()
        (tmp_path / folder / "index.json").unlink()  # forgotten: refused as before
        with pytest.raises(ArchiveStorageError, match="belongs to another archive"):
            Archive(tmp_path / folder, _CONFIG)


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


def _children(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _storescu(port: int, path: Path) -> bool:
    """Send one file with DCMTK's storescu; whether the archive acknowledged it."""
    import subprocess

    sent = subprocess.run(["/usr/bin/storescu", "-aet", "MODALITY", "-aec", "PACSCORE",
                           "-to", "20", "127.0.0.1", str(port), str(path)],
                          capture_output=True, text=True, check=False, timeout=60)
    return sent.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="needs DCMTK storescu")
def test_kill_9_of_one_of_two_front_ends_loses_nothing_acknowledged(  # noqa: C901
        tmp_path: Path, corpus: Path, url: str, postgres_dsn: str) -> None:  # noqa: F811
    """Two ``pacscore serve`` on one PostgreSQL + SeaweedFS; storescu sends a CT series
    to one and an MR series to the other, one file per call, at once; the second is
    killed (SIGKILL, its worker processes too) after 8 acknowledgements.  Every
    instance either acknowledged is retrievable through the survivor (WADO-RS) and
    from a third front end's Archive; verify is clean."""
    import os
    import shutil
    import signal

    import pydicom
    import requests

    from pacscore.services.serve import spool_folders
    from pacscore.testing import cli, serve_process

    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:  # each front end its own folder: its AE registry, tokens, audit
        cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    series = [sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm")),
              sorted((corpus / "mr_series/tcia_brain_t1post_24sl").glob("*.dcm"))]
    acked: list[Path] = []
    lock = threading.Lock()
    extra = ("--index", postgres_dsn, "--store", url, "--gc-interval", "3600")
    with serve_process(roots[0], *extra, doors=("dimse", "http")) as (_, a_ports), \
            serve_process(roots[1], *extra, doors=("dimse", "http")) as (b_proc, b_ports):
        killed = threading.Event()

        def send(port: int, paths: list[Path], kill_after: int | None) -> None:
            n = 0
            for path in paths:
                if _storescu(port, path):
                    n += 1
                    with lock:
                        acked.append(path)
                if kill_after is not None and n == kill_after and not killed.is_set():
                    workers = _children(b_proc.pid)
                    os.kill(b_proc.pid, signal.SIGKILL)
                    for pid in workers:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    killed.set()

        threads = [threading.Thread(target=send, args=(a_ports["dimse"], series[0], None)),
                   threading.Thread(target=send, args=(b_ports["dimse"], series[1], 8))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert killed.is_set() and b_proc.wait(10) == -signal.SIGKILL
        for left in spool_folders(roots[1]):  # what the killed one left in /dev/shm
            shutil.rmtree(left, ignore_errors=True)
        from_b = [p for p in acked if p in series[1]]
        assert len(from_b) == 8 and all(p in acked for p in series[0])
        token = (roots[0] / "security" / "admin-token").read_text().strip()
        for path in acked:  # through the survivor
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            got = requests.get(
                f"http://127.0.0.1:{a_ports['http']}/dicom-web/studies/"
                f"{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                f"{ds.SOPInstanceUID}", timeout=60,
                headers={"Authorization": f"Bearer {token}",
                         "Accept": 'multipart/related; type="application/dicom"'})
            assert got.status_code == 200, (path, got.status_code)
    with _front_end(tmp_path / "c", url, postgres_dsn) as c:
        stats = c.stats()
        assert stats["instances"] >= len(acked)  # unacknowledged ones may be stored too
        for path in acked:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert c.record(str(ds.SOPInstanceUID)).sha256
        report = c.verify()
        assert report.failed == [] and report.checked == stats["instances"]


def test_the_same_instances_through_two_front_ends_at_once(
        tmp_path: Path, corpus: Path, url: str, postgres_dsn: str) -> None:  # noqa: F811
    """Each of 12 instances stored through two front ends at the same moment: exactly
    one stored and one duplicate each, one record, the other's objects discarded."""
    paths = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:12]
    outcomes: dict[str, list[str]] = {}
    with _front_end(tmp_path / "a", url, postgres_dsn) as a, \
            _front_end(tmp_path / "b", url, postgres_dsn) as b:
        for path in paths:
            start = threading.Barrier(2)
            got: list[str] = []

            def store(fe: Archive, path: Path = path, start: threading.Barrier = start,
                      got: list[str] = got) -> None:
                start.wait()
                got.append(str(fe.store(path).status))

            threads = [threading.Thread(target=store, args=(fe,)) for fe in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            outcomes[path.name] = sorted(got)
        assert all(o == ["duplicate", "stored"] for o in outcomes.values()), outcomes
        assert a.stats()["instances"] == len(paths)
        assert a.store_.staged() == []
        assert sorted(a.store_.locations()) == sorted(
            r.location for r in a.index.records())  # no second copy left


def test_serve_collects_orphans_in_the_background(
        tmp_path: Path, url: str, postgres_dsn: str,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """The server's gc thread (``gc_interval``, also a TOML setting) runs the
    collection under the task lock, and stops with the server."""
    import logging
    import time

    from pacscore.services.serve import ServeConfig, _start_gc

    toml = tmp_path / "serve.toml"
    toml.write_text(f'index = "{postgres_dsn}"\nstore = "{url}"\ngc_interval = 0.2\n')
    config = ServeConfig.load(str(toml), {})
    assert (config.index, config.store, config.gc_interval) == (postgres_dsn, url, 0.2)
    caplog.set_level(logging.INFO, logger="pacscore.background")
    with _front_end(tmp_path / "a", url, postgres_dsn) as a, contextlib.ExitStack() as stack:
        _start_gc(a, config, stack)
        deadline = time.monotonic() + 30
        while not any("background gc ran" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
    assert "orphans removed" in caplog.text
