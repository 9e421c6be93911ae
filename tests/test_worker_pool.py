"""One worker pool (issue 15.4): the death policy, tested once for both of its users
(the long-lived pool of single stores and the per-job pool of bulk jobs), and the Dask
path's error contract."""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pacscore
from pacscore.errors import WorkerError
from pacscore.workers import WorkerPool, run_tasks
from tests.helpers.tasks import (
    DiesOnStart,
    crash_logged,
    crash_on_three_raise_on_five,
)

Runner = Callable[[Callable[[Any], Any], list[Any], Callable[[Any, str], Any]], list[Any]]


def _per_job(fn: Callable[[Any], Any], items: list[Any],
             on_error: Callable[[Any, str], Any]) -> list[Any]:
    return list(run_tasks(fn, items, workers=2, on_error=on_error))


def _long_lived(fn: Callable[[Any], Any], items: list[Any],
                on_error: Callable[[Any, str], Any]) -> list[Any]:
    pool = WorkerPool(fn, 2)
    try:
        return [pool.run(item, on_error) for item in items]
    finally:
        pool.close()


@pytest.fixture(params=["per-job", "long-lived"])
def run(request: pytest.FixtureRequest) -> Runner:
    return _per_job if request.param == "per-job" else _long_lived


def _attempts(log: Path) -> list[int]:
    return [int(pid) for pid in log.read_text().split()]


def test_an_item_a_worker_died_on_is_retried_once_then_blamed(run: Runner,
                                                             tmp_path: Path) -> None:
    """A worker killed on an item: the item goes to a new worker; when that one dies
    too, the item is reported through on_error (two attempts, never a third) and the
    other items are done."""
    reasons: dict[str, str] = {}

    def failed(item: tuple[str, int], reason: str) -> str:
        reasons[item[0]] = reason
        return "failed"

    once, always, fine = (str(tmp_path / name) for name in ("once", "always", "fine"))
    out = run(crash_logged, [(once, 1), (always, 99), (fine, 0)], failed)
    assert sorted(out) == ["done", "done", "failed"]
    assert list(reasons) == [always]
    assert "stopped twice" in reasons[always] and "139" in reasons[always]
    for log in (once, always):  # each attempt in its own process: the first one died
        assert len(_attempts(Path(log))) == len(set(_attempts(Path(log)))) == 2
    assert len(_attempts(Path(fine))) == 1


def test_a_task_that_raises_is_reported_and_its_worker_goes_on(run: Runner) -> None:
    reasons: dict[int, str] = {}

    def failed(item: int, reason: str) -> int:
        reasons[item] = reason
        return -item

    assert sorted(run(crash_on_three_raise_on_five, [4, 5, 6], failed)) == [-5, 40, 60]
    assert reasons == {5: "ValueError: five is not allowed"}


def test_workers_that_die_before_they_are_ready_raise_worker_error(run: Runner) -> None:
    """Dying before the ready handshake says nothing about the items: no item is
    blamed, the pool as a whole fails with WorkerError."""
    blamed: list[int] = []
    with pytest.raises(WorkerError, match="could not start") as caught:
        run(DiesOnStart(), [1, 2, 3], lambda item, reason: blamed.append(item))
    assert "code 3" in str(caught.value)
    assert blamed == []


def test_dask_reports_failed_items_through_on_error() -> None:
    """On a real LocalCluster (worker processes): an item whose task raised and one
    whose workers died (KilledWorker once the scheduler's allowed-failures is reached)
    become on_error results, like on the local pool; the others are done (all of them:
    the first window used to swallow the item after it)."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings(), dask.config.set(
            {"distributed.scheduler.allowed-failures": 1}):
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
    reasons: dict[int, str] = {}

    def failed(item: int, reason: str) -> int:
        reasons[item] = reason
        return -item

    try:
        # One task in flight: Dask counts a death against every task on the dying
        # worker, so with more in flight an innocent item could reach the limit too.
        out = sorted(run_tasks(crash_on_three_raise_on_five, range(8), workers=2,
                               dask_address=cluster.scheduler_address, window=1,
                               on_error=failed))
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()
    assert out == sorted([-3, -5] + [x * 10 for x in range(8) if x not in (3, 5)])
    assert reasons[5] == "ValueError: five is not allowed"
    assert "KilledWorker" in reasons[3] and "stopped" in reasons[3]


def _imports(path: Path, package: str) -> Iterator[str]:
    """Every pacscore module ``path`` imports, at any level of the file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            yield ".".join([*base, *([node.module] if node.module else [])])
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_the_pool_imports_neither_ingest_nor_jobs() -> None:
    """ingest and jobs use pacscore.workers; it uses neither (no import cycle)."""
    root = Path(pacscore.__file__).parent / "workers"
    found = {m for p in root.glob("*.py") for m in _imports(p, "pacscore.workers")}
    assert {m for m in found if m.startswith(("pacscore.ingest", "pacscore.jobs"))} == set()
    assert not (Path(pacscore.__file__).parent / "jobs" / "engine.py").exists()
    from pacscore.jobs import run_tasks as the_jobs_run_tasks

    assert the_jobs_run_tasks is run_tasks
