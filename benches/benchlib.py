"""Helpers shared by the benchmarks: corpus paths, paired timing, the ratio report.

Every figure is a ratio against a baseline measured in the same run, in the same test,
interleaved round by round with the subject: the baseline runs inside the
``setup`` of ``benchmark.pedantic`` (so pytest-benchmark does not count it) and is
timed here; the subject is timed both by pytest-benchmark and here, so the ratio is
also available under ``--benchmark-disable`` (one round each: the smoke run).

Nothing here asserts on time.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CORPUS = "/work/shared/corpus"

CT_SERIES = "ct_series/tcia_lung_pet_ct_dx_chest_30sl"
MR_SERIES = "mr_series/philips_3d_t1_mprage_sag_170sl"
RADIOGRAPHY = (
    "radiography/cr/WG04_RG2_UNC_2140x1760.dcm",
    "radiography/cr/WG04_RG3_UNC_1760x1760_mono1.dcm",
    "radiography/xa/WG04_XA1_UNC_1024.dcm",
)
US_RGB = ("multiframe/us_cine/ClearCanvas_US_8fr_rgb_implicit.dcm",)


def corpus_root() -> Path:
    """The real-DICOM corpus (``PACSCORE_CORPUS`` overrides the default)."""
    return Path(os.environ.get("PACSCORE_CORPUS", DEFAULT_CORPUS))


def series_files(root: Path, folder: str, limit: int | None = None) -> list[str]:
    """Sorted ``*.dcm`` files of a corpus folder (the first ``limit`` of them)."""
    files = sorted(str(p) for p in (root / folder).glob("*.dcm"))
    return files[:limit] if limit is not None else files


def files(root: Path, rels: Sequence[str]) -> list[str]:
    """Absolute paths of corpus files."""
    return [str(root / r) for r in rels]


def missing(paths: Sequence[str]) -> list[str]:
    """Paths that do not exist."""
    return [p for p in paths if not os.path.isfile(p)]


def full_mode() -> bool:
    """PACSCORE_BENCH_FULL=1 asks for the large variants."""
    return os.environ.get("PACSCORE_BENCH_FULL", "") not in ("", "0")


def median(xs: Sequence[float]) -> float:
    """Median (p50) of timings."""
    return statistics.median(xs)


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class Paired:
    """Timings of a subject and its baseline, round by round."""

    subject: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    result: Any = None


def paired(benchmark: Any, subject: Callable[[Any], Any], *,  # noqa: C901
           setup: Callable[[], Any] | None = None,
           teardown: Callable[[Any], None] | None = None,
           baseline: Callable[[Any], Any] | None = None,
           baseline_setup: Callable[[], Any] | None = None,
           baseline_teardown: Callable[[Any], None] | None = None,
           rounds: int = 5, warmup: int = 1) -> Paired:
    """Time ``subject(ctx)`` under ``benchmark.pedantic`` and ``baseline(bctx)`` before
    each round (``ctx = setup()``, ``bctx = baseline_setup()``; neither setup is timed).

    ``warmup`` untimed pairs run first (skipped when benchmarks are disabled).
    """
    out = Paired()
    record = [True]

    def run_baseline() -> None:
        if baseline is None:
            return
        bctx = baseline_setup() if baseline_setup else None
        t0 = time.perf_counter()
        baseline(bctx)
        dt = time.perf_counter() - t0
        if baseline_teardown:
            baseline_teardown(bctx)
        if record[0]:
            out.baseline.append(dt)

    def _setup() -> tuple[tuple[Any], dict[str, Any]]:
        run_baseline()
        return (setup() if setup else None,), {}

    def _target(ctx: Any) -> Any:
        t0 = time.perf_counter()
        r = subject(ctx)
        dt = time.perf_counter() - t0
        if record[0]:
            out.subject.append(dt)
        return r

    def _teardown(ctx: Any) -> None:
        if teardown:
            teardown(ctx)

    if not benchmark.disabled:
        record[0] = False
        for _ in range(warmup):
            (ctx,), _ = _setup()
            _target(ctx)
            _teardown(ctx)
        record[0] = True
    out.result = benchmark.pedantic(_target, setup=_setup, teardown=_teardown,
                                    rounds=rounds, iterations=1)
    return out


# -- the report --------------------------------------------------------------------
@dataclass
class Row:
    """One figure of the report."""

    figure: str
    subject: str
    baseline: str
    ratio: float
    target: str
    note: str = ""


ROWS: list[Row] = []


def report(benchmark: Any, figure: str, *, subject: str, baseline: str, ratio: float,
           target: str = "", note: str = "", key: str | None = None,
           **extra: Any) -> None:
    """Record a figure for the terminal summary and ``benchmark.extra_info``."""
    key = key or "ratio"
    benchmark.extra_info[key] = round(ratio, 4)
    for k, v in extra.items():
        benchmark.extra_info[k] = round(v, 4) if isinstance(v, float) else v
    ROWS.append(Row(figure, subject, baseline, ratio, target, note))


def table(rows: Sequence[Row]) -> list[str]:
    """The report as markdown lines."""
    head = ["| figure | subject | baseline (same run) | ratio | target | note |",
            "|---|---|---|---:|---|---|"]
    return head + [f"| {r.figure} | {r.subject} | {r.baseline} | {r.ratio:.3f} | "
                   f"{r.target} | {r.note} |" for r in rows]


def _tree(pid: int) -> tuple[set[int], dict[int, int]]:
    """Process ``pid`` and its descendants, and every process's CPU ticks, from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = sum(int(f) for f in fields[11:15])
    tree, grown = {pid}, True
    while grown:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grown = bool(more)
    return tree, ticks


def tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and all its descendants (their children that
    ended and were waited for included), from /proc; 0 where /proc is missing."""
    tree, ticks = _tree(pid)
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return sum(ticks.get(p, 0) for p in tree) / hz


def cpu_halves() -> tuple[set[int], set[int]] | None:
    """This process's CPUs split in two (the first half, the rest), or None where
    there are fewer than two or affinity cannot be set (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    try:
        os.sched_setaffinity(0, cpus)  # (unchanged: may this process set affinities?)
    except OSError:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Run process ``pid``, its descendants and every one of their threads on ``cpus``
    only (threads and processes they start later inherit it); a thread that ended
    meanwhile is skipped."""
    for proc in _tree(pid)[0]:
        try:
            threads = [int(t.name) for t in Path(f"/proc/{proc}/task").iterdir()]
        except OSError:
            continue
        for thread in threads:
            try:
                os.sched_setaffinity(thread, cpus)
            except (ProcessLookupError, FileNotFoundError):
                continue


# -- other work on the machine -------------------------------------------------------
class ForeignCpu:
    """CPU seconds used by processes outside this pytest's process tree while the
    benchmarks ran (sampled from /proc; kernel threads left out): a clean run is
    near zero; on a 2-core
    machine any of it skews the ratios, most of all workers=2 / workers=1."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.seconds = 0.0
        self.wall = 0.0
        self.by_name: dict[str, float] = {}
        self._last: dict[int, int] = {}
        self._ours: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._boot_ticks = 0

    @staticmethod
    def _stat(pid: int) -> tuple[int, int, int, str] | None:
        """(ppid, utime + stime, start time in clock ticks, command name)."""
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = raw[raw.rfind(")") + 2:].split()
        name = raw[raw.find("(") + 1: raw.rfind(")")]
        return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]), name

    def _sample(self, first: bool) -> None:
        me = os.getpid()
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (s := self._stat(int(entry))) is not None:
                stats[int(entry)] = s

        def ours(pid: int) -> bool:
            # Once ours, always ours: a server's worker pool outlives the server and
            # is then re-parented to init.
            chain: list[int] = []
            seen = 0
            while pid > 1 and seen < 64:
                if pid == me or pid in self._ours:
                    self._ours.update(chain)
                    return True
                chain.append(pid)
                pid = stats[pid][0] if pid in stats else 0
                seen += 1
            return False

        for pid, (ppid, cpu, start, name) in stats.items():
            if pid == 2 or ppid == 2 or ours(pid):
                continue  # kernel threads (they also flush this run's own writes)
            prev = self._last.get(pid)
            if prev is None:
                prev = cpu if first or start <= self._boot_ticks else 0
            if not first and cpu > prev:
                self.seconds += (cpu - prev) / self.ticks
                self.by_name[name] = self.by_name.get(name, 0.0) + (cpu - prev) / self.ticks
            self._last[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(False)

    def top(self, n: int = 3) -> str:
        """The busiest other commands."""
        busy = sorted(self.by_name.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k} {v:.1f} s" for k, v in busy if v >= 0.1)

    def start(self) -> None:
        """Start sampling (no-op without /proc)."""
        if not Path("/proc/self/stat").exists():
            return
        self._t0 = time.perf_counter()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        self._boot_ticks = int(uptime * self.ticks)
        self._sample(True)
        self._thread = threading.Thread(target=self._run, name="foreign-cpu", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; ``seconds`` and ``wall`` hold the totals."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._sample(False)
        self.wall = time.perf_counter() - self._t0
