"""Ingest pipeline: the worker-side prepare step and the worker pool (each name
imported on first use: ``pacscore.ingest.outcomes`` is light, the rest loads the
kernels and codecs)."""

from typing import TYPE_CHECKING

from .._lazy import attributes

if TYPE_CHECKING:
    from .pool import Outcome, Rejected, Skipped, run_pool
    from .prepare import Prepared, prepare

__all__ = ["Outcome", "Prepared", "Rejected", "Skipped", "prepare", "run_pool"]

__getattr__, __dir__ = attributes(__name__, {
    "Outcome": ".pool", "Rejected": ".pool", "Skipped": ".pool", "run_pool": ".pool",
    "Prepared": ".prepare", "prepare": ".prepare",
})
