"""Start-up of the ``pacscore`` command before any work (issue 14.2).

Each figure is the best of several runs of a fresh process, as excess over
``python -c pass`` timed in the same rounds (the interpreter's own start):

* ``pacscore --help``: target excess <= 0.3 s;
* ``pacscore import`` of an empty folder into a new archive: target excess <= 0.6 s
  (it opens the archive: LMDB, zarr, pydicom; no kernels, codecs or workers).

ratio = target / excess (>= 1 meets it).  Best, not median: the question is what the
code costs, not how busy the machine was; a miss still fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchlib


def _command() -> list[str]:
    """The console script beside this interpreter (what a user runs), else ``-m``."""
    script = Path(sys.executable).with_name("pacscore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pacscore.cli"]


def _run(args: list[str], cwd: Path) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr


def _excess(benchmark: Any, args: list[str], tmp_path: Path, smoke: bool,
            reset: Path | None = None) -> tuple[float, float]:
    """Best time of ``args`` and of ``python -c pass``, in the same rounds."""

    def setup() -> None:
        if reset is not None:
            shutil.rmtree(reset, ignore_errors=True)

    run = benchlib.paired(benchmark, lambda _: _run(args, tmp_path), setup=setup,
                          baseline=lambda _: _run([sys.executable, "-c", "pass"], tmp_path),
                          rounds=3 if smoke else 7, warmup=1)
    return min(run.subject), min(run.baseline)


def _check(benchmark: Any, figure: str, measured: tuple[float, float], limit: float,
           smoke: bool, note: str = "") -> None:
    """Report the excess of ``measured`` (best, python -c pass) and fail over ``limit``."""
    best, python = measured
    excess = best - python
    benchlib.report(benchmark, f"start-up: {figure}", subject=f"{best * 1000:.0f} ms",
                    baseline=f"python -c pass {python * 1000:.0f} ms",
                    ratio=limit / max(excess, 1e-3), target=f"excess <= {limit} s",
                    note=f"excess {excess * 1000:.0f} ms; best of {3 if smoke else 7} runs"
                    + note)
    # A smoke run (CI) reports only: best of 3 on a shared 2-core machine moved across
    # the 0.6 s line between two clean runs of the same code (passed on 72a3c2c, failed
    # on 6d1196a); the full run (best of 7) still holds the line.
    assert smoke or excess <= limit, f"{figure}: {excess:.2f} s more than python -c pass"


def test_help_starts_at_once(benchmark: Any, tmp_path: Path, smoke: bool) -> None:
    _check(benchmark, "pacscore --help, excess over python -c pass",
           _excess(benchmark, [*_command(), "--help"], tmp_path, smoke), 0.3, smoke)


def test_empty_import_starts_at_once(benchmark: Any, tmp_path: Path, smoke: bool) -> None:
    empty, archive = tmp_path / "empty", tmp_path / "archive"
    empty.mkdir()
    measured = _excess(benchmark, [*_command(), "import", str(empty), "--archive",
                                   str(archive)], tmp_path, smoke, reset=archive)
    _check(benchmark, "pacscore import of an empty folder, new archive", measured, 0.6,
           smoke, "; opens LMDB + zarr, starts no worker")
