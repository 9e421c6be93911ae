"""``pacscore compress``: recompress a tree of DICOM files, verified and resumable.

Each file goes through the archive's own pipeline (:func:`encode_object`), is
written as a Part-10 file in the lossless syntax to a temporary file; the job
publishes a batch at a time (syncfs, renames, syncfs: no partial output is ever
visible) and only then journals it.  Anything that must
not or cannot be transcoded is copied unchanged and counted, with its reason.
"""

from __future__ import annotations

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
from ..ingest.prepare import encode_object
from .auto import DEFAULT_BUDGET, SeriesChooser
from .engine import run_tasks
from .journal import Journal
from .walk import walk_files

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
    status: str
    """``compressed``, ``copied`` (kept unchanged: lossy, non-image, ...), ``failed``
    (refused by the archive rules; copied unchanged) or ``other`` (not DICOM; copied)."""
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
    """Recompress (or copy) one file; never raises for bad input."""
    start = time.perf_counter()
    size = os.stat(task.src).st_size
    base = FileResult(task.rel, "copied", size, size)
    try:
        with open(task.src, "rb") as f:
            data = f.read()
        if not looks_like_dicom(data[:132]):
            out, tmp = _write_staged(task, data)
            return replace(base, status="other", bytes_out=out, reason="not DICOM",
                           staged=tmp, seconds=time.perf_counter() - start)
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
        return replace(base, status="compressed", bytes_out=out, raw_bytes=raw,
                       codec=enc.codec.name, staged=tmp, seconds=time.perf_counter() - start)
    except PacsError as exc:
        reason = exc.reason
    except Exception as exc:  # a library bug must not stop a week-long job
        reason = f"internal error: {type(exc).__name__}: {exc}"
    out, tmp = _write_staged(task, None)
    return replace(base, status="failed", bytes_out=out, reason=reason, staged=tmp,
                   seconds=time.perf_counter() - start)


def run_compress(roots: Sequence[str], dst: str, config: ArchiveConfig, *, workers: int,
                 resume: bool = False, dask_address: str | None = None,
                 budget: float = DEFAULT_BUDGET) -> Iterator[FileResult]:
    """Run (or resume) a compress job; yield every file's result once it is durable.

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
    done = {e["rel"] for e in journal.entries()} if resume else set()

    recovered: list[FileResult] = []

    several = len(roots) > 1

    def tasks() -> Iterator[CompressTask]:
        for path, base_rel, size in walk_files(roots):
            # With several sources, each keeps its own folder name under the output.
            rel = str(Path(Path(path).parents[len(Path(base_rel).parts) - 1].name,
                           base_rel)) if several else base_rel
            if rel in done:
                continue
            if resume and (dst_root / rel).is_file():
                # Written and renamed into place before the crash, not yet journalled:
                # outputs are only ever visible complete, so adopt it instead of redoing.
                recovered.append(_adopt(path, rel, size, dst_root, config))
                continue
            yield CompressTask(path, rel, str(dst_root), config, budget,
                               publish_in_worker=bool(dask_address))

    batch: list[FileResult] = []

    def flush() -> list[FileResult]:
        _publish(dst_root, batch)
        out = [replace(r, staged="") for r in batch]
        journal.append({k: v for k, v in asdict(r).items() if k != "staged"} for r in out)
        batch.clear()
        return out

    try:
        for result in run_tasks(compress_one, tasks(), workers=workers,
                                dask_address=dask_address, on_error=_task_failed,
                                fork_safe=True):  # no LMDB here: workers may fork
            batch.extend(recovered)
            recovered.clear()
            batch.append(result)
            if len(batch) >= 16:
                yield from flush()
        batch.extend(recovered)
        yield from flush()
        shutil.rmtree(dst_root / TMP_NAME, ignore_errors=True)
    finally:
        journal.close()


def _task_failed(task: CompressTask, reason: str) -> FileResult:
    """Result for a file whose worker processes died on it (a codec crash): copied
    unchanged like every file that cannot be transcoded, and listed as failed with the
    reason; the job goes on."""
    try:
        out, staged = _write_staged(replace(task, publish_in_worker=False), None)
    except OSError as exc:
        return FileResult(task.rel, "failed", 0, 0,
                          reason=f"{reason}; the source could not be copied either: {exc}")
    return FileResult(task.rel, "failed", out, out, reason=f"{reason} (copied unchanged)",
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
    status = "compressed" if codec != "original" else "copied"
    return FileResult(rel, status, size, len(data), codec=codec, reason="recovered after a crash")
