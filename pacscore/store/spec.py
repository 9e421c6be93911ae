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

from ..errors import UnknownStoreError
from .base import FrameStore

__all__ = ["STORE_KINDS", "Setting", "StoreSpec"]

Setting = str | int | float | bool | None
"""A store setting: plain values only, so a spec pickles small and compares equal."""

STORE_KINDS: dict[str, str] = {
    "zarr": "pacscore.store.zarr_store:ZarrFrameStore",
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
