"""Bulk jobs when things around the files fail: worker processes that cannot start or
are killed, a disk that fills up.  Every input file must end in exactly one category,
in the JSON, whatever happens; nothing that failed is journalled, so ``--resume``
after the cause is fixed finishes the job with every file stored exactly once."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from pacscore import Archive
from tests.test_cli import accounted

# Makes every process started by multiprocessing (forkserver, spawn) fail to import the
# ingest pipeline, as a broken or partial installation would; the main process is fine.
BROKEN_WORKERS = '''
import sys
if "multiprocessing" in " ".join(sys.orig_argv):
    class _Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "pacscore.ingest.prepare":
                raise ImportError("simulated broken installation of pacscore")
            return None
    sys.meta_path.insert(0, _Broken())
'''


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    proc = subprocess.run([sys.executable, "-m", "pacscore.cli", *args], capture_output=True,
                          text=True, timeout=600, check=False, env=env)
    out: Any = json.loads(proc.stdout) if "--json" in args else proc.stdout
    return proc.returncode, out, proc.stderr


def instances(archive: Path) -> int:
    code, out, err = cli("find", "--archive", str(archive), "--level", "instance", "--json")
    assert code == 0, err
    return len(out["matches"])


def assert_clean(archive: Path, expected: int) -> None:
    """The archive holds exactly ``expected`` instances, each verifying, and nothing
    staged once a writer opened it (a killed worker's partial files stay staged, owned
    by no record, until then)."""
    assert instances(archive) == expected
    code, out, _ = cli("verify", "--archive", str(archive), "--json")
    assert code == 0 and out == {"checked": expected, "failed": []}
    Archive(archive).close()
    assert not list((archive / "frames" / "staging").iterdir())
    assert instances(archive) == expected


@pytest.fixture()
def src(tmp_path: Path, corpus: Path) -> Path:
    """The audit's tree: 180 files (150 fMRI slices, 30 CT slices)."""
    root = tmp_path / "src"
    shutil.copytree(corpus / "mr_series/ge_epi_fmri_run_150files", root / "mr")
    shutil.copytree(corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl", root / "ct")
    return root


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small file system at ``path`` (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): the disk-full "
                    f"tests need root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, size: str) -> None:
    """Free space: make the tmpfs at ``path`` bigger."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def test_workers_that_cannot_start_fail_every_file(tmp_path: Path, src: Path) -> None:
    """Worker processes that cannot import pacscore: every file is reported failed with
    the cause (not 4 rejected and the rest nowhere), exit 2; --resume in a working
    environment then stores them all."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(BROKEN_WORKERS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(broken), *filter(None, [os.environ.get("PYTHONPATH")])])}
    archive = tmp_path / "a"
    code, out, err = cli("import", str(src), "--archive", str(archive), "--workers", "2",
                         "--json", env=env)
    assert code == 2
    assert out["files"] == 180 == len(out["failed"]) == accounted(out)
    assert out["stored"] == 0 and out["rejected"] == []
    for f in out["failed"]:
        assert f["error"] == "WorkerError"
        assert "worker processes could not start" in f["reason"]
        assert "--workers 0" in f["reason"] and "--resume" in f["reason"]  # what to do
    assert "simulated broken installation" in err  # the workers' own error, on stderr
    assert instances(archive) == 0
    code, out, err = cli("import", str(src), "--archive", str(archive), "--workers", "2",
                         "--resume", "--json")
    assert code == 0, err
    assert out["stored"] == out["files"] == 180 and out["resumed"] == 0
    assert_clean(archive, 180)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_a_worker_killed_mid_import_loses_nothing(tmp_path: Path, corpus: Path) -> None:
    """kill -9 of a worker process during an import: its files are done by another
    worker; every file is stored and reported, the archive holds exactly them."""
    archive = tmp_path / "a"
    journal = archive / ".import-journal.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "pacscore.cli", "import",
                             str(corpus / "mr_series"), "--archive", str(archive),
                             "--workers", "2", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (journal.exists() and journal.read_bytes().count(b"\n") >= 64):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    # The workers are the forkserver's children (grandchildren of the import).
    workers = [w for child in _children(proc.pid) for w in _children(child)]
    assert workers and proc.poll() is None
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    out = json.loads(stdout)
    assert proc.returncode == 0, stderr
    assert out["files"] == 352 == out["stored"] == accounted(out)
    assert_clean(archive, 352)


def test_an_interrupted_import_reports_every_file(tmp_path: Path, corpus: Path) -> None:
    """Ctrl-C mid-import: the JSON still accounts for every file (those not confirmed
    are failed), exit 2; --resume finishes the job."""
    archive = tmp_path / "a"
    journal = archive / ".import-journal.jsonl"
    args = [sys.executable, "-m", "pacscore.cli", "import", str(corpus / "mr_series"),
            "--archive", str(archive), "--workers", "2", "--json"]
    # Started with Ctrl-C's default disposition, as from a terminal: a test run started
    # in the background by a shell inherits SIGINT ignored, and so would the import (a
    # handled signal is reset to the default by exec, an ignored one stays ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 300
    while not (journal.exists() and journal.read_bytes().count(b"\n") >= 64):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    # The import is paused (SIGSTOP: the parent at once, then its workers) while the
    # Ctrl-C arrives, so that files are still left however fast the machine imports
    # (352 small files take well under a second once started) or however slow this
    # test is to see the journal; then it goes on and stops after the file at hand.
    os.kill(proc.pid, signal.SIGSTOP)
    workers = [w for child in _children(proc.pid) for w in _children(child)]
    try:
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)  # taken when the parent goes on
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.5)  # the parent takes the signal while no file finishes
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=600)
    out = json.loads(stdout)
    assert proc.returncode == 2, stderr
    assert out["files"] == 352 == accounted(out) and out["stored"] >= 64 and out["failed"]
    assert {f["error"] for f in out["failed"]} == {"KeyboardInterrupt"}
    code, again, err = cli(*args[3:], "--resume")
    assert code == 0, err
    assert again["files"] == 352 == again["stored"] + again["duplicates"] == accounted(again)
    assert again["resumed"] >= out["stored"]
    assert_clean(archive, 352)


@pytest.mark.parametrize("full", ["archive", "index"])
def test_disk_full_import_then_resume(tmp_path: Path, src: Path, full: str) -> None:
    """The audit's case on a real small file system: the disk fills midway (the whole
    archive's, where the staging of frames or the index commit fails first; or the
    index's only, where LMDB says ``mdb_txn_commit: Input/output error``).  The import
    stops, prints its JSON with every file not committed as failed, exits 2; after
    freeing space --resume stores the rest and reports the whole job (exit 0), every
    file stored exactly once."""
    archive = tmp_path / "a"
    mount, size = (archive, "8m") if full == "archive" else (archive / "index.lmdb", "2m")
    with tmpfs(mount, size):
        code, first, err = cli("import", str(src), "--archive", str(archive), "--workers",
                               "2", "--json")
        assert code == 2, err
        assert first["files"] == 180 == accounted(first)
        assert first["stored"] > 0 and first["failed"], "the disk did not fill midway"
        reasons = {f["reason"] for f in first["failed"]}
        assert all(f["error"] == "ArchiveStorageError" for f in first["failed"]), reasons
        assert any("disk full" in r for r in reasons), reasons
        assert "Traceback" not in err
        assert instances(archive) == first["stored"]
        grow(mount, "128m")
        code, again, err = cli("import", str(src), "--archive", str(archive), "--workers",
                               "2", "--resume", "--json")
        assert code == 0, err
        assert again["files"] == 180 == again["stored"] == accounted(again)
        assert again["resumed"] == first["stored"] and again["failed"] == []
        assert_clean(archive, 180)


def _pixels(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(path.read_bytes())).pixel_array


def test_disk_full_compress_then_resume(tmp_path: Path, src: Path) -> None:
    """compress onto a disk that fills: files without an output are ``unfinished`` (not
    journalled, exit 2, the report written anyway); --resume after freeing space does
    exactly those and reports the whole job."""
    out = tmp_path / "out"
    with tmpfs(out, "4m"):
        code, first, err = cli("compress", str(src), "--out", str(out), "--workers", "2",
                               "--json")
        assert code == 2, err
        status = first["status"]
        assert first["files"] == 180 == sum(status.values())
        assert status.get("compressed") and status["unfinished"] == len(first["unfinished"])
        assert any("No space left" in f["reason"] for f in first["unfinished"])
        journal = [json.loads(line) for line in
                   (out / ".pacscore-journal.jsonl").read_text().splitlines()]
        assert all(e["status"] != "unfinished" for e in journal)
        grow(out, "128m")
        code, again, err = cli("compress", str(src), "--out", str(out), "--workers", "2",
                               "--resume", "--json")
        assert code == 0, err
        assert again["files"] == 180 == again["status"]["compressed"]
        assert again["unfinished"] == [] and again["resumed"] == len(journal)
        for path in src.rglob("*.dcm"):
            assert np.array_equal(_pixels(out / path.relative_to(src)), _pixels(path))
