"""An Archive whose index is PostgreSQL (``Archive(root, index="postgresql://...")``):
real corpus files stored, retrieved, queried, deleted and verified, with the same
answers as the archive's own LMDB index gives for the same files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

pytest.importorskip("psycopg")

from pacscore import Archive, ArchiveConfig
from pacscore.errors import ArchiveStorageError, IndexUnavailableError, UnknownIndexError
from pacscore.index import LEVELS
from pacscore.index.postgres import PgIndex
from pacscore.index.spec import INDEX_KINDS, IndexSpec
from pacscore.testing import cli, serving
from pacscore.testing.postgres import postgres_dsn, postgres_server  # noqa: F401

from .conftest import corpus_files

# Uncompressed, compressed and odd files of several modalities and patients.
_FILES = [f for f in corpus_files() if not f.malformed][:40:2]
_QUERIES = [
    ("patient", {}), ("study", {}), ("series", {}), ("instance", {}),
    ("study", {"StudyDate": "19000101-20991231"}), ("study", {"PatientName": "*a*"}),
    ("series", {"Modality": "CT"}), ("study", {"ModalitiesInStudy": "MR\\CT"}),
    ("instance", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}),
    ("patient", {"PatientID": "?*"}),
]


@pytest.fixture
def archives(tmp_path: Path, postgres_dsn: str  # noqa: F811
             ) -> Iterator[tuple[Archive, Archive]]:
    """The same files in an archive with a PostgreSQL index and one with LMDB."""
    if not _FILES:
        pytest.skip("shared corpus not found: set PACSCORE_CORPUS to ../shared/corpus")
    config = ArchiveConfig(prepare_workers=0)
    with Archive(tmp_path / "pg", config, index=postgres_dsn) as pg, \
            Archive(tmp_path / "lmdb", config) as lmdb:
        for archive in (pg, lmdb):
            results = list(archive.store_many([str(f.path) for f in _FILES], workers=0))
            assert {type(r).__name__ for r in results} <= {"StoreResult"}, results
        yield pg, lmdb


def test_an_archive_on_a_postgresql_index(archives: tuple[Archive, Archive]) -> None:
    pg, lmdb = archives
    assert isinstance(pg.index, PgIndex)
    assert not (pg.root / "index.lmdb").exists()  # the frames stay in root, not the index
    assert (pg.root / "frames").is_dir()
    assert pg.stats() == lmdb.stats()
    assert pg.stats()["instances"] == len({r.sop_instance_uid for r in lmdb.index.records()})
    for level, keys in _QUERIES:  # the same matches (the order of results is free)
        assert _sorted(pg.query(level, keys)) == _sorted(lmdb.query(level, keys)), keys
        assert pg.query(level, keys, limit=2, offset=1) == pg.query(level, keys)[1:3]
    for rec in lmdb.index.records():
        sop = rec.sop_instance_uid
        assert pg.record(sop) == pg.index.get(sop)
        assert hashlib.sha256(pg.get(sop)).hexdigest() == rec.sha256  # byte-identical
    report = pg.verify()
    assert report.checked == pg.stats()["instances"] and report.failed == []

    study = pg.find("study")[0]["StudyInstanceUID"]
    gone = set(pg.instances("study", study))
    assert pg.delete("study", study) == len(gone) > 0
    assert lmdb.delete("study", study) == len(gone)
    assert pg.find("study", StudyInstanceUID=study) == []
    assert pg.index.pending() == []  # the frames were removed, their marks cleared
    for level in LEVELS:
        assert _sorted(pg.query(level, {})) == _sorted(lmdb.query(level, {}))
    assert pg.stats() == lmdb.stats()
    assert pg.verify().failed == []


def _sorted(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_an_archive_reopened_read_only_on_its_postgresql_index(
        tmp_path: Path, postgres_dsn: str) -> None:  # noqa: F811
    if not _FILES:
        pytest.skip("shared corpus not found")
    config = ArchiveConfig(prepare_workers=0)
    with Archive(tmp_path / "a", config, index=IndexSpec.parse(postgres_dsn)) as archive:
        [result] = list(archive.store_many([str(_FILES[0].path)], workers=0))
    with Archive(tmp_path / "a", config, index=postgres_dsn, readonly=True) as reader:
        assert hashlib.sha256(reader.get(result.sop_instance_uid)).hexdigest() == \
            hashlib.sha256(_FILES[0].path.read_bytes()).hexdigest()
        with pytest.raises(ArchiveStorageError):
            reader.index.mark_pending(["x" * 32])  # a read-only transaction
    with pytest.raises(ArchiveStorageError, match="does not exist"):
        Archive(tmp_path / "missing", config, index=postgres_dsn, readonly=True)


def test_the_folder_remembers_its_index_for_every_later_command(
        tmp_path: Path, postgres_dsn: str, postgres_server: Any) -> None:  # noqa: F811
    """``pacscore import --index URL`` into a folder: ``find``, ``verify``, ``stats`` and
    ``export`` on that folder (no --index) read the PostgreSQL index, not an empty LMDB
    index of the folder's own; another database given for it is refused; a new folder
    reads the same index with --index."""
    if not _FILES:
        pytest.skip("shared corpus not found")
    root, files = tmp_path / "a", [str(f.path) for f in _FILES[:4]]
    imported = json.loads(cli("import", *files, "--archive", str(root), "--index",
                              postgres_dsn, "--workers", "0", "--json"))
    assert imported["stored"] == len(files)
    index_file = root / "index.json"
    assert index_file.stat().st_mode & 0o777 == 0o600
    assert not (root / "index.lmdb").exists()
    found = json.loads(cli("find", "--archive", str(root), "--level", "instance", "--json"))
    assert len(found["matches"]) == len(files)
    verified = json.loads(cli("verify", "--archive", str(root), "--json"))
    assert verified == {"checked": len(files), "failed": []}
    assert json.loads(cli("stats", "--archive", str(root), "--json"))["instances"] == \
        len(files)
    uid = found["matches"][0]["SOPInstanceUID"]
    cli("export", uid, "--archive", str(root), "--out", str(tmp_path / "out"))
    assert (tmp_path / "out" / f"{uid}.dcm").is_file()
    assert not (root / "index.lmdb").exists()  # no empty LMDB index was made
    # another database named for this folder: refused, nothing opened
    other = postgres_server.dsn_of(postgres_server.create_database())
    refused = subprocess.run([sys.executable, "-m", "pacscore.cli", "find", "--archive",
                              str(root), "--level", "study", "--index", other],
                             capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "index.json" in refused.stderr, refused.stderr
    # the same database as a URL with time-outs is the same index
    parts = dict(pair.split("=", 1) for pair in postgres_dsn.split())
    url = (f"postgresql://{parts['user']}@{parts['host']}:{parts['port']}/"
           f"{parts['dbname']}?statement_timeout=30")
    again = json.loads(cli("find", "--archive", str(root), "--level", "instance", "--json",
                           "--index", url))
    assert len(again["matches"]) == len(files)
    # a new front-end folder that names the index reads the same archive
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    seen = json.loads(cli("find", "--archive", str(fresh), "--level", "instance", "--json",
                          "--index", postgres_dsn))
    assert len(seen["matches"]) == len(files)


def test_index_specs() -> None:
    spec = IndexSpec.parse("postgresql://pacs:secret@db.example:5433/archive")
    assert spec == IndexSpec.of("postgresql",
                                dsn="postgresql://pacs:secret@db.example:5433/archive")
    assert "secret" not in str(spec) and "db.example:5433" in str(spec)
    assert IndexSpec.parse("postgres://h/db").kind == "postgresql"
    assert IndexSpec.parse("host=h dbname=db password=pw") == IndexSpec.of(
        "postgresql", dsn="host=h dbname=db password=pw")
    assert "pw" not in str(IndexSpec.parse("host=h dbname=db password=pw"))
    assert set(INDEX_KINDS) == {"lmdb", "postgresql"}
    # pacscore's own settings in the URL (libpq refuses parameters it does not know)
    assert IndexSpec.parse("postgresql://h/db?sslmode=disable&statement_timeout=2.5&"
                           "timeout=4&pool_size=3") == IndexSpec.of(
        "postgresql", dsn="postgresql://h/db?sslmode=disable", statement_timeout=2.5,
        timeout=4.0, pool_size=3)
    with pytest.raises(UnknownIndexError, match="statement_timeout='0'"):
        IndexSpec.parse("postgresql://h/db?statement_timeout=0")
    with pytest.raises(UnknownIndexError, match="unknown index kind 'mongo'"):
        IndexSpec.of("mongo")
    with pytest.raises(UnknownIndexError, match="cannot tell") as unknown:
        IndexSpec.parse("mysql://u:pw@h/db")
    assert "pw" not in str(unknown.value) and "postgresql://" in unknown.value.hint
    with pytest.raises(IndexUnavailableError, match=r"127\.0\.0\.1:1/db"):
        Archive("/nonexistent-never-created", index="postgresql://u:pw@127.0.0.1:1/db?"
                "connect_timeout=1").close()


def test_serve_with_a_postgresql_index(tmp_path: Path, postgres_dsn: str,  # noqa: F811
                                       corpus: Path) -> None:
    """``pacscore serve --index postgresql://...``: what STOW-RS stores is indexed in
    PostgreSQL (no LMDB index in the archive folder) and QIDO-RS and WADO-RS answer from
    it; ``index = "..."`` in the TOML configuration does the same."""
    files = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:3]
    archive = tmp_path / "archive"
    with serving(archive, "--index", postgres_dsn) as ports:
        client = _client(archive, ports["http"])
        client.store_instances([pydicom.dcmread(p) for p in files])
        [study] = client.search_for_studies()
        uid = study["0020000D"]["Value"][0]
        assert study["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
        assert len(client.retrieve_study(uid)) == 3
    assert not (archive / "index.lmdb").exists()
    index = PgIndex(postgres_dsn)
    try:
        assert index.stats()["instances"] == 3
        assert index.find("study", {})[0]["StudyInstanceUID"] == uid
    finally:
        index.close()
    config = tmp_path / "pacscore.toml"
    config.write_text(f"index = {json.dumps(postgres_dsn)}\n")
    with serving(archive, "--config", str(config)) as ports:
        [again] = _client(archive, ports["http"]).search_for_studies()
        assert again["0020000D"]["Value"] == [uid]


def _client(archive: Path, port: int) -> DICOMwebClient:
    session = requests.Session()
    token = (archive / "security" / "admin-token").read_text().strip()
    session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(f"http://127.0.0.1:{port}/dicom-web", session=session)
