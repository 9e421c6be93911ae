"""The Index contract (:class:`pacscore.testing.index.IndexTests`) run on LmdbIndex.

``TestLmdbIndex`` inherits every contract test and adds LMDB specifics (persistence,
map growth, no stale keys after deletes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacscore.errors import ArchiveStorageError
from pacscore.index import LmdbIndex
from pacscore.testing.index import IndexTests, header_of, make, put, uids


class TestLmdbIndex(IndexTests):
    def index_factory(self, tmp_path: Path) -> LmdbIndex:
        return LmdbIndex(tmp_path / "index.lmdb", map_size=1 << 20, sync=False)

    def test_reopen_keeps_everything(self, tmp_path: Path) -> None:
        path = tmp_path / "persist.lmdb"
        first = LmdbIndex(path, map_size=1 << 20, sync=True)
        rec = make("1.10.1")
        put(first, rec)
        first.mark_pending(["e" * 32])
        stats = first.stats()
        first.close()
        again = LmdbIndex(path, map_size=1 << 20)
        try:
            assert again.get("1.10.1") == rec
            assert again.header("1.10.1") == header_of(rec)
            assert again.pending() == ["e" * 32]
            assert again.stats() == stats
        finally:
            again.close()
        readonly = LmdbIndex(path, readonly=True)
        try:
            assert readonly.get("1.10.1") == rec
        finally:
            readonly.close()

    def test_an_index_of_the_first_key_layout_is_upgraded_at_open(
            self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """Layout 1 kept every object without a Patient ID under one patient ``#``:
        opening it for writing rebuilds the hierarchy from the instance records; a
        read-only open is refused with a hint, a newer layout is refused."""
        path = tmp_path / "old.lmdb"
        first = LmdbIndex(path, map_size=1 << 20, sync=False)
        recs = [make(f"1.12.{i}", study=f"4.{i}", series=f"4.{i}.1", patient=None,
                     name=f"NOID{i}") for i in range(3)]
        recs += [make("1.12.9", study="4.9", series="4.9.1", patient="P9")]
        put(first, *recs)
        stats = first.stats()
        with first.env.begin(write=True) as txn:  # what layout 1 wrote
            txn.delete(b"format", db=first.dbs[b"meta"])
            for name in (b"patient", b"study", b"series", b"child", b"attr"):
                txn.drop(first.dbs[name], delete=False)
            merged = {"parent": None, "attrs": {"PatientID": None, "PatientName": "NOID0"},
                      "children": 3, "instances": 3, "bytes_in": 0, "bytes_stored": 0,
                      "modalities": []}
            txn.put(b"#", json.dumps(merged).encode(), db=first.dbs[b"patient"])
        first.close()
        with pytest.raises(ArchiveStorageError, match="older key layout") as refused:
            LmdbIndex(path, readonly=True)
        assert "open the archive once for writing" in refused.value.hint
        with caplog.at_level("WARNING"):
            again = LmdbIndex(path, map_size=1 << 20)
        try:
            assert "upgraded from key layout 1 to 2 (4 instances)" in caplog.text
            patients = again.find("patient", {})
            assert sorted(str(p["PatientName"]) for p in patients) == [
                "Doe^Jane", "NOID0", "NOID1", "NOID2"]
            assert uids(again.find("patient", {"PatientName": "noid2"}), "PatientName") == [
                "NOID2"]
            assert again.instances("patient", "P9") == ["1.12.9"]
            assert again.instances("series", "4.1.1") == ["1.12.1"]
            assert again.stats() == stats
            assert again.get("1.12.2") == recs[2]
        finally:
            again.close()
        LmdbIndex(path, readonly=True).close()  # stamped: a read-only open works now
        newer = LmdbIndex(path, map_size=1 << 20)
        with newer.env.begin(write=True) as txn:
            txn.put(b"format", b"99", db=newer.dbs[b"meta"])
        newer.close()
        with pytest.raises(ArchiveStorageError, match="key layout 99"):
            LmdbIndex(path, map_size=1 << 20)

    def test_map_grows_when_full(self, tmp_path: Path) -> None:
        idx = LmdbIndex(tmp_path / "small.lmdb", map_size=64 * 1024, sync=False)
        try:
            recs = [make(f"1.11.{i}", study=f"3.{i % 7}", series=f"3.{i % 7}.{i % 3}",
                         patient=f"Q{i % 7}", Big="x" * 2000) for i in range(200)]
            for i in range(0, 200, 25):
                assert put(idx, *recs[i:i + 25]) == ["stored"] * 25
            assert idx.stats()["instances"] == 200
            assert idx.get("1.11.199") == recs[199]
            assert idx.env.info()["map_size"] > 64 * 1024
        finally:
            idx.close()

    def test_no_keys_left_behind_after_deleting_everything(self, populated: LmdbIndex
                                                           ) -> None:
        populated.delete([r.sop_instance_uid for r in populated.records()])
        populated.clear_pending(populated.pending())
        with populated.env.begin() as txn:
            leftovers = {
                name.decode(): txn.stat(db)["entries"]
                for name, db in populated.dbs.items() if name != b"meta"
            }
        assert leftovers == dict.fromkeys(leftovers, 0)
