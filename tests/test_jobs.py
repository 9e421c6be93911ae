"""Bulk compress jobs: outputs, reports, resume after kill -9, auto, plan, Dask, memory."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

JOURNAL = ".pacscore-journal.jsonl"


def cli(*args: str, timeout: float = 600) -> tuple[int, Any]:
    proc = subprocess.run([sys.executable, "-m", "pacscore.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    out: Any = proc.stdout
    if "--json" in args and proc.stdout.strip():
        out = json.loads(proc.stdout)
    return proc.returncode, out


def pixels(data: bytes, plugin: str = "") -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        if plugin:
            ds.pixel_array_options(decoding_plugin=plugin)
        return ds.pixel_array


@pytest.fixture()
def tree(tmp_path: Path, corpus: Path) -> Path:
    """Nested folders: a CT series, MR, RGB US, a lossy file, a malformed file, a text file."""
    src = tmp_path / "src"
    picks = {
        "ct/a": sorted((corpus / "ct_series/dcmqi_ge_ct_3slice").glob("*.dcm")),
        "ct/b": [corpus / "ct_series/single/Philips_CT.dcm",
                 corpus / "ct_series/single/GE_lung_signed.dcm"],
        "mr": [corpus / "odd/ts_ladder_mr/2.dcm", corpus / "odd/ts_ladder_mr/3.dcm"],
        "us": [corpus / "odd/ybr/US_YBR_FULL_uncompressed.dcm",
               corpus / "odd/odd_dims/SC_rgb_small_odd.dcm"],
        "lossy": [corpus / "ct_series/single/Siemens_head_j2k_lossy.dcm"],
        "bad": [corpus / "malformed/MR_truncated.dcm"],
    }
    for folder, files in picks.items():
        (src / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, src / folder / f.name)
    (src / "README.txt").write_text("site notes")
    return src


def _files(root: Path) -> dict[str, Path]:
    """The visible files (the job's journal, report and temp folder are not)."""
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file() and not
            any(part.startswith(".pacscore") for part in p.relative_to(root).parts)}


@pytest.mark.parametrize("codec,ts,plugin", [
    ("htj2k", "1.2.840.10008.1.2.4.202", "pylibjpeg"),  # OpenJPEG, not our OpenJPH
    ("jpegls", "1.2.840.10008.1.2.4.80", "pyjpegls"),
    ("j2k", "1.2.840.10008.1.2.4.90", "pylibjpeg"),
])
def test_compress_tree(tmp_path: Path, tree: Path, codec: str, ts: str, plugin: str) -> None:
    out = tmp_path / "out"
    code, report = cli("compress", str(tree), "--out", str(out), "--codec", codec,
                       "--workers", "2", "--json")
    assert code == 1  # the malformed file is reported
    assert set(_files(out)) == set(_files(tree))  # same relative paths, nothing dropped
    assert [f["path"] for f in report["failures"]] == ["bad/MR_truncated.dcm"]
    assert "8130" in report["failures"][0]["reason"]
    assert [f["path"] for f in report["skipped"]] == ["README.txt"]  # listed, with why
    assert report["skipped"][0]["reason"].startswith("not DICOM: no 'DICM' prefix")
    assert report["unfinished"] == [] and report["files"] == len(_files(tree))
    status = report["status"]
    # The lossy file is always copied; CharLS refuses the 3x3 RGB image (kept, with reason).
    assert (status["failed"], status["other"], status["compressed"] + status["copied"]) \
        == (1, 1, 10)
    assert status["compressed"] >= 8
    assert report["bytes_out"] < report["bytes_in"]
    for rel, src in _files(tree).items():
        data, orig = (out / rel).read_bytes(), src.read_bytes()
        if rel in ("lossy/Siemens_head_j2k_lossy.dcm", "bad/MR_truncated.dcm", "README.txt",
                   "mr/3.dcm", "us/SC_rgb_small_odd.dcm") and data == orig:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == ts, rel
        assert np.array_equal(pixels(data, plugin), pixels(orig)), rel
    assert "<svg" in (out / ".pacscore-report.html").read_text()
    assert not (out / ".pacscore-tmp").exists()


@pytest.mark.skipif(shutil.which("dcmdjpls") is None, reason="DCMTK dcmdjpls not installed")
def test_jpegls_outputs_decode_with_dcmtk(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "out"
    cli("compress", str(tree / "ct"), "--out", str(out), "--codec", "jpegls", "--json")
    for rel, src in _files(tree / "ct").items():
        decoded = tmp_path / "dec.dcm"
        subprocess.run(["dcmdjpls", str(out / rel), str(decoded)], check=True,
                       capture_output=True)
        assert np.array_equal(pixels(decoded.read_bytes()), pixels(src.read_bytes())), rel


def test_refuses_to_overwrite_a_job_without_resume(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "out"
    cli("compress", str(tree / "ct"), "--out", str(out), "--json")
    code, _ = cli("compress", str(tree / "ct"), "--out", str(out), "--json")
    assert code == 2
    code, report = cli("compress", str(tree / "ct"), "--out", str(out), "--resume", "--json")
    assert code == 0 and report["files"] == report["resumed"] == 5  # all done before


def test_resume_of_a_finished_job_reports_the_whole_job(tmp_path: Path, tree: Path) -> None:
    """--resume of a finished job reproduces its report and exit code from the journal:
    the first run's failure stays a failure."""
    out = tmp_path / "out"
    code, first = cli("compress", str(tree), "--out", str(out), "--workers", "2", "--json")
    assert code == 1 and first["failures"]
    before = {p: p.stat().st_mtime_ns for p in _files(out).values()}
    code, again = cli("compress", str(tree), "--out", str(out), "--resume", "--json")
    assert code == 1
    assert again["resumed"] == again["files"] == first["files"] == len(_files(tree))
    for key in ("status", "failures", "skipped", "unfinished", "bytes_in", "bytes_out",
                "groups"):
        assert again[key] == first[key], key
    assert {p: p.stat().st_mtime_ns for p in _files(out).values()} == before  # nothing redone
    proc = subprocess.run([sys.executable, "-m", "pacscore.cli", "compress", str(tree), "--out",
                           str(out), "--resume"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "done by an earlier run" in proc.stdout
    assert "bad/MR_truncated.dcm" in proc.stdout


def _journal_lines(out: Path) -> int:
    try:
        return (out / JOURNAL).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_resume_after_kill_9(tmp_path: Path, corpus: Path) -> None:
    """Kill the whole job (process group) at random moments; --resume finishes it with
    every file done exactly once and no partial output ever visible."""
    src = tmp_path / "src"
    shutil.copytree(corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl", src / "ct")
    shutil.copytree(corpus / "mr_series/tcia_brain_t1post_24sl", src / "mr")
    shutil.copytree(corpus / "mr_series/philips_3d_t1_mprage_sag_170sl", src / "mr3d")
    shutil.copytree(corpus / "mr_series/philips_3d_t1_mprage_sag_170sl", src / "mr3d_b")
    out = tmp_path / "out"
    total = len(_files(src))
    rng = random.Random(7)
    kills, code = 0, None
    for attempt in range(30):
        args = [sys.executable, "-m", "pacscore.cli", "compress", str(src), "--out", str(out),
                "--workers", rng.choice(["0", "2"]), "--json"]
        if attempt:
            args.append("--resume")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        if attempt >= 6:
            code = proc.wait(timeout=600)
            break
        # A random moment, by progress rather than by clock (the job's speed varies):
        # after 0 to total/8 more files reached the journal (0: during start-up).  Six
        # such kills leave at least a quarter of the files, so every one hits a live job.
        target = _journal_lines(out) + rng.randint(0, total // 8)
        while proc.poll() is None and _journal_lines(out) < target:
            time.sleep(0.002)
        if proc.poll() is not None:
            code = proc.returncode
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        for rel, path in _files(out).items():  # every visible output is complete
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert pydicom.dcmread(path).SOPInstanceUID, rel
    assert code == 0, "job did not finish"
    assert kills > 0 and not (out / ".pacscore-tmp").exists()
    entries = [json.loads(line) for line in (out / JOURNAL).read_text().splitlines()]
    rels = [e["rel"] for e in entries]
    assert len(rels) == len(set(rels)) == len(_files(src))
    for rel, path in _files(src).items():
        assert np.array_equal(pixels((out / rel).read_bytes()), pixels(path.read_bytes())), rel


def test_auto_picks_per_series_and_is_never_worse(tmp_path: Path, tree: Path) -> None:
    sizes = {}
    for codec in ("htj2k", "jpegls", "auto"):
        # --budget 0: every codec passes the speed test, so the smallest must win; with the
        # default budget a loaded machine's timing noise may rule the smallest out (failed
        # 1 run in 4 here with other test runs on both cores)
        code, report = cli("compress", str(tree / "ct"), str(tree / "us"), "--out",
                           str(tmp_path / codec), "--codec", codec, "--workers", "0",
                           "--budget", "0", "--json")
        assert code == 0
        sizes[codec] = report["bytes_out"]
        if codec == "auto":
            assert set(report["codec_per_series"].values()) <= {"htj2k", "jpegls", "j2k"}
            assert len(report["codec_per_series"]) >= 3
    assert sizes["auto"] <= min(sizes["htj2k"], sizes["jpegls"]) * 1.01


def test_plan_writes_nothing(tmp_path: Path, tree: Path) -> None:
    before = sorted(p for p in tree.rglob("*"))
    code, result = cli("plan", str(tree), "--sample", "6", "--json")
    assert code == 0
    assert sorted(p for p in tree.rglob("*")) == before
    assert result["files"] == len(_files(tree)) and result["sampled_files"] == 6
    for codec in ("htj2k", "jpegls", "j2k"):
        c = result["codecs"][codec]
        assert 0 < c["predicted_bytes_after"] <= result["bytes"]
        assert c["predicted_seconds"] >= 0
    assert result["modalities"]


def test_compress_on_a_dask_cluster(tmp_path: Path, tree: Path) -> None:
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    try:
        code, report = cli("compress", str(tree / "ct"), "--out", str(tmp_path / "d"),
                           "--dask", cluster.scheduler_address, "--json")
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()
    assert code == 0 and report["status"] == {"compressed": 5}
    for rel, src in _files(tree / "ct").items():
        assert np.array_equal(pixels((tmp_path / "d" / rel).read_bytes()),
                              pixels(src.read_bytes()))


def test_memory_stays_bounded_on_a_1000_file_tree(tmp_path: Path, corpus: Path) -> None:
    """Peak RSS of the job does not grow with the tree: 1,000 small files."""
    src = tmp_path / "src"
    small = sorted((corpus / "mr_series/ge_epi_fmri_run_150files").glob("*.dcm"))
    for i in range(1000):
        d = src / f"d{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(small[i % len(small)], d / f"{i:04d}.dcm")
    start = time.monotonic()
    # The job's own peak, measured by a small parent: a child's ru_maxrss starts from the
    # high-water mark of the process it was forked (or vforked) from, and this pytest
    # process may hold ~1 GB after the earlier tests (CI measured 981 MB that way).
    measure = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "pacscore.cli",
                          "compress", str(src), "--out", str(tmp_path / "out"), "--workers", "0",
                          "--json"], check=False, capture_output=True, text=True, timeout=600)
    out = run.stdout
    peak_mb = int(run.stderr.split()[-1]) / 1024
    report = json.loads(out)
    print(f"1000 files in {time.monotonic() - start:.1f} s, peak RSS {peak_mb:.0f} MB")
    assert run.returncode == 0 and report["files"] == 1000
    assert peak_mb < 600


def test_job_engine_survives_a_dying_worker_and_a_raising_task() -> None:
    """A worker killed by a crashing codec is replaced: the item it ran is reported with
    the reason, the items queued behind it are run elsewhere, the job goes on."""
    from pacscore.jobs import run_tasks
    from tests.helpers.tasks import (
        crash_always,
        crash_on_fifths,
        crash_on_three,
        raise_on_five,
    )

    def failed(item: int, reason: str) -> int:
        reasons[item] = reason
        return -item

    reasons: dict[int, str] = {}
    out = sorted(run_tasks(crash_on_three, range(12), workers=2, on_error=failed))
    assert out == sorted([-3] + [x * 10 for x in range(12) if x != 3])
    assert "stopped twice" in reasons[3] and "139" in reasons[3]
    for _ in range(5):  # many deaths, with items queued behind the dying ones
        reasons.clear()
        out = sorted(run_tasks(crash_on_fifths, range(40), workers=2, on_error=failed))
        assert out == sorted(-x if x % 5 == 4 else x * 10 for x in range(40))
        assert sorted(reasons) == [x for x in range(40) if x % 5 == 4]
    reasons.clear()  # every worker dies on every item: still one result per item
    out = sorted(run_tasks(crash_always, range(10), workers=2, on_error=failed))
    assert out == sorted(-x for x in range(10)) and len(reasons) == 10
    reasons.clear()
    out = sorted(run_tasks(raise_on_five, range(8), workers=2, on_error=failed))
    assert out == sorted([-5] + [x * 10 for x in range(8) if x != 5])
    assert "ValueError: five is not allowed" in reasons[5]


def test_forked_workers_do_not_outlive_a_killed_job(tmp_path: Path) -> None:
    """kill -9 of a job's parent: its worker processes see the pipe close and exit."""
    script = (
        "import sys\n"
        "from pacscore.jobs import run_tasks\n"
        "from tests.helpers.tasks import slow_pid\n"
        "for pid in run_tasks(slow_pid, range(100), workers=2, fork_safe=True):\n"
        "    print(pid, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None
    pids = {int(proc.stdout.readline()) for _ in range(4)}
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
        assert time.monotonic() < deadline, "worker processes outlived the killed job"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except OSError:
        return "Z"


def test_compress_copies_a_file_that_crashes_its_workers(tmp_path: Path, corpus: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A file on which worker processes die is copied unchanged and listed as failed
    with the reason, like any file that cannot be transcoded: never missing from the
    output, and the job goes on."""
    from pacscore.config import ArchiveConfig
    from pacscore.jobs import compress
    from tests.helpers.tasks import compress_one_crashing_on_marked_files

    monkeypatch.setattr(compress, "compress_one", compress_one_crashing_on_marked_files)
    src = tmp_path / "src"
    src.mkdir()
    ct = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))
    for i, path in enumerate(ct[:4]):
        shutil.copy(path, src / (f"crash{i}.dcm" if i == 1 else f"ok{i}.dcm"))
    results = {r.rel: r for r in compress.run_compress([str(src)], str(tmp_path / "out"),
                                                         ArchiveConfig(), workers=2)}
    assert results["crash1.dcm"].status == "failed"
    assert "stopped twice" in (results["crash1.dcm"].reason or "")
    assert (tmp_path / "out/crash1.dcm").read_bytes() == (src / "crash1.dcm").read_bytes()
    assert {results[f"ok{i}.dcm"].status for i in (0, 2, 3)} == {"compressed"}


@pytest.mark.parametrize("rel", ["../outside.dcm", "a/../../outside.dcm", "/etc/passwd", ""])
def test_output_paths_cannot_leave_the_output_root(tmp_path: Path, rel: str) -> None:
    from pacscore.errors import PacsError
    from pacscore.jobs.compress import _target

    assert _target(tmp_path, "ct/a b/1.dcm") == tmp_path / "ct/a b/1.dcm"
    with pytest.raises(PacsError, match="escapes the output root"):
        _target(tmp_path, rel)
