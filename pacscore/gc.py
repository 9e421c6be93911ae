"""Garbage collection of a frame store's orphans (issue 17.1, ``pacscore gc``).

An *orphan* is a location whose objects no committed index record names: a crash
between the PUTs of an instance and its index commit, a delete that stopped midway,
or leftovers of another writer of the same bucket.  The rules:

- a location the index names (:meth:`~pacscore.index.Index.location_owner`) is never
  touched, staged or not, whatever its age;
- an unnamed location is removed only when its *newest* object is older than the grace
  period (default one hour): an ingest still uploading, or about to commit, keeps its
  objects young; ownership is asked again just before each removal;
- a frame array's metadata goes first (a writer publishing a location older than a
  minute checks it is there) and an earlier version's staging marker last, so an
  interrupted collection leaves what it finds again.

A writer that stalls longer than the grace period between its last PUT and its index
commit could lose its staged objects to a concurrent collection: choose a grace far
longer than any commit can take (an hour against seconds).  Writers check that their
staging is still there before publishing only for locations older than a minute
(:data:`pacscore.store.object_store.UNCHECKED_AGE`): a grace shorter than that is for an
archive nobody writes meanwhile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .errors import InvalidRequestError
from .index import Index
from .store import Collectable, FrameStore

__all__ = ["DEFAULT_GRACE", "GcReport", "collect_garbage", "parse_duration"]

DEFAULT_GRACE = timedelta(hours=1)
"""How old an unnamed location's newest object must be before it is collected."""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` as a timedelta."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise InvalidRequestError(f"invalid duration {text!r}: give a number with s, m, h "
                                  f"or d (e.g. 1h, 30m, 0)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


@dataclass(slots=True)
class GcReport:
    """What :func:`collect_garbage` found and did."""

    locations: int = 0
    """Locations with objects in the store."""
    owned: int = 0
    """Of those, named by a committed record (kept)."""
    young: int = 0
    """Unnamed but younger than the grace period (kept)."""
    removed: list[str] = field(default_factory=list)
    """Unnamed locations removed (or, in a dry run, that would be)."""
    objects_removed: int = 0
    """Their objects."""
    bytes_removed: int = 0
    """Their bytes."""
    dry_run: bool = False
    """Nothing was deleted."""

    def to_dict(self) -> dict[str, object]:
        return {"locations": self.locations, "owned": self.owned, "young": self.young,
                "removed": self.removed, "objects_removed": self.objects_removed,
                "bytes_removed": self.bytes_removed, "dry_run": self.dry_run}


def collect_garbage(index: Index, store: FrameStore, *, grace: timedelta = DEFAULT_GRACE,
                    dry_run: bool = False, now: datetime | None = None) -> GcReport:
    """Remove the locations of ``store`` that no record of ``index`` names and whose
    newest object is older than ``grace`` (see the module docstring).

    Raises
    ------
    InvalidRequestError
        The store keeps no orphans outside its staging area (the local Zarr store:
        start-up recovery cleans that).
    """
    if not isinstance(store, Collectable):
        raise InvalidRequestError(
            f"{type(store).__name__} keeps nothing to collect: its staging area is cleaned "
            f"when the archive's writer starts",
            hint="pacscore gc is for archives whose frames are in object storage (S3)")
    if grace < timedelta(0):
        raise InvalidRequestError("the grace period cannot be negative")
    report = GcReport(dry_run=dry_run)
    now = now or datetime.now(UTC)
    for item in store.inventory():
        report.locations += 1
        if index.location_owner(item.location) is not None:
            report.owned += 1
            continue
        if now - item.newest < grace:
            report.young += 1
            continue
        if index.location_owner(item.location) is not None:  # committed meanwhile
            report.owned += 1
            continue
        if not dry_run:
            store.remove_objects(item.keys)
        report.removed.append(item.location)
        report.objects_removed += len(item.keys)
        report.bytes_removed += item.size
    return report
