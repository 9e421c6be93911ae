"""The embedded Index on LMDB (key layout in :mod:`pacscore.index.keys`)."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lmdb

from ..errors import ArchiveStorageError, InvalidRequestError, NotFoundError
from ..kinds import PutStatus
from ..lmdb_env import write
from .base import LEVELS, Index, PutOutcome
from .keys import (
    ATTR_INDEXED,
    DATABASES,
    DUPSORT,
    FORMAT_VERSION,
    attr_key,
    child_key,
    encode,
    patient_key,
    patient_label,
)
from .lmdb_query import LEVEL_DB, LmdbQueries, level_attrs, node_attrs
from .matching import normalise
from .records import InstanceRecord
from .validate import record_problem, same_patient, variant

__all__ = ["LmdbIndex"]

log = logging.getLogger(__name__)

_PARENT = {"study": "patient", "series": "study", "instance": "series"}


def _empty_stats() -> dict[str, Any]:
    return {"instances": 0, "compressed_instances": 0, "bytes_in": 0, "bytes_stored": 0,
            "transfer_syntaxes": {}}


# Errors that one record raises inside a write transaction (a key or value the index
# cannot take): that record alone is refused and the others are committed.
_RECORD_ERRORS = (lmdb.BadValsizeError, UnicodeError, ValueError, TypeError)


class _RecordError(Exception):
    """A record of a batch failed inside the write transaction (which was aborted)."""

    def __init__(self, position: int, error: BaseException):
        super().__init__(str(error))
        self.position, self.error = position, error


class LmdbIndex(LmdbQueries, Index):
    """LMDB environment at ``path`` (a directory)."""

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = 1 << 34,
                 sync: bool = True, readonly: bool = False, lock: bool = True):
        """``lock=False`` (read-only only): open without LMDB's lock file, for a reader
        that may not write it; the caller makes sure no writer runs meanwhile.  A new
        environment is created 0700 (its files 0600) whatever the umask."""
        self.path = Path(path)
        try:
            self.env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=len(DATABASES) + 2,
                subdir=True, sync=sync, metasync=sync, readonly=readonly, max_readers=512,
                lock=lock or not readonly, mode=0o700,  # files: mode & ~0o111
            )
        except lmdb.Error as exc:
            hint = ("close the other Archive on this directory first: one per directory "
                    "and process" if "already open" in str(exc) else None)
            raise ArchiveStorageError(f"cannot open index at {self.path}: {exc}",
                                      hint=hint) from exc
        self.dbs = {
            name: self.env.open_db(name, dupsort=name in DUPSORT, create=not readonly)
            for name in DATABASES
        }
        if not readonly:
            self.env.reader_check()  # readers left by killed processes
        self._max_key = int(self.env.max_key_size())
        try:
            self._check_format(readonly)
        except BaseException:
            self.env.close()  # or this process could never open it again
            raise

    # -- plumbing ----------------------------------------------------------------
    def _write(self, fn: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run ``fn`` in a write transaction, growing the map when it is full (a key or
        value LMDB refuses is not the disk's fault: raised as it is)."""
        return write(self.env, self.path, fn, what="index write",
                     passthrough=(lmdb.BadValsizeError,),
                     hint="free space on the archive's disk or fix it, then retry (a bulk "
                          "import: run it again with --resume); acknowledged data is safe")

    def _put_json(self, txn: lmdb.Transaction, db: bytes, key: str, value: Any) -> None:
        txn.put(encode(key), json.dumps(value, separators=(",", ":")).encode(),
                db=self.dbs[db])

    @staticmethod
    def _attr_keys(level: str, attr_sets: Iterable[Mapping[str, Any]]) -> set[bytes]:
        return {attr_key(level, kw, normalise(kw, attrs.get(kw)))
                for attrs in attr_sets for kw in ATTR_INDEXED[level]}

    def _index_attrs(self, txn: lmdb.Transaction, level: str, uid: str,
                     attr_sets: Iterable[Mapping[str, Any]], add: bool) -> None:
        db = self.dbs[b"attr"]
        for key in self._attr_keys(level, attr_sets):
            if add:
                txn.put(key, encode(uid), db=db, dupdata=True)
            else:
                txn.delete(key, encode(uid), db=db)

    def _set_variants(self, txn: lmdb.Transaction, pkey: str, node: dict[str, Any],
                      variants: Iterable[dict[str, Any]]) -> None:
        """Give a patient record these sets of patient-level values (distinct, in
        order) and index exactly their values."""
        new: list[dict[str, Any]] = []
        for v in variants:
            if v not in new:
                new.append(v)
        old_keys = self._attr_keys("patient", node["variants"])
        new_keys = self._attr_keys("patient", new)
        db, value = self.dbs[b"attr"], encode(pkey)
        for key in old_keys - new_keys:
            txn.delete(key, value, db=db)
        for key in new_keys - old_keys:
            txn.put(key, value, db=db, dupdata=True)
        node["variants"] = new

    # -- key layout version ------------------------------------------------------
    def _check_format(self, readonly: bool) -> None:
        """Refuse an index of a newer layout; upgrade an older one (rebuild the
        hierarchy and matching index from the instance records, one transaction)."""
        with self.env.begin() as txn:
            raw = txn.get(b"format", db=self.dbs[b"meta"])
            empty = txn.stat(self.dbs[b"inst"])["entries"] == 0
        version = int(bytes(raw)) if raw is not None else FORMAT_VERSION if empty else 1
        if version > FORMAT_VERSION:
            raise ArchiveStorageError(
                f"index at {self.path} has key layout {version}; this pacscore reads "
                f"layout {FORMAT_VERSION}", hint="upgrade pacscore to open this archive")
        if raw is not None and version == FORMAT_VERSION:
            return
        if readonly:
            if version < FORMAT_VERSION:
                raise ArchiveStorageError(
                    f"index at {self.path} has the older key layout {version}",
                    hint="open the archive once for writing (pacscore import or serve): "
                         "the index is then upgraded in place")
            return
        count = self._write(lambda txn: self._upgrade(txn, version))
        if count:
            log.warning("index at %s upgraded from key layout %d to %d (%d instances)",
                        self.path, version, FORMAT_VERSION, count)

    def _upgrade(self, txn: lmdb.Transaction, version: int) -> int:
        count = 0
        if version < FORMAT_VERSION:
            for name in (b"patient", b"study", b"series", b"child", b"attr"):
                txn.drop(self.dbs[name], delete=False)
            for _, raw in txn.cursor(db=self.dbs[b"inst"]):
                rec = InstanceRecord.from_json(bytes(raw))
                pkey, clash = self._parent_patient(txn, rec)
                if clash:
                    raise ArchiveStorageError(f"cannot upgrade the index at {self.path}: "
                                              f"instance {rec.sop_instance_uid}: {clash}")
                self._link(txn, rec, pkey)
                count += 1
        txn.put(b"format", str(FORMAT_VERSION).encode(), db=self.dbs[b"meta"])
        return count

    # -- reads -------------------------------------------------------------------
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        if not sop_instance_uid:
            return None
        with self.env.begin() as txn:
            raw = txn.get(sop_instance_uid.encode(), db=self.dbs[b"inst"])
        return None if raw is None else InstanceRecord.from_json(bytes(raw))

    def get_many(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRecord]:
        return {uid: InstanceRecord.from_json(raw)
                for uid, raw in self._values(b"inst", sop_instance_uids).items()}

    def headers(self, sop_instance_uids: Sequence[str]) -> dict[str, bytes]:
        return self._values(b"hdr", sop_instance_uids)

    def _values(self, db: bytes, sop_instance_uids: Sequence[str]) -> dict[str, bytes]:
        """The values of those of ``sop_instance_uids`` that ``db`` holds, by UID (one
        snapshot for all)."""
        found: dict[str, bytes] = {}
        with self.env.begin() as txn:
            for uid in dict.fromkeys(sop_instance_uids):
                raw = txn.get(uid.encode(), db=self.dbs[db]) if uid else None
                if raw is not None:
                    found[uid] = bytes(raw)
        return found

    def header(self, sop_instance_uid: str) -> bytes:
        with self.env.begin() as txn:
            raw = txn.get(sop_instance_uid.encode(), db=self.dbs[b"hdr"])
        if raw is None:
            raise NotFoundError(f"no header stored for {sop_instance_uid}")
        return bytes(raw)

    def records(self) -> Iterator[InstanceRecord]:
        with self.env.begin() as txn:
            for _, raw in txn.cursor(db=self.dbs[b"inst"]):
                yield InstanceRecord.from_json(bytes(raw))

    def stats(self) -> dict[str, Any]:
        with self.env.begin() as txn:
            raw = txn.get(b"stats", db=self.dbs[b"meta"])
        return _empty_stats() if raw is None else dict(json.loads(bytes(raw)))

    def changed(self, level: str, uid: str) -> int | None:
        if level == "instance":
            raise ValueError("changed() is kept for patients, studies and series")
        with self.env.begin() as txn:
            ids = self._patients(txn, uid) if level == "patient" else [uid]
            nodes = [n for i in ids if (n := self._json(txn, LEVEL_DB[level], i))]
        return max((int(n.get("changed", 0)) for n in nodes), default=None)

    def location_owner(self, location: str) -> str | None:
        with self.env.begin() as txn:
            raw = txn.get(location.encode(), db=self.dbs[b"loc"])
        return None if raw is None else bytes(raw).decode()

    def pending(self) -> list[str]:
        with self.env.begin() as txn:
            return [bytes(k).decode() for k, _ in txn.cursor(db=self.dbs[b"pending"])]

    def instances(self, level: str, uid: str) -> list[str]:
        if level not in LEVELS:
            raise InvalidRequestError(f"unknown level {level!r}; use one of "
                                      f"{', '.join(LEVELS)}")
        with self.env.begin() as txn:
            if level == "patient":
                ids = self._patients(txn, uid)
            else:
                db = self.dbs[LEVEL_DB[level]]
                ids = [uid] if uid and txn.get(encode(uid), db=db) is not None else []
            if level == "instance":
                return ids
            for lvl in LEVELS[LEVELS.index(level): 3]:
                ids = [c for i in ids for c in self._children(txn, lvl, i)]
            return ids

    # -- writes ------------------------------------------------------------------
    def mark_pending(self, locations: Sequence[str]) -> None:
        if locations:
            self._write(lambda txn: [txn.put(loc.encode(), b"", db=self.dbs[b"pending"])
                                     for loc in locations])

    def clear_pending(self, locations: Sequence[str]) -> None:
        if locations:
            self._write(lambda txn: [txn.delete(loc.encode(), db=self.dbs[b"pending"])
                                     for loc in locations])

    def put(self, items: Sequence[tuple[InstanceRecord, bytes]]) -> list[PutOutcome]:
        """Every record is checked before the transaction opens; one that still fails
        inside it is refused alone and the transaction retried without it, so a record
        the index cannot take never fails the others of its batch."""
        outcomes: list[PutOutcome | None] = [None] * len(items)
        todo: list[int] = []
        for i, (rec, _) in enumerate(items):
            problem = record_problem(rec, self._max_key)
            if problem:
                outcomes[i] = PutOutcome(rec.sop_instance_uid, PutStatus.INVALID, None,
                                         f"instance {rec.sop_instance_uid}: {problem}")
            else:
                todo.append(i)
        while todo:
            try:
                done = self._write(functools.partial(self._put_each, items=items,
                                                     positions=todo))
            except _RecordError as bad:
                sop = items[bad.position][0].sop_instance_uid
                outcomes[bad.position] = PutOutcome(
                    sop, PutStatus.INVALID, None, f"the index cannot take instance {sop}: "
                    f"{type(bad.error).__name__}: {bad.error}")
                todo = [i for i in todo if i != bad.position]
                continue
            for i, outcome in zip(todo, done, strict=True):
                outcomes[i] = outcome
            break
        return [o for o in outcomes if o is not None]

    def _put_each(self, txn: lmdb.Transaction, *,
                  items: Sequence[tuple[InstanceRecord, bytes]],
                  positions: Sequence[int]) -> list[PutOutcome]:
        out = []
        for i in positions:
            try:
                out.append(self._put_one(txn, *items[i]))
            except _RECORD_ERRORS as exc:
                raise _RecordError(i, exc) from exc
        return out

    def _parent_patient(self, txn: lmdb.Transaction, rec: InstanceRecord
                        ) -> tuple[str, str | None]:
        """The patient key an instance goes under, and why it cannot, if it cannot."""
        attrs = rec.attributes
        pkey = patient_key(attrs.get("PatientID"), attrs.get("IssuerOfPatientID"),
                           rec.study_uid)
        study = self._json(txn, b"study", rec.study_uid)
        series = self._json(txn, b"series", rec.series_uid)
        clash = None
        if study is not None:
            if not same_patient(study["parent"], pkey):
                clash = (f"study {rec.study_uid} belongs to the patient "
                         f"{patient_label(study['parent'])}, this instance names the "
                         f"patient {patient_label(pkey)}")
            pkey = study["parent"]
        if series is not None and series["parent"] != rec.study_uid:
            clash = f"series {rec.series_uid} belongs to study {series['parent']}"
        return pkey, clash

    def _put_one(self, txn: lmdb.Transaction, rec: InstanceRecord, header: bytes) -> PutOutcome:
        sop = rec.sop_instance_uid
        raw = txn.get(encode(sop), db=self.dbs[b"inst"])
        if raw is not None:
            existing = InstanceRecord.from_json(bytes(raw))
            status = (PutStatus.DUPLICATE if existing.same_instance(rec)
                      else PutStatus.CONFLICT)
            return PutOutcome(sop, status, existing)
        pkey, clash = self._parent_patient(txn, rec)
        if clash:
            return PutOutcome(sop, PutStatus.REFUSED, None,
                              f"instance {sop} contradicts the archive: {clash} (hint: "
                              "correct the patient/study identifiers at the source)")
        self._link(txn, rec, pkey)
        txn.put(encode(sop), rec.to_json(), db=self.dbs[b"inst"])
        if header:
            txn.put(encode(sop), header, db=self.dbs[b"hdr"])
        txn.put(encode(rec.location), encode(sop), db=self.dbs[b"loc"])
        txn.delete(encode(rec.location), db=self.dbs[b"pending"])
        self._count(txn, rec, +1)
        return PutOutcome(sop, PutStatus.STORED)

    def _link(self, txn: lmdb.Transaction, rec: InstanceRecord, pkey: str) -> None:
        """Enter an instance in the hierarchy (patient, study, series records, child
        lists, counts) and in the matching index."""
        attrs = rec.attributes
        chain = (("patient", pkey, None), ("study", rec.study_uid, pkey),
                 ("series", rec.series_uid, rec.study_uid))
        for level, uid, parent in chain:
            node = self._json(txn, LEVEL_DB[level], uid)
            if node is None:
                node = self._new_node(txn, level, uid, parent, attrs)
            node["instances"] += 1
            node["changed"] = txn.id()
            node["bytes_in"] += rec.bytes_in
            node["bytes_stored"] += rec.bytes_stored
            modality = attrs.get("Modality")
            if level == "study" and modality and modality not in node["modalities"]:
                node["modalities"] = sorted([*node["modalities"], modality])
            self._put_json(txn, LEVEL_DB[level], uid, node)
        sop = rec.sop_instance_uid
        txn.put(child_key("series", rec.series_uid), encode(sop), db=self.dbs[b"child"],
                dupdata=True)
        self._index_attrs(txn, "instance", sop, [attrs], add=True)

    def _new_node(self, txn: lmdb.Transaction, level: str, uid: str, parent: str | None,
                  attrs: Mapping[str, Any]) -> dict[str, Any]:
        """A new patient, study or series record, linked to its parent.  A patient's
        matching values are those of its studies (each new study adds its set)."""
        node: dict[str, Any] = {"parent": parent, "children": 0, "instances": 0,
                                "bytes_in": 0, "bytes_stored": 0, "modalities": []}
        if level == "patient":
            node["variants"] = []
        else:
            node["attrs"] = level_attrs(level, attrs)
            self._index_attrs(txn, level, uid, [node["attrs"]], add=True)
        if parent is not None:
            txn.put(child_key(_PARENT[level], parent), encode(uid),
                    db=self.dbs[b"child"], dupdata=True)
            up = self._json(txn, LEVEL_DB[_PARENT[level]], parent)
            assert up is not None
            up["children"] += 1
            if level == "study":
                self._set_variants(txn, parent, up, [*up["variants"], variant(attrs)])
            self._put_json(txn, LEVEL_DB[_PARENT[level]], parent, up)
        return node

    def _count(self, txn: lmdb.Transaction, rec: InstanceRecord, sign: int) -> None:
        raw = txn.get(b"stats", db=self.dbs[b"meta"])
        stats = _empty_stats() if raw is None else json.loads(bytes(raw))
        stats["instances"] += sign
        stats["compressed_instances"] += sign * int(rec.compressed)
        stats["bytes_in"] += sign * rec.bytes_in
        stats["bytes_stored"] += sign * rec.bytes_stored
        per = stats["transfer_syntaxes"]
        per[rec.stored_syntax] = per.get(rec.stored_syntax, 0) + sign
        if per[rec.stored_syntax] == 0:
            del per[rec.stored_syntax]
        txn.put(b"stats", json.dumps(stats).encode(), db=self.dbs[b"meta"])

    def delete(self, sop_instance_uids: Sequence[str]) -> list[InstanceRecord]:
        return list(self._write(
            lambda txn: [r for s in sop_instance_uids if (r := self._delete_one(txn, s))]
        ))

    def _delete_one(self, txn: lmdb.Transaction, sop: str) -> InstanceRecord | None:
        raw = txn.get(encode(sop), db=self.dbs[b"inst"])
        if raw is None:
            return None
        rec = InstanceRecord.from_json(bytes(raw))
        attrs = rec.attributes
        txn.delete(encode(sop), db=self.dbs[b"inst"])
        txn.delete(encode(sop), db=self.dbs[b"hdr"])
        txn.delete(encode(rec.location), db=self.dbs[b"loc"])
        txn.put(encode(rec.location), b"", db=self.dbs[b"pending"])
        self._index_attrs(txn, "instance", sop, [attrs], add=False)
        txn.delete(child_key("series", rec.series_uid), encode(sop), db=self.dbs[b"child"])
        study = self._json(txn, b"study", rec.study_uid)
        pkey = study["parent"] if study else patient_key(
            attrs.get("PatientID"), attrs.get("IssuerOfPatientID"), rec.study_uid)
        chain = (("series", rec.series_uid), ("study", rec.study_uid), ("patient", pkey))
        removed_child = False
        for level, uid in chain:
            node = self._json(txn, LEVEL_DB[level], uid)
            if node is None:
                continue
            node["instances"] -= 1
            node["changed"] = txn.id()
            node["bytes_in"] -= rec.bytes_in
            node["bytes_stored"] -= rec.bytes_stored
            if removed_child:
                node["children"] -= 1
            if level == "study":
                node["modalities"] = sorted({
                    str(s["attrs"].get("Modality")) for c in self._children(txn, "study", uid)
                    if (s := self._json(txn, b"series", c)) and s["attrs"].get("Modality")
                })
            if node["instances"] <= 0:
                txn.delete(encode(uid), db=self.dbs[LEVEL_DB[level]])
                self._index_attrs(txn, level, uid, node_attrs(level, node), add=False)
                if node["parent"] is not None:
                    txn.delete(child_key(_PARENT[level], node["parent"]), encode(uid),
                               db=self.dbs[b"child"])
                removed_child = True
            else:
                if level == "patient" and removed_child:  # a study went: its values too
                    left = [variant(s["attrs"]) for c in self._children(txn, "patient", uid)
                            if (s := self._json(txn, b"study", c))]
                    self._set_variants(txn, uid, node,
                                       [v for v in node["variants"] if v in left])
                self._put_json(txn, LEVEL_DB[level], uid, node)
                removed_child = False
        self._count(txn, rec, -1)
        return rec

    def close(self) -> None:
        self.env.close()
