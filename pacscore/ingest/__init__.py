"""Ingest pipeline: the worker-side prepare step and the worker pool."""

from .pool import Outcome, Rejected, Skipped, run_pool
from .prepare import Prepared, prepare

__all__ = ["Outcome", "Prepared", "Rejected", "Skipped", "prepare", "run_pool"]
