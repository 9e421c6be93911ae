"""Append-only job journal: one JSON line per finished file, fsynced per batch.

A file is journalled only after its output is durable and visible, so after a
crash ``--resume`` skips exactly the files whose outputs exist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Journal"]


class Journal:
    """``path`` holds one JSON object per line; a torn last line is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None

    def exists(self) -> bool:
        """A journal was started here."""
        return self.path.exists()

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every complete entry."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    return  # torn write from a crash: that file is redone
                yield json.loads(line)

    def append(self, entries: Iterable[dict[str, Any]]) -> None:
        """Append entries and make them durable."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # drop a torn last line before appending after it
                data = self.path.read_bytes()
                if data and not data.endswith(b"\n"):
                    self.path.write_bytes(data[: data.rfind(b"\n") + 1])
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        for entry in entries:
            self._fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the journal file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
