"""A FrameStore registered by tests: records every call, delegates to ZarrFrameStore.

It subclasses only :class:`~pacscore.store.FrameStore` (not ZarrFrameStore): whoever
stages through it uses the contract and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from pacscore.dicom.layout import PixelLayout
from pacscore.store import FrameStore, ZarrFrameStore


class RecordingStore(FrameStore):
    """Appends ``<pid> <method>`` to the file ``log`` for each call (any process)."""

    def __init__(self, root: str, log: str, fsync: bool = True, create: bool = True):
        self.inner = ZarrFrameStore(root, fsync=fsync, create=create)
        self.log = log

    def _note(self, method: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {method}\n")

    def stage_frames(self, loc: str, layout: PixelLayout, transfer_syntax: str,
                     frames: Sequence[bytes]) -> int:
        self._note("stage_frames")
        return self.inner.stage_frames(loc, layout, transfer_syntax, frames)

    def stage_blob(self, loc: str, data: bytes) -> int:
        self._note("stage_blob")
        return self.inner.stage_blob(loc, data)

    def make_durable(self, loc: str) -> None:
        self._note("make_durable")
        self.inner.make_durable(loc)

    def flush(self, locs: Sequence[str]) -> None:
        self._note("flush")
        self.inner.flush(locs)

    def publish(self, locs: Sequence[str]) -> None:
        self._note("publish")
        self.inner.publish(locs)

    def sync_published(self, locs: Sequence[str]) -> None:
        self._note("sync_published")
        self.inner.sync_published(locs)

    def discard(self, locs: Sequence[str]) -> None:
        self._note("discard")
        self.inner.discard(locs)

    def read_frames(self, loc: str, indices: Sequence[int], ndim: int) -> list[bytes]:
        self._note("read_frames")
        return self.inner.read_frames(loc, indices, ndim)

    def read_blob(self, loc: str) -> bytes:
        self._note("read_blob")
        return self.inner.read_blob(loc)

    def delete(self, locs: Sequence[str]) -> None:
        self._note("delete")
        self.inner.delete(locs)

    def exists(self, loc: str) -> bool:
        return self.inner.exists(loc)

    def locations(self) -> Iterator[str]:
        return self.inner.locations()

    def staged(self) -> list[str]:
        return self.inner.staged()

    def clean_staging(self) -> int:
        self._note("clean_staging")
        return self.inner.clean_staging()


def calls(log: str) -> list[tuple[int, str]]:
    """The recorded ``(pid, method)`` calls."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [(int(pid), method) for pid, method in (line.split() for line in f)]
