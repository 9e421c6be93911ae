"""Job-engine tasks that misbehave on purpose (imported by worker processes)."""

from __future__ import annotations

import os
from pathlib import Path

from pacscore.jobs.compress import CompressTask, FileResult
from pacscore.jobs.compress import compress_one as _compress_one  # before any patching


def crash_on_three(x: int) -> int:
    """Dies like a codec segfault on 3."""
    if x == 3:
        os._exit(139)
    return x * 10


def raise_on_five(x: int) -> int:
    """Raises on 5 (tasks are written never to raise; the engine copes anyway)."""
    if x == 5:
        raise ValueError("five is not allowed")
    return x * 10


def crash_always(x: int) -> int:
    """Dies on every item (a codec crash on every file)."""
    os._exit(139)


def crash_on_fifths(x: int) -> int:
    """Dies on every fifth item (several deaths, some with items queued behind)."""
    if x % 5 == 4:
        os._exit(139)
    return x * 10


def slow_pid(x: int) -> int:
    """Reports its process and takes a while (for killing the parent meanwhile)."""
    import time

    time.sleep(0.5)
    return os.getpid()


def compress_one_crashing_on_marked_files(task: CompressTask) -> FileResult:
    """compress_one, except that files named ``crash*`` kill the worker like a codec
    segfault would."""
    if Path(task.rel).name.startswith("crash"):
        os._exit(139)
    return _compress_one(task)


def crash_logged(item: tuple[str, int]) -> str:
    """Notes each attempt (its process) in the file ``item[0]``; the first ``item[1]``
    attempts die like a codec segfault."""
    log, deaths = item
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    if len(Path(log).read_text().split()) <= deaths:
        os._exit(139)
    return "done"


class DiesOnStart:
    """A task whose worker dies while unpickling it, before it is ready (an environment
    in which workers cannot import what they run)."""

    def __call__(self, x: int) -> int:
        return x

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (os._exit, (3,))


def crash_on_three_raise_on_five(x: int) -> int:
    """Dies on 3, raises on 5 (both failures in one run)."""
    return raise_on_five(crash_on_three(x) // 10)
