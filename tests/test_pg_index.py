"""The Index contract (:class:`pacscore.testing.index.IndexTests`) on PostgreSQL, and
what only a shared database has: concurrent writers in several processes, schema
migrations, a server that goes away."""

from __future__ import annotations

import dataclasses
import multiprocessing
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("psycopg")

import psycopg

from pacscore.errors import ArchiveStorageError, IndexUnavailableError
from pacscore.index import LEVELS, InstanceRecord
from pacscore.index.postgres import MIGRATIONS, PgIndex
from pacscore.index.postgres.put import lock_id
from pacscore.testing.index import HTJ2K, IndexTests, header_of, make, put, uids
from pacscore.testing.postgres import postgres_dsn, postgres_server, start_postgres  # noqa: F401


class TestPostgresIndex(IndexTests):
    @pytest.fixture
    def index(self, postgres_dsn: str) -> Iterator[PgIndex]:  # noqa: F811
        index = PgIndex(postgres_dsn, timeout=10)
        try:
            yield index
        finally:
            index.close()



def test_an_instance_stored_meanwhile_elsewhere_runs_the_put_again(
        postgres_dsn: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """Another writer stores the same instance under another study (other advisory
    locks) after this put has read and before it inserts: the insert fails on the
    instance's key, the transaction is rolled back and run again, and finds the
    instance stored (``duplicate``); nothing of the first attempt stays, the counts are
    the other writer's alone, and no error is logged on the way."""
    from pacscore.index.postgres import put as pg_put

    this, other = PgIndex(postgres_dsn), PgIndex(postgres_dsn)
    mine = make("1.45.1", study="4.45", series="4.45.1", patient="P45")
    theirs = make("1.45.1", study="4.46", series="4.46.1", patient="P46")
    read = pg_put.Batch.read.__func__  # type: ignore[attr-defined]
    reads: list[int] = []  # what this writer's reads found stored

    def read_then_other_writer(cls: type[pg_put.Batch], conn: Any, rows: Any) -> Any:
        batch = read(cls, conn, rows)
        if rows[0].rec is mine:
            reads.append(len(batch.stored))
            if len(reads) == 1:
                assert put(other, theirs) == ["stored"]
        return batch

    monkeypatch.setattr(pg_put.Batch, "read", classmethod(read_then_other_writer))
    try:
        with caplog.at_level("WARNING"):
            [outcome] = this.put([(mine, header_of(mine))])
        assert reads == [0, 1]  # run twice, the second time it saw the instance
        assert outcome.status == "duplicate" and outcome.existing == theirs
        assert [r.levelname for r in caplog.records if r.levelno >= 30] == []
        assert this.get("1.45.1") == theirs
        assert uids(this.find("study", {}), "StudyInstanceUID") == ["4.46"]
        assert [p["PatientID"] for p in this.find("patient", {})] == ["P46"]
        assert this.stats()["instances"] == 1
        again = make("1.45.2", study="4.45", series="4.45.1", patient="P45")
        assert [o.status for o in this.put([(again, header_of(again))])] == ["stored"]
    finally:
        this.close()
        other.close()


def test_a_record_the_database_refuses_fails_alone(postgres_dsn: str) -> None:  # noqa: F811
    """A batch is inserted set-based; when that fails (here a location that another
    instance of the batch already names: unique in PostgreSQL), the batch is run again a
    row at a time and only the failing record is refused (``invalid``)."""
    index = PgIndex(postgres_dsn)
    try:
        recs = [make(f"1.40.{i}", study="4.40", series="4.40.1") for i in range(4)]
        clash = dataclasses.replace(recs[2], location=recs[1].location)
        outcomes = index.put([(r, header_of(r)) for r in (recs[0], recs[1], clash, recs[3])])
        assert [o.status for o in outcomes] == ["stored", "stored", "invalid", "stored"]
        assert "UniqueViolation" in outcomes[2].reason and "1.40.2" in outcomes[2].reason
        assert index.location_owner(recs[1].location) == "1.40.1"
        assert index.get("1.40.2") is None
        assert index.stats()["instances"] == 3
        [series] = index.find("series", {})
        assert series["NumberOfSeriesRelatedInstances"] == 3
    finally:
        index.close()


def test_a_deadlock_rolls_back_and_runs_the_transaction_again(postgres_dsn: str  # noqa: F811
                                                                ) -> None:
    """Two writers taking row locks in opposite orders: PostgreSQL aborts one with a
    deadlock; the index runs its transaction again and both complete."""
    index = PgIndex(postgres_dsn)
    barrier, attempts = threading.Barrier(2), Counter[str]()

    def writer(first: str, second: str) -> Callable[[Any], str]:
        def fn(conn: Any) -> str:
            attempts[first] += 1
            conn.execute("INSERT INTO pending (location) VALUES (%s) ON CONFLICT DO NOTHING",
                         (first,))
            if attempts[first] == 1:
                barrier.wait(10)  # both hold their first row now
            conn.execute("INSERT INTO pending (location) VALUES (%s) ON CONFLICT DO NOTHING",
                         (second,))
            return first
        return fn

    try:
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(index._write, writer(a, b)) for a, b in (("a", "b"), ("b", "a"))]
            assert sorted(f.result(timeout=60) for f in done) == ["a", "b"]
        assert sorted(attempts.values()) == [1, 2]  # one was aborted and ran again
        assert index.pending() == ["a", "b"]
    finally:
        index.close()

# -- several processes writing one index ------------------------------------------------
_PROCESSES = 4


def _writer(dsn: str, batches: list[list[InstanceRecord]], barrier: Any, results: Any) -> None:
    """One writer process: open its own index, wait for the others, put its batches."""
    index = PgIndex(dsn)
    try:
        barrier.wait(60)
        done = [(o.sop_instance_uid, str(o.status))
                for batch in batches for o in index.put([(r, header_of(r)) for r in batch])]
        results.put(done)
    finally:
        index.close()


def _deleter(dsn: str, sops: list[str], barrier: Any, results: Any) -> None:
    index = PgIndex(dsn)
    try:
        barrier.wait(60)
        results.put([r.sop_instance_uid for i in range(0, len(sops), 20)
                     for r in index.delete(sops[i:i + 20])])
    finally:
        index.close()


def _run(target: Any, args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*a, barrier, queue)`` in one spawned process per ``a``; their results."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(args)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return out


def _hierarchy(i: int) -> dict[str, str]:
    p, st, se = i % 3, (i // 3) % 2, (i // 6) % 2
    return {"patient": f"P{p}", "study": f"3.{p}.{st}", "series": f"3.{p}.{st}.{se}",
            "modality": ("CT", "MR")[se]}


def _assert_consistent(index: PgIndex) -> dict[str, InstanceRecord]:
    """Every total and count of ``index`` equals the sum of its parts, and no patient,
    study or series is listed without instances; the records."""
    records = {r.sop_instance_uid: r for r in index.records()}
    stats = index.stats()
    assert stats["instances"] == len(records)
    assert stats["bytes_in"] == sum(r.bytes_in for r in records.values())
    assert stats["bytes_stored"] == sum(r.bytes_stored for r in records.values())
    assert stats["transfer_syntaxes"] == {HTJ2K: len(records)}
    for rec in records.values():
        assert index.location_owner(rec.location) == rec.sop_instance_uid
    series = {s["SeriesInstanceUID"]: s for s in index.find("series", {})}
    assert set(series) == {r.series_uid for r in records.values()}
    for uid, s in series.items():
        assert s["NumberOfSeriesRelatedInstances"] == len(index.instances("series", uid)) \
            == sum(r.series_uid == uid for r in records.values())
    studies = {s["StudyInstanceUID"]: s for s in index.find("study", {})}
    assert set(studies) == {r.study_uid for r in records.values()}
    for uid, st in studies.items():
        mine = [s for s in series.values() if s["StudyInstanceUID"] == uid]
        assert st["NumberOfStudyRelatedSeries"] == len(mine)
        assert st["NumberOfStudyRelatedInstances"] == sum(
            s["NumberOfSeriesRelatedInstances"] for s in mine)
        assert st["ModalitiesInStudy"] == "\\".join(sorted({s["Modality"] for s in mine}))
    patients = index.find("patient", {})
    assert sorted(p["PatientID"] for p in patients) == sorted(
        {r.attributes["PatientID"] for r in records.values()})
    for p in patients:
        mine = [st for st in studies.values() if st["PatientID"] == p["PatientID"]]
        assert p["NumberOfPatientRelatedStudies"] == len(mine)
        assert p["NumberOfPatientRelatedInstances"] == sum(
            st["NumberOfStudyRelatedInstances"] for st in mine)
    return records


def test_concurrent_writers_in_several_processes(postgres_dsn: str) -> None:  # noqa: F811
    """Four processes put the same 120 instances (each its own copy: other location,
    same content) in their own orders, 10 instances each under another content, 30 of
    their own into the same series, and 10 the same under a study of their own: each
    instance is stored once, the others are duplicates or conflicts, no study is left
    without instances, and every counter equals the sum of its parts; then four
    processes delete everything, overlapping: each instance is deleted once."""
    PgIndex(postgres_dsn).close()  # the schema, before the writers race to create it
    plans, own = [], {}
    for proc in range(_PROCESSES):
        recs = [make(f"1.20.{i}", content="same", **_hierarchy(i)) for i in range(120)]
        recs += [make(f"1.21.{i}", content=f"writer{proc}", **_hierarchy(i)) for i in range(10)]
        mine = [make(f"1.22.{proc}.{i}", **_hierarchy(i)) for i in range(30)]
        own[proc] = {r.sop_instance_uid for r in mine}
        recs += mine
        random.Random(proc).shuffle(recs)
        # first, at once: the same 10 instances, each process under a study of its own
        # (other locks: the instance rows' key decides, the loser runs again)
        elsewhere = [make(f"1.23.{i}", content="same", study=f"5.{proc}",
                          series=f"5.{proc}.1", patient=f"Q{proc}") for i in range(10)]
        plans.append([elsewhere] + [recs[i:i + 8] for i in range(0, len(recs), 8)])
    outcomes = _run(_writer, [(postgres_dsn, plan) for plan in plans])
    by_sop: dict[str, list[str]] = {}
    for done in outcomes:
        for sop, status in done:
            by_sop.setdefault(sop, []).append(status)
    assert len(by_sop) == 120 + 10 + 10 + 30 * _PROCESSES
    for sop, statuses in by_sop.items():
        if sop.startswith(("1.20.", "1.23.")):
            assert sorted(statuses) == ["duplicate"] * 3 + ["stored"], sop
        elif sop.startswith("1.21."):
            assert sorted(statuses) == ["conflict"] * 3 + ["stored"], sop
        else:
            assert statuses == ["stored"], sop

    index = PgIndex(postgres_dsn)
    try:
        records = _assert_consistent(index)
    finally:
        index.close()
    assert set(records) == set(by_sop)
    everything = sorted(records)

    orders = [random.Random(10 + proc).sample(everything, len(everything))
              for proc in range(_PROCESSES)]
    deleted = _run(_deleter, [(postgres_dsn, order) for order in orders])
    assert sorted(s for done in deleted for s in done) == everything  # each exactly once
    index = PgIndex(postgres_dsn)
    try:
        assert list(index.records()) == []
        for level in LEVELS:
            assert index.find(level, {}) == []
        stats = index.stats()
        assert (stats["instances"], stats["bytes_in"], stats["bytes_stored"]) == (0, 0, 0)
        assert stats["transfer_syntaxes"] == {}
        assert sorted(index.pending()) == sorted(r.location for r in records.values())
    finally:
        index.close()


# -- schema versions -------------------------------------------------------------------
def test_an_older_schema_is_upgraded_and_a_newer_one_refused(postgres_dsn: str  # noqa: F811
                                                              ) -> None:
    """A database of schema version 1 (tables, no matching indexes) keeps its data when
    opened by this pacscore, which applies versions 2 to 4; a read-only open of it is refused
    with a hint first; a version this pacscore does not know is refused."""
    old = PgIndex(postgres_dsn, migrations=MIGRATIONS[:1])
    recs = [make(f"1.30.{i}", study="4.1", series="4.1.1", patient="P30") for i in range(3)]
    put(old, *recs)
    stats = old.stats()
    old.close()
    assert _versions(postgres_dsn) == [1]
    with pytest.raises(ArchiveStorageError, match="schema version 1, older than 4") as refused:
        PgIndex(postgres_dsn, readonly=True)
    assert "open it once for writing" in refused.value.hint
    index = PgIndex(postgres_dsn)
    try:
        assert _versions(postgres_dsn) == [1, 2, 3, 4]
        assert index.stats() == stats
        assert index.get("1.30.2") == recs[2]
        assert sorted(index.instances("patient", "P30")) == ["1.30.0", "1.30.1", "1.30.2"]
        assert uids(index.find("study", {"PatientID": "P30"}), "StudyInstanceUID") == ["4.1"]
    finally:
        index.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        names = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'pacscore'")}
        assert {"study_by_patient_id", "study_by_date", "instance_by_series"} <= names
        conn.execute("INSERT INTO pacscore.schema_version (version) VALUES (99)")
    with pytest.raises(ArchiveStorageError, match="schema version 99") as newer:
        PgIndex(postgres_dsn)
    assert "upgrade pacscore" in newer.value.hint


def _versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT version FROM pacscore.schema_version ORDER BY 1")]


def test_two_processes_creating_the_schema_at_once(postgres_dsn: str) -> None:  # noqa: F811
    """The schema is created once (under an advisory lock) when several processes open
    a new database at the same moment."""
    _run(_opener, [(postgres_dsn,)] * 3)
    assert _versions(postgres_dsn) == [1, 2, 3, 4]


def _opener(dsn: str, barrier: Any, results: Any) -> None:
    barrier.wait(60)
    PgIndex(dsn).close()
    results.put(True)


# -- the server goes away ----------------------------------------------------------------
def test_a_server_that_is_down_is_a_clear_error_not_a_hang() -> None:
    """No server on the port: opening fails within the timeout with
    IndexUnavailableError and a hint; a server that stops under an open index: the next
    read and write fail the same way, within the timeout, and the index works again when
    a server is back."""
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with server:
        name = server.create_database()
        dsn = server.dsn_of(name)
        index = PgIndex(dsn, timeout=2)
        try:
            put(index, make("1.31.1"))
            server.stop()
            for call in (lambda: index.get("1.31.1"), lambda: put(index, make("1.31.2")),
                         lambda: index.find("study", {})):
                started = time.monotonic()
                with pytest.raises(IndexUnavailableError) as down:
                    call()
                assert time.monotonic() - started < 8
                assert "pg_isready" in down.value.hint and str(server.port) in str(down.value)
        finally:
            index.close()
    started = time.monotonic()
    with pytest.raises(IndexUnavailableError, match="cannot connect"):
        PgIndex(dsn, timeout=1)
    assert time.monotonic() - started < 5


def test_a_statement_that_waits_too_long_times_out(postgres_dsn: str) -> None:  # noqa: F811
    """A writer stuck behind a lock another session holds fails after statement_timeout
    with a pacscore error instead of waiting forever."""
    index = PgIndex(postgres_dsn, statement_timeout=0.5)
    try:
        rec = make("1.32.1", study="4.32", series="4.32.1", patient="P32")
        with psycopg.connect(postgres_dsn) as other:  # holds the lock of the study
            other.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id("S4.32"),))
            started = time.monotonic()
            with pytest.raises(ArchiveStorageError, match="timed out"):
                put(index, rec)
            assert time.monotonic() - started < 5
        assert put(index, rec) == ["stored"]  # the lock is gone: it goes through
    finally:
        index.close()
