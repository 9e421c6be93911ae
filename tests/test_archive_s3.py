"""The archive with its frames on S3 (issue 17.1): a real SeaweedFS, the local LMDB
index; ingest through the CLI (worker processes open the store from its spec),
retrieve, export byte-identical, delete, verify; ``pacscore gc`` of orphans."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.errors import ArchiveStorageError, ObjectStorageError
from pacscore.store import StoreSpec
from pacscore.store.object_store import ObjectFrameStore
from pacscore.store.spec import STORE_FILE
from pacscore.testing import cli
from pacscore.testing.s3 import SeaweedS3
from pacscore.testing.store import HTJ2K, MONO, frames_of, new_loc


@pytest.fixture()
def files(corpus: Path) -> list[Path]:
    """Six CT slices (frames), an 8-frame RGB cine (frames), a lossy JPEG echo (kept)."""
    ct = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:6]
    return [*ct, corpus / "multiframe/us_cine/ClearCanvas_US_8fr_rgb_implicit.dcm",
            corpus / "multiframe/us_cine/HP_echo_34fr_jpeg.dcm"]


@pytest.fixture()
def url(seaweedfs: SeaweedS3) -> str:
    return seaweedfs.url(f"archive/{uuid.uuid4().hex}")


def _pixels(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data)).pixel_array


def _sop(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _objects(store: ObjectFrameStore) -> dict[str, set[str]]:
    return {i.location: set(i.keys) for i in store.inventory()}


def test_an_archive_on_s3_stores_retrieves_exports_deletes_and_verifies(
        tmp_path: Path, files: list[Path], url: str) -> None:
    root = tmp_path / "archive"
    report = json.loads(cli("import", *map(str, files), "--archive", str(root), "--store",
                            url, "--workers", "1", "--json"))
    assert report["stored"] == len(files), report
    assert json.loads((root / STORE_FILE).read_text())["settings"]["endpoint"] in url
    assert not any((root / "frames").rglob("c.*")), "frames went to the local disk"

    with Archive(root, ArchiveConfig(fsync=False)) as archive:  # the store from store.json
        store = archive.store_
        assert isinstance(store, ObjectFrameStore) and archive.store_spec == \
            StoreSpec.from_url(url)
        assert set(_objects(store)) == {archive.record(_sop(f)).location for f in files}
        for path in files:
            sop, data = _sop(path), path.read_bytes()
            rec = archive.record(sop)
            if rec.kind == "frames":  # the codestreams in the bucket decode to the input
                n = int(rec.layout["frames"]) if rec.layout else 1
                stored = archive.frames(sop)
                assert len(stored) == n
                assert stored == store.read_frames(rec.location, range(n),
                                                   3 if rec.layout["samples"] == 1 else 4)
                expect = _pixels(data)
                for i in range(n):
                    got = archive.pixels(sop, i)
                    np.testing.assert_array_equal(got, expect[i] if n > 1 else expect)
            else:
                assert store.read_blob(rec.location) == data
    assert json.loads(cli("verify", "--archive", str(root), "--json")) == {
        "checked": len(files), "failed": []}

    out = tmp_path / "out"
    cli("export", "--archive", str(root), "--out", str(out), "--transfer-syntax",
        "original", *map(_sop, files))
    for path in files:
        assert hashlib.sha256((out / f"{_sop(path)}.dcm").read_bytes()).hexdigest() == \
            hashlib.sha256(path.read_bytes()).hexdigest(), path.name

    with Archive(root, ArchiveConfig(fsync=False)) as archive:
        store = archive.store_
        assert isinstance(store, ObjectFrameStore)
        gone = archive.record(_sop(files[0]))
        series = gone.series_uid
        assert archive.delete("series", series) == 6
        left = _objects(store)
        assert gone.location not in left
        assert set(left) == {archive.record(_sop(f)).location for f in files[6:]}
        assert list(store.staged()) == []
    assert json.loads(cli("verify", "--archive", str(root), "--json")) == {
        "checked": 2, "failed": []}


def test_gc_removes_only_unnamed_objects_after_the_grace_period(
        tmp_path: Path, files: list[Path], url: str) -> None:
    """A crash between the PUTs and the index commit leaves objects no record names:
    inside the grace period gc keeps them, after it removes them; a committed
    instance's objects always stay."""
    root = tmp_path / "archive"
    with Archive(root, ArchiveConfig(fsync=False), store=StoreSpec.from_url(url)) as archive:
        store = archive.store_
        assert isinstance(store, ObjectFrameStore)
        kept = archive.record(archive.store(files[0]).sop_instance_uid)
        staged_orphan, published_orphan = new_loc(), new_loc()
        store.stage_frames(staged_orphan, MONO, HTJ2K, frames_of(3, 1))  # then a "crash"
        store.stage_blob(published_orphan, b"a delete that stopped midway")
        store.publish([published_orphan])
        before = _objects(store)
        assert set(before) == {kept.location, staged_orphan, published_orphan}

        def gc(*flags: str) -> dict[str, object]:  # beside the running writer
            return json.loads(cli("gc", "--archive", str(root), "--json", *flags))

        inside = gc()  # default grace: one hour
        assert (inside["owned"], inside["young"], inside["removed"]) == (1, 2, [])
        time.sleep(1.1)  # last-modified times have a one-second resolution
        dry = gc("--grace", "0", "--dry-run")
        assert sorted(dry["removed"]) == sorted([staged_orphan, published_orphan])  # type: ignore[arg-type]
        assert _objects(store) == before
        done = gc("--grace", "0")
        assert sorted(done["removed"]) == sorted([staged_orphan, published_orphan])  # type: ignore[arg-type]
        assert done["objects_removed"] == 4 + 1  # zarr.json, 3 frames; blob
        assert _objects(store) == {kept.location: before[kept.location]}
        assert archive.get(kept.sop_instance_uid, "original") == files[0].read_bytes()
        assert gc("--grace", "0")["removed"] == []


def test_gc_on_a_local_archive_says_there_is_nothing_to_collect(tmp_path: Path,
                                                                files: list[Path]) -> None:
    with Archive(tmp_path / "a", ArchiveConfig(fsync=False)) as archive:
        archive.store(files[0])
    done = subprocess.run([sys.executable, "-m", "pacscore.cli", "gc", "--archive",
                           str(tmp_path / "a")], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "nothing to collect" in done.stderr and "object storage" in done.stderr


def test_two_archives_cannot_share_a_prefix(tmp_path: Path, files: list[Path], url: str,
                                            seaweedfs: SeaweedS3) -> None:
    """Each would take the other's objects for orphans (start-up cleaning, gc): the
    prefix is claimed by the first archive, the second is refused, naming it."""
    with Archive(tmp_path / "one", ArchiveConfig(fsync=False),
                 store=StoreSpec.from_url(url)) as one:
        sop = one.store(files[0]).sop_instance_uid
    with pytest.raises(ArchiveStorageError, match="belongs to another archive"):
        Archive(tmp_path / "two", ArchiveConfig(fsync=False), store=StoreSpec.from_url(url))
    assert not (tmp_path / "two" / STORE_FILE).exists()  # not created: another prefix
    with Archive(tmp_path / "two", ArchiveConfig(fsync=False),
                 store=StoreSpec.from_url(seaweedfs.url(f"archive/{uuid.uuid4().hex}"))
                 ) as two:
        assert two.store(files[1]).status == "stored"
    with Archive(tmp_path / "one", ArchiveConfig(fsync=False)) as one:
        assert one.get(sop, "original") == files[0].read_bytes()


def test_a_commit_whose_publish_failed_is_finished_at_the_next_start(
        tmp_path: Path, files: list[Path], url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the index commit and publishing: the instance is committed and
    readable (reads go to the final keys, and the index alone makes it the archive's:
    nothing is left to move), and the next start finds nothing staged."""
    root = tmp_path / "archive"
    with Archive(root, ArchiveConfig(fsync=False), store=StoreSpec.from_url(url)) as archive:
        def crash(self: ObjectFrameStore, locs: object) -> None:
            raise ObjectStorageError("injected: the process died here")

        monkeypatch.setattr(ObjectFrameStore, "publish", crash)
        sop = archive.store(files[0]).sop_instance_uid
        monkeypatch.undo()
        store = archive.store_
        assert isinstance(store, ObjectFrameStore)
        assert store.staged() == [archive.record(sop).location]
        assert archive.get(sop, "original") == files[0].read_bytes()
    with Archive(root, ArchiveConfig(fsync=False)) as archive:
        assert archive.recovered == 0
        assert archive.store_.staged() == []
        assert archive.get(sop, "original") == files[0].read_bytes()


def test_pacscore_serve_on_an_s3_archive(tmp_path: Path, files: list[Path], url: str,
                                         corpus: Path) -> None:
    """The server opens the store the archive remembers; STOW-RS and DCMTK's storescu
    store through its worker processes (background PUTs, waited for before the
    answer); WADO-RS answers the frames from S3."""
    import requests

    from pacscore.testing import serving

    root = tmp_path / "archive"
    cli("import", str(files[0]), "--archive", str(root), "--store", url, "--workers", "0")
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    with serving(root) as ports:
        token = (root / "security" / "admin-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + files[1].read_bytes()
                + b"\r\n--b--\r\n")
        got = requests.post(f"http://127.0.0.1:{ports['http']}/dicom-web/studies",
                            data=body, timeout=60, headers={**auth, "Content-Type":
                            'multipart/related; type="application/dicom"; boundary=b'})
        assert got.status_code == 200, got.text
        if Path("/usr/bin/storescu").exists():
            sent = subprocess.run(["/usr/bin/storescu", "-aet", "MODALITY", "-aec",
                                   "PACSCORE", "127.0.0.1", str(ports["dimse"]),
                                   str(files[6])], capture_output=True, text=True,
                                  check=False, env={**os.environ, "TCP_NODELAY": "1"})
            assert sent.returncode == 0, sent.stderr
        ds = pydicom.dcmread(files[1], stop_before_pixels=True)
        frame = requests.get(
            f"http://127.0.0.1:{ports['http']}/dicom-web/studies/{ds.StudyInstanceUID}/"
            f"series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1",
            headers={**auth, "Accept": "multipart/related; type=application/octet-stream; "
                                       "transfer-syntax=*"}, timeout=60)
        assert frame.status_code == 200
    with Archive(root, ArchiveConfig(fsync=False)) as archive:
        assert isinstance(archive.store_, ObjectFrameStore)
        for f in files[:2]:  # imported, STOW-RS: the files as sent
            assert archive.get(_sop(f), "original") == f.read_bytes()
        if Path("/usr/bin/storescu").exists():  # C-STORE: the data set as sent
            np.testing.assert_array_equal(archive.pixels(_sop(files[6]), 7),
                                          _pixels(files[6].read_bytes())[7])
        (codestream,) = archive.frames(str(ds.SOPInstanceUID), [0])
        assert codestream in frame.content  # the stored frame, from the bucket
        assert archive.store_.staged() == []
