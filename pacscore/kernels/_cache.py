"""Where compiled kernels are cached: the user's cache folder, never the installed package.

numba's ``cache=True`` writes ``.nbi``/``.nbc`` files next to the source, into
``site-packages/pacscore/kernels/__pycache__``.  ``pip uninstall`` leaves that folder
behind, and the empty ``pacscore`` directory it keeps then shadows a later editable
install as a namespace package (``cannot import name ... (unknown location)``).

:func:`njit` compiles with the cache in, in order of preference:

1. ``NUMBA_CACHE_DIR`` when the user set it (numba's own setting, honoured as is);
2. the platform's user cache folder: ``$XDG_CACHE_HOME/pacscore/numba`` (default
   ``~/.cache``), ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows;
3. ``<tmp>/pacscore-numba-<uid>`` when the home folder is not writable (a service user).

A folder is used only if it is ours and no one else can write to it (cached kernels are
loaded as code); when none qualifies the kernels compile without a cache (a slower
start, never a write into the package).  The folder is set for pacscore's own kernels
only: numba's process-wide setting is restored after each one, so a program that uses
pacscore keeps caching its own functions where it did.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cache_folder", "njit"]


def _platform_cache_home() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    if os.name == "nt":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative path is invalid and must be ignored.
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


def _candidates() -> Iterator[Path]:
    own = os.environ.get("NUMBA_CACHE_DIR")
    if own:
        yield Path(own)
        return
    with contextlib.suppress(RuntimeError, KeyError):  # no home folder for this user
        yield _platform_cache_home() / "pacscore" / "numba"
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    yield Path(tempfile.gettempdir()) / f"pacscore-numba-{uid}"


def _usable(folder: Path) -> bool:
    """Create ``folder`` (0700) if needed; True if it is ours, writable, and only ours."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.lstat()
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        return False  # someone else could plant compiled code here
    return os.access(folder, os.W_OK | os.X_OK)


_FOLDER: list[Path | None] = []


def cache_folder() -> Path | None:
    """The folder pacscore's kernels are cached in, or None (compiled at each start)."""
    if not _FOLDER:
        _FOLDER.append(next((c for c in _candidates() if _usable(c)), None))
    return _FOLDER[0]


@contextlib.contextmanager
def _numba_cache_dir(folder: Path) -> Iterator[None]:
    from numba.core import config

    settings: Any = config  # its attributes are set at import, from the environment
    before = settings.CACHE_DIR
    settings.CACHE_DIR = str(folder)
    try:
        yield
    finally:
        settings.CACHE_DIR = before


def njit(signatures: Sequence[Any], **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(signatures, cache=..., **options)`` with the cache in :func:`cache_folder`.

    The signatures are explicit, so the kernel is compiled (or loaded from the cache)
    here, at import, and the cache location is fixed while numba picks it.
    """
    import numba

    def decorate(fn: Callable[..., Any]) -> Any:
        folder = cache_folder()
        if folder is None:
            return numba.njit(list(signatures), cache=False, **options)(fn)
        with _numba_cache_dir(folder):
            return numba.njit(list(signatures), cache=True, **options)(fn)

    return decorate
