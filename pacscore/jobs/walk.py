"""Streaming walk of input trees (never holds the tree in memory)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["count_files", "walk_files"]


def walk_files(roots: Sequence[str]) -> Iterator[tuple[str, str, int]]:
    """Yield (path, path relative to its root, size) of every regular file, sorted
    per directory.  A symlink is followed only if it stays inside its root, so a link
    cannot pull in files from elsewhere."""
    for root in roots:
        base = Path(root).resolve()
        if base.is_file():
            yield str(base), base.name, base.stat().st_size
            continue
        if not base.is_dir():
            raise FileNotFoundError(f"no such file or directory: {root}")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                real = path.resolve()
                if not real.is_file() or (path.is_symlink() and base not in real.parents):
                    continue
                yield str(path), str(path.relative_to(base)), real.stat().st_size


def count_files(roots: Sequence[str]) -> tuple[int, int]:
    """(files, bytes) under ``roots`` in one streaming pass (for progress and ETA)."""
    files = size = 0
    for _, _, n in walk_files(roots):
        files += 1
        size += n
    return files, size
