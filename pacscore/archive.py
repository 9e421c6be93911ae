"""pacscore.Archive: the one facade every front end calls.

Write order for every batch (ARCHITECTURE.md "Ingest", with one synced index
transaction per batch instead of two):

1. workers stage frames or blobs and make them durable in the staging area (each
   worker its own, or one ``syncfs`` per bulk batch); no record names them yet;
2. one index transaction inserts the records: the batch is committed;
3. the FrameStore renames the locations into place (readers look in staging for the
   moment in between), and, outside the commit lock, makes the renames durable;
4. only then are the results returned (acknowledged).

A crash leaves staged locations: those a record owns are moved into place at start-up,
the others removed; the index never names a missing frame.  Deletions mark their
locations *pending* in the index first, so a crash mid-delete leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from .codecs import by_syntax
from .config import ArchiveConfig
from .dicom.header import PixelLayout, read_header
from .dicom.part10 import HeaderParts, build_part10
from .dicom.scan import PIXEL_DATA, ScannedObject, scan
from .dicom.syntaxes import EXPLICIT_LE, syntax
from .errors import (
    ERRORS_BY_NAME,
    ArchiveBusyError,
    ArchiveCorruptError,
    ArchiveStorageError,
    ConflictError,
    InvalidDicomError,
    NotFoundError,
    PacsError,
    UnsupportedTransferSyntaxError,
)
from .index import LEVELS, InstanceRecord, LmdbIndex, StoreKind
from .ingest.pool import Rejected, Skipped, run_pool
from .ingest.prepare import (
    Prepared,
    decoded_input_frames,
    frame_crc32,
    native_bytes,
    native_frames,
    prepare,
)
from .ingest.workers import PrepareWorkers
from .store import ZarrFrameStore

__all__ = ["Archive", "StoreResult", "VerifyReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """An acknowledged instance."""

    sop_instance_uid: str
    """SOP Instance UID."""
    study_uid: str
    """Study Instance UID."""
    series_uid: str
    """Series Instance UID."""
    status: str
    """``stored``, or ``duplicate`` when identical content was already stored."""
    original_syntax: str
    """Transfer syntax as received."""
    stored_syntax: str
    """Transfer syntax stored."""
    bytes_in: int
    """Size as received."""
    bytes_stored: int
    """Bytes kept by the archive."""
    verified: bool
    """Every frame was re-encoded and decoded back bit for bit (False when kept as is)."""
    kept_reason: str | None
    """Why the object was kept as received, if it was."""
    source: str
    """Where it came from."""
    warnings: tuple[str, ...] = ()
    """Tolerated non-conformances."""
    sop_class_uid: str = ""
    """SOP Class UID."""


@dataclass(slots=True)
class VerifyReport:
    """Result of :meth:`Archive.verify`."""

    checked: int = 0
    """Instances checked."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(SOP Instance UID, reason) of every instance that failed."""


def _result(rec: InstanceRecord, status: str, source: str) -> StoreResult:
    return StoreResult(
        rec.sop_instance_uid, rec.study_uid, rec.series_uid, status, rec.original_syntax,
        rec.stored_syntax, rec.bytes_in, rec.bytes_stored, rec.kind == StoreKind.FRAMES,
        rec.kept_reason, source, rec.warnings, rec.sop_class_uid,
    )


def _writer_lock(root: Path) -> int | None:
    """Take the archive's writer lock (``flock`` on ``root/archive.lock``, released by
    the kernel if the process dies); ``None`` when another process holds it.  Only the
    writer recovers at open: a second process cleaning up the first one's staged or
    pending frames mid-commit would lose acknowledged data."""
    fd = os.open(root / "archive.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass(frozen=True, slots=True)
class _Kept:
    """An object kept as received, read and parsed once for one request."""

    data: bytes
    """The object as stored."""
    scanned: ScannedObject
    """Its structure."""
    layout: PixelLayout | None
    """Its pixel layout (None without pixel data)."""

    @property
    def frames(self) -> int:
        """Number of frames of its pixel data (0 without)."""
        if self.scanned.pixel is None:
            return 0
        return 1 if self.layout is None else self.layout.frames


class _Waiter:
    __slots__ = ("done", "error", "outcome", "prepared")

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.done = False
        self.outcome: StoreResult | Rejected | None = None
        self.error: BaseException | None = None


_Committed = tuple[list[StoreResult | Rejected], list[str]]
"""Outcomes of a batch, and the locations it published (to be made durable)."""


class _GroupCommit:
    """Group commit for concurrent single stores (network front ends).

    Leader/follower: a thread that finds no commit running commits everything queued
    (its own instance included) in its own thread; threads arriving meanwhile queue
    up and are committed together by the next leader.  N concurrent stores share one
    index transaction, a lone store is committed at once, and no thread hand-over is
    paid when there is no concurrency.  The next batch may commit while the leader
    makes its batch's renames durable (``finish``); nobody is answered before that.
    """

    def __init__(self, commit: Callable[[Sequence[Prepared]], _Committed],
                 finish: Callable[[Sequence[str], Sequence[StoreResult | Rejected]], None],
                 max_batch: int):
        self._commit, self._finish, self._max = commit, finish, max(max_batch, 1)
        self._cv = threading.Condition()
        self._queue: list[_Waiter] = []
        self._busy = False
        self._finishing = 0

    def submit(self, prepared: Prepared) -> StoreResult | Rejected:
        me = _Waiter(prepared)
        with self._cv:
            self._queue.append(me)
            while not me.done:
                if self._busy or not self._queue:
                    self._cv.wait()
                    continue
                self._busy = True
                batch, self._queue = self._queue[:self._max], self._queue[self._max:]
                self._cv.release()
                try:
                    self._run(batch)
                finally:
                    self._cv.acquire()
                    self._cv.notify_all()
        if me.error is not None:
            raise me.error
        assert me.outcome is not None
        return me.outcome

    def _run(self, batch: list[_Waiter]) -> None:
        """Commit ``batch`` as the leader, hand the role on, then finish the batch."""
        try:
            results, published = self._commit([w.prepared for w in batch])
        except BaseException as exc:  # every waiter of the batch learns the failure
            self._hand_on()
            self._answer(batch, None, exc)
            return
        self._hand_on()
        try:
            self._finish(published, results)
        except BaseException as exc:
            self._answer(batch, None, exc)
        else:
            self._answer(batch, results, None)

    def _hand_on(self) -> None:
        with self._cv:
            self._busy = False
            self._finishing += 1
            self._cv.notify_all()

    def _answer(self, batch: list[_Waiter], results: list[StoreResult | Rejected] | None,
                error: BaseException | None) -> None:
        with self._cv:
            for i, w in enumerate(batch):
                w.outcome = None if results is None else results[i]
                w.error, w.done = error, True
            self._finishing -= 1
            self._cv.notify_all()

    def close(self) -> None:
        """Wait for a running commit to finish."""
        with self._cv:
            while self._busy or self._queue or self._finishing:
                self._cv.wait(timeout=1)


class Archive:
    """A DICOM archive in one directory: ``index.lmdb`` and ``frames/`` (Zarr).

    Parameters
    ----------
    root
        Archive directory (created if missing).
    config
        Settings; see :class:`~pacscore.config.ArchiveConfig`.
    readonly
        Never write: no writer lock is taken (a server may start meanwhile), no crash
        recovery runs.  Without it the first process to open the archive becomes its
        writer and any other opens it read-only.
    """

    def __init__(self, root: str | os.PathLike[str], config: ArchiveConfig | None = None,
                 *, readonly: bool = False):
        self.root = Path(root)
        self.config = config or ArchiveConfig()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveStorageError(f"cannot create archive directory {self.root}: {exc}"
                                      ) from exc
        self.frames_root = self.root / "frames"
        self.store_ = ZarrFrameStore(self.frames_root, fsync=self.config.fsync)
        self.index = LmdbIndex(self.root / "index.lmdb", map_size=self.config.lmdb_map_size,
                               sync=self.config.fsync)
        self._commit_lock = threading.Lock()
        self._group = _GroupCommit(self._commit_batch, self._finish,
                                   self.config.commit_batch)
        self._lock = threading.Lock()
        self._workers: PrepareWorkers | None = None
        self._listeners: list[Callable[[Sequence[StoreResult]], None]] = []
        self._writer_fd = None if readonly else _writer_lock(self.root)
        self.writable = self._writer_fd is not None
        """False when another process writes this archive: reads only, no recovery."""
        self._closed = False
        try:
            self.recovered = self._recover() if self.writable else 0
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------
    def _recover(self) -> int:
        """Finish or undo what a crash interrupted: staged locations the index owns are
        moved into place, the other staged files removed, and so are the locations of
        interrupted deletions (pending and unowned)."""
        owned = [loc for loc in self.store_.staged() if self.index.location_owner(loc)]
        self.store_.publish(owned)
        self.store_.sync_published(owned)
        removed = len(owned) + self.store_.clean_staging()
        pending = self.index.pending()
        orphans = [loc for loc in pending if self.index.location_owner(loc) is None]
        self.store_.delete(orphans)
        self.index.clear_pending(pending)
        return removed + len(orphans)

    def close(self) -> None:
        """Finish pending commits, stop the workers and close the index."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        self._group.close()
        self.index.close()
        if self._writer_fd is not None:
            os.close(self._writer_fd)  # releases the writer lock
            self._writer_fd = None
        self._closed = True

    def _require_writer(self) -> None:
        if self._closed:
            raise ArchiveStorageError(f"{self.root}: this Archive was closed",
                                      hint="open the archive again")
        if not self.writable:
            raise ArchiveBusyError(f"{self.root} is being written by another process; this "
                                   f"one opened it read-only")

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingest ------------------------------------------------------------------
    def store(self, src: str | os.PathLike[str] | bytes | BinaryIO, *,
              source: str | None = None) -> StoreResult:
        """Store one Part-10 object (a path, its bytes, or a binary stream).

        Raises
        ------
        PacsError
            :class:`~pacscore.errors.InvalidDicomError` and subclasses for input that
            is refused, :class:`~pacscore.errors.ConflictError` when the SOP Instance
            UID is stored with other content; nothing is stored then.
        """
        self._require_writer()
        if isinstance(src, bytes | bytearray | memoryview):
            data, name = bytes(src), source or "<bytes>"
        elif isinstance(src, str | os.PathLike) and self.config.prepare_workers > 0:
            return self._store_in_pool(os.fspath(src), source or os.fspath(src))
        elif isinstance(src, str | os.PathLike):
            name = source or os.fspath(src)
            try:
                data = Path(src).read_bytes()
            except OSError as exc:
                raise ArchiveStorageError(f"cannot read {name}: {exc}") from exc
        else:
            data, name = src.read(), source or "<stream>"
        prepared = prepare(data, name, self.config, self.store_, flush=True)
        outcome = self._group.submit(prepared)
        if isinstance(outcome, Rejected):
            raise ERRORS_BY_NAME.get(outcome.error, ConflictError)(outcome.reason, source=name)
        return outcome

    def start_workers(self) -> None:
        """Start the worker processes of single stores now (servers call this at start
        so the first clients do not wait for the workers' imports)."""
        self._require_writer()
        with self._lock:
            if self._workers is None and self.config.prepare_workers > 0:
                self._workers = PrepareWorkers(self.config.prepare_workers, self.config,
                                               str(self.frames_root))

    def _store_in_pool(self, path: str, name: str) -> StoreResult:
        """Prepare in a worker process (codecs hold the GIL), then group-commit."""
        self.start_workers()
        assert self._workers is not None
        outcome = self._workers.prepare(path, name)
        if isinstance(outcome, Rejected):
            raise ERRORS_BY_NAME.get(outcome.error, InvalidDicomError)(outcome.reason,
                                                                       source=name)
        if isinstance(outcome, Skipped):
            raise InvalidDicomError("not a DICOM object", source=name)
        committed = self._group.submit(outcome)
        if isinstance(committed, Rejected):
            raise ERRORS_BY_NAME.get(committed.error, ConflictError)(committed.reason,
                                                                     source=name)
        return committed

    def store_many(self, paths: Iterable[str], *, workers: int | None = None,
                   dask_address: str | None = None) -> Iterator[StoreResult | Rejected | Skipped]:
        """Store many files with worker processes; yield one outcome per file.

        Results are yielded only after their batch is committed (acknowledged).
        ``dask_address`` prepares the files on a Dask cluster instead (its workers must
        see the input paths and this archive's directory).
        """
        self._require_writer()
        n = os.cpu_count() or 1 if workers is None else workers
        batch: list[Prepared] = []
        for outcome in run_pool(paths, self.config, self.frames_root, n, dask_address):
            if isinstance(outcome, Prepared):
                batch.append(outcome)
                if len(batch) >= self.config.commit_batch:
                    yield from self._commit(batch)
                    batch = []
            else:
                yield outcome
        if batch:
            yield from self._commit(batch)

    def _commit(self, batch: Sequence[Prepared]) -> list[StoreResult | Rejected]:
        """Index and publish a batch; return outcomes in batch order (acknowledged)."""
        outcomes, published = self._commit_batch(batch)
        self._finish(published, outcomes)
        return outcomes

    def _commit_batch(self, batch: Sequence[Prepared]) -> _Committed:
        """Index a batch and rename it into place; serialised per Archive (network
        front ends store from several threads)."""
        with self._commit_lock:
            return self._commit_locked(batch)

    def _finish(self, published: Sequence[str],
                outcomes: Sequence[StoreResult | Rejected]) -> None:
        """Make a committed batch's renames durable, then tell the listeners."""
        self.store_.sync_published(published)
        stored = [o for o in outcomes if isinstance(o, StoreResult) and o.status == "stored"]
        if stored:
            self._notify(stored)

    def on_change(self, listener: Callable[[Sequence[StoreResult]], None]) -> None:
        """Call ``listener`` with the instances of every committed batch (after they are
        acknowledged; from the committing thread, so it must be quick and not raise)."""
        self._listeners.append(listener)

    def _notify(self, results: Sequence[StoreResult]) -> None:
        for listener in list(self._listeners):
            try:
                listener(results)
            except Exception:  # the data is committed: a listener cannot undo that
                log.exception("change listener %r failed", listener)

    def off_change(self, listener: Callable[[Sequence[StoreResult]], None]) -> None:
        """Stop calling ``listener``."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _commit_locked(self, batch: Sequence[Prepared]) -> _Committed:
        seen: dict[str, Prepared] = {}
        fresh: list[Prepared] = []
        outcomes: dict[int, StoreResult | Rejected] = {}
        for i, p in enumerate(batch):
            rec = p.record
            existing = self.index.get(rec.sop_instance_uid) or (
                seen[rec.sop_instance_uid].record if rec.sop_instance_uid in seen else None)
            if existing is None:
                seen[rec.sop_instance_uid] = p
                fresh.append(p)
            elif existing.same_instance(rec):
                outcomes[i] = _result(existing, "duplicate", p.source)
            else:
                outcomes[i] = Rejected(p.source, self._conflict(rec, existing), "ConflictError")
        self.store_.discard([batch[i].record.location for i in outcomes])
        locs = [p.record.location for p in fresh]
        try:
            if not all(p.durable for p in fresh):
                self.store_.flush(locs)
            puts = self.index.put([(p.record, p.header) for p in fresh])
        except BaseException:  # nothing committed: no staged frame may stay behind
            self.store_.discard(locs)
            raise
        owned = [p.record.location for p, o in zip(fresh, puts, strict=True)
                 if o.status == "stored"]
        if len(owned) < len(locs):  # another writer stored the UID since the check
            self.store_.discard(sorted(set(locs) - set(owned)))
        try:
            self.store_.publish(owned)
        except PacsError:  # committed and readable in staging; the next start moves it
            log.exception("publishing committed locations failed; they stay staged")
            owned = []
        by_id = {id(p): o for p, o in zip(fresh, puts, strict=True)}
        out: list[StoreResult | Rejected] = []
        for i, p in enumerate(batch):
            if i in outcomes:
                out.append(outcomes[i])
                continue
            put = by_id.get(id(p))
            if put is None or put.status == "stored":
                out.append(_result(p.record, "stored", p.source))
            elif put.status == "duplicate" and put.existing is not None:
                out.append(_result(put.existing, "duplicate", p.source))
            elif put.existing is not None:
                out.append(Rejected(p.source, self._conflict(p.record, put.existing),
                                    "ConflictError"))
            else:  # refused (contradicts the hierarchy) or invalid (a value it cannot take)
                out.append(Rejected(p.source, put.reason, "InvalidDicomError"
                                    if put.status == "invalid" else "ConflictError"))
        return out, owned

    @staticmethod
    def _conflict(new: InstanceRecord, old: InstanceRecord) -> str:
        return (f"SOP Instance UID {new.sop_instance_uid} is already stored with different "
                f"content (sha256 {old.sha256[:12]}… vs {new.sha256[:12]}…); the stored "
                f"instance was kept (hint: delete it first to replace it)")

    # -- retrieve ----------------------------------------------------------------
    def _record(self, sop_instance_uid: str) -> InstanceRecord:
        rec = self.index.get(sop_instance_uid)
        if rec is None:
            raise NotFoundError(f"no instance {sop_instance_uid} in the archive")
        return rec

    def _kept(self, rec: InstanceRecord) -> _Kept:
        """An object kept as received, read and parsed."""
        data = self.store_.read_blob(rec.location)
        scanned = scan(data, self.config.limits, rec.sop_instance_uid)
        layout = read_header(scanned, self.config.limits, rec.sop_instance_uid,
                             rec.sha256).layout
        return _Kept(data, scanned, layout)

    def _decoded(self, rec: InstanceRecord, indices: Sequence[int] | None = None,
                 kept: _Kept | None = None) -> tuple[list[npt.NDArray[Any]], PixelLayout]:
        """Decoded frames (native dtype) of an instance (``kept``: the object kept as
        received, when the caller has read it already)."""
        if rec.kind == StoreKind.FRAMES:
            assert rec.layout is not None
            layout = PixelLayout.from_dict(rec.layout)
            codec = by_syntax(rec.stored_syntax)
            if codec is None:
                raise UnsupportedTransferSyntaxError(f"no decoder for {rec.stored_syntax}")
            wanted = range(layout.frames) if indices is None else indices
            streams = self.store_.read_frames(rec.location, list(wanted),
                                              2 + (layout.samples > 1) + 1)
            return [codec.decode(s, layout) for s in streams], layout
        kept = kept or self._kept(rec)
        data, scanned, layout_ = kept.data, kept.scanned, kept.layout
        if layout_ is None or (rec.kept_reason and "Bits Allocated" in rec.kept_reason):
            raise UnsupportedTransferSyntaxError(
                f"instance {rec.sop_instance_uid} has no pixel data this archive can decode "
                f"({rec.kept_reason}); ask for its original transfer syntax")
        if layout_.photometric == "YBR_FULL_422" and not scanned.transfer_syntax.encapsulated:
            raise UnsupportedTransferSyntaxError(
                f"instance {rec.sop_instance_uid} holds native YBR_FULL_422 pixel data "
                f"(two samples of chroma per two pixels): it is sent uncompressed only; "
                f"ask for its original or another uncompressed transfer syntax")
        if scanned.transfer_syntax.encapsulated:
            frames = decoded_input_frames(data, layout_)
        else:
            frames = list(native_frames(scanned, layout_))
        chosen = frames if indices is None else [frames[i] for i in indices]
        return chosen, layout_

    @staticmethod
    def _native_value(kept: _Kept) -> tuple[bytes, int] | None:
        """The Pixel Data value of an object kept as received, with its Bits Allocated,
        when it is native and already little endian (or 8-bit) as it is: sent as it is
        in another uncompressed little-endian syntax, nothing decoded (also what
        :meth:`_decoded` cannot take apart, e.g. YBR_FULL_422).  None otherwise."""
        pixel, ts, layout = kept.scanned.pixel, kept.scanned.transfer_syntax, kept.layout
        if pixel is None or ts.encapsulated or pixel.encapsulated or layout is None \
                or layout.planar or not (ts.little_endian or layout.bits_allocated == 8):
            return None
        return bytes(kept.scanned.body[pixel.value_start:pixel.value_end]), \
            layout.bits_allocated

    def _parts(self, rec: InstanceRecord, kept: _Kept | None) -> HeaderParts:
        if kept is None:
            return HeaderParts.unpack(self.index.header(rec.sop_instance_uid))
        data, scanned = kept.data, kept.scanned
        pixel = scanned.pixel
        if pixel is None:
            raise UnsupportedTransferSyntaxError(
                f"instance {rec.sop_instance_uid} has no pixel data to transcode")
        # A deflated object's offsets are in its inflated data set (explicit VR little
        # endian, no File Meta before it): the parts are cut from that.
        src, start = (scanned.body, 0) if scanned.inflated else (data, scanned.dataset_start)
        return HeaderParts(bytes(src[: pixel.element_start]),
                           bytes(src[pixel.element_start:pixel.value_start]),
                           bytes(src[pixel.value_end:]), start, -1)

    def get(self, sop_instance_uid: str, transfer_syntax: str = "original") -> bytes:
        """The instance as a Part-10 object.

        Parameters
        ----------
        transfer_syntax
            ``original`` (as received: byte-identical for uncompressed input and for
            anything kept as received), ``stored`` (a read, no transcode), or a
            Transfer Syntax UID to transcode to.
        """
        rec = self._record(sop_instance_uid)
        target = {"original": rec.original_syntax, "stored": rec.stored_syntax}.get(
            transfer_syntax, transfer_syntax)
        if rec.kind == StoreKind.BLOB and target == rec.stored_syntax:
            return self.store_.read_blob(rec.location)
        kept = self._kept(rec) if rec.kind == StoreKind.BLOB else None
        parts = self._parts(rec, kept)
        cls, sop = rec.sop_class_uid, rec.sop_instance_uid
        if rec.kind == StoreKind.FRAMES and target == rec.stored_syntax:
            assert rec.layout is not None
            layout = PixelLayout.from_dict(rec.layout)
            streams = self.store_.read_frames(rec.location, range(layout.frames),
                                              3 + (layout.samples > 1))
            return build_part10(parts, rec.original_syntax, target, cls, sop, frames=streams)
        # the data set the parts hold: a deflated one's is inflated (explicit VR LE)
        source = EXPLICIT_LE if syntax(rec.original_syntax).deflated else rec.original_syntax
        ts = syntax(target)
        same_values = self._native_value(kept) if kept and ts.native and ts.little_endian \
            else None
        if same_values is not None:  # uncompressed to uncompressed: the value as it is
            raw, bits_allocated = same_values
            return build_part10(parts, source, target, cls, sop, native=raw,
                                bits_allocated=bits_allocated)
        decoded, layout = self._decoded(rec, kept=kept)
        original = syntax(rec.original_syntax)
        if target == rec.original_syntax and original.native and not original.deflated:
            data = parts.original(native_bytes(decoded, layout, original.little_endian))
            if hashlib.sha256(data).hexdigest() != rec.sha256:
                raise ArchiveCorruptError(
                    f"rebuilt original of {sop} does not match its SHA-256", source=sop)
            return data
        if ts.native:
            raw = native_bytes(decoded, PixelLayout(**{**layout.to_dict(), "planar": False}),
                               True)
            return build_part10(parts, source, target, cls, sop, native=raw,
                                bits_allocated=layout.bits_allocated)
        codec = by_syntax(target)
        if codec is None or codec.refuses(layout):
            raise UnsupportedTransferSyntaxError(
                f"cannot encode instance {sop} as {ts.name} ({target})")
        streams = [codec.encode(np.ascontiguousarray(f), layout) for f in decoded]
        return build_part10(parts, source, target, cls, sop, frames=streams)

    def frames(self, sop_instance_uid: str, indices: Sequence[int] | None = None,
               transfer_syntax: str = "stored") -> list[bytes]:
        """Frame bytes: codestreams in the stored syntax (a read, no transcode),
        native little-endian samples for an uncompressed syntax, or codestreams of
        another encodable syntax.  Indices are 0-based."""
        rec = self._record(sop_instance_uid)
        wanted: list[int] | None
        if rec.kind == StoreKind.FRAMES and rec.layout is not None:
            n = rec.layout["frames"]
            wanted = list(range(n)) if indices is None else list(indices)
            bad = [i for i in wanted if not 0 <= i < n]
            if bad:
                raise NotFoundError(f"instance {sop_instance_uid} has {n} frames; "
                                    f"no frame {bad[0]}")
            if transfer_syntax in ("stored", rec.stored_syntax):
                return self.store_.read_frames(rec.location, wanted,
                                               3 + (rec.layout["samples"] > 1))
        else:
            wanted = None if indices is None else list(indices)
            if transfer_syntax in ("stored", rec.stored_syntax) \
                    and syntax(rec.stored_syntax).encapsulated:
                return self._kept_codestreams(rec, wanted)
        decoded, layout = self._decoded(rec, wanted)
        target = rec.stored_syntax if transfer_syntax == "stored" else transfer_syntax
        if syntax(target).native or transfer_syntax == "native":
            return [np.ascontiguousarray(f).astype(f.dtype.newbyteorder("<")).tobytes()
                    for f in decoded]
        codec = by_syntax(target)
        if codec is None:
            raise UnsupportedTransferSyntaxError(f"cannot encode frames as {target}")
        return [codec.encode(np.ascontiguousarray(f), layout) for f in decoded]

    def _kept_codestreams(self, rec: InstanceRecord, wanted: list[int] | None
                          ) -> list[bytes]:
        """The frames of an object kept as received in a compressed syntax, as its
        codestreams are (a read, no transcode)."""
        from pydicom.encaps import generate_frames

        sop = rec.sop_instance_uid
        kept = self._kept(rec)
        pixel, count = kept.scanned.pixel, kept.frames
        wanted = list(range(count)) if wanted is None else wanted
        if bad := [i for i in wanted if not 0 <= i < count]:
            raise NotFoundError(f"instance {sop} has {count} frames; no frame {bad[0]}")
        assert pixel is not None  # count > 0
        streams = list(generate_frames(
            bytes(kept.scanned.body[pixel.value_start:pixel.value_end]),
            number_of_frames=count))
        return [streams[i] for i in wanted]

    # -- query and admin ---------------------------------------------------------
    def find(self, level: str, *, limit: int | None = None, offset: int = 0,
             **keys: str) -> list[dict[str, Any]]:
        """Match ``keys`` (DICOM keywords) at ``level`` (patient/study/series/instance)."""
        return self.query(level, keys, limit=limit, offset=offset)

    def query(self, level: str, keys: Mapping[str, str], *, limit: int | None = None,
              offset: int = 0, fuzzy: bool = False) -> list[dict[str, Any]]:
        """:meth:`find` with the keys as a mapping (for front ends); ``fuzzy`` matches
        person names loosely (QIDO-RS ``fuzzymatching=true``)."""
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
        return self.index.find(level, keys, limit=limit, offset=offset, fuzzy=fuzzy)

    def header(self, sop_instance_uid: str) -> bytes:
        """The Part-10 object up to (not including) its pixel data, as received: what
        metadata services read without touching pixels."""
        rec = self._record(sop_instance_uid)
        if rec.kind == StoreKind.FRAMES:
            return HeaderParts.unpack(self.index.header(sop_instance_uid)).prefix
        data = self.store_.read_blob(rec.location)
        pixel = scan(data, self.config.limits, sop_instance_uid).pixel
        return data if pixel is None else data[: pixel.element_start]

    def pixel_tag(self, sop_instance_uid: str) -> int | None:
        """Tag of the instance's pixel data element: (7FE0,0010), or (7FE0,0008) and
        (7FE0,0009) for float and double pixel data; ``None`` when it has none (an
        encapsulated document, a waveform, a report)."""
        rec = self._record(sop_instance_uid)
        if rec.kind == StoreKind.FRAMES:
            return PIXEL_DATA
        pixel = scan(self.store_.read_blob(rec.location), self.config.limits,
                     sop_instance_uid).pixel
        return None if pixel is None else pixel.tag

    def frame_count(self, sop_instance_uid: str) -> int:
        """Number of frames of the instance's pixel data (0 without pixel data)."""
        rec = self._record(sop_instance_uid)
        if rec.layout is not None:
            return int(rec.layout["frames"])
        return self._kept(rec).frames

    def pixels(self, sop_instance_uid: str, index: int = 0) -> npt.NDArray[Any]:
        """One decoded frame (native dtype; colour-by-pixel)."""
        frames, _ = self._decoded(self._record(sop_instance_uid), [index])
        return frames[0]

    def changed(self, level: str, uid: str) -> int | None:
        """A number that grows with every change under a patient, study or series
        (``None`` if absent): derived caches compare it to stay exact."""
        return self.index.changed(level, uid)

    def instances(self, level: str, uid: str) -> list[str]:
        """SOP Instance UIDs under a patient (by Patient ID), study, series or instance."""
        return self.index.instances(level, uid)

    def record(self, sop_instance_uid: str) -> InstanceRecord:
        """What the index holds about one instance (syntaxes, sizes, checksums)."""
        return self._record(sop_instance_uid)

    def delete(self, level: str, uid: str) -> int:
        """Delete an instance, series, study or patient; return instances removed."""
        self._require_writer()
        with self._commit_lock:  # no commit is between its index transaction and rename
            sops = self.index.instances(level, uid)
            if not sops:
                raise NotFoundError(f"no {level} {uid} in the archive")
            removed = self.index.delete(sops)  # marks their locations pending
        locs = [r.location for r in removed]
        self.store_.delete(locs)  # (commits go on meanwhile: a big study takes a while)
        self.index.clear_pending(locs)
        return len(removed)

    def verify(self) -> VerifyReport:
        """Decode every stored frame against its CRC-32; hash every kept object."""
        report = VerifyReport()
        for rec in self.index.records():
            report.checked += 1
            try:
                if rec.kind == StoreKind.BLOB:
                    data = self.store_.read_blob(rec.location)
                    if hashlib.sha256(data).hexdigest() != rec.sha256:
                        report.failed.append((rec.sop_instance_uid, "SHA-256 mismatch"))
                    continue
                decoded, _ = self._decoded(rec)
                for i, (frame, crc) in enumerate(zip(decoded, rec.frame_crc32, strict=True)):
                    if frame_crc32(frame) != crc:
                        report.failed.append((rec.sop_instance_uid, f"frame {i} CRC mismatch"))
                        break
            except Exception as exc:  # a corrupt codestream raises in the codec
                report.failed.append((rec.sop_instance_uid, f"{type(exc).__name__}: {exc}"))
        return report

    def stats(self) -> dict[str, Any]:
        """Totals: instances, compressed_instances, bytes_in, bytes_stored, per syntax."""
        return self.index.stats()

