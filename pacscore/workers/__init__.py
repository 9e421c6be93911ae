"""Worker processes: how they start, handshake, die and are blamed (``processes``);
the long-lived pool of single stores and the per-job pool of bulk jobs (``pool``); the
same contract on a Dask cluster (``dask``).

Used by the ingest pipeline and the jobs, and imports neither of them.
"""

from .pool import WorkerPool, run_tasks
from .processes import Handed, forkserver_context

__all__ = ["Handed", "WorkerPool", "forkserver_context", "run_tasks"]
