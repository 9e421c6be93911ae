"""Crash consistency: SIGKILL an importing process, reopen the archive, check invariants.

The workload runs in a subprocess (``tests/helpers/import_loop.py``) that prints one
``ACK <sop_uid> <sha256>`` line per acknowledged StoreResult.  The test kills it with
SIGKILL, either after a seeded random delay (state accumulates in one archive across
rounds) or at an injection point the helper installs by wrapping pacscore methods in
its own process.  After each kill the archive is reopened here (start-up recovery runs
in the constructor) and must satisfy:

* every acknowledged instance is in the index and ``get(uid, "original")`` is
  byte-identical to the input file (same SHA-256);
* every record's frames exist, and ``verify()`` reports no failure;
* staging is empty and no location is pending;
* every published location is owned by exactly one record, and vice versa;
* ``stats()`` equals the sum over the records, and the level counts add up.

``PACSCORE_CRASH_ITERATIONS`` (default 25) sets the number of random kills.
"""

from __future__ import annotations

import gc
import hashlib
import io
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pacscore import Archive, StoreResult
from pacscore.index import StoreKind

CORPUS = Path(os.environ.get("PACSCORE_CORPUS")
              or Path(__file__).resolve().parents[2] / "shared" / "corpus")
CT_DIR = CORPUS / "ct_series" / "tcia_lung_pet_ct_dx_chest_30sl"
MR_DIR = CORPUS / "mr_series" / "ge_epi_fmri_run_150files"
HELPER = Path(__file__).parent / "helpers" / "import_loop.py"

pytestmark = pytest.mark.skipif(
    not (CT_DIR.is_dir() and MR_DIR.is_dir()),
    reason=f"real corpus not found under {CORPUS} (set PACSCORE_CORPUS)",
)

ITERATIONS = int(os.environ.get("PACSCORE_CRASH_ITERATIONS", "25"))
SEEDS = (101, 202, 303)
KILL_WINDOW_S = 0.8  # a whole helper run takes ~0.7 s after "OPENING" on 2 cores


def _corpus_files() -> tuple[list[str], list[str]]:
    ct = sorted(str(p) for p in CT_DIR.glob("*.dcm"))
    mr = sorted(str(p) for p in MR_DIR.glob("*.dcm"))[:40]
    return ct, mr


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Run:
    """One helper process, after it ended."""

    returncode: int
    lines: list[list[str]]
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def words(self, word: str) -> list[list[str]]:
        return [w for w in self.lines if w[0] == word]

    def describe(self) -> str:
        tail = "\n".join(" ".join(w) for w in self.lines[-5:])
        return f"rc={self.returncode}\nstdout tail:\n{tail}\nstderr:\n{self.stderr[-3000:]}"


@dataclass
class Ledger:
    """What the archive has acknowledged and not deleted since (uid -> input sha256)."""

    acked: dict[str, str] = field(default_factory=dict)

    def absorb(self, run: Run) -> None:
        for w in run.lines:
            if w[0] == "ACK" and len(w) == 3 and len(w[2]) == 64:
                self.acked[w[1]] = w[2]
            elif w[0] == "DELETING" and len(w) == 2:
                self.acked.pop(w[1], None)  # may be gone from the moment it started


def run_helper(root: Path, list_file: Path, env: dict[str, str] | None = None,
               kill_after: float | None = None) -> Run:
    """Run the helper; SIGKILL it ``kill_after`` seconds after it printed OPENING."""
    full_env = {**os.environ, "HELPER_FSYNC": "1", **(env or {})}
    # Unbuffered: readline() on the raw pipe reads byte by byte, so nothing it reads
    # ahead can be lost to communicate(), which reads the file descriptor directly.
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(root), str(list_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=full_env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if kill_after is not None and first.startswith(b"OPENING"):
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    text = (first + out).decode()
    lines = [ln.split(" ", 3) for ln in text.splitlines() if ln.strip()]
    return Run(proc.returncode, lines, err.decode(errors="replace"))


def store_in_process(root: Path, list_file: Path, ledger: Ledger) -> int:
    """Store every listed file here (no crash); record the ACKs; return how many."""
    paths = list_file.read_text().split()
    digest = {p: _sha(p) for p in paths}
    with Archive(root) as archive:
        results = list(archive.store_many(paths, workers=0))
    acks = [r for r in results if isinstance(r, StoreResult)]
    assert len(acks) == len(paths), [r for r in results if not isinstance(r, StoreResult)]
    for r in acks:
        ledger.acked[r.sop_instance_uid] = digest[r.source]
    return len(acks)


def check_archive(root: Path, ledger: Ledger) -> tuple[int, int]:
    """Reopen the archive (recovery runs) and assert every invariant.

    Returns (records, entries removed by recovery).
    """
    with Archive(root) as archive:
        recovered = archive.recovered
        store, index = archive.store_, archive.index
        assert list(store.staging.iterdir()) == [], "staging not empty after recovery"
        assert index.pending() == [], "pending marks left after recovery"

        records = list(index.records())
        by_uid = {r.sop_instance_uid: r for r in records}
        assert len(by_uid) == len(records)

        # Acknowledged means retrievable, byte for byte.
        for uid, sha in ledger.acked.items():
            rec = by_uid.get(uid)
            assert rec is not None, f"acknowledged instance {uid} is missing"
            assert rec.sha256 == sha, f"acknowledged instance {uid} has other content"
        for rec in records:
            original = archive.get(rec.sop_instance_uid, "original")
            assert hashlib.sha256(original).hexdigest() == rec.sha256, rec.sop_instance_uid
            assert len(original) == rec.bytes_in

        # The index never names a missing frame.
        for rec in records:
            assert store.exists(rec.location), f"{rec.sop_instance_uid}: location missing"
            assert index.location_owner(rec.location) == rec.sop_instance_uid
            if rec.kind == StoreKind.FRAMES:
                assert rec.layout is not None
                ndim = 3 + (rec.layout["samples"] > 1)
                streams = store.read_frames(rec.location, range(rec.layout["frames"]), ndim)
                assert all(streams), f"{rec.sop_instance_uid}: empty frame"
            else:
                store.read_blob(rec.location)
        report = archive.verify()
        assert report.checked == len(records)
        assert report.failed == []

        # Nothing on disk that no record owns (and one location per record).
        on_disk = list(store.locations())
        assert len(on_disk) == len(set(on_disk)), "a location is published twice"
        unowned = [loc for loc in on_disk if index.location_owner(loc) is None]
        assert unowned == [], f"{len(unowned)} unreferenced locations after recovery"
        assert set(on_disk) == {r.location for r in records}

        # Totals kept in step with the records.
        stats = archive.stats()
        assert stats["instances"] == len(records)
        assert stats["bytes_stored"] == sum(r.bytes_stored for r in records)
        assert stats["bytes_in"] == sum(r.bytes_in for r in records)
        assert stats["compressed_instances"] == sum(r.compressed for r in records)
        per_syntax = dict(Counter(r.stored_syntax for r in records))
        assert stats["transfer_syntaxes"] == per_syntax
        studies = archive.find("study")
        assert sum(s["NumberOfStudyRelatedInstances"] for s in studies) == len(records)
        assert {s["StudyInstanceUID"] for s in studies} == {r.study_uid for r in records}
        series = archive.find("series")
        assert {s["SeriesInstanceUID"] for s in series} == {r.series_uid for r in records}
        assert len(archive.find("instance")) == len(records)
        return len(records), recovered


@pytest.fixture(scope="module")
def corpus_files() -> tuple[list[str], list[str]]:
    return _corpus_files()


@pytest.fixture
def full_list(tmp_path: Path, corpus_files: tuple[list[str], list[str]]) -> Path:
    ct, mr = corpus_files
    path = tmp_path / "files.txt"
    path.write_text("\n".join(ct + mr) + "\n")
    return path


@pytest.fixture
def small_list(tmp_path: Path, corpus_files: tuple[list[str], list[str]]) -> Path:
    """16 files: with HELPER_BATCH=4, four commits of four."""
    ct, mr = corpus_files
    path = tmp_path / "small.txt"
    path.write_text("\n".join(ct[:6] + mr[:10]) + "\n")
    return path


def test_helper_runs_to_completion(tmp_path: Path, full_list: Path) -> None:
    """Without a kill, every file is acknowledged once with its own SHA-256."""
    run = run_helper(tmp_path / "a", full_list)
    assert run.returncode == 0, run.describe()
    assert run.words("DONE") and not run.words("REJ") and not run.words("FAIL"), run.describe()
    paths = full_list.read_text().split()
    acks = run.words("ACK")
    assert len(acks) == len(paths)
    assert sorted(w[2] for w in acks) == sorted(_sha(p) for p in paths)
    ledger = Ledger()
    ledger.absorb(run)
    assert check_archive(tmp_path / "a", ledger)[0] == len(paths)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_random_sigkill_rounds(seed: int, tmp_path: Path, full_list: Path) -> None:
    """Kill the importer at random moments, on one archive, and check after each kill."""
    rng = random.Random(seed)
    root = tmp_path / "archive"
    ledger = Ledger()
    rounds = max(1, math.ceil(ITERATIONS / len(SEEDS)))
    killed = 0
    for i in range(rounds):
        env = {
            "HELPER_SEED": str(rng.randrange(1 << 30)),
            "HELPER_BATCH": str(rng.choice((1, 4, 32))),
            "HELPER_DELETE": str(rng.choice((0, 3, 12))),
            "HELPER_DELETE_SERIES": "1" if rng.random() < 0.25 else "0",
        }
        delay = rng.uniform(0.0, KILL_WINDOW_S)
        run = run_helper(root, full_list, env, kill_after=delay)
        context = f"round {i} env={env} delay={delay:.3f}\n{run.describe()}"
        assert run.killed or run.returncode == 0, context
        assert not run.words("REJ"), context
        killed += run.killed
        ledger.absorb(run)
        check_archive(root, ledger)
    assert killed > 0, "no round was killed: the kill window misses the workload"

    # After all that, the archive still takes everything, and ends complete.
    final = run_helper(root, full_list, {"HELPER_SEED": "7"})
    assert final.returncode == 0 and final.words("DONE"), final.describe()
    assert not final.words("REJ"), final.describe()
    ledger.absorb(final)
    n_files = len(full_list.read_text().split())
    assert len(ledger.acked) == n_files
    assert check_archive(root, ledger)[0] == n_files


# (crash point, N, records in the index after recovery).  With 16 files and
# HELPER_BATCH=4 the first commit (4 files) is acknowledged before the crash.
# From the index transaction on, the batch is committed: recovery moves its staged
# locations into place.
INGEST_POINTS = [
    pytest.param("stage", 6, 4, id="after-staging"),
    pytest.param("flush", 2, 4, id="after-flush-before-put"),
    pytest.param("put", 2, 8, id="after-put-before-rename"),
    pytest.param("rename", 6, 8, id="mid-publish"),
    pytest.param("publish", 2, 8, id="after-publish-before-ack"),
]


@pytest.mark.parametrize(("point", "n", "expected"), INGEST_POINTS)
def test_injected_crash_during_ingest(point: str, n: int, expected: int, tmp_path: Path,
                                      small_list: Path) -> None:
    root = tmp_path / "archive"
    env = {"HELPER_BATCH": "4", "CRASH_AT": f"{point}:{n}"}
    run = run_helper(root, small_list, env)
    assert run.killed, f"crash point {point}:{n} was not reached\n{run.describe()}"
    assert len(run.words("ACK")) == 4, run.describe()
    ledger = Ledger()
    ledger.absorb(run)
    records, recovered = check_archive(root, ledger)
    assert records == expected
    if point in ("stage", "flush", "put", "rename"):
        assert recovered > 0, "the crash left nothing for recovery to move or remove"

    # The archive is not wedged: the same files go in, none is refused.
    assert store_in_process(root, small_list, ledger) == 16
    assert check_archive(root, ledger)[0] == 16


# (crash point, N): the N-th of five instance deletions dies there.
DELETE_POINTS = [
    pytest.param("index_delete", 2, id="after-index-delete"),
    pytest.param("rmtree", 2, id="mid-frame-delete"),
    pytest.param("store_delete", 2, id="after-frame-delete"),
    pytest.param("clear_pending", 2, id="before-clear-pending"),
]


@pytest.mark.parametrize(("point", "n"), DELETE_POINTS)
def test_injected_crash_during_delete(point: str, n: int, tmp_path: Path,
                                      small_list: Path) -> None:
    root = tmp_path / "archive"
    ledger = Ledger()
    store_in_process(root, small_list, ledger)
    run = run_helper(root, small_list, {"HELPER_DELETE": "5", "HELPER_SEED": "3",
                                        "CRASH_AT": f"{point}:{n}"})
    assert run.killed, f"crash point {point}:{n} was not reached\n{run.describe()}"
    assert len(run.words("DELETING")) == n and len(run.words("DELETED")) == n - 1
    ledger.absorb(run)
    records, _ = check_archive(root, ledger)
    assert records == 16 - n  # the n-th delete was committed in the index
    assert store_in_process(root, small_list, ledger) == 16
    assert check_archive(root, ledger)[0] == 16


def test_injected_crashes_during_recovery(tmp_path: Path, small_list: Path) -> None:
    """A recovery that is itself killed is finished by the next one: committed
    locations left staged end up in place, nothing is lost or left behind."""
    root = tmp_path / "archive"
    ledger = Ledger()
    steps = [
        {"HELPER_BATCH": "4", "CRASH_AT": "put:2"},  # 8 committed, 4 of them staged
        {"CRASH_AT": "rename:2"},  # recovery moved two of the four, then died
        {"CRASH_AT": "clean_staging:1"},  # recovery moved the rest, died before pending
    ]
    for env in steps:
        run = run_helper(root, small_list, env)
        assert run.killed, f"{env} not reached\n{run.describe()}"
        assert not run.words("OPEN") or env is steps[0], run.describe()
        ledger.absorb(run)
    assert len(ledger.acked) == 4
    records, recovered = check_archive(root, ledger)
    assert records == 8  # the second batch was committed before the first crash
    assert recovered == 0
    assert store_in_process(root, small_list, ledger) == 16
    assert check_archive(root, ledger)[0] == 16


def test_injected_crash_during_recovery_of_a_delete(tmp_path: Path,
                                                     small_list: Path) -> None:
    """A delete killed after its index transaction leaves pending locations; a
    recovery killed after removing their frames keeps the marks; the next one ends."""
    root = tmp_path / "archive"
    ledger = Ledger()
    store_in_process(root, small_list, ledger)
    steps = [
        {"HELPER_DELETE": "1", "HELPER_SEED": "3", "CRASH_AT": "index_delete:1"},
        {"CRASH_AT": "store_delete:1"},  # recovery removed the frames, kept the mark
    ]
    for env in steps:
        run = run_helper(root, small_list, env)
        assert run.killed, f"{env} not reached\n{run.describe()}"
        ledger.absorb(run)
    with Archive(root, readonly=True) as peek:
        assert len(peek.index.pending()) == 1
    records, recovered = check_archive(root, ledger)
    assert records == 15
    assert recovered == 1  # the pending mark, its frames already gone
    assert store_in_process(root, small_list, ledger) == 16
    assert check_archive(root, ledger)[0] == 16


def _dimse_sender(port: int, files: list[str], acked: list[str]) -> None:
    """One association storing ``files`` until the server dies; records successes."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE("MODALITY")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
    try:
        for path in files if assoc.is_established else []:
            status = assoc.send_c_store(path)
            if status is None or getattr(status, "Status", None) != 0x0000:
                return  # the server went away: nothing after this was acknowledged
            acked.append(path)
    except Exception:  # the connection dropped mid-store
        return
    finally:
        if assoc.is_established:
            assoc.abort()
        sock = getattr(assoc.dul, "socket", None)
        if sock is not None:  # pynetdicom leaves it open when the peer vanished
            sock.close()


@pytest.mark.parametrize("how, seed", [("kill", 1), ("kill", 2), ("kill", 3),
                                       ("terminate", 4), ("terminate", 5)])
def test_server_stopped_during_c_store(how: str, seed: int, tmp_path: Path) -> None:
    """`pacscore serve` killed with SIGKILL, or stopped with SIGTERM, while 4
    associations store: after restart, every C-STORE that got a success status is
    there with its pixels, and every invariant holds (no half-written instance
    visible, nothing leaked).  SIGTERM: a clean exit, and the stores running then end
    normally (their spooled data sets are not removed under them)."""
    import threading
    import warnings

    import numpy as np
    import pydicom

    from pacscore.testing import cli, free_port

    if not CT_DIR.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    files = sorted(str(p) for p in CT_DIR.glob("*.dcm"))
    root = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacscore.cli", "serve", "--archive", str(root),
         "--dimse-port", str(port), "--http-port", str(free_port()),
         "--grpc-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening" in line:
            break
    acked: list[str] = []
    senders = [threading.Thread(target=_dimse_sender, args=(port, files[i::4], acked))
               for i in range(4)]
    with warnings.catch_warnings():
        # pynetdicom, as a client whose server vanished, can drop a socket unclosed.
        warnings.simplefilter("ignore", ResourceWarning)
        for t in senders:
            t.start()
        time.sleep(random.Random(seed).uniform(0.2, 1.2))
        getattr(proc, how)()
        code = proc.wait(timeout=60)
        proc.stdout.close()
        for t in senders:
            t.join(timeout=60)
        del senders
        gc.collect()
    if how == "terminate":
        assert code == 0, "unclean stop"
        audit = (root / "audit" / "audit.jsonl").read_text()
        assert "cannot read" not in audit, audit
    records, _ = check_archive(root, Ledger())  # every invariant, after recovery
    assert records >= len(acked)
    with Archive(root) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in acked:
            source = pydicom.dcmread(path)
            stored = pydicom.dcmread(io.BytesIO(archive.get(source.SOPInstanceUID)))
            assert np.array_equal(stored.pixel_array, source.pixel_array), path
    # The killed server's unacknowledged data sets are still spooled (in a folder of
    # its own, /dev/shm or ARCHIVE/spool); a restart clears them, and a clean stop
    # removes the spool folder.
    from pacscore.services.serve import spool_folders
    from pacscore.testing import serving

    left = spool_folders(root) or [root / "spool"]
    with serving(root):
        for spool in left:
            assert not list(spool.glob("pacscore-dimse-*")), list(spool.iterdir())
    assert not any(spool.exists() for spool in left)
    assert spool_folders(root) == []
