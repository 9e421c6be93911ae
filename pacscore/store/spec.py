"""A frame store as worker processes get it: a small picklable spec, opened there.

Workers stage frames through the :class:`~pacscore.store.base.FrameStore` contract
only; which implementation, and with which settings, comes from the archive as a
:class:`StoreSpec` (an object-storage store drops in by being named here, no worker
code changes).  Implementations are named by import path, as codec plugins are
(pydicom's ``pixels`` plugins): the spec imports its class in the process that opens
it, which need not have imported the archive.
"""

from __future__ import annotations

import importlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from ..errors import ArchiveStorageError, UnknownStoreError
from .base import Claimable, Collectable, FrameStore

if TYPE_CHECKING:
    from ..index.base import SharedIndex

__all__ = ["STORE_FILE", "STORE_KINDS", "Setting", "StoreSpec", "claim_store", "shared_index",
           "remembered_spec"]

STORE_FILE = "store.json"
"""The file in an archive's root naming a frame store kept elsewhere (S3)."""
REMEMBERED = ("s3",)
"""Kinds whose data lives outside the archive's root: their spec is kept in
:data:`STORE_FILE`, so every later command opens the same store."""

Setting = str | int | float | bool | None
"""A store setting: plain values only, so a spec pickles small and compares equal."""

STORE_KINDS: dict[str, str] = {
    "zarr": "pacscore.store.zarr_store:ZarrFrameStore",
    "s3": "pacscore.store.object_store:ObjectFrameStore",
}
"""Frame store kinds: name -> implementation (``module:Class``, a FrameStore whose
constructor takes the spec's settings as keyword arguments)."""


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Which FrameStore to open and how (small, hashable, picklable)."""

    implementation: str
    """The FrameStore class as ``module:Class`` (from :data:`STORE_KINDS`)."""
    settings: tuple[tuple[str, Setting], ...] = ()
    """Keyword arguments of its constructor, as sorted pairs."""

    @classmethod
    def of(cls, kind: str, **settings: Setting) -> StoreSpec:
        """The spec of a store of ``kind`` (a key of :data:`STORE_KINDS`)."""
        implementation = STORE_KINDS.get(kind)
        if implementation is None:
            raise UnknownStoreError(f"unknown frame store kind {kind!r} (known: "
                                    f"{', '.join(sorted(STORE_KINDS))})")
        return cls(implementation, tuple(sorted(settings.items())))

    @classmethod
    def from_url(cls, url: str) -> StoreSpec:
        """The spec of ``s3://bucket/prefix?endpoint=http://host:port&region=r`` (what
        ``--store`` takes); ``allow_http`` follows the endpoint's scheme unless given,
        ``timeout`` and ``retries`` may be given too.  Credentials never go in the
        URL: the store reads the standard AWS environment variables."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise UnknownStoreError(f"{url!r} is no store URL (s3://bucket/prefix?...)")
        if "@" in parts.netloc:
            raise UnknownStoreError("credentials do not belong in a store URL: set "
                                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        query = dict(parse_qsl(parts.query, strict_parsing=False))
        unknown = set(query) - {"endpoint", "region", "allow_http", "timeout", "retries"}
        if unknown:
            raise UnknownStoreError(f"unknown store URL parameter(s) {sorted(unknown)}; "
                                    f"known: endpoint, region, allow_http, timeout, retries")
        endpoint = query.get("endpoint", "")
        settings: dict[str, Setting] = {"bucket": parts.netloc,
                                        "prefix": parts.path.strip("/")}
        if endpoint:
            settings["endpoint"] = endpoint.rstrip("/")
        if query.get("region"):
            settings["region"] = query["region"]
        allow = query.get("allow_http")
        if allow is not None or endpoint.startswith("http://"):
            settings["allow_http"] = (allow or "true").lower() in ("1", "true", "yes")
        try:
            if "timeout" in query:
                settings["timeout"] = float(query["timeout"])
            if "retries" in query:
                settings["retries"] = int(query["retries"])
        except ValueError as exc:
            raise UnknownStoreError(f"{url!r}: timeout takes seconds, retries a count "
                                    f"({exc})") from exc
        return cls.of("s3", **settings)

    def open(self) -> FrameStore:
        """A new store object of this spec (in the calling process)."""
        module, _, name = self.implementation.partition(":")
        try:
            implementation = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise UnknownStoreError(f"cannot load frame store {self.implementation!r}: "
                                    f"{exc}") from exc
        if not (isinstance(implementation, type) and issubclass(implementation, FrameStore)):
            raise UnknownStoreError(f"{self.implementation!r} is not a FrameStore")
        store: FrameStore = implementation(**dict(self.settings))
        return store


def remembered_spec(root: Path, given: StoreSpec | None, *, save: bool) -> StoreSpec | None:
    """The frame store of the archive at ``root``: the one its :data:`STORE_FILE` names,
    else ``given`` (kept there, when ``save`` and of a :data:`REMEMBERED` kind), else None
    (the default store).

    Raises
    ------
    ArchiveStorageError
        ``given`` names another store than the archive's, or the file is unreadable.
    """
    path = root / STORE_FILE
    try:
        saved = json.loads(path.read_text()) if path.is_file() else None
        if saved is not None:
            spec = StoreSpec(saved["implementation"],
                             tuple((k, v) for k, v in sorted(saved["settings"].items())))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveStorageError(f"cannot read {path}: {exc}",
                                  hint="restore it from a backup or fix its JSON") from exc
    if saved is not None:
        if given is not None and given != spec:
            raise ArchiveStorageError(
                f"{root} keeps its frames in {dict(spec.settings)}, not in "
                f"{dict(given.settings)}",
                hint=f"leave --store out, or edit {path} if the store has moved")
        return spec
    kinds = {STORE_KINDS[k] for k in REMEMBERED}
    if save and given is not None and given.implementation in kinds:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"implementation": given.implementation,
                                   "settings": dict(given.settings),
                                   "archive_id": uuid.uuid4().hex}, indent=1))
        os.replace(tmp, path)
    return given


def shared_index(index: object, store: FrameStore) -> SharedIndex | None:
    """``index``, when an archive on it and ``store`` is shared by several front ends:
    an index several processes write (:class:`~pacscore.index.SharedIndex`) and frames
    in object storage (:class:`~pacscore.store.Collectable`); else None."""
    from ..index.base import SharedIndex

    return index if isinstance(index, SharedIndex) and isinstance(store, Collectable) \
        else None


def claim_store(root: Path, store: FrameStore, *, create: bool,
                shared: SharedIndex | None = None) -> None:
    """Make sure ``store`` (when :class:`~pacscore.store.base.Claimable`: a bucket
    prefix) belongs to the archive at ``root`` and no other: its ``archive_id`` from
    :data:`STORE_FILE` is written there on first use (``create``) and checked on every
    open.  Two archives on one prefix would each take the other's objects for orphans
    (start-up cleaning, ``pacscore gc``).

    With a ``shared`` index (several front ends, each its own folder ``root``), the
    archive is the index's: the id it records (drawn by the first front end) claims the
    prefix, so every front end of that index is admitted and any other archive is not.
    That id is no front end folder's own, so a folder opened without the index (its
    empty LMDB index would take every object for an orphan: ``pacscore gc --archive
    FOLDER``) is refused."""
    if not isinstance(store, Claimable):
        return
    path = root / STORE_FILE
    try:
        archive_id = json.loads(path.read_text()).get("archive_id") if path.is_file() else None
    except (OSError, ValueError, AttributeError) as exc:
        raise ArchiveStorageError(f"cannot read {path}: {exc}") from exc
    if shared is not None:  # a fresh id, never a folder's: see below
        archive_id = shared.archive_id(uuid.uuid4().hex if create else None)
    if not isinstance(archive_id, str):
        return
    try:
        store.claim(archive_id, create=create)
    except ArchiveStorageError:
        if create and not (root / "index.lmdb").exists():  # being created: it is not
            path.unlink(missing_ok=True)
        raise
