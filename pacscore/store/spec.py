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
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from ..errors import UnknownStoreError
from .base import FrameStore

__all__ = ["STORE_KINDS", "Setting", "StoreSpec"]

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
        if "timeout" in query:
            settings["timeout"] = float(query["timeout"])
        if "retries" in query:
            settings["retries"] = int(query["retries"])
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
