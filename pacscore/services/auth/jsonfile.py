"""The small JSON files of ``ARCHIVE/security`` (tokens, users, sessions): read again
only when the file changed (another process, a ``pacscore`` command, may write it while
the server runs), written whole, private (0600), by an atomic rename."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...private import make_private_dir

__all__ = ["JsonFile"]


class JsonFile:
    """One JSON object in ``path`` (callers hold their own lock around read-modify-write)."""

    def __init__(self, path: Path, *, indent: int | None = 2):
        self.path, self.indent = path, indent
        self._cache: tuple[float, dict[str, dict[str, Any]]] = (-1.0, {})

    def load(self) -> dict[str, dict[str, Any]]:
        """The file's content (empty when there is none yet); do not change it in place."""
        try:
            mtime = self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return {}
        if mtime != self._cache[0]:
            self._cache = (mtime, json.loads(self.path.read_text(encoding="utf-8")))
        return self._cache[1]

    def save(self, content: dict[str, dict[str, Any]]) -> None:
        """Replace the file's content (a reader sees the old file or the new, whole)."""
        make_private_dir(self.path.parent)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=self.indent)
        os.replace(tmp, self.path)
