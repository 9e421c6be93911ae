"""``pacscore compress``: recompress a tree of DICOM files, verified and resumable.

Each file goes through the archive's own pipeline (:func:`encode_object`), is
written as a Part-10 file in the lossless syntax (temporary file, fsync, rename:
no partial output is ever visible), and only then journalled.  Anything that must
not or cannot be transcoded is copied unchanged and counted, with its reason.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..codecs import CODEC_NAMES, by_name
from ..config import ArchiveConfig
from ..dicom.part10 import build_part10
from ..dicom.scan import looks_like_dicom, scan
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


_choosers: dict[float, SeriesChooser] = {}


def _write_atomic(dst_root: Path, rel: str, data: bytes | None, src: str | None) -> int:
    """Write ``data`` (or copy ``src``) to ``dst_root/rel`` via a temp file + fsync."""
    target = (dst_root / rel).resolve()
    if dst_root.resolve() not in target.parents:
        raise PacsError(f"output path {rel!r} escapes the output root")
    tmp_dir = dst_root / TMP_NAME
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / uuid.uuid4().hex
    with open(tmp, "wb") as out:
        if data is not None:
            out.write(data)
        else:
            assert src is not None
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return target.stat().st_size


def compress_one(task: CompressTask) -> FileResult:
    """Recompress (or copy) one file; never raises for bad input."""
    start = time.perf_counter()
    dst = Path(task.dst_root)
    size = os.stat(task.src).st_size
    base = FileResult(task.rel, "copied", size, size)
    try:
        with open(task.src, "rb") as f:
            data = f.read()
        if not looks_like_dicom(data[:132]):
            out = _write_atomic(dst, task.rel, data, None)
            return replace(base, status="other", bytes_out=out, reason="not DICOM",
                           seconds=time.perf_counter() - start)
        chooser = _choosers.setdefault(task.budget, SeriesChooser(task.budget))
        enc = encode_object(data, task.src, task.config, chooser)
        header = enc.header
        modality = str(header.attributes.get("Modality") or "?")
        base = replace(base, modality=modality, series_uid=header.series_uid)
        if enc.codec is None or enc.parts is None or header.layout is None:
            out = _write_atomic(dst, task.rel, data, None)
            return replace(base, bytes_out=out, reason=enc.kept_reason,
                           seconds=time.perf_counter() - start)
        output = build_part10(enc.parts, enc.original_syntax, enc.codec.transfer_syntax,
                              header.sop_class_uid, header.sop_instance_uid,
                              frames=list(enc.frames))
        out = _write_atomic(dst, task.rel, output, None)
        raw = header.layout.frame_bytes * header.layout.frames
        return replace(base, status="compressed", bytes_out=out, raw_bytes=raw,
                       codec=enc.codec.name, seconds=time.perf_counter() - start)
    except PacsError as exc:
        reason = exc.reason
    except Exception as exc:  # a library bug must not stop a week-long job
        reason = f"internal error: {type(exc).__name__}: {exc}"
    out = _write_atomic(dst, task.rel, None, task.src)
    return replace(base, status="failed", bytes_out=out, reason=reason,
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
            yield CompressTask(path, rel, str(dst_root), config, budget)

    batch: list[FileResult] = []

    def flush() -> list[FileResult]:
        journal.append(asdict(r) for r in batch)
        out = list(batch)
        batch.clear()
        return out

    try:
        for result in run_tasks(compress_one, tasks(), workers=workers,
                                dask_address=dask_address):
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
