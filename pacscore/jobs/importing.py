"""``pacscore import``: store folders as a resumable job in which every input file is
accounted for.

Every file walked ends in exactly one category: ``stored``, ``duplicate`` (already in
the archive), ``rejected`` (refused for what it contains, with the reason and error
class), ``skipped`` (not DICOM, with the reason) or ``failed`` (not stored for a reason
outside the file: no space, an I/O error, the worker processes; ``--resume`` retries
it).  The journal in the archive directory records committed files and files refused
for good, with what the report needs, so ``--resume`` skips them and still reports the
whole job; nothing that failed is journalled.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..archive import Archive, StoreResult
from ..ingest.outcomes import Failed, Rejected, Skipped
from .journal import Journal
from .walk import walk_files

__all__ = ["IMPORT_JOURNAL", "ImportReport", "run_import"]

IMPORT_JOURNAL = ".import-journal.jsonl"
"""Journal file name in the archive directory."""

_JOURNAL_BATCH = 64
"""Entries per journal append (one fsync each); a crash loses at most these, and
``--resume`` finds their files stored (duplicates)."""

_LISTED = 50
"""Files listed per category in the table (``--json`` lists them all)."""


def _key(path: str) -> str:
    """Identity of an input in the journal: the same path, size and mtime."""
    st = os.stat(path)
    return f"{os.path.abspath(path)}\x00{st.st_size}\x00{st.st_mtime_ns}"


@dataclass(slots=True)
class ImportReport:
    """Every input of an import job, by category (the whole job when resumed)."""

    files: int = 0
    """Input files walked."""
    stored: int = 0
    """Instances stored."""
    duplicates: int = 0
    """Instances that were already in the archive."""
    rejected: list[dict[str, str]] = field(default_factory=list)
    """Files refused for what they contain: path, reason, error class."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Files that are not DICOM: path, reason."""
    failed: list[dict[str, str]] = field(default_factory=list)
    """Files not stored for a reason outside them (``--resume`` retries them): path,
    reason, error class."""
    resumed: int = 0
    """Files whose outcome an earlier run of the job recorded (counted above)."""
    bytes_in: int = 0
    """Bytes of the stored files."""
    bytes_stored: int = 0
    """Bytes the archive keeps for them."""
    seconds: float = 0.0
    """Wall-clock time of this run."""
    run_bytes_in: int = 0
    """Bytes stored by this run (the rate's basis)."""
    warnings: list[str] = field(default_factory=list)
    """Problems that did not lose data (e.g. a journal that could not be written)."""

    @property
    def accounted(self) -> int:
        """Files in some category (equals :attr:`files` when the job is consistent)."""
        return (self.stored + self.duplicates + len(self.rejected) + len(self.skipped)
                + len(self.failed))

    @property
    def exit_code(self) -> int:
        """2 when some files failed (run again with ``--resume``), 1 when some were
        rejected, else 0."""
        return 2 if self.failed else 1 if self.rejected else 0

    def add(self, outcome: StoreResult | Rejected | Skipped | Failed) -> dict[str, Any] | None:
        """Count one outcome of this run; return its journal entry (None: not
        journalled, the file is tried again by ``--resume``)."""
        if isinstance(outcome, StoreResult):
            entry: dict[str, Any] = {"outcome": outcome.status, "path": outcome.source}
            if outcome.status == "stored":
                entry.update(bytes_in=outcome.bytes_in, bytes_stored=outcome.bytes_stored)
                self.run_bytes_in += outcome.bytes_in
        elif isinstance(outcome, Skipped):
            entry = {"outcome": "skipped", "path": outcome.source, "reason": outcome.reason}
        else:
            entry = {"outcome": "failed" if isinstance(outcome, Failed) else "rejected",
                     "path": outcome.source, "reason": outcome.reason,
                     "error": outcome.error.__name__}
        self.count(entry)
        if isinstance(outcome, Failed) or (isinstance(outcome, Rejected)
                                           and not outcome.permanent):
            return None
        return entry

    def count(self, entry: dict[str, Any]) -> None:
        """Count one outcome given as a journal entry."""
        kind, path = entry["outcome"], entry["path"]
        if kind == "stored":
            self.stored += 1
            self.bytes_in += int(entry.get("bytes_in", 0))
            self.bytes_stored += int(entry.get("bytes_stored", 0))
        elif kind == "duplicate":
            self.duplicates += 1
        elif kind == "skipped":
            self.skipped.append({"path": path, "reason": entry.get("reason", "not DICOM")})
        else:
            getattr(self, kind).append({"path": path, "reason": entry.get("reason", ""),
                                        "error": entry.get("error", "")})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"files": self.files, "instances": self.stored + self.duplicates,
                "stored": self.stored, "duplicates": self.duplicates,
                "rejected": self.rejected, "skipped": self.skipped, "failed": self.failed,
                "resumed": self.resumed, "bytes_in": self.bytes_in,
                "bytes_stored": self.bytes_stored, "seconds": round(self.seconds, 3),
                "warnings": self.warnings}

    def to_text(self) -> str:
        """The table printed at the end of an import."""
        mb_in, mb_out = self.bytes_in / 1e6, self.bytes_stored / 1e6
        ratio = mb_in / mb_out if mb_out else 0.0
        rate = self.run_bytes_in / 1e6 / self.seconds if self.seconds else 0.0
        earlier = f" ({self.resumed} done by an earlier run)" if self.resumed else ""
        lines = [f"files      {self.files}{earlier}",
                 f"instances  {self.stored + self.duplicates} ({self.stored} stored, "
                 f"{self.duplicates} duplicates)",
                 f"size       {mb_in:.1f} MB in -> {mb_out:.1f} MB stored (ratio {ratio:.2f})",
                 f"time       {self.seconds:.1f} s ({rate:.1f} MB/s)"]
        for title, items in (("skipped", self.skipped), ("rejected", self.rejected),
                             ("failed", self.failed)):
            note = {"skipped": " not DICOM", "failed": " not stored (run the same import "
                    "again with --resume to retry them)"}.get(title, "") if items else ""
            lines.append(f"{title:10s} {len(items)}{note}")
            lines += [f"  {r['path']}: {r['reason']}" for r in items[:_LISTED]]
            if len(items) > _LISTED:
                lines.append(f"  ... and {len(items) - _LISTED} more (all listed by --json)")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class _JournalWriter:
    """Buffers journal entries and appends them a batch at a time; a journal that can
    no longer be written (disk full) is left alone for the rest of the run."""

    def __init__(self, journal: Journal, report: ImportReport):
        self.journal, self.report = journal, report
        self.buffer: list[dict[str, Any]] = []
        self.broken = False

    def add(self, entry: dict[str, Any]) -> None:
        self.buffer.append(entry)
        if len(self.buffer) >= _JOURNAL_BATCH:
            self.flush()

    def flush(self) -> None:
        entries, self.buffer = self.buffer, []
        if not entries or self.broken:
            return
        try:
            self.journal.append(entries)
        except OSError as exc:
            self.broken = True
            self.report.warnings.append(
                f"the journal {self.journal.path} could not be written ({exc}); files stored "
                f"since are found in the archive (as duplicates) by --resume")


class _CtrlC:
    """The first Ctrl-C asks the job to stop after the outcome at hand, so that every
    file is accounted for whole; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _CtrlC:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_import(archive: Archive, roots: Sequence[str], *, workers: int,  # noqa: C901
               dask_address: str | None = None, resume: bool = False,
               progress: Callable[[int], None] | None = None) -> ImportReport:
    """Store every file under ``roots`` into ``archive``; return the job's report.

    ``resume`` skips the files an earlier run journalled (and reports them from the
    journal); files that failed then are tried again.  ``progress(size)`` is called once
    per file.  Ctrl-C stops the job after the file at hand (a second one at once): the
    files not stored are reported failed.
    """
    journal = Journal(archive.root / IMPORT_JOURNAL)
    done = journal.index("key", required="outcome") if resume else {}
    report = ImportReport()
    writer = _JournalWriter(journal, report)
    pending: dict[str, list[tuple[int, str]]] = {}  # path -> (size, key) sent to store
    walk = walk_files(roots)
    advance = progress or (lambda size: None)

    def paths() -> Iterator[str]:
        for path, _, size in walk:
            report.files += 1
            try:
                key = _key(path)
            except OSError as exc:  # gone or unreadable since the walk saw it
                report.count({"outcome": "failed", "path": path, "error": type(exc).__name__,
                              "reason": f"cannot read: {exc.strerror or exc}"})
                continue
            if key in done:
                report.count(journal.read_at(done[key]))
                report.resumed += 1
                advance(size)
                continue
            pending.setdefault(path, []).append((size, key))
            yield path

    interrupted = False
    with _CtrlC() as ctrl_c:
        outcomes = archive.store_many(paths(), workers=workers, dask_address=dask_address)
        try:
            for outcome in outcomes:
                sent = pending[outcome.source]
                size, key = sent.pop()
                if not sent:
                    del pending[outcome.source]
                advance(size)
                entry = report.add(outcome)
                if entry is not None:
                    writer.add({"key": key, **entry})
                if ctrl_c.requested:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: at once
            interrupted = True
        finally:
            outcomes.close()  # stops the workers
            writer.flush()
            try:
                journal.close()
            except OSError as exc:
                report.warnings.append(f"closing the journal failed: {exc}")
        interrupted = interrupted or ctrl_c.requested
    if interrupted:
        reason = ("the import was interrupted (hint: run the same import again with "
                  "--resume; what was stored meanwhile is found as duplicates)")
        for path in [p for p, sent in pending.items() for _ in sent]:
            report.count({"outcome": "failed", "path": path, "error": "KeyboardInterrupt",
                          "reason": f"not confirmed stored: {reason}"})
        pending.clear()
        for path in paths():
            report.count({"outcome": "failed", "path": path,
                          "reason": f"not attempted: {reason}", "error": "KeyboardInterrupt"})
    return report
