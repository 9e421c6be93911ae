"""Shared fixtures: the real corpus (../shared/corpus or $PACSCORE_CORPUS)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# the contract suites shipped in the package: detailed assertion messages (before import)
pytest.register_assert_rewrite("pacscore.testing")

from pacscore import Archive, ArchiveConfig  # noqa: E402

# A server started by a test does not fetch the viewer (50 MB from npm) unless the test
# asks for it (tests/test_viewer*.py install it once per session into a cache folder).
os.environ.setdefault("PACSCORE_VIEWER_AUTO_INSTALL", "0")


def corpus_root() -> Path | None:
    """The shared corpus, or None when it is not on this machine."""
    env = os.environ.get("PACSCORE_CORPUS")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "corpus", here / ".." / ".." / "shared" / "corpus"]
    for c in candidates:
        if (c / "MANIFEST.tsv").is_file():
            return c.resolve()
    return None


@dataclass(frozen=True)
class CorpusFile:
    """One MANIFEST.tsv row."""

    path: Path
    relative: str
    modality: str
    transfer_syntax: str
    notes: str

    @property
    def malformed(self) -> bool:
        return self.relative.startswith("malformed/")


def corpus_files() -> list[CorpusFile]:
    """Every file of the manifest (empty when the corpus is absent)."""
    root = corpus_root()
    if root is None:
        return []
    with open(root / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [CorpusFile(root / r["relative_path"], r["relative_path"], r["modality"],
                       r["transfer_syntax_uid"], r["notes"]) for r in rows]


@pytest.fixture(scope="session")
def corpus() -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("shared corpus not found: set PACSCORE_CORPUS to ../shared/corpus")
    return root


@pytest.fixture()
def archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive(tmp_path / "archive", ArchiveConfig()) as a:
        yield a


from pacscore.testing.s3 import seaweedfs_server, use_test_credentials  # noqa: E402

use_test_credentials()  # now: worker processes (a forkserver) copy the environment early
seaweedfs = seaweedfs_server()
"""A SeaweedFS S3 server for the session (skips when the weed binary is absent)."""

from pacscore.testing.postgres import postgres_dsn, postgres_server  # noqa: E402, F401


@pytest.fixture(params=["lmdb", "postgresql"])
def workflow_index(request: pytest.FixtureRequest) -> str | None:
    """The index of an archive whose workflow state a test checks, for each place it is
    kept: None (the archive's own LMDB index: ``workflow.lmdb`` in its folder) and a
    fresh PostgreSQL database (the workflow tables of :mod:`pacscore.index.postgres.kv`)."""
    if request.param == "lmdb":
        return None
    pytest.importorskip("psycopg")
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn
