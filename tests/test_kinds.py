"""Levels, statuses and kinds are StrEnums that still read and write as strings (15.7b)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pacscore import Archive, ArchiveConfig
from pacscore.index import LEVELS, InstanceRecord, LmdbIndex
from pacscore.kinds import FileStatus, Level, PutStatus, StoreKind, StoreStatus
from pacscore.testing.index import header_of, make


def test_members_are_their_strings() -> None:
    assert LEVELS == ("patient", "study", "series", "instance") == tuple(Level)
    assert StoreStatus.DUPLICATE == "duplicate" and PutStatus.REFUSED == "refused"
    assert json.dumps([Level.STUDY, StoreKind.BLOB, FileStatus.COPIED]) == \
        '["study", "blob", "copied"]'
    assert {"stored": 1}[StoreStatus.STORED] == 1  # same hash as the string
    assert f"{FileStatus.UNFINISHED}" == "unfinished"


def test_index_answers_with_enums(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "i.lmdb", map_size=1 << 20, sync=False)
    try:
        rec = make("1.2.3.4", kind=StoreKind.BLOB)
        [first] = index.put([(rec, header_of(rec))])
        [again] = index.put([(rec, header_of(rec))])
        assert first.status is PutStatus.STORED and again.status is PutStatus.DUPLICATE
        stored = index.get("1.2.3.4")
        assert stored is not None and stored.kind is StoreKind.BLOB  # read back from JSON
        assert InstanceRecord.from_json(rec.to_json()).kind is StoreKind.BLOB
    finally:
        index.close()


def test_store_results_and_job_results_carry_enums(tmp_path: Path, corpus: Path) -> None:
    ct = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[0]
    with Archive(tmp_path / "a", ArchiveConfig()) as archive:
        first, second = archive.store(ct), archive.store(ct)
        assert first.status is StoreStatus.STORED and second.status is StoreStatus.DUPLICATE
        assert json.loads(json.dumps(dataclasses.asdict(first)))["status"] == "stored"
