"""The FrameStore contract.

A store keeps two kinds of object under an opaque *location* id chosen by the
archive (never derived from a UID): a frame array (one codestream per frame) and a
blob (an object kept exactly as received).  Writes go to a staging area first and
are made durable there (:meth:`FrameStore.make_durable` one by one, or
:meth:`FrameStore.flush` for a batch); the archive's index then takes ownership of
them, :meth:`FrameStore.publish` renames them into place and
:meth:`FrameStore.sync_published` makes the renames durable.  Reads look in the
staging area too, for the moment between the index transaction and the rename.
After a crash, start-up recovery publishes the staged locations the index owns
(:meth:`FrameStore.staged`) and removes the rest (:meth:`FrameStore.clean_staging`).

A store without a staging area of its own (:attr:`FrameStore.staging_area` false: the
S3 store, where objects cannot be renamed) writes to the final places at once; the
index alone makes a location the archive's.  It knows what is staged only in the
process that staged it, :meth:`FrameStore.discard` removes what it is given, and what
a crash left staged is an orphan for garbage collection (:mod:`pacscore.gc`).
"""

from __future__ import annotations

import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Protocol, runtime_checkable

from ..dicom.layout import PixelLayout
from ..errors import ArchiveStorageError

__all__ = ["Claimable", "Collectable", "FrameStore", "StoredLocation", "location_age",
           "new_location", "validate_location"]

_LOCATION = re.compile(r"^[0-9a-f]{32}$")


def new_location() -> str:
    """A fresh opaque location id (never derived from a UID): 80 random bits, then the
    creation time in milliseconds since the epoch (12 hex digits).  Random first, so
    the ``<ab>`` folders and key prefixes the stores derive from the first digits
    spread writes evenly (S3 partitions by key prefix)."""
    return f"{secrets.token_hex(10)}{int(time.time() * 1000) & 0xFFFF_FFFF_FFFF:012x}"


def location_age(loc: str) -> float | None:
    """Seconds since :func:`new_location` made ``loc`` (by this host's clock), or None
    when its time is not in the last hour (ids of earlier versions were random: their
    last digits read as a time in that hour about once in 10^8)."""
    age = time.time() - int(loc[20:], 16) / 1000
    return age if 0 <= age <= 3600 else None


def validate_location(loc: str) -> str:
    """Return ``loc`` if it is a location id (32 lowercase hex digits)."""
    if not _LOCATION.fullmatch(loc):
        raise ArchiveStorageError(f"invalid storage location id {loc[:40]!r}")
    return loc


class FrameStore(ABC):
    """Where frames and kept objects live."""

    staging_area: ClassVar[bool] = True
    """Staged locations are kept apart from published ones for every process and
    across a crash (a staging folder): :meth:`staged` lists another process's too,
    and :meth:`discard` leaves a published location alone.  False: see the module
    docstring."""

    @abstractmethod
    def stage_frames(self, loc: str, layout: PixelLayout, transfer_syntax: str,
                     frames: Sequence[bytes]) -> int:
        """Write one instance's codestreams to staging; return bytes written."""

    @abstractmethod
    def stage_blob(self, loc: str, data: bytes) -> int:
        """Write an object kept as received to staging; return bytes written."""

    @abstractmethod
    def make_durable(self, loc: str) -> None:
        """Flush one staged location to disk now, in the process that staged it, so
        that publishing it needs no file-system-wide flush."""

    @abstractmethod
    def flush(self, locs: Sequence[str]) -> None:
        """Make a batch of staged locations durable at once (bulk imports)."""

    def handoff(self, loc: str) -> None:  # noqa: B027 - optional, nothing to do by default
        """Called in a worker process before it hands the staged ``loc`` to the process
        that commits it (which then calls :meth:`flush`): a store that writes in the
        background (the S3 store) finishes the writes of ``loc`` here, raising what
        staging would have raised; one that writes before ``stage_*`` returns has
        nothing to do."""

    @abstractmethod
    def publish(self, locs: Sequence[str]) -> None:
        """Move durable staged locations into place (all of them, or raise); fast, as
        it runs under the archive's commit lock: nothing is flushed here."""

    @abstractmethod
    def sync_published(self, locs: Sequence[str]) -> None:
        """Make the moves of :meth:`publish` durable (before they are acknowledged;
        outside the commit lock, so concurrent commits do not queue behind it)."""

    @abstractmethod
    def discard(self, locs: Sequence[str]) -> None:
        """Forget staged locations that will not be published."""

    def close(self) -> None:  # noqa: B027 - optional, nothing to do by default
        """Finish what runs in the background (the S3 store's removals of an earlier
        version's staging markers after :meth:`publish`); the store stays usable."""

    @abstractmethod
    def read_frames(self, loc: str, indices: Sequence[int], ndim: int) -> list[bytes]:
        """Codestreams of the given frames of a frame array (published or staged)."""

    @abstractmethod
    def read_blob(self, loc: str) -> bytes:
        """A blob (published or staged)."""

    @abstractmethod
    def delete(self, locs: Sequence[str]) -> None:
        """Remove published locations (missing ones are ignored)."""

    @abstractmethod
    def exists(self, loc: str) -> bool:
        """A location can be read (published or staged)."""

    @abstractmethod
    def locations(self) -> Iterator[str]:
        """Every published location."""

    @abstractmethod
    def staged(self) -> list[str]:
        """Locations in the staging area (entries that are not locations excluded)."""

    @abstractmethod
    def clean_staging(self) -> int:
        """Remove everything staged (crash leftovers); return how many entries."""


@dataclass(frozen=True, slots=True)
class StoredLocation:
    """What a store holds of one location (for garbage collection)."""

    location: str
    """The location id."""
    keys: tuple[str, ...]
    """Its objects' keys in the store (an earlier version's staging marker included)."""
    newest: datetime
    """Last-modified time (UTC) of its newest object."""
    size: int
    """Bytes of all its objects."""
    staged: bool
    """It is still staged (not published)."""


@runtime_checkable
class Collectable(Protocol):
    """A store that can hold objects no committed record names outside a staging area
    that start-up cleans (an object store, where several writers may share a bucket and
    a crash can fall between a PUT and the index commit): ``pacscore gc`` lists and
    removes them (:mod:`pacscore.gc`)."""

    def inventory(self) -> Iterator[StoredLocation]:
        """Every location with objects in the store, staged or published."""
        ...

    def remove_objects(self, keys: Sequence[str]) -> None:
        """Delete these objects (missing ones are ignored)."""
        ...


@runtime_checkable
class Claimable(Protocol):
    """A store that several archives could point at (a bucket prefix): it records which
    archive it belongs to (:func:`pacscore.store.spec.claim_store`)."""

    def claim(self, archive_id: str, *, create: bool) -> None:
        """Record ``archive_id`` as the owner when none is (``create``); raise
        :class:`~pacscore.errors.ArchiveStorageError` when another archive owns it."""
        ...
