"""``pacscore migrate``: copy every instance of one archive into another, verified.

Any source and target the contracts open (issue 17.5): an embedded folder (LMDB +
Zarr), a folder with its frames in object storage, or the scaled archive (a
PostgreSQL index and an S3 prefix, no folder needed).  Everything goes through the
:class:`~pacscore.index.Index` and :class:`~pacscore.store.FrameStore` contracts, so
every combination works and a third-party back end does too.

Per instance:

1. the source's record, header bytes and stored data (the frames' codestreams as
   stored, or the object kept as received) are read, and checked: every frame decodes
   to its recorded CRC-32, a kept object hashes to its SHA-256.  A source that fails
   is reported and **not** copied (never a damaged copy that looks sound);
2. the data is staged in the target under a fresh location (never re-encoded) and
   committed in batches through :class:`~pacscore.commit.Committer`: the target's
   index transaction is the point of truth, as for any store;
3. the target's copy is read back and compared: the record (all but its location),
   the header bytes, every codestream byte for byte (a kept object by its SHA-256).

Resumable without a journal: the target's index is the journal.  An instance the
target holds already (an earlier, interrupted run, or stored there before) is not
copied again but verified like a copy; its UID held with other content is a
mismatch.  A run killed mid-way leaves at most a batch staged and uncommitted, which
the target's start-up recovery (or ``pacscore gc`` on object storage) removes.
The source is opened read-only and never written.

Series metadata: the index keeps none beyond its records (the series and study
attributes are derived from them in the target's index, and DICOMweb's series
metadata is rebuilt from the headers on demand), so each series' query answer is
compared between the two as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..archive import Archive
from ..codecs import by_syntax
from ..commit import Committer
from ..config import ArchiveConfig
from ..dicom.layout import PixelLayout
from ..errors import ArchiveStorageError, InvalidRequestError, PacsError, UnknownIndexError
from ..index import Index, InstanceRecord, StoreKind
from ..index.spec import IndexSpec
from ..ingest.outcomes import Prepared, Rejected
from ..retrieve import Reader, crc_problem
from ..store import FrameStore, StoreSpec, new_location

__all__ = ["Endpoint", "MigrateReport", "in_part", "migrate"]

_IDENTITY = tuple(f.name for f in fields(InstanceRecord) if f.name != "location")
"""Record fields a copy must keep (the location is the target's own)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a migration: a folder, an index URL, a store URL (any of them)."""

    folder: Path | None = None
    """The archive's folder (an embedded archive, or a front end's folder)."""
    index: IndexSpec | None = None
    """Its index, when not the folder's LMDB index."""
    store: StoreSpec | None = None
    """Its frame store, when not the folder's Zarr arrays."""

    @classmethod
    def parse(cls, parts: Sequence[str]) -> Endpoint:
        """From what ``--from``/``--to`` take: a folder, ``postgresql://...``,
        ``s3://...``, in any order, each at most once."""
        folder: Path | None = None
        index: IndexSpec | None = None
        store: StoreSpec | None = None
        for part in parts:
            if part.startswith("s3://"):
                if store is not None:
                    raise InvalidRequestError(f"two stores given: {part!r}")
                store = StoreSpec.from_url(part)
            elif (spec := _index_spec(part)) is not None:
                if index is not None:
                    raise InvalidRequestError("two indexes given")
                index = spec
            else:
                if folder is not None:
                    raise InvalidRequestError(f"two folders given: {folder} and {part}")
                folder = Path(part)
        if folder is None and (index is None or store is None):
            raise InvalidRequestError(
                "an archive without a folder needs both its index and its store",
                hint="give postgresql://... and s3://..., or the archive's folder")
        return cls(folder, index, store)

    def __str__(self) -> str:
        shown = [str(p) for p in (self.folder, self.index) if p is not None]
        if self.store is not None:
            shown.append(str(dict(self.store.settings).get("bucket", self.store)) + "/"
                         + str(dict(self.store.settings).get("prefix", "")))
        return " ".join(shown)


def _index_spec(text: str) -> IndexSpec | None:
    """The index ``text`` names (a URL or a libpq keyword string), or None (a folder)."""
    try:
        return IndexSpec.parse(text)
    except UnknownIndexError:
        return None


@dataclass(slots=True)
class MigrateReport:
    """What a migration did; :attr:`mismatches` empty means every instance verified."""

    instances: int = 0
    """Instances in the source."""
    copied: int = 0
    """Copied by this run."""
    present: int = 0
    """Found in the target already (an earlier run, or stored there), verified."""
    bytes_copied: int = 0
    """Bytes of stored data (codestreams, kept objects, headers) copied by this run."""
    series: int = 0
    """Series whose query answers were compared."""
    seconds: float = 0.0
    """Duration."""
    mismatches: list[tuple[str, str]] = field(default_factory=list)
    """(SOP Instance UID or series, reason): not copied, or not verified."""

    @property
    def exit_code(self) -> int:
        """0: everything copied and verified; 1: some instance was not."""
        return 1 if self.mismatches else 0

    def to_dict(self) -> dict[str, Any]:
        return {"instances": self.instances, "copied": self.copied, "present": self.present,
                "bytes_copied": self.bytes_copied, "series": self.series,
                "seconds": round(self.seconds, 3),
                "mismatches": [{"uid": u, "reason": r} for u, r in self.mismatches]}

    def to_text(self) -> str:
        rate = self.copied / self.seconds if self.seconds else 0.0
        mb = self.bytes_copied / 1e6
        lines = [f"instances  {self.instances} in the source: {self.copied} copied, "
                 f"{self.present} already in the target",
                 f"series     {self.series} compared",
                 f"copied     {mb:.1f} MB in {self.seconds:.2f} s ({rate:.1f} inst/s, "
                 f"{mb / self.seconds if self.seconds else 0.0:.1f} MB/s)",
                 f"verified   {self.copied + self.present} of {self.instances}; "
                 f"{len(self.mismatches)} mismatches"]
        lines += [f"  MISMATCH {uid}: {reason}" for uid, reason in self.mismatches]
        return "\n".join(lines)


@dataclass(slots=True)
class _Item:
    """One instance in flight: the source's record and data."""

    rec: InstanceRecord
    header: bytes
    data: list[bytes] = field(default_factory=list)
    """Codestreams (frames) or ``[object]`` (kept as received)."""
    problem: str | None = None
    existing: InstanceRecord | None = None


class _Side:
    """An opened archive: its index, store and reader (and what to close)."""

    def __init__(self, index: Index, store: FrameStore, config: ArchiveConfig,
                 archive: Archive | None = None, temp: Path | None = None):
        self.index, self.store, self.archive, self.temp = index, store, archive, temp
        self.reader = Reader(store, index, config.limits)

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()
        else:
            self.index.close()
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)


def _open_source(end: Endpoint, config: ArchiveConfig) -> _Side:
    """The source, read-only: nothing of it is ever written."""
    if end.folder is not None:
        archive = Archive(end.folder, config, readonly=True, store=end.store,
                          index=end.index)
        return _Side(archive.index, archive.store_, config, archive)
    assert end.index is not None and end.store is not None
    index = end.index.open(readonly=True)
    try:
        return _Side(index, end.store.open(), config)
    except BaseException:
        index.close()
        raise


def _open_target(end: Endpoint, config: ArchiveConfig) -> _Side:
    """The target, through :class:`Archive` (its writer lock, store claim and recovery);
    without a folder (PostgreSQL + S3) a private temporary front-end folder."""
    temp = None
    folder = end.folder
    if folder is None:
        temp = folder = Path(tempfile.mkdtemp(prefix="pacscore-migrate-"))
    try:
        archive = Archive(folder, config, store=end.store, index=end.index)
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    if not archive.writable:
        archive.close()
        raise ArchiveStorageError(f"{folder} is being written by another process",
                                  hint="stop it (pacscore serve) and migrate again")
    return _Side(archive.index, archive.store_, config, archive, temp)


def _same(a: Endpoint, b: Endpoint) -> bool:
    def resolved(p: Path | None) -> Path | None:
        return p.resolve() if p is not None else None
    return ((a.folder is not None and resolved(a.folder) == resolved(b.folder))
            or (a.index is not None and a.index == b.index)
            or (a.store is not None and a.store == b.store))


def migrate(source: Endpoint, target: Endpoint, *, config: ArchiveConfig | None = None,
            batch: int = 32, threads: int = 2, part: tuple[int, int] | None = None
            ) -> MigrateReport:
    """Copy every instance of ``source`` into ``target`` and verify it (module docstring).

    ``part``: ``(i, n)`` takes only the instances of part ``i`` of ``n`` (1-based; by a
    hash of the SOP Instance UID), so that ``n`` processes, on as many hosts, share a
    big migration into a target several processes may write (PostgreSQL + S3); the
    series are then not compared (each spans the parts).

    Raises
    ------
    InvalidRequestError
        Source and target share a folder, an index or a store.
    PacsError
        An archive cannot be opened, or the target cannot be written (what was
        committed before stays, verified; run again to finish).
    """
    if _same(source, target):
        raise InvalidRequestError("the source and the target share a folder, an index or "
                                  "a store", hint="migrate into another archive")
    if part is not None and not 1 <= part[0] <= part[1]:
        raise InvalidRequestError(f"no part {part[0]} of {part[1]}",
                                  hint="give I/N with 1 <= I <= N")
    config = config or ArchiveConfig(prepare_workers=0)
    report = MigrateReport()
    started = time.monotonic()
    src = _open_source(source, config)
    try:
        dst = _open_target(target, config)
        try:
            committer = Committer(dst.index, dst.store, dst.reader, lambda _: None)
            with ThreadPoolExecutor(max(threads, 1)) as pool:
                loading: list[Future[_Item]] = []
                for items in _batches(src, dst, max(batch, 1), part):
                    # the next batch is read while this one commits (S3 PUTs, the index)
                    previous, loading = loading, [pool.submit(_load, src, it) for it in items]
                    if previous:
                        _copy_batch(previous, dst, committer, pool, report)
                if loading:
                    _copy_batch(loading, dst, committer, pool, report)
            if part is None:
                _compare_series(src, dst, report)
        finally:
            dst.close()
    finally:
        src.close()
    report.seconds = time.monotonic() - started
    return report


BATCH_BYTES = 256 << 20
"""Stored bytes a batch holds in memory at most (beyond its first instance): big
multi-frame objects make small batches."""


def in_part(sop_instance_uid: str, part: tuple[int, int] | None) -> bool:
    """The instance belongs to ``part`` (``(i, n)``, 1-based; None: the whole)."""
    if part is None:
        return True
    digest = hashlib.sha256(sop_instance_uid.encode()).digest()
    return int.from_bytes(digest[:8], "big") % part[1] == part[0] - 1


def _batches(src: _Side, dst: _Side, size: int, part: tuple[int, int] | None = None
             ) -> Iterator[list[_Item]]:
    items: list[_Item] = []
    held = 0
    for rec in src.index.records():
        if not in_part(rec.sop_instance_uid, part):
            continue
        header = src.index.header(rec.sop_instance_uid) if rec.kind == StoreKind.FRAMES \
            else b""
        if items and held + rec.bytes_stored > BATCH_BYTES:
            yield items
            items, held = [], 0
        items.append(_Item(rec, header, existing=dst.index.get(rec.sop_instance_uid)))
        held += rec.bytes_stored
        if len(items) >= size:
            yield items
            items, held = [], 0
    if items:
        yield items


def _read(side: _Side, rec: InstanceRecord) -> list[bytes]:
    """The data ``rec`` names as stored: codestreams, or the kept object."""
    if rec.kind == StoreKind.BLOB:
        return [side.store.read_blob(rec.location)]
    assert rec.layout is not None
    layout = PixelLayout.from_dict(rec.layout)
    return side.store.read_frames(rec.location, list(range(layout.frames)),
                                  2 + (layout.samples > 1) + 1)


def _check(rec: InstanceRecord, data: list[bytes]) -> str | None:
    """Why stored data does not match its record's checksums, or None."""
    if rec.kind == StoreKind.BLOB:
        return None if hashlib.sha256(data[0]).hexdigest() == rec.sha256 else \
            "the object kept as received does not match its SHA-256"
    assert rec.layout is not None
    layout = PixelLayout.from_dict(rec.layout)
    codec = by_syntax(rec.stored_syntax)
    if codec is None:
        return f"no decoder for {rec.stored_syntax}"
    try:
        decoded = [codec.decode(s, layout) for s in data]
    except Exception as exc:  # noqa: BLE001 - codec libraries raise their own types:
        # a damaged frame, reported
        return f"a stored frame does not decode ({type(exc).__name__}: {exc})"
    return crc_problem(decoded, rec.frame_crc32)


def _load(src: _Side, item: _Item) -> _Item:
    """Read and check the source's data of ``item`` (in a pool thread)."""
    try:
        item.data = _read(src, item.rec)
    except PacsError as exc:  # unreadable now (a missing object, S3 failing): a later
        item.problem = f"cannot read the source, not copied: {exc.reason}"  # run retries
        return item
    except Exception as exc:  # noqa: BLE001 - one instance's damage, reported
        item.problem = f"cannot read the source, not copied: {type(exc).__name__}: {exc}"
        return item
    problem = _check(item.rec, item.data)
    if problem:
        item.problem = f"source damaged, not copied: {problem}"
    return item


def _copy_batch(loading: list[Future[_Item]], dst: _Side, committer: Committer,
                pool: ThreadPoolExecutor, report: MigrateReport) -> None:
    """Stage and commit a batch whose source data is being read, then verify it."""
    items = [f.result() for f in loading]
    report.instances += len(items)
    fresh: list[Prepared] = []
    for item in items:
        if item.problem:
            report.mismatches.append((item.rec.sop_instance_uid, item.problem))
        elif item.existing is None:
            fresh.append(_stage(item, dst))
    outcomes = committer.commit(fresh) if fresh else []
    committed = {p.record.sop_instance_uid for p, o in zip(fresh, outcomes, strict=True)
                 if not isinstance(o, Rejected) and o.status == "stored"}
    refused = {p.record.sop_instance_uid: o.reason for p, o in zip(fresh, outcomes, strict=True)
               if isinstance(o, Rejected)}
    report.mismatches += [(sop, f"not copied: {why}") for sop, why in refused.items()]
    # verified: what the target holds of the rest (a duplicate another writer stored
    # since the presence check included)
    todo = [it for it in items if not it.problem and it.rec.sop_instance_uid not in refused
            and (it.existing is not None or it.rec.sop_instance_uid in committed
                 or dst.index.get(it.rec.sop_instance_uid) is not None)]
    for item, problem in zip(todo, pool.map(lambda it: _verify(it, dst), todo), strict=True):
        sop = item.rec.sop_instance_uid
        if problem:
            report.mismatches.append((sop, problem))
        elif sop in committed:
            report.copied += 1
            report.bytes_copied += sum(map(len, item.data)) + len(item.header)
        else:
            report.present += 1


def _stage(item: _Item, dst: _Side) -> Prepared:
    """Stage the source's data unchanged under a fresh location of the target."""
    rec = replace(item.rec, location=new_location())
    if rec.kind == StoreKind.BLOB:
        dst.store.stage_blob(rec.location, item.data[0])
    else:
        assert rec.layout is not None
        dst.store.stage_frames(rec.location, PixelLayout.from_dict(rec.layout),
                               rec.stored_syntax, item.data)
    return Prepared(rec, item.header, f"migrate:{rec.sop_instance_uid}")


def _verify(item: _Item, dst: _Side) -> str | None:
    """Why the target's copy of ``item`` is not the source's, or None."""
    sop = item.rec.sop_instance_uid
    try:
        rec = dst.index.get(sop)
        if rec is None:
            return "not in the target after its commit"
        differ = [f for f in _IDENTITY if getattr(rec, f) != getattr(item.rec, f)]
        if differ:
            if rec.sha256 != item.rec.sha256:
                return f"the target holds other content under this UID ({differ[0]} differs)"
            # the same object, stored otherwise by the target (another codec): its
            # pixels must still decode to the source's CRC-32s
            problem = _check(rec, _read(dst, rec))
            return f"the target's copy is damaged: {problem}" if problem else None
        if rec.kind == StoreKind.FRAMES and dst.index.header(sop) != item.header:
            return "header bytes differ in the target"
        copy = _read(dst, rec)
        if len(copy) != len(item.data):
            return f"{len(copy)} frames in the target, {len(item.data)} in the source"
        for i, (a, b) in enumerate(zip(copy, item.data, strict=True)):
            if a != b:
                return f"frame {i} differs in the target" if rec.kind == StoreKind.FRAMES \
                    else "the kept object differs in the target"
    except PacsError as exc:
        return f"cannot read the target's copy: {exc.reason}"
    except Exception as exc:  # noqa: BLE001 - one instance's damage, reported
        return f"cannot read the target's copy: {type(exc).__name__}: {exc}"
    return None


def _compare_series(src: _Side, dst: _Side, report: MigrateReport) -> None:
    """Each source series' query answer against the target's (when the target holds
    exactly the same instances of it: otherwise its counts differ by design)."""
    bad = {uid for uid, _ in report.mismatches}
    seen: set[str] = set()
    for row in src.index.find("series", {}):
        uid = str(row.get("SeriesInstanceUID", ""))
        if not uid or uid in seen:
            continue
        seen.add(uid)
        mine = set(src.index.instances("series", uid))
        if mine & bad:
            continue  # reported per instance already
        theirs = set(dst.index.instances("series", uid))
        if not mine <= theirs:
            report.mismatches.append((f"series {uid}", f"{len(mine - theirs)} instances "
                                                       f"missing in the target"))
            continue
        if mine != theirs:
            continue
        report.series += 1
        with contextlib.suppress(IndexError):
            other = dst.index.find("series", {"SeriesInstanceUID": uid})[0]
            if other != row:
                keys = sorted(k for k in set(row) | set(other) if row.get(k) != other.get(k))
                report.mismatches.append((f"series {uid}", f"query answers differ in "
                                                           f"{', '.join(keys)}"))
