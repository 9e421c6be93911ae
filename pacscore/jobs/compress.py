"""``pacscore compress``: recompress a tree of DICOM files, verified and resumable.

Each file goes through the archive's own pipeline (:func:`encode_object`), is
written as a Part-10 file in the lossless syntax to a temporary file; the job
publishes a batch at a time (syncfs, renames, syncfs: no partial output is ever
visible) and only then journals it.  Anything that must
not or cannot be transcoded is copied unchanged and counted, with its reason.

Every file walked gets exactly one result.  A file whose output could not be written
(no space, an I/O error) is ``unfinished`` and not journalled; the job stops at the
first such failure and reports every file not done as ``unfinished``, so ``--resume``
(after freeing space) does exactly those.  A resumed job yields the results the
journal holds first, so its report covers the whole job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath

from ..codecs import CODEC_NAMES, by_name
from ..config import ArchiveConfig
from ..dicom.part10 import build_part10
from ..dicom.scan import looks_like_dicom, scan
from ..durability import fsync_path, sync_filesystem
from ..errors import PacsError
from ..ingest.pool import not_dicom_reason
from ..ingest.prepare import encode_object
from ..kinds import FileStatus
from ..workers import run_tasks
from .auto import DEFAULT_BUDGET, SeriesChooser
from .journal import Journal
from .walk import walk_files

log = logging.getLogger(__name__)

__all__ = ["CompressTask", "FileResult", "compress_one", "run_compress"]

JOURNAL_NAME = ".pacscore-journal.jsonl"
TMP_NAME = ".pacscore-tmp"


@dataclass(frozen=True, slots=True)
class CompressTask:
    """One file to recompress (small and picklable: it travels to workers)."""

    src: str
    """Source path."""
    rel: str
    """Path relative to the source root (same relative path in the output)."""
    dst_root: str
    """Output root."""
    config: ArchiveConfig
    """Codec and limits."""
    budget: float = DEFAULT_BUDGET
    """``auto``: minimum encode speed as a fraction of the fastest candidate's."""
    publish_in_worker: bool = False
    """fsync and rename in the worker (remote workers) instead of the batch publish."""


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one file."""

    rel: str
    """Path relative to the roots."""
    status: FileStatus
    """``compressed``, ``copied`` (kept unchanged: lossy, non-image, ...), ``failed``
    (refused by the archive rules; copied unchanged), ``other`` (not DICOM; copied) or
    ``unfinished`` (no output: it could not be read or written; not journalled)."""
    bytes_in: int
    """Size of the source file."""
    bytes_out: int
    """Size of the output file."""
    raw_bytes: int = 0
    """Native pixel bytes encoded (throughput basis)."""
    codec: str = "original"
    """Codec written, or ``original``."""
    modality: str = "?"
    """Modality (``?`` when unknown)."""
    series_uid: str = ""
    """Series Instance UID."""
    reason: str | None = None
    """Why it was copied or failed."""
    seconds: float = 0.0
    """Worker time spent."""
    staged: str = ""
    """Temp file awaiting the parent's publish (not journalled)."""
    storage_failure: bool = False
    """``unfinished`` because the output could not be written: the job stops (not
    journalled)."""
    resumed: bool = False
    """Done by an earlier run of the job: read from its journal (not journalled)."""


_NOT_JOURNALLED = frozenset({"staged", "storage_failure", "resumed"})
_FIELDS = frozenset(FileResult.__dataclass_fields__) - _NOT_JOURNALLED


def _entry(r: FileResult) -> dict[str, object]:
    """The journal entry of a done file."""
    return {k: v for k, v in asdict(r).items() if k not in _NOT_JOURNALLED}


def _unfinished(rel: str, size: int, reason: str, *, storage: bool = False) -> FileResult:
    return FileResult(rel, FileStatus.UNFINISHED, size, 0, reason=reason, storage_failure=storage)


_choosers: dict[float, SeriesChooser] = {}


def _target(dst_root: Path, rel: str) -> Path:
    """``dst_root / rel``, refusing a ``rel`` that could leave the output root (checked
    on the words of the path: resolving every file's path cost 5% of a compress)."""
    path = PurePosixPath(rel)
    if not path.parts or path.is_absolute() or ".." in path.parts:
        raise PacsError(f"output path {rel!r} escapes the output root")
    return dst_root / path


def _write_staged(task: CompressTask, data: bytes | None) -> tuple[int, str]:
    """Write ``data`` (or a copy of the source) to a temp file in the output root.

    Returns (size, temp name).  Locally the job's parent publishes a whole batch with
    one syncfs before and after the renames; with ``publish_in_worker`` (Dask: the
    parent may not share the page cache) the worker fsyncs and renames itself and the
    temp name is empty.
    """
    dst_root = Path(task.dst_root)
    target = _target(dst_root, task.rel)
    tmp_dir = dst_root / TMP_NAME
    tmp_dir.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    with open(tmp_dir / name, "wb") as out:
        if data is not None:
            out.write(data)
        else:
            with open(task.src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
        size = out.tell()
        if task.publish_in_worker:
            out.flush()
            os.fsync(out.fileno())
    if not task.publish_in_worker:
        return size, name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_dir / name, target)
    fsync_path(target.parent)  # the rename itself, durable before it is journalled
    return size, ""


def _publish(dst_root: Path, results: list[FileResult]) -> None:
    """Make a batch of staged outputs durable, then visible (then durable again)."""
    staged = [r for r in results if r.staged]
    if not staged:
        return
    sync_filesystem(dst_root)
    for r in staged:
        target = _target(dst_root, r.rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dst_root / TMP_NAME / r.staged, target)
    sync_filesystem(dst_root)


def compress_one(task: CompressTask) -> FileResult:
    """Recompress (or copy) one file; never raises for bad input.  A source that cannot
    be read, or an output that cannot be written, gives an ``unfinished`` result."""
    start = time.perf_counter()
    try:
        size = os.stat(task.src).st_size
        with open(task.src, "rb") as f:
            data = f.read()
    except OSError as exc:
        return _unfinished(task.rel, 0, f"cannot read the source: {exc.strerror or exc}")
    base = FileResult(task.rel, FileStatus.COPIED, size, size)
    try:
        if not looks_like_dicom(data[:132]):
            out, tmp = _write_staged(task, data)
            return replace(base, status=FileStatus.OTHER, bytes_out=out,
                           reason=not_dicom_reason(data[:132], size), staged=tmp,
                           seconds=time.perf_counter() - start)
        chooser = _choosers.setdefault(task.budget, SeriesChooser(task.budget))
        enc = encode_object(data, task.src, task.config, chooser)
        header = enc.header
        modality = str(header.attributes.get("Modality") or "?")
        base = replace(base, modality=modality, series_uid=header.series_uid)
        if enc.codec is None or enc.parts is None or header.layout is None:
            out, tmp = _write_staged(task, data)
            return replace(base, bytes_out=out, reason=enc.kept_reason, staged=tmp,
                           seconds=time.perf_counter() - start)
        output = build_part10(enc.parts, enc.original_syntax, enc.codec.transfer_syntax,
                              header.sop_class_uid, header.sop_instance_uid,
                              frames=list(enc.frames))
        out, tmp = _write_staged(task, output)
        raw = header.layout.frame_bytes * header.layout.frames
        return replace(base, status=FileStatus.COMPRESSED, bytes_out=out, raw_bytes=raw,
                       codec=enc.codec.name, staged=tmp, seconds=time.perf_counter() - start)
    except OSError as exc:  # the output (the only file written here)
        return _unfinished(task.rel, size, f"cannot write the output: {exc}", storage=True)
    except PacsError as exc:
        reason = exc.reason
    except Exception as exc:  # catch-all on purpose: a worker's boundary, a library bug
        # must not stop a week-long job; the file fails with it, the traceback logged
        log.exception("compressing %s failed", task.rel)
        reason = f"internal error: {type(exc).__name__}: {exc}"
    try:
        out, tmp = _write_staged(task, None)
    except OSError as exc:
        return _unfinished(task.rel, size, f"cannot write the output: {exc}", storage=True)
    return replace(base, status=FileStatus.FAILED, bytes_out=out, reason=reason, staged=tmp,
                   seconds=time.perf_counter() - start)


def run_compress(roots: Sequence[str], dst: str, config: ArchiveConfig, *, workers: int,
                 resume: bool = False, dask_address: str | None = None,
                 budget: float = DEFAULT_BUDGET) -> Iterator[FileResult]:
    """Run (or resume) a compress job; yield every file's result once it is durable.

    Exactly one result per file walked: with ``resume``, first those the journal holds
    (``resumed``), then the others as they are done.  At the first output that cannot
    be written (or worker processes that cannot start) the job stops: every file not
    done is yielded ``unfinished`` with the cause.

    Raises
    ------
    PacsError
        When ``dst`` holds a journal and ``resume`` is False.
    """
    dst_root = Path(dst)
    dst_root.mkdir(parents=True, exist_ok=True)
    journal = Journal(dst_root / JOURNAL_NAME)
    if journal.exists() and not resume:
        raise PacsError(f"{dst} already holds a compress journal",
                        hint="add --resume to continue that job, or choose a new --out")
    shutil.rmtree(dst_root / TMP_NAME, ignore_errors=True)  # temp files of a crashed run
    job = _Job(roots, dst_root, config, journal, resume, budget, bool(dask_address))
    try:
        yield from job.resumed()
        yield from job.run(workers, dask_address)
    finally:
        journal.close()
    if job.yielded != job.walked:  # every input ends in exactly one result
        raise PacsError(f"internal error: {job.walked} files walked but {job.yielded} "
                        f"results", hint="report this with the job's journal")


class _Job:
    """The state of one run of a compress job."""

    def __init__(self, roots: Sequence[str], dst_root: Path, config: ArchiveConfig,
                 journal: Journal, resume: bool, budget: float, remote: bool):
        self.roots, self.dst_root, self.config = roots, dst_root, config
        self.journal, self.resume, self.budget, self.remote = journal, resume, budget, remote
        self.done = journal.index("rel") if resume else {}
        self.walked = self.yielded = 0
        self.cause = ""  # why the job stopped
        self.open: dict[str, int] = {}  # rel -> size of the tasks sent to the workers
        self.recovered: list[FileResult] = []

    def walk(self) -> Iterator[tuple[str, str, int]]:
        """(path, rel, size) of every input file."""
        several = len(self.roots) > 1
        for path, base_rel, size in walk_files(self.roots):
            # With several sources, each keeps its own folder name under the output.
            rel = str(Path(Path(path).parents[len(Path(base_rel).parts) - 1].name,
                           base_rel)) if several else base_rel
            yield path, rel, size

    def _journalled(self, rel: str) -> bool:
        # An entry whose output is gone (removed since) is done again.
        return rel in self.done and (self.dst_root / rel).is_file()

    def resumed(self) -> Iterator[FileResult]:
        """The results of the files an earlier run finished, from the journal."""
        if not self.done:
            return
        for _, rel, _ in self.walk():
            if self._journalled(rel):
                entry = self.journal.read_at(self.done[rel])
                self.yielded += 1
                values = {k: v for k, v in entry.items() if k in _FIELDS}
                values["status"] = FileStatus(values["status"])  # the journal holds str
                yield FileResult(**values, resumed=True)

    def _task(self, path: str, rel: str, size: int) -> CompressTask | None:
        """The task of a file, or None when it needs none (journalled, or adopted)."""
        self.walked += 1
        if self._journalled(rel):
            return None  # yielded by resumed()
        if self.resume and (self.dst_root / rel).is_file():
            # Written and renamed into place before the crash, not yet journalled:
            # outputs are only ever visible complete, so adopt it instead of redoing.
            self.recovered.append(_adopt(path, rel, size, self.dst_root, self.config))
            return None
        return CompressTask(path, rel, str(self.dst_root), self.config, self.budget,
                            publish_in_worker=self.remote)

    def run(self, workers: int, dask_address: str | None) -> Iterator[FileResult]:  # noqa: C901
        """Do every file not done; yield the results, journalled a batch at a time."""
        files = self.walk()

        def tasks() -> Iterator[CompressTask]:
            while not self.cause and (item := next(files, None)) is not None:
                task = self._task(*item)
                if task is not None:
                    self.open[task.rel] = item[2]
                    yield task

        batch: list[FileResult] = []
        results = run_tasks(compress_one, tasks(), workers=workers,
                            dask_address=dask_address, on_error=_task_failed,
                            fork_safe=True)  # no LMDB here: workers may fork
        try:
            while not self.cause:
                try:
                    result = next(results, None)
                except PacsError as exc:  # the workers as a whole: cannot start, ...
                    self.cause = str(exc)
                    break
                except Exception as exc:  # catch-all on purpose: the job stops cleanly
                    # (journal, report, exit code) whatever ended the workers (a Dask
                    # cluster's own errors too); the traceback is logged
                    log.exception("the worker processes failed")
                    self.cause = f"{type(exc).__name__}: {exc}"
                    break
                batch += self.recovered
                self.recovered.clear()
                if result is not None:
                    self.open.pop(result.rel, None)
                    batch.append(result)
                    if result.storage_failure:
                        self.cause = result.reason or "cannot write the output"
                        break
                if batch and (result is None or len(batch) >= 16):
                    yield from self._flush(batch)
                    batch = []
                if result is None:
                    break
        finally:
            results.close()  # stops the workers (those still busy are killed)
        yield from self._stopped(batch, files)
        shutil.rmtree(self.dst_root / TMP_NAME, ignore_errors=True)

    def _flush(self, batch: list[FileResult]) -> Iterator[FileResult]:
        """Publish a batch, journal it, yield it (``unfinished`` if it cannot be)."""
        try:
            _publish(self.dst_root, batch)
        except OSError as exc:  # renamed ones are adopted by --resume
            self.cause = f"cannot publish the outputs: {exc}"
            for r in batch:
                self.yielded += 1
                yield _unfinished(r.rel, r.bytes_in, f"not finished: {self.cause}")
            return
        out = [replace(r, staged="") for r in batch if r.status != FileStatus.UNFINISHED]
        try:
            self.journal.append(_entry(r) for r in out)
        except OSError as exc:  # the outputs are complete: --resume adopts them
            self.cause = f"cannot write the journal: {exc}"
        for r in batch:
            self.yielded += 1
            yield r if r.status == FileStatus.UNFINISHED else replace(r, staged="")

    def _stopped(self, batch: list[FileResult], files: Iterator[tuple[str, str, int]]
                 ) -> Iterator[FileResult]:
        """After a stop: every file not done is ``unfinished``, with the cause."""
        if not self.cause:
            return
        reason = f"the job stopped at a failure: {self.cause}"
        for r in batch:  # never published
            self.yielded += 1
            yield r if r.status == FileStatus.UNFINISHED else _unfinished(r.rel, r.bytes_in,
                                                                  f"not finished: {reason}")
        for rel, size in self.open.items():
            self.yielded += 1
            yield _unfinished(rel, size, f"not finished: {reason}")
        self.open.clear()
        for item in files:
            if self._task(*item) is not None:
                self.yielded += 1
                yield _unfinished(item[1], item[2], f"not attempted: {reason}")
        if self.recovered:
            with contextlib.suppress(OSError):
                self.journal.append(_entry(r) for r in self.recovered)
            self.yielded += len(self.recovered)
            yield from self.recovered


def _task_failed(task: CompressTask, reason: str) -> FileResult:
    """Result for a file whose worker processes died on it (a codec crash): copied
    unchanged like every file that cannot be transcoded, and listed as failed with the
    reason; the job goes on."""
    try:
        out, staged = _write_staged(replace(task, publish_in_worker=False), None)
    except OSError as exc:
        return _unfinished(task.rel, 0, f"{reason}; the source could not be copied either: "
                                        f"{exc}", storage=True)
    return FileResult(task.rel, FileStatus.FAILED, out, out, reason=f"{reason} (copied unchanged)",
                      staged=staged)


def _adopt(src: str, rel: str, size: int, dst_root: Path, config: ArchiveConfig
           ) -> FileResult:
    """Result for an output found complete on disk but missing from the journal."""
    out = dst_root / rel
    data = out.read_bytes()
    codec = "original"
    try:
        uid = scan(data, config.limits, rel).transfer_syntax.uid
        codec = next((n for n in CODEC_NAMES if by_name(n).transfer_syntax == uid
                      and data != Path(src).read_bytes()), "original")
    except PacsError:
        pass
    status = FileStatus.COMPRESSED if codec != "original" else FileStatus.COPIED
    return FileResult(rel, status, size, len(data), codec=codec, reason="recovered after a crash")
