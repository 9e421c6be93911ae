"""The index: contract, LMDB implementation, records and matching."""

from .base import LEVEL_ATTRIBUTES, LEVELS, Index, PutOutcome, SharedIndex
from .lmdb_index import LmdbIndex
from .records import InstanceRecord, StoreKind

__all__ = ["LEVELS", "LEVEL_ATTRIBUTES", "Index", "InstanceRecord", "LmdbIndex", "PutOutcome",
           "SharedIndex", "StoreKind"]
