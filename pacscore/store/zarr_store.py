"""FrameStore on a directory of Zarr v3 arrays, one array per instance.

Layout (``root`` is the archive's ``frames`` directory)::

    arrays/<ab>/<loc>/zarr.json        array metadata, codec pacscore.dicom_frame
    arrays/<ab>/<loc>/c.<f>.0.0[.0]    frame f: exactly one DICOM codestream
                                       (earlier builds: c/<f>/0/0[/0], still read)
    blobs/<ab>/<loc>                   an object kept as received
    staging/<loc>                      not yet published (removed at start-up)

Chunks are written as plain files (the zarr Array API costs 3-9 ms per chunk here,
FACTS.md); the metadata is what ``zarr.create_array`` writes, so ``zarr.open`` reads
the arrays.  Durability, bulk: one ``syncfs`` for a whole batch (``flush``) instead of
an fsync per file.  Single stores from the network: the worker that staged an instance
fsyncs its few files and folders (``make_durable``, in parallel, off the commit path;
in a thread while it verifies the codestreams), so concurrent clients do not queue
behind file-system-wide flushes.  Publishing
renames (under the archive's commit lock, after the index owns the locations) and
``sync_published`` fsyncs the folders renamed into, outside that lock; start-up
recovery redoes a rename that a crash undid.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..codecs.zarr_codec import CODEC_NAME
from ..dicom.layout import PixelLayout
from ..durability import fsync_path, sync_filesystem
from ..errors import ArchiveStorageError, NotFoundError
from .base import FrameStore, validate_location

__all__ = ["ZarrFrameStore"]

log = logging.getLogger(__name__)


_FSYNCS_BEFORE_SYNCFS = 4
"""Folders renamed into by one batch that are flushed one by one; more take one
``syncfs`` (a bulk batch of 32 spreads over ~30 of the 256 <ab> folders: an fsync per
instance otherwise; a group commit of single stores stays with its few fsyncs)."""


def _is_location(name: str) -> bool:
    try:
        validate_location(name)
    except ArchiveStorageError:
        return False
    return True


def _storage_error(exc: OSError, what: str) -> ArchiveStorageError:
    if exc.errno == errno.ENOSPC:
        return ArchiveStorageError(f"disk full while {what}")
    return ArchiveStorageError(f"{what} failed: {exc}")


def array_metadata(layout: PixelLayout, transfer_syntax: str) -> dict[str, object]:
    """The zarr.json of one instance's frame array."""
    shape = [layout.frames, layout.rows, layout.columns]
    if layout.samples > 1:
        shape.append(layout.samples)
    return {
        "shape": shape,
        "data_type": layout.dtype.name,
        "chunk_grid": {"name": "regular",
                       "configuration": {"chunk_shape": [1, *shape[1:]]}},
        # Chunk keys "c.0.0.0" (zarr v3 default encoding, "." separator): the chunk
        # files sit in the array's folder; "/" cost three more folders per instance to
        # create and flush (ext4 inode allocation was a tenth of a C-STORE's CPU).
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
        "fill_value": 0,
        "codecs": [{"name": CODEC_NAME, "configuration": {
            "transfer_syntax": transfer_syntax,
            "bits_stored": layout.bits_stored,
            "photometric": layout.photometric,
        }}],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


class ZarrFrameStore(FrameStore):
    """Zarr v3 arrays and blobs under one directory."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True,
                 create: bool = True):
        """``create=False``: a reader's store, which makes no folder (read-only mounts)."""
        self.root = Path(root)
        self.fsync = fsync
        self.arrays = self.root / "arrays"
        self.blobs = self.root / "blobs"
        self.staging = self.root / "staging"
        for d in (self.arrays, self.blobs, self.staging) if create else ():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- paths -------------------------------------------------------------------
    def array_path(self, loc: str) -> Path:
        """Directory of the published frame array ``loc``."""
        return self.arrays / validate_location(loc)[:2] / loc

    def _blob_path(self, loc: str) -> Path:
        return self.blobs / validate_location(loc)[:2] / loc

    @staticmethod
    def _chunk_key(index: int, ndim: int, separator: str = ".") -> str:
        return separator.join(["c", str(index), *(["0"] * (ndim - 1))])

    # -- writes ------------------------------------------------------------------
    def stage_frames(self, loc: str, layout: PixelLayout, transfer_syntax: str,
                     frames: Sequence[bytes]) -> int:
        base = self.staging / validate_location(loc)
        ndim = 3 if layout.samples == 1 else 4
        try:
            base.mkdir()
            meta = json.dumps(array_metadata(layout, transfer_syntax)).encode()
            (base / "zarr.json").write_bytes(meta)
            written = len(meta)
            for i, data in enumerate(frames):
                (base / self._chunk_key(i, ndim)).write_bytes(data)
                written += len(data)
        except OSError as exc:
            raise _storage_error(exc, "writing frames") from exc
        return written

    def stage_blob(self, loc: str, data: bytes) -> int:
        try:
            (self.staging / validate_location(loc)).write_bytes(data)
        except OSError as exc:
            raise _storage_error(exc, "writing an object") from exc
        return len(data)

    def make_durable(self, loc: str) -> None:
        path = self.staging / validate_location(loc)
        if not self.fsync:
            return
        try:
            if path.is_dir():
                for folder, _, files in os.walk(path):
                    for name in files:
                        fsync_path(Path(folder, name))
                    fsync_path(Path(folder))  # its entries
            else:
                fsync_path(path)
            fsync_path(self.staging)  # its entry: the index may own it before the rename
        except OSError as exc:
            raise _storage_error(exc, "flushing staged frames") from exc

    def flush(self, locs: Sequence[str]) -> None:
        if not locs or not self.fsync:
            return
        try:
            sync_filesystem(self.staging)  # one flush for the whole batch
        except OSError as exc:
            raise _storage_error(exc, "flushing staged frames") from exc

    def publish(self, locs: Sequence[str]) -> None:
        try:
            moves = []
            for loc in locs:
                src = self.staging / validate_location(loc)
                moves.append((src, self.array_path(loc) if src.is_dir()
                              else self._blob_path(loc)))
            # New <ab> folders (in a young archive nearly every location makes one):
            # made, then made durable with one fsync of arrays/ (blobs/) per batch.
            new = {dest.parent for _, dest in moves if not dest.parent.is_dir()}
            for folder in new:
                folder.mkdir(parents=True, exist_ok=True)
            for top in {folder.parent for folder in new} if self.fsync else ():
                fsync_path(top)
            for src, dest in moves:
                if dest.exists():  # only after a crash left both names: keep both
                    self._set_aside(src)
                    continue
                os.replace(src, dest)
        except FileNotFoundError as exc:
            raise ArchiveStorageError(f"staged data vanished before publishing: {exc}") from exc
        except OSError as exc:
            raise _storage_error(exc, "publishing frames") from exc

    def _set_aside(self, src: Path) -> None:
        aside = self.root / "lost+found"
        aside.mkdir(exist_ok=True)
        os.replace(src, aside / src.name)
        log.warning("%s was staged and published both; the staged copy was moved to %s "
                    "(compare and remove it by hand)", src.name, aside)

    def sync_published(self, locs: Sequence[str]) -> None:
        paths = [p for loc in locs for p in (self.array_path(loc), self._blob_path(loc))]
        if not self.fsync:
            return
        folders = {p.parent for p in paths if p.exists()}
        try:
            if len(folders) > _FSYNCS_BEFORE_SYNCFS:  # a bulk batch over many <ab> folders:
                sync_filesystem(self.arrays)  # one flush (its data is flushed already)
                return
            for folder in sorted(folders):
                fsync_path(folder)
        except OSError as exc:
            raise _storage_error(exc, "flushing published frames") from exc

    def discard(self, locs: Sequence[str]) -> None:
        for loc in locs:
            path = self.staging / validate_location(loc)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def delete(self, locs: Sequence[str]) -> None:
        for loc in locs:
            shutil.rmtree(self.array_path(loc), ignore_errors=True)
            self._blob_path(loc).unlink(missing_ok=True)

    def staged(self) -> list[str]:
        return [p.name for p in self.staging.iterdir() if _is_location(p.name)]

    def clean_staging(self) -> int:
        entries = list(self.staging.iterdir())
        for path in entries:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(entries)

    # -- reads -------------------------------------------------------------------
    def _places(self, published: Path) -> tuple[Path, Path, Path]:
        """Where a location may be: in place, still staged (its index transaction
        committed, the rename not done yet), or in place again (renamed meanwhile)."""
        return published, self.staging / published.name, published

    def read_frames(self, loc: str, indices: Sequence[int], ndim: int) -> list[bytes]:
        missing = next(iter(indices), 0)
        for array in self._places(self.array_path(loc)):
            out: list[bytes] = []
            try:
                for missing in indices:
                    out.append(self._read_chunk(array, missing, ndim))
                return out
            except (FileNotFoundError, NotADirectoryError):  # (a blob is a file)
                if array.is_dir():  # the array is there, the frame is not
                    break
        raise NotFoundError(f"frame {missing} of location {loc} is missing")

    def _read_chunk(self, array: Path, index: int, ndim: int) -> bytes:
        try:
            with open(array / self._chunk_key(index, ndim), "rb") as f:
                return f.read()
        except FileNotFoundError:  # "/" separators: an array written by earlier builds
            with open(array / self._chunk_key(index, ndim, "/"), "rb") as f:
                return f.read()

    def read_blob(self, loc: str) -> bytes:
        for path in self._places(self._blob_path(loc)):
            try:
                return path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                continue
        raise NotFoundError(f"object at location {loc} is missing")

    def exists(self, loc: str) -> bool:
        return any(p.is_dir() for p in self._places(self.array_path(loc))) or any(
            p.is_file() for p in self._places(self._blob_path(loc)))

    def locations(self) -> Iterator[str]:
        for top in (self.arrays, self.blobs):
            for sub in top.iterdir():
                for entry in sub.iterdir():
                    yield entry.name
