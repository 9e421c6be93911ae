"""The FrameStore contract.

A store keeps two kinds of object under an opaque *location* id chosen by the
archive (never derived from a UID): a frame array (one codestream per frame) and a
blob (an object kept exactly as received).  Writes go to a staging area first;
:meth:`FrameStore.publish` makes a batch durable and visible in one step, so a crash
leaves at most staged files, which :meth:`FrameStore.clean_staging` removes.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from ..dicom.header import PixelLayout
from ..errors import ArchiveStorageError

__all__ = ["FrameStore", "validate_location"]

_LOCATION = re.compile(r"^[0-9a-f]{32}$")


def validate_location(loc: str) -> str:
    """Return ``loc`` if it is a location id (32 lowercase hex digits)."""
    if not _LOCATION.fullmatch(loc):
        raise ArchiveStorageError(f"invalid storage location id {loc[:40]!r}")
    return loc


class FrameStore(ABC):
    """Where frames and kept objects live."""

    @abstractmethod
    def stage_frames(self, loc: str, layout: PixelLayout, transfer_syntax: str,
                     frames: Sequence[bytes]) -> int:
        """Write one instance's codestreams to staging; return bytes written."""

    @abstractmethod
    def stage_blob(self, loc: str, data: bytes) -> int:
        """Write an object kept as received to staging; return bytes written."""

    @abstractmethod
    def make_durable(self, loc: str) -> None:
        """Flush one staged location to disk now, from the thread or process that staged
        it, so that publishing it needs no file-system-wide flush."""

    @abstractmethod
    def publish(self, locs: Sequence[str], *, durable: bool = False) -> None:
        """Make staged locations durable and visible (all of them, or raise);
        ``durable``: every one of them went through :meth:`make_durable` already."""

    @abstractmethod
    def discard(self, locs: Sequence[str]) -> None:
        """Forget staged locations that will not be published."""

    @abstractmethod
    def read_frames(self, loc: str, indices: Sequence[int], ndim: int) -> list[bytes]:
        """Codestreams of the given frames of a published frame array."""

    @abstractmethod
    def read_blob(self, loc: str) -> bytes:
        """A published blob."""

    @abstractmethod
    def delete(self, locs: Sequence[str]) -> None:
        """Remove published locations (missing ones are ignored)."""

    @abstractmethod
    def exists(self, loc: str) -> bool:
        """A published location exists."""

    @abstractmethod
    def locations(self) -> Iterator[str]:
        """Every published location."""

    @abstractmethod
    def clean_staging(self) -> int:
        """Remove everything staged (crash leftovers); return how many entries."""
