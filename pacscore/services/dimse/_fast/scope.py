"""Which pynetdicom associations are pacscore's: the fast paths act on those alone.

The fast paths replace pynetdicom methods process-wide (a class attribute is the only
place to hook them), but each replacement asks this module first: an association whose
Application Entity a pacscore server claimed (:func:`claim`) goes through the fast
path, any other — a pynetdicom client or server that the program embedding pacscore
runs itself — through pynetdicom's own code, as if nothing were installed.

Methods of an association's objects (its socket, its DUL) know their association
(``.assoc``); module-level functions (the reactors' ``time.sleep``, the file meta
writer, the temp file a C-STORE data set is received into) are called on the
association's own threads: the Association thread itself or its DUL thread.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from pynetdicom.ae import ApplicationEntity

__all__ = ["SPOOL_PREFIX", "claim", "current", "ours", "release", "scoped", "spool_file"]

SPOOL_PREFIX = "pacscore-dimse-"
"""Names of the files received into a claimed AE's spool (nothing else in the spool
folder is ever removed: it may be a folder the user shares with other data)."""

_CLAIMED: weakref.WeakKeyDictionary[ApplicationEntity, Path | None] = (
    weakref.WeakKeyDictionary())
_lock = threading.Lock()


def claim(ae: ApplicationEntity, spool: Path | None) -> None:
    """Make ``ae``'s associations (acceptor and requestor) pacscore's; C-STORE data
    sets they receive go to files in ``spool`` (None: the system's temp folder)."""
    with _lock:
        _CLAIMED[ae] = spool


def release(ae: ApplicationEntity) -> None:
    """``ae``'s associations go through pynetdicom's own code again."""
    with _lock:
        _CLAIMED.pop(ae, None)


def ours(assoc: Any) -> bool:
    """Whether ``assoc`` (an Association, or None) belongs to a claimed AE."""
    ae = getattr(assoc, "ae", None)
    return ae is not None and ae in _CLAIMED


def current() -> Any:
    """The claimed association whose thread (Association or DUL) is running, or None."""
    thread = threading.current_thread()
    assoc = thread if hasattr(thread, "dul") else getattr(thread, "assoc", None)
    return assoc if ours(assoc) else None


def spool_file(*args: Any, **kwargs: Any) -> Any:
    """``tempfile.NamedTemporaryFile`` as pynetdicom's DIMSE layer calls it: in the
    spool of the association receiving, when it is a claimed one with a spool."""
    assoc = current()
    spool = _CLAIMED.get(assoc.ae) if assoc is not None else None
    if spool is not None:
        kwargs.update(dir=spool, prefix=SPOOL_PREFIX)
    return tempfile.NamedTemporaryFile(*args, **kwargs)


class _ByThread:
    """A module replacement (``time`` as a reactor sees it): the fast one's attributes
    on a claimed association's threads, the original's everywhere else."""

    def __init__(self, fast: Any, original: Any):
        self._fast, self._original = fast, original

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast if current() is not None else self._original, name)


def scoped(owner: Any, replacement: Any, original: Any) -> Any:
    """``replacement`` for claimed associations, ``original`` for the others, in the
    form ``owner`` holds it: a property or method of a class whose instances have
    ``.assoc``, or a module's function or submodule-like object."""
    if isinstance(replacement, property):
        fast_get, slow_get = replacement.fget, original.fget
        assert fast_get is not None and slow_get is not None
        return property(lambda self: fast_get(self) if ours(self.assoc) else slow_get(self))
    if isinstance(owner, type):
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            chosen = replacement if ours(self.assoc) else original
            return chosen(self, *args, **kwargs)

        return functools.wraps(original)(method)
    if callable(replacement) and callable(original) and not isinstance(replacement, type):
        def function(*args: Any, **kwargs: Any) -> Any:
            return (replacement if current() is not None else original)(*args, **kwargs)

        return functools.wraps(original)(function)
    return _ByThread(replacement, original)

