"""Index queries and put rate of the PostgreSQL index (PgIndex) on a synthetic index.

The same synthetic archive as ``test_find.py`` (100 instances per series, 4 series per
study, about 2 studies per patient, study dates over 2020, a 1 KB header per instance),
put through ``PgIndex.put`` in batches of 1,000.  N = ``PACSCORE_BENCH_PG_N`` (default
50,000, five batches a tenth; smoke run 2,000; ``PACSCORE_BENCH_PG_N=1000000`` for the
large figure).  The server is a PostgreSQL 15 started for the session with durable
settings (fsync and synchronous commit on; its own defaults otherwise), or
``PACSCORE_PG_DSN``.  After the fill the tables are ANALYZEd (what autovacuum does
after a bulk load).

* find p50 of four queries against the 5 ms target: ratio = 5 ms / p50 (>= 1 meets it);
  the note gives p50 as a multiple of a plain ``SELECT`` of one instance record by key
  over the same connection pool (the floor), and the row counts;
* put rate of the last 10% of instances against the first 10% (the median batch of
  each): ratio = last / first (target >= 0.9);
* ``EXPLAIN (ANALYZE, BUFFERS)`` of each query's statement is printed (``-s``) and kept
  in the benchmark's extra_info.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Any

import benchlib
import pytest

pytest.importorskip("psycopg")

# The synthetic archive and the queries of the LMDB figures, so both index the same.
from test_find import BATCH, HEADER, QUERIES, TARGET_S, Synthetic, _records

from pacscore.index.postgres import PgIndex
from pacscore.index.postgres.query import plan_find
from pacscore.testing.postgres import PostgresServer, start_postgres

DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def _size(smoke: bool) -> int:
    env = os.environ.get("PACSCORE_BENCH_PG_N")
    if env:
        return int(env)
    return 2_000 if smoke else 50_000


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    dsn = os.environ.get("PACSCORE_PG_DSN")
    if dsn:
        yield PostgresServer(dsn)
        return
    try:
        started = start_postgres(settings=DURABLE)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with started:
        yield started


@pytest.fixture(scope="module")
def synthetic(server: PostgresServer, smoke: bool) -> Iterator[Synthetic]:
    n = _size(smoke)
    name = server.create_database()
    index = PgIndex(server.dsn_of(name))
    syn = Synthetic(index, n, [], n_patients=max(1, n // 400 // 2))  # type: ignore[arg-type]
    batch = []
    try:
        for rec in _records(syn, n):
            batch.append((rec, HEADER))
            if len(batch) == BATCH:
                _flush(syn, batch)
        if batch:
            _flush(syn, batch)
        with index.pool.connection() as conn:
            conn.execute("ANALYZE")
        yield syn
    finally:
        index.close()
        server.drop_database(name)


def _flush(syn: Synthetic, batch: list[Any]) -> None:
    t0 = time.perf_counter()
    outcomes = syn.index.put(batch)
    syn.batch_seconds.append(time.perf_counter() - t0)
    assert all(o.status == "stored" for o in outcomes)
    batch.clear()


def test_pg_put_rate_first_vs_last_10pct(benchmark: Any, synthetic: Synthetic) -> None:
    syn = synthetic
    tenth = max(1, len(syn.batch_seconds) // 10)
    # median batch of each tenth: one batch slowed by the other work on a shared
    # machine (or a checkpoint) moves a mean, not a median
    first = BATCH / benchlib.median(syn.batch_seconds[:tenth])
    last = BATCH / benchlib.median(syn.batch_seconds[-tenth:])
    total = syn.n / sum(syn.batch_seconds)
    deciles = [round(BATCH / benchlib.median(syn.batch_seconds[i * tenth:(i + 1) * tenth]))
               for i in range(len(syn.batch_seconds) // tenth)]
    assert syn.index.stats()["instances"] == syn.n
    benchmark.pedantic(lambda: None, rounds=1)
    benchlib.report(
        benchmark, f"PostgreSQL index put rate, last 10% / first 10% of {syn.n:,} instances",
        subject=f"last 10% {last:,.0f} inst/s", baseline=f"first 10% {first:,.0f} inst/s",
        ratio=last / first, target=">= 0.9",
        note=f"median batch of each tenth, batches of {BATCH}, fsync on; whole fill "
             f"{total:,.0f} inst/s; tenths {deciles}",
        first_rate=first, last_rate=last, fill_rate=total, tenths=deciles)


@pytest.mark.parametrize("query", list(QUERIES))
def test_pg_find_p50_vs_5ms(benchmark: Any, synthetic: Synthetic, smoke: bool,
                            query: str) -> None:
    syn, index = synthetic, synthetic.index
    assert isinstance(index, PgIndex)
    rng = random.Random(query)
    make = QUERIES[query]
    checked: list[int] = []

    def floor(_: Any) -> None:  # one record by its key, over the same pool
        index._read("SELECT record FROM instance WHERE sop_uid = %s", (rng.choice(syn.sops),))

    def setup() -> tuple[str, dict[str, str], int]:
        return make(syn, rng)

    def subject(q: tuple[str, dict[str, str], int]) -> list[dict[str, Any]]:
        level, keys, expect = q
        out = index.find(level, keys)
        checked.append(len(out) - expect)
        return out

    run = benchlib.paired(benchmark, subject, setup=setup, baseline=floor,
                          rounds=3 if smoke else 300, warmup=5)
    assert run.result, "query matched nothing"
    assert not any(checked), f"wrong match counts (found - expected): {set(checked)}"
    p50, p99 = benchlib.median(run.subject), benchlib.percentile(run.subject, 99)
    floor_p50 = benchlib.median(run.baseline)
    level, keys, _ = make(syn, random.Random(0))
    plan = explain(index, level, keys)
    print(f"\n-- {query} ({syn.n:,} instances): {level} {keys}\n{plan}")
    benchmark.extra_info["explain"] = plan
    benchlib.report(
        benchmark, f"PostgreSQL find {level} by {next(iter(keys))} ({syn.n:,} instances)",
        subject=f"p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms",
        baseline="5 ms target", ratio=TARGET_S / p50, target=">= 1",
        note=f"{len(run.result)} matches; p50 = {p50 / floor_p50:.1f}x a SELECT of one "
             f"record by key ({floor_p50 * 1e6:.0f} us)",
        p50_ms=p50 * 1e3, p99_ms=p99 * 1e3, select_by_key_us=floor_p50 * 1e6)


def explain(index: PgIndex, level: str, keys: dict[str, str]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the statement ``find`` runs for ``keys``."""
    plan = plan_find(level, keys)
    rows = index._read("EXPLAIN (ANALYZE, BUFFERS) " + plan.sql, plan.params)
    return "\n".join(str(r[0]) for r in rows)
