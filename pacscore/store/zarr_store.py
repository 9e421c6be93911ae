"""FrameStore on a directory of Zarr v3 arrays, one array per instance.

Layout (``root`` is the archive's ``frames`` directory)::

    arrays/<ab>/<loc>/zarr.json        array metadata, codec pacscore.dicom_frame
    arrays/<ab>/<loc>/c.<f>.0.0[.0]    frame f: exactly one DICOM codestream
                                       (earlier builds: c/<f>/0/0[/0], still read)
    blobs/<ab>/<loc>                   an object kept as received
    staging/<loc>                      not yet published (removed at start-up)

Chunks are written as plain files (the zarr Array API costs 3-9 ms per chunk here,
FACTS.md); the metadata is what ``zarr.create_array`` writes, so ``zarr.open`` reads
the arrays.  Durability, bulk: one ``syncfs`` for a whole batch before the renames and
one after, instead of an fsync per file.  Single stores from the network: the worker
that staged an instance fsyncs its few files and folders (``make_durable``, in
parallel, off the commit path) and publishing fsyncs only the folders it renamed into,
so concurrent clients do not queue behind file-system-wide flushes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..codecs.zarr_codec import CODEC_NAME
from ..dicom.header import PixelLayout
from ..durability import fsync_path, sync_filesystem
from ..errors import ArchiveStorageError, NotFoundError
from .base import FrameStore, validate_location

__all__ = ["ZarrFrameStore"]

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

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self.arrays = self.root / "arrays"
        self.blobs = self.root / "blobs"
        self.staging = self.root / "staging"
        for d in (self.arrays, self.blobs, self.staging):
            d.mkdir(parents=True, exist_ok=True)

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
        if not self.fsync:
            return
        path = self.staging / validate_location(loc)
        try:
            if not path.is_dir():
                fsync_path(path)
                return
            for folder, _, files in os.walk(path):
                for name in files:
                    fsync_path(Path(folder, name))
                fsync_path(Path(folder))  # its entries
        except OSError as exc:
            raise _storage_error(exc, "flushing staged frames") from exc

    def publish(self, locs: Sequence[str], *, durable: bool = False) -> None:
        if not locs:
            return
        try:
            if self.fsync and not durable:
                sync_filesystem(self.staging)  # one flush for the whole batch
            touched: set[Path] = set()
            for loc in locs:
                src = self.staging / validate_location(loc)
                dest = self.array_path(loc) if src.is_dir() else self._blob_path(loc)
                if not dest.parent.is_dir():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    touched.add(dest.parent.parent)
                os.replace(src, dest)
                touched.add(dest.parent)
            if self.fsync and durable:  # contents are on disk: make the renames so
                for folder in sorted(touched, key=lambda p: -len(p.parts)):
                    fsync_path(folder)
            elif self.fsync:
                sync_filesystem(self.root)
        except FileNotFoundError as exc:
            raise ArchiveStorageError(f"staged data vanished before publishing: {exc}") from exc
        except OSError as exc:
            raise _storage_error(exc, "publishing frames") from exc

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

    def clean_staging(self) -> int:
        entries = list(self.staging.iterdir())
        for path in entries:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(entries)

    # -- reads -------------------------------------------------------------------
    def read_frames(self, loc: str, indices: Sequence[int], ndim: int) -> list[bytes]:
        array = self.array_path(loc)
        out = []
        for i in indices:
            for separator in (".", "/"):  # "/": an array written by earlier builds
                try:
                    with open(array / self._chunk_key(i, ndim, separator), "rb") as f:
                        out.append(f.read())
                    break
                except FileNotFoundError:
                    continue
            else:
                raise NotFoundError(f"frame {i} of location {loc} is missing")
        return out

    def read_blob(self, loc: str) -> bytes:
        try:
            return self._blob_path(loc).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"object at location {loc} is missing") from exc

    def exists(self, loc: str) -> bool:
        return self.array_path(loc).is_dir() or self._blob_path(loc).is_file()

    def locations(self) -> Iterator[str]:
        for top in (self.arrays, self.blobs):
            for sub in top.iterdir():
                for entry in sub.iterdir():
                    yield entry.name
