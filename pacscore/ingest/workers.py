"""Worker processes for single stores from network front ends.

Each calling thread (a DIMSE association, an HTTP request) takes an idle worker of a
:class:`~pacscore.workers.WorkerPool`, sends it a file path, or an open file's
descriptor (a received C-STORE data set: never a name that could be swapped in
between), and waits on the pipe for the small outcome.

A worker that dies (killed, or a codec library crashing on an input) is replaced and
the file is tried once more; a second death fails that store with
:class:`~pacscore.errors.ArchiveStorageError` and nothing of it becomes visible (its
staged files are removed at the next start).
"""

from __future__ import annotations

from ..config import ArchiveConfig
from ..errors import ArchiveStorageError
from ..store.spec import StoreSpec
from ..workers import Handed, WorkerPool
from .pool import Outcome, SingleStoreTask

__all__ = ["PrepareWorkers"]


class PrepareWorkers:
    """``count`` prepare processes shared by the caller threads, staging into the
    store ``store`` names."""

    def __init__(self, count: int, config: ArchiveConfig, store: StoreSpec):
        self._pool = WorkerPool(SingleStoreTask(config, store), count,
                                name="pacscore-prepare")

    def pids(self) -> list[int]:
        """Process IDs of the idle workers (for tests and monitoring)."""
        return self._pool.pids()

    def prepare(self, path: str | int, source: str, offset: int = 0, *,
                strict_identity: bool = False) -> Outcome:
        """Prepare ``path`` in a worker; the outcome is reported under ``source``.  An
        ``int`` is an open file's descriptor instead: the worker gets a duplicate of it
        (the caller keeps and closes its own) and reads from ``offset``, so it reads
        what the caller wrote, not whatever a name may point to meanwhile.

        A worker found dead is replaced and the file tried once more on the new one
        (preparing has no visible effect, so a retry is safe); a second death fails
        the store: the file itself probably crashes a codec library.

        Raises
        ------
        ArchiveStorageError
            Two workers died on the file (or the task raised).
        WorkerError
            Workers die before they are ready (a broken environment).
        """
        item = (Handed((source, strict_identity, offset), path) if isinstance(path, int)
                else (path, source, strict_identity))

        def failed(_: object, reason: str) -> Outcome:
            raise ArchiveStorageError(
                f"{reason} while preparing {source}; nothing of it was stored (hint: the "
                f"file probably crashes a codec library: report it with the file)")

        return self._pool.run(item, failed)

    def close(self) -> None:
        """Stop the workers once the running stores have finished."""
        self._pool.close()
