"""The key-value environment of the workflow state and the HL7 outbox
(:mod:`pacscore.kv`): the py-lmdb subset the workflow uses behaves the same on LMDB
and on a real PostgreSQL (:mod:`pacscore.index.postgres.kv`); writers of several
processes are serialised; a process killed inside a write transaction leaves nothing
of it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacscore.errors import NotFoundError
from pacscore.kv import KvEnv, LmdbKv, shared_env

NAMES = (b"plain", b"dup", b"other")
DUP = frozenset({b"dup"})


def _open(root: Path, dsn: str | None) -> tuple[KvEnv, Any]:
    if dsn is None:
        return LmdbKv(root / "kv.lmdb", NAMES, what="test", dupsort=DUP, sync=False), None
    from pacscore.index.postgres import PgIndex

    index = PgIndex(dsn)
    env = shared_env(index, "test", NAMES, dupsort=DUP)
    assert env is not None
    return env, index


@pytest.fixture()
def env(tmp_path: Path, workflow_index: str | None) -> Iterator[KvEnv]:
    kv, index = _open(tmp_path, workflow_index)
    try:
        yield kv
    finally:
        kv.close()
        if index is not None:
            index.close()


def test_the_lmdb_subset_behaves_the_same(env: KvEnv) -> None:
    plain, dup, other = (env.dbs[n] for n in NAMES)

    def fill(txn: Any) -> None:
        for k in (b"b", b"a", b"ab", b"c\xff", b"c"):  # bytes order, shorter first
            txn.put(k, b"v" + k, db=plain)
        assert txn.put(b"a", b"no", db=plain, overwrite=False) is False
        txn.put(b"a", b"v2", db=plain)
        for v in (b"3", b"1", b"2"):
            txn.put(b"k", v, db=dup, dupdata=True)
        txn.put(b"j", b"9", db=dup, dupdata=True)
        txn.put(b"a", b"elsewhere", db=other)

    env.write(fill)
    assert env.get(b"a", db=plain) == b"v2" and env.get(b"zz", db=plain) is None
    with env.begin() as txn:
        assert bytes(txn.get(b"a", db=other)) == b"elsewhere"  # databases are apart
        assert txn.get(b"missing", b"dflt", db=plain) == b"dflt"
        assert [bytes(k) for k, _ in txn.cursor(db=plain)] == [b"a", b"ab", b"b", b"c",
                                                               b"c\xff"]
        cur = txn.cursor(db=dup)
        assert cur.set_key(b"k") and [bytes(v) for v in cur.iternext_dup()] == [b"1", b"2",
                                                                              b"3"]
        assert not cur.set_key(b"ka")
        assert cur.set_range(b"ja") and bytes(cur.key()) == b"k" and bytes(cur.value()) == b"1"
        cur = txn.cursor(db=plain)
        assert cur.last() and bytes(cur.key()) == b"c\xff"
        assert cur.prev() and bytes(cur.key()) == b"c"
        assert cur.first() and bytes(cur.key()) == b"a" and not cur.prev()
        assert txn.stat(dup)["entries"] == 4 and txn.stat(plain)["entries"] == 5
        assert [bytes(k) for k in txn.cursor(db=plain).iternext(values=False)][:2] == [b"a",
                                                                                       b"ab"]

    def prune(txn: Any) -> list[bytes]:
        cur = txn.cursor(db=plain)
        ok, left = cur.first(), []
        while ok:
            if bytes(cur.key()).startswith(b"a"):
                cur.delete()  # moves to the next; past the last: an empty key
                ok = bool(cur.key())
            else:
                left.append(bytes(cur.key()))
                ok = cur.next()
        txn.delete(b"k", b"2", db=dup)
        return left

    assert env.write(prune) == [b"b", b"c", b"c\xff"]
    with env.begin() as txn:
        cur = txn.cursor(db=dup)
        assert cur.set_key(b"k") and [bytes(v) for v in cur.iternext_dup()] == [b"1", b"3"]


def test_a_cursor_pages_through_many_rows_and_sees_its_own_writes(env: KvEnv) -> None:
    plain = env.dbs[b"plain"]
    env.write(lambda txn: [txn.put(b"%05d" % i, b"x", db=plain) for i in range(700)])

    def walk(txn: Any) -> int:
        cur, seen = txn.cursor(db=plain), 0
        ok = cur.first()
        while ok:
            seen += 1
            if seen == 10:
                txn.put(b"00009a", b"new", db=plain)  # after the position: seen next
            ok = cur.next()
        return seen

    assert env.write(walk) == 701
    with env.begin() as txn:
        cur, back = txn.cursor(db=plain), 0
        ok = cur.last()
        while ok:
            back += 1
            ok = cur.prev()
        assert back == 701


def test_a_failed_write_or_nested_transaction_leaves_nothing(env: KvEnv) -> None:
    plain = env.dbs[b"plain"]

    def failing(txn: Any) -> None:
        txn.put(b"half", b"x", db=plain)
        raise NotFoundError("refused halfway")

    with pytest.raises(NotFoundError):
        env.write(failing)
    assert env.get(b"half", db=plain) is None

    def nested(txn: Any) -> None:
        for key, keep in ((b"one", True), (b"two", False), (b"three", True)):
            child = env.begin(write=True, parent=txn)
            child.put(key, b"x", db=plain)
            child.commit() if keep else child.abort()

    env.write(nested)
    with env.begin() as txn:
        assert [bytes(k) for k, _ in txn.cursor(db=plain)] == [b"one", b"three"]


def _count(root: str, dsn: str | None, times: int) -> None:
    kv, index = _open(Path(root), dsn)
    db = kv.dbs[b"plain"]

    def bump(txn: Any) -> None:
        n = int(txn.get(b"n", b"0", db=db))
        time.sleep(0.001)  # a read-modify-write that races unless serialised
        txn.put(b"n", str(n + 1).encode(), db=db)

    for _ in range(times):
        kv.write(bump)
    kv.close()
    if index is not None:
        index.close()


def test_writers_of_several_processes_are_serialised(tmp_path: Path,
                                                     workflow_index: str | None) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_count, args=(str(tmp_path), workflow_index, 40))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    kv, index = _open(tmp_path, workflow_index)
    try:
        assert kv.get(b"n", db=kv.dbs[b"plain"]) == b"120"
    finally:
        kv.close()
        if index is not None:
            index.close()


KILLED = """
import sys, time
from pathlib import Path
from tests.test_kv import _open
kv, index = _open(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
db = kv.dbs[b"plain"]
def half(txn):
    for i in range(50):
        txn.put(b"half%02d" % i, b"x", db=db)
    print("inside", flush=True)
    time.sleep(60)
kv.write(half)
"""


def test_a_process_killed_inside_a_write_leaves_nothing(tmp_path: Path,
                                                        workflow_index: str | None) -> None:
    """Killed (SIGKILL) holding the write transaction: none of its writes is seen, and
    the next writer is not blocked (the server dropped its advisory lock)."""
    args = [sys.executable, "-c", KILLED, str(tmp_path),
            *([workflow_index] if workflow_index else [])]
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True,
                          cwd=Path(__file__).resolve().parent.parent) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "inside"
        os.kill(proc.pid, signal.SIGKILL)
    kv, index = _open(tmp_path, workflow_index)
    try:
        db = kv.dbs[b"plain"]
        start = time.monotonic()
        kv.write(lambda txn: txn.put(b"after", b"1", db=db))
        assert time.monotonic() - start < 10
        with kv.begin() as txn:
            assert [bytes(k) for k, _ in txn.cursor(db=db)] == [b"after"]
    finally:
        kv.close()
        if index is not None:
            index.close()
