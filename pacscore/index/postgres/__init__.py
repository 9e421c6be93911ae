"""The Index on PostgreSQL (the ``postgresql`` extra: ``pip install pacscore[postgresql]``).

``schema`` holds the tables as versioned migrations, ``index`` the writes (``PgIndex``),
``query`` the reads and the translation of matching into SQL; ``kv`` the key-value tables
of the archive's workflow state and HL7 outbox, shared by its front ends (:mod:`pacscore.kv`).
"""

from .index import PgIndex, describe
from .schema import LATEST, MIGRATIONS, SCHEMA

__all__ = ["LATEST", "MIGRATIONS", "SCHEMA", "PgIndex", "describe"]
