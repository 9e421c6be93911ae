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
import logging
import os
import shutil
import threading
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy.typing as npt

from . import bulk
from .archive_folder import file_descriptor, require_archive, writer_lock
from .commit import Committer, GroupCommit
from .config import ArchiveConfig
from .errors import (
    ArchiveBusyError,
    ArchiveStorageError,
    InvalidDicomError,
    InvalidRequestError,
    NotFoundError,
    PacsError,
)
from .index import LEVELS, Index, InstanceRecord, LmdbIndex, SharedIndex, StoreKind
from .index.readonly import open_readonly
from .index.spec import IndexSpec, remember_index, remembered_index
from .ingest.outcomes import Failed, Rejected, Skipped, StoreResult
from .overlay import PatientOverlay
from .private import make_private_dir
from .retrieve import Reader, crc_problem
from .store import FrameStore, StoreSpec
from .store.spec import claim_store, remembered_spec, shared_index

if TYPE_CHECKING:
    from .dicom.header import InstanceHeader
    from .ingest.workers import PrepareWorkers
    from .workflow import Worklist

__all__ = ["Archive", "StoreResult", "VerifyReport"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class VerifyReport:
    """Result of :meth:`Archive.verify`."""

    checked: int = 0
    """Instances checked."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(SOP Instance UID, reason) of every instance that failed."""


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
    store
        The frame store (default: Zarr arrays under ``root/frames``): this process and
        the worker processes open it from this spec (:mod:`pacscore.store.spec`).
    index
        The index (default: LMDB in ``root/index.lmdb``): an
        :class:`~pacscore.index.spec.IndexSpec` or a URL such as
        ``postgresql://user@host/db`` (:mod:`pacscore.index.spec`).  The frames, the
        writer lock and the temp folder stay in ``root`` whichever index it is.
    """

    def __init__(self, root: str | os.PathLike[str], config: ArchiveConfig | None = None,
                 *, readonly: bool = False, store: StoreSpec | None = None,
                 index: IndexSpec | str | None = None):
        self.root = Path(root)
        self.config = config or ArchiveConfig()
        self.frames_root = self.root / "frames"
        self.tmp_dir = self.root / "tmp"
        """Temp files of the front ends (request bodies, objects being received): private
        to the writer (0700), emptied when the writer opens the archive."""
        self._shared_fd: int | None = None
        self.index_spec = remembered_index(
            self.root, IndexSpec.parse(index) if isinstance(index, str) else index)
        """The index, when it is not the archive's own LMDB index (given, or the one
        the folder remembers: :data:`~pacscore.index.spec.INDEX_FILE`)."""
        self.index: Index
        if readonly:  # creates nothing: works on a read-only mount, refuses a typo
            require_archive(self.root, own_index=self.index_spec is None)
            store = remembered_spec(self.root, store, save=False)
            self.store_spec = store or StoreSpec.of("zarr", root=str(self.frames_root),
                                                    fsync=False, create=False)
            self.store_: FrameStore = self.store_spec.open()
            if self.index_spec is None:
                self.index, self._shared_fd = open_readonly(self.root,
                                                            self.config.lmdb_map_size)
            else:
                self.index = self.index_spec.open(readonly=True)
            claim_store(self.root, self.store_, create=False, shared=self._shared_index())
        else:
            try:
                make_private_dir(self.frames_root)  # and the root: 0700
            except OSError as exc:
                raise ArchiveStorageError(f"cannot create archive directory {self.root}: "
                                          f"{exc}") from exc
            store = remembered_spec(self.root, store, save=True)  # (S3: in store.json)
            self.store_spec = store or StoreSpec.of("zarr", root=str(self.frames_root),
                                                    fsync=self.config.fsync)
            self.store_ = self.store_spec.open()
            if self.index_spec is None:  # one archive per S3 prefix (before it exists)
                claim_store(self.root, self.store_, create=True)
                self.index = LmdbIndex(self.root / "index.lmdb",
                                       map_size=self.config.lmdb_map_size,
                                       sync=self.config.fsync)
            else:  # the index's archive (several front ends: one archive, see shared)
                self.index = self.index_spec.open()
                try:
                    claim_store(self.root, self.store_, create=True,
                                shared=self._shared_index())
                    remember_index(self.root, self.index_spec)
                except BaseException:
                    self.index.close()
                    raise
        self._reader = Reader(self.store_, self.index, self.config.limits)
        self._committer = Committer(self.index, self.store_, self._reader, self._notify)
        self._group = GroupCommit(self._committer.commit_batch, self._committer.finish,
                                  self.config.commit_batch)
        self._lock = threading.Lock()
        self._workers: PrepareWorkers | None = None
        self._listeners: list[Callable[[Sequence[StoreResult]], None]] = []
        self._writer_fd = None if readonly else writer_lock(self.root)
        self.writable = self._writer_fd is not None
        """False when another process writes this archive: reads only, no recovery."""
        self.shared = self._shared_index() is not None
        """Front end of an archive that other processes write at once (issue 17.3): the
        index is shared (PostgreSQL) and the frames are in object storage.  The writer
        lock then guards only this front end's own folder (temp files, spool, tokens,
        audit); recovery at start touches only what is older than the grace period
        (:meth:`.Committer.recover`), never another live front end's commit."""
        self._closed = False
        self._worklist: Worklist | None = None
        self._readonly = readonly
        self.patients = PatientOverlay(  # corrections (:mod:`.overlay`)
            self.root, lambda: self.worklist, self.index.find, self.config.limits,
            shared=isinstance(self.index, SharedIndex))
        try:
            self.recovered = self._recover() if self.writable else 0
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------
    def _recover(self) -> int:
        """Finish or undo what a crash interrupted (:meth:`.Committer.recover`) and
        empty :attr:`tmp_dir`; on a shared archive only what is older than the grace
        period of :mod:`pacscore.gc` (another front end may be committing the rest)."""
        self._clean_tmp()
        if self.shared:
            from .gc import DEFAULT_GRACE

            return self._committer.recover(grace=DEFAULT_GRACE)
        return self._committer.recover()

    def _shared_index(self) -> SharedIndex | None:
        return shared_index(getattr(self, "index", None), self.store_)

    # Temp files of earlier versions, in the archive root (unacknowledged partial uploads).
    _LEGACY_TMP = ("stow-*", "grpc-*.dcm")

    def _clean_tmp(self) -> None:
        """Empty :attr:`tmp_dir` (nothing in it was acknowledged: a crash can leave
        partial request bodies with patient data) and make it again, private (0700)."""
        stale = [self.tmp_dir, *(p for pattern in self._LEGACY_TMP
                                 for p in self.root.glob(pattern))]
        try:
            for path in stale:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            self.tmp_dir.mkdir(mode=0o700)
        except OSError as exc:
            raise ArchiveStorageError(
                f"cannot empty the temp folder {self.tmp_dir}: {exc}",
                hint="it holds only unacknowledged partial uploads: remove it by hand") \
                from exc

    def close(self) -> None:
        """Finish pending commits, stop the workers and close the index."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        self._group.close()
        self.store_.close()
        self.index.close()
        if self._worklist is not None:
            self._worklist.close()
        if self._writer_fd is not None:
            os.close(self._writer_fd)  # releases the writer lock
            self._writer_fd = None
        if self._shared_fd is not None:
            os.close(self._shared_fd)  # lets a writer start again
            self._shared_fd = None
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
              source: str | None = None, strict_identity: bool = False) -> StoreResult:
        """Store one Part-10 object (a path, its bytes, or a binary stream read from its
        position to its end; an open file is handed to a worker process as it is, so
        what is stored is what was written to it, whatever its name points to).

        ``strict_identity``: refuse an object whose File Meta names another SOP Class or
        Instance UID than its data set (the network doors set it: there the File Meta
        is what the sender asserted, e.g. a C-STORE request's Affected SOP Instance UID,
        PS3.4 C.4.2.1.4.2).  Without it such an object is stored under its data set's
        UIDs with a warning in its record (14 files of public test data carry a stale
        File Meta).

        Raises
        ------
        PacsError
            :class:`~pacscore.errors.InvalidDicomError` and subclasses for input that
            is refused (:class:`~pacscore.errors.IdentityMismatchError` when its File
            Meta names another SOP Class or Instance than its data set),
            :class:`~pacscore.errors.ConflictError` when the SOP Instance UID is
            stored with other content; nothing is stored then.
        """
        self._require_writer()
        if isinstance(src, bytes | bytearray | memoryview):
            data, name = bytes(src), source or "<bytes>"
        elif isinstance(src, str | os.PathLike) and self.config.prepare_workers > 0:
            return self._store_in_pool(os.fspath(src), source or os.fspath(src),
                                       strict_identity=strict_identity)
        elif isinstance(src, str | os.PathLike):
            name = source or os.fspath(src)
            try:
                data = Path(src).read_bytes()
            except OSError as exc:
                raise ArchiveStorageError(f"cannot read {name}: {exc}") from exc
        elif self.config.prepare_workers > 0 and (fd := file_descriptor(src)) is not None:
            return self._store_in_pool(fd, source or "<stream>", src.tell(),
                                       strict_identity=strict_identity)
        else:
            data, name = src.read(), source or "<stream>"
        from .ingest.prepare import prepare  # the kernels and codecs: on first store

        prepared = prepare(data, name, self.config, self.store_, flush=True,
                           strict_identity=strict_identity)
        outcome = self._group.submit(prepared)
        if isinstance(outcome, Rejected):
            raise outcome.exception(name)
        return outcome

    def start_workers(self) -> None:
        """Start the worker processes of single stores now (servers call this at start
        so the first clients do not wait for the workers' imports)."""
        self._require_writer()
        with self._lock:
            if self._workers is None and self.config.prepare_workers > 0:
                from .ingest.workers import PrepareWorkers

                self._workers = PrepareWorkers(self.config.prepare_workers, self.config,
                                               self.store_spec)

    def _store_in_pool(self, path: str | int, name: str, offset: int = 0, *,
                       strict_identity: bool = False) -> StoreResult:
        """Prepare in a worker process (codecs hold the GIL), then group-commit;
        ``path``: see :meth:`PrepareWorkers.prepare`."""
        self.start_workers()
        assert self._workers is not None
        outcome = self._workers.prepare(path, name, offset, strict_identity=strict_identity)
        if isinstance(outcome, Rejected | Failed):
            raise outcome.exception(name)
        if isinstance(outcome, Skipped):
            raise InvalidDicomError(outcome.reason, source=name)
        committed = self._group.submit(outcome)
        if isinstance(committed, Rejected):
            raise committed.exception(name)
        return committed

    def store_many(self, paths: Iterable[str], *, workers: int | None = None,
                   dask_address: str | None = None
                   ) -> Generator[StoreResult | Rejected | Skipped | Failed, None, None]:
        """Store many files with worker processes; yield exactly one outcome per path.

        Results are yielded only after their batch is committed (acknowledged).
        ``dask_address`` prepares the files on a Dask cluster instead (its workers must
        see the input paths and this archive's directory).

        At the first failure to write the archive (no space, an I/O error, when staging
        or committing) or of the worker processes as a whole, nothing more is
        committed: the files in flight and every path not yet taken from ``paths`` are
        yielded as :class:`~pacscore.ingest.outcomes.Failed` with the cause (nothing of them
        is visible; storing them again later is safe).
        """
        self._require_writer()
        n = os.cpu_count() or 1 if workers is None else workers
        return bulk.store_many(self._committer.commit, self.store_, self.config,
                               self.store_spec, paths, n, dask_address)

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

    # -- retrieve ----------------------------------------------------------------
    def _record(self, sop_instance_uid: str) -> InstanceRecord:
        rec = self.index.get(sop_instance_uid)
        if rec is None:
            raise NotFoundError(f"no instance {sop_instance_uid} in the archive")
        return rec

    def _given(self, sop_instance_uid: str, record: InstanceRecord | None) -> InstanceRecord:
        """``record`` when it is that instance's, else the index's."""
        if record is not None and record.sop_instance_uid == sop_instance_uid:
            return record
        return self._record(sop_instance_uid)

    def records_of(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRecord]:
        """The records of those of ``sop_instance_uids`` that are stored, by UID (one
        round trip to an index over the network)."""
        return self.index.get_many(sop_instance_uids)

    def get(self, sop_instance_uid: str, transfer_syntax: str = "original") -> bytes:
        """The instance as a Part-10 object (all but ``original``: patients corrected).

        Parameters
        ----------
        transfer_syntax
            ``original`` (as received: byte-identical for uncompressed input and for
            anything kept as received; no correction), ``stored`` (no transcode), or a
            Transfer Syntax UID to transcode to.  Every object converts among the
            uncompressed syntaxes (Implicit VR Little Endian, Explicit VR Little and
            Big Endian, Deflated): objects without pixel data and native ones as
            they are, compressed ones decoded.

        Raises
        ------
        UnsupportedTransferSyntaxError
            The instance cannot be made in that syntax (pixel data that does not
            decode: :class:`~pacscore.errors.UndecodablePixelDataError`).
        """
        rec = self._record(sop_instance_uid)
        data = self._reader.get(rec, transfer_syntax)
        return data if transfer_syntax == "original" else self.patients.patch(data, rec)

    def frames(self, sop_instance_uid: str, indices: Sequence[int] | None = None,
               transfer_syntax: str = "stored", *, record: InstanceRecord | None = None
               ) -> list[bytes]:
        """Frame bytes: codestreams in the stored syntax (a read, no transcode),
        native little-endian samples for an uncompressed syntax, or codestreams of
        another encodable syntax.  Indices are 0-based (None: every frame).

        ``record``: the instance's record (:meth:`record`) when the caller read it
        already: a frame request then reads the index once.

        Raises
        ------
        NoSuchFrameError
            An index the instance does not have (checked before anything is decoded).
        UnsupportedTransferSyntaxError
            The frames cannot be made in that syntax.
        """
        rec = record if record is not None and record.sop_instance_uid == sop_instance_uid \
            else self._record(sop_instance_uid)
        return self._reader.frames(rec, indices, transfer_syntax)

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
            raise InvalidRequestError(f"unknown level {level!r}; use one of "
                                      f"{', '.join(LEVELS)}")
        return self.patients.query(level, keys, limit=limit, offset=offset, fuzzy=fuzzy)

    def header(self, sop_instance_uid: str, record: InstanceRecord | None = None) -> bytes:
        """The Part-10 object up to (not including) its pixel data, as received but for
        the patient corrections in force: what metadata services read without touching
        pixels.  A deflated object (PS3.5 A.5) cannot be cut: its data set comes inflated,
        under a File Meta that names Explicit VR Little Endian (the inflated bytes).
        ``record``: the instance's record when the caller has it (one look-up less)."""
        rec = self._given(sop_instance_uid, record)
        return self.patients.patch(self._reader.header(rec), rec)

    def attributes(self, sop_instance_uid: str, keywords: Iterable[str]
                   ) -> dict[str, dict[str, Any]]:
        """Attributes of the instance's stored header that the index does not keep
        (QIDO-RS ``includefield``), in the DICOM JSON model, by keyword; those it does
        not have are left out."""
        from .dicom.identity import header_attributes

        return header_attributes(self.header(sop_instance_uid), keywords)

    def attribute_value(self, sop_instance_uid: str, path: str) -> bytes:
        """The value of an attribute as received, little endian: bulk data by its path
        (``tag[/item/tag]...``, :func:`pacscore.dicom.values.parse_path`).  What comes
        before the pixel data is read from the header kept in the index (no frame is
        decoded); what follows it needs the whole object.

        Raises
        ------
        InvalidRequestError
            A malformed path, or an attribute that is no bulk data.
        NotFoundError
            The instance has no such attribute.
        """
        from .dicom.values import FIRST_PIXEL_TAG, element_value, parse_path

        steps = parse_path(path)
        data = self.header(sop_instance_uid) if steps[0][0] < FIRST_PIXEL_TAG \
            else self.get(sop_instance_uid, "original")
        return element_value(data, steps, sop_instance_uid, path)

    def identify(self, data: bytes, source: str) -> InstanceHeader | None:
        """What a Part-10 object is (identity, matching keys, layout), read with the
        archive's parser and limits before it is stored (a STOW-RS part checked against
        the study its URL names); None when it cannot be read."""
        from .dicom.identity import identify

        return identify(data, self.config.limits, source)

    def headers(self, records: Sequence[InstanceRecord]) -> dict[str, bytes]:
        """:meth:`header` of the instances ``records`` describe, by SOP Instance UID (one
        round trip to an index over the network for those stored as frames)."""
        found = self._reader.headers(records)
        return {r.sop_instance_uid: self.patients.patch(found[r.sop_instance_uid], r)
                for r in records}

    def pixel_tag(self, sop_instance_uid: str, record: InstanceRecord | None = None
                  ) -> int | None:
        """Tag of the instance's pixel data element: (7FE0,0010), or (7FE0,0008) and
        (7FE0,0009) for float and double pixel data; ``None`` when it has none (an
        encapsulated document, a waveform, a report).  ``record``: as for
        :meth:`header`."""
        return self._reader.pixel_tag(self._given(sop_instance_uid, record))

    def frame_count(self, sop_instance_uid: str) -> int:
        """Number of frames of the instance's pixel data (0 without pixel data)."""
        rec = self._record(sop_instance_uid)
        if rec.layout is not None:
            return int(rec.layout["frames"])
        return self._reader.kept(rec).frames

    def pixels(self, sop_instance_uid: str, index: int = 0) -> npt.NDArray[Any]:
        """One decoded frame (native dtype; colour-by-pixel)."""
        frames, _ = self._reader.decoded(self._record(sop_instance_uid), [index])
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
        with self._committer.lock:  # no commit is between its index transaction and rename
            sops = self.index.instances(level, uid)
            if not sops:
                raise NotFoundError(f"no {level} {uid} in the archive")
            removed = self.index.delete(sops)  # marks their locations pending
        locs = [r.location for r in removed]
        self.store_.delete(locs)  # (commits go on meanwhile: a big study takes a while)
        self.index.clear_pending(locs)
        return len(removed)

    def verify(self) -> VerifyReport:
        """Decode every stored frame against its CRC-32; hash every kept object, and
        decode those kept in a compressed syntax decoded here (against their CRC-32s
        when the syntax is lossless: lossy decoders may differ within the tolerance
        ISO 10918-1 allows, so a newer decoder is no corruption)."""
        report = VerifyReport()
        for rec in self.index.records():
            report.checked += 1
            try:
                if rec.kind == StoreKind.BLOB:
                    problem = self._reader.verify_kept(rec)
                else:
                    decoded, _ = self._reader.decoded(rec)
                    problem = crc_problem(decoded, rec.frame_crc32)
            except PacsError as exc:  # codec errors arrive as such (retrieve.py)
                problem = exc.reason
            except Exception as exc:  # catch-all on purpose: a report over every instance;
                # what damaged stored data does to zarr or a codec is this one's failure
                log.warning("verifying %s failed", rec.sop_instance_uid, exc_info=True)
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                report.failed.append((rec.sop_instance_uid, problem))
        return report

    @property
    def worklist(self) -> Worklist:
        """The scheduled procedure steps (``workflow.lmdb``, :mod:`pacscore.workflow`);
        writable by any process that may write the folder, beside the archive's writer.
        On a PostgreSQL index, in its database: shared by every front end."""
        with self._lock:  # opened once: never two environments of one path in a process
            if self._worklist is None:
                from .workflow import Worklist

                self._worklist = Worklist(self.root, sync=self.config.fsync,
                                          readonly=self._readonly, index=self.index)
        return self._worklist

    def stats(self) -> dict[str, Any]:
        """Totals: instances, compressed_instances, bytes_in, bytes_stored, per syntax."""
        return self.index.stats()

