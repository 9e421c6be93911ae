"""The PostgreSQL index's tables, as versioned migrations.

:data:`MIGRATIONS` is a table of (version, SQL) applied in order, the missing ones in
one transaction with the ``schema_version`` rows that record them, under an advisory
lock (two processes opening a new database at once do not both create it).  A
database of a newer version than this pacscore knows is refused.

Everything lives in the schema :data:`SCHEMA` (``pacscore``), so that the index can
share a database with other applications.  Text columns that are compared or sorted
use the ``C`` collation: their order is Python's code-point order (what the LMDB index
and :mod:`pacscore.index.matching` use) on any server locale, and ``LIKE 'prefix%'``
can use a B-tree.  Matching columns (``m_*``) hold the value as
:func:`~pacscore.index.matching.normalise` makes it; they are indexed by their first
:data:`INDEXED_CHARS` characters, since a B-tree entry holds at most ~2.7 kB and a
value (an Accession Number of a malformed file) may be longer.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from ...errors import ArchiveStorageError

__all__ = ["INDEXED_CHARS", "LATEST", "MIGRATIONS", "SCHEMA", "migrate", "schema_version"]

SCHEMA: Final = "pacscore"
INDEXED_CHARS: Final = 200
"""Leading characters of a matching value that its B-tree index holds."""

_V1 = """
CREATE SEQUENCE change_seq;
-- The totals (one row) and the instances per stored transfer syntax.
CREATE TABLE stats (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    instances bigint NOT NULL DEFAULT 0,
    compressed_instances bigint NOT NULL DEFAULT 0,
    bytes_in bigint NOT NULL DEFAULT 0,
    bytes_stored bigint NOT NULL DEFAULT 0
);
INSERT INTO stats DEFAULT VALUES;
CREATE TABLE syntax_count (
    syntax text COLLATE "C" PRIMARY KEY,
    instances bigint NOT NULL CHECK (instances >= 0)
);
-- Patients: key as pacscore.index.keys.patient_key (Patient ID + issuer, or the
-- study of an object without a Patient ID).
CREATE TABLE patient (
    pkey text COLLATE "C" PRIMARY KEY,
    patient_id text COLLATE "C" NOT NULL,
    studies integer NOT NULL DEFAULT 0 CHECK (studies >= 0),
    instances bigint NOT NULL DEFAULT 0 CHECK (instances >= 0),
    bytes_in bigint NOT NULL DEFAULT 0,
    bytes_stored bigint NOT NULL DEFAULT 0,
    changed bigint NOT NULL
);
CREATE TABLE study (
    study_uid text COLLATE "C" PRIMARY KEY,
    sid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    pkey text COLLATE "C" NOT NULL REFERENCES patient DEFERRABLE INITIALLY DEFERRED,
    view text NOT NULL,
    patient_view text NOT NULL,
    m_patient_id text COLLATE "C" NOT NULL,
    m_patient_name text COLLATE "C" NOT NULL,
    m_accession text COLLATE "C" NOT NULL,
    m_study_date text COLLATE "C" NOT NULL,
    modalities text[] COLLATE "C" NOT NULL DEFAULT '{}',
    series integer NOT NULL DEFAULT 0 CHECK (series >= 0),
    instances bigint NOT NULL DEFAULT 0 CHECK (instances >= 0),
    bytes_in bigint NOT NULL DEFAULT 0,
    bytes_stored bigint NOT NULL DEFAULT 0,
    changed bigint NOT NULL
);
CREATE TABLE series (
    series_uid text COLLATE "C" PRIMARY KEY,
    study_uid text COLLATE "C" NOT NULL REFERENCES study DEFERRABLE INITIALLY DEFERRED,
    view text NOT NULL,
    m_modality text COLLATE "C" NOT NULL,
    m_patient_id text COLLATE "C" NOT NULL,
    instances bigint NOT NULL DEFAULT 0 CHECK (instances >= 0),
    bytes_in bigint NOT NULL DEFAULT 0,
    bytes_stored bigint NOT NULL DEFAULT 0,
    changed bigint NOT NULL
);
CREATE TABLE instance (
    sop_uid text COLLATE "C" PRIMARY KEY,
    series_uid text COLLATE "C" NOT NULL REFERENCES series DEFERRABLE INITIALLY DEFERRED,
    study_uid text COLLATE "C" NOT NULL,
    location text COLLATE "C" NOT NULL UNIQUE,
    record text NOT NULL,
    view text NOT NULL,
    header bytea,
    m_sop_class text COLLATE "C" NOT NULL,
    m_patient_id text COLLATE "C" NOT NULL
);
-- Locations that may exist in the frame store without an instance naming them.
CREATE TABLE pending (location text COLLATE "C" PRIMARY KEY);
"""

_V2 = f"""
-- The matching indexes (a level's own UID is its primary key).
CREATE INDEX patient_by_id ON patient (patient_id);
CREATE INDEX study_by_patient ON study (pkey);
CREATE INDEX study_by_patient_id ON study (left(m_patient_id, {INDEXED_CHARS}));
CREATE INDEX study_by_patient_name ON study (left(m_patient_name, {INDEXED_CHARS}));
CREATE INDEX study_by_accession ON study (left(m_accession, {INDEXED_CHARS}));
CREATE INDEX study_by_date ON study (left(m_study_date, {INDEXED_CHARS}));
CREATE INDEX series_by_study ON series (study_uid);
CREATE INDEX series_by_modality ON series (left(m_modality, {INDEXED_CHARS}));
CREATE INDEX series_by_patient_id ON series (left(m_patient_id, {INDEXED_CHARS}));
CREATE INDEX instance_by_series ON instance (series_uid, sop_uid);
CREATE INDEX instance_by_study ON instance (study_uid);
CREATE INDEX instance_by_class ON instance (left(m_sop_class, {INDEXED_CHARS}));
CREATE INDEX instance_by_patient_id ON instance (left(m_patient_id, {INDEXED_CHARS}));
"""

_V3 = """
-- The archive this index belongs to (one row): the id every front end claims the frame
-- store's bucket prefix with (issue 17.3: several front ends, one archive).
CREATE TABLE archive (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    archive_id text NOT NULL
);
"""

_V4 = """
-- The archive's workflow state and HL7 outbox, shared by its front ends (issue 17.3,
-- pacscore.index.postgres.kv): the named databases of pacscore.kv, one db value each
-- ('workflow/state', 'outbox/queue'); dupsort databases in kv_dup.
CREATE TABLE kv (
    db text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (db, key)
);
CREATE TABLE kv_dup (
    db text COLLATE "C" NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (db, key, value)
);
"""

MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (1, _V1),  # tables, keys and constraints
    (2, _V2),  # the indexes of the matching keys and of the hierarchy
    (3, _V3),  # the archive's id, shared by its front ends
    (4, _V4),  # the workflow state and the HL7 outbox, shared by its front ends
)
"""Schema versions in order: (version, SQL).  Append, never edit a released one."""
LATEST: Final = MIGRATIONS[-1][0]

_LOCK = 0x7061_6373  # advisory lock key of schema changes ("pacs")


def schema_version(conn: psycopg.Connection[tuple[Any, ...]]) -> int | None:
    """The database's schema version; None when it has no pacscore index yet."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_version",)).fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute(f"SELECT max(version) FROM {SCHEMA}.schema_version").fetchone()
    return int(found[0]) if found and found[0] is not None else 0


def migrate(conn: psycopg.Connection[tuple[Any, ...]], *, where: str,
            migrations: tuple[tuple[int, str], ...] = MIGRATIONS,
            readonly: bool = False) -> list[int]:
    """Bring the schema to the last of ``migrations`` in one transaction; the versions
    applied.  ``conn`` is in autocommit mode; ``where`` names the database in messages.

    The migration transaction begins only once the session's advisory lock is held, so
    that it sees what a process that held the lock before it committed."""
    latest = migrations[-1][0]
    version = schema_version(conn)
    if version is not None and version > latest:
        raise ArchiveStorageError(
            f"the PostgreSQL index at {where} has schema version {version}; this "
            f"pacscore knows versions up to {latest}",
            hint="upgrade pacscore to open this index")
    if version == latest:
        return []
    if readonly:
        raise ArchiveStorageError(
            f"the PostgreSQL index at {where} has schema version {version or 0}, "
            f"older than {latest}",
            hint="open it once for writing (pacscore serve or import): the schema is "
                 "then upgraded in place")
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
    try:
        with conn.transaction():
            return _apply(conn, migrations)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))


def _apply(conn: psycopg.Connection[tuple[Any, ...]],
           migrations: tuple[tuple[int, str], ...]) -> list[int]:
    version = schema_version(conn)  # another process may have just done it
    if version is None:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.schema_version (version integer PRIMARY "
                     "KEY, applied timestamptz NOT NULL DEFAULT now())")
        version = 0
    applied = []
    conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
    for number, sql in migrations:
        if number > version:
            conn.execute(sql.encode())  # several statements: no parameters
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
            applied.append(number)
    return applied
