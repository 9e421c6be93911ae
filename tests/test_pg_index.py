"""The Index contract (:class:`pacscore.testing.index.IndexTests`) on PostgreSQL, and
what only a shared database has: concurrent writers in several processes, schema
migrations, a server that goes away."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("psycopg")

from pacscore.index.postgres import PgIndex
from pacscore.testing.index import IndexTests
from pacscore.testing.postgres import postgres_dsn, postgres_server  # noqa: F401


class TestPostgresIndex(IndexTests):
    @pytest.fixture
    def index(self, postgres_dsn: str) -> Iterator[PgIndex]:  # noqa: F811
        index = PgIndex(postgres_dsn, timeout=10)
        try:
            yield index
        finally:
            index.close()
