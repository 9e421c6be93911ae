"""Append-only job journal: one JSON line per finished file, fsynced per batch.

A file is journalled only after its output is durable and visible (or it was refused
for good, with the reason), so after a crash ``--resume`` skips exactly those files and
retries every other one; the entries hold what the job's report needs, so a resumed
job reports the whole job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Journal"]


class Journal:
    """``path`` holds one JSON object per line; a torn line is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None
        self._reader: Any = None

    def exists(self) -> bool:
        """A journal was started here."""
        return self.path.exists()

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(offset, entry) of every complete entry."""
        if not self.path.exists():
            return
        offset = 0
        with open(self.path, "rb") as f:
            for line in f:
                start, offset = offset, offset + len(line)
                if not line.endswith(b"\n"):
                    return  # torn write from a crash: that file is redone
                try:
                    entry = json.loads(line)
                except ValueError:  # torn by a failed append (disk full) before this one
                    continue
                if isinstance(entry, dict):
                    yield start, entry

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every complete entry."""
        for _, entry in self._lines():
            yield entry

    def index(self, field: str, required: str | None = None) -> dict[str, int]:
        """``entry[field]`` -> offset of the last entry with that value (and a
        ``required`` field), for :meth:`read_at`: a resumed job looks its done files up
        without holding every entry in memory."""
        return {str(e[field]): offset for offset, e in self._lines()
                if field in e and (required is None or required in e)}

    def read_at(self, offset: int) -> dict[str, Any]:
        """The entry at ``offset`` (from :meth:`index`)."""
        if self._reader is None:
            self._reader = open(self.path, "rb")  # noqa: SIM115
        self._reader.seek(offset)
        return dict(json.loads(self._reader.readline()))

    def append(self, entries: Iterable[dict[str, Any]]) -> None:
        """Append entries and make them durable."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # drop a torn last line before appending after it
                data = self.path.read_bytes()
                if data and not data.endswith(b"\n"):
                    self.path.write_bytes(data[: data.rfind(b"\n") + 1])
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        text = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in entries)
        self._fh.write(text)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the journal file."""
        for name in ("_fh", "_reader"):
            fh = getattr(self, name)
            if fh is not None:
                setattr(self, name, None)
                fh.close()
