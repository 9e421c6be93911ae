"""Fixtures and the ratio report of the benchmarks (see benchlib.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import benchlib
import pytest


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The real-DICOM corpus; skips (with the reason shown) when it is absent."""
    root = benchlib.corpus_root()
    if not (root / "MANIFEST.tsv").is_file():
        pytest.skip(f"DICOM corpus not found at {root} (set PACSCORE_CORPUS to its folder)")
    return root


@pytest.fixture(scope="session")
def smoke(pytestconfig: pytest.Config) -> bool:
    """True under --benchmark-disable: every benchmark runs once, on less data."""
    disabled = pytestconfig.getoption("benchmark_disable", False)
    return bool(disabled and not pytestconfig.getoption("benchmark_enable", False))


@pytest.fixture
def need_files() -> Iterator[object]:
    """``need_files(paths)`` skips the test naming the missing corpus files."""

    def check(paths: list[str]) -> list[str]:
        gone = benchlib.missing(paths)
        if gone:
            pytest.skip(f"corpus files missing: {', '.join(gone[:3])}"
                        + (" ..." if len(gone) > 3 else ""))
        return paths

    yield check


_LOAD: list[tuple[float, float, float]] = []
_FOREIGN = benchlib.ForeignCpu()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Watch for other work: on this 2-core machine it skews the ratios (most of all
    workers=2 / workers=1)."""
    _LOAD.append(os.getloadavg())
    _FOREIGN.start()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the ratio table after pytest-benchmark's own table."""
    if not benchlib.ROWS:
        return
    tr = terminalreporter
    smoke = tr.config.getoption("benchmark_disable", False)
    tr.write_sep("=", "pacscore ratios (same-run baselines)"
                 + (" -- SMOKE RUN, one round each: not a measurement" if smoke else ""))
    for line in benchlib.table(benchlib.ROWS):
        tr.write_line(line)
    _FOREIGN.stop()
    start = (_LOAD or [os.getloadavg()])[0]
    busy = _FOREIGN.seconds / _FOREIGN.wall if _FOREIGN.wall else 0.0
    tr.write_line(
        f"other processes used {_FOREIGN.seconds:.1f} CPU-s during the {_FOREIGN.wall:.0f} s "
        f"session ({busy:.0%} of one core; load average at start {start[0]:.2f}, "
        f"{os.cpu_count()} CPUs): "
        + ("a clean run" if busy < 0.05 else "other work skewed these ratios: run again")
        + (f" [{_FOREIGN.top()}]" if _FOREIGN.top() else ""))
    out = os.environ.get("PACSCORE_BENCH_REPORT")
    if out:
        Path(out).write_text("\n".join(benchlib.table(benchlib.ROWS)) + "\n")
        tr.write_line(f"(table written to {out})")


from pacscore.testing.s3 import seaweedfs_server, use_test_credentials  # noqa: E402

use_test_credentials()  # now: worker processes (a forkserver) copy the environment early
seaweedfs = seaweedfs_server()
"""A SeaweedFS S3 server for the session (skips when the weed binary is absent)."""
