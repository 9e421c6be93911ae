"""The embedded Index on LMDB (key layout in :mod:`pacscore.index.keys`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lmdb

from ..errors import ArchiveStorageError, NotFoundError
from .base import LEVEL_ATTRIBUTES, LEVELS, Index, PutOutcome
from .keys import (
    ATTR_INDEXED,
    DATABASES,
    DUPSORT,
    attr_key,
    attr_prefix,
    child_key,
    patient_key,
)
from .matching import Constraint, normalise, parse_constraint
from .records import InstanceRecord

__all__ = ["LmdbIndex"]

_PARENT = {"study": "patient", "series": "study", "instance": "series"}
_OWN_UID = {"patient": "PatientID", "study": "StudyInstanceUID",
            "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
# Image attributes of an instance's view, from its record's pixel layout (PS3.18
# Table 10.6.3-5 lists them among the attributes of every QIDO-RS instance result).
_LAYOUT_VIEW = {"Rows": "rows", "Columns": "columns", "BitsAllocated": "bits_allocated",
                "NumberOfFrames": "frames"}
_LEVEL_DB = {"patient": b"patient", "study": b"study", "series": b"series", "instance": b"inst"}


def _level_attrs(level: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A level's own attributes plus those of its parents (denormalised for matching)."""
    out: dict[str, Any] = {}
    for lvl in LEVELS[: LEVELS.index(level) + 1]:
        for kw in LEVEL_ATTRIBUTES[lvl]:
            out[kw] = attributes.get(kw)
    if level != "patient":
        out["StudyInstanceUID"] = attributes.get("StudyInstanceUID")
    if level in ("series", "instance"):
        out["SeriesInstanceUID"] = attributes.get("SeriesInstanceUID")
    return out


def _matches(c: Constraint, attrs: Mapping[str, Any]) -> bool:
    value = attrs.get(c.keyword)
    if c.keyword == "ModalitiesInStudy":  # multi-valued: any value matches
        return any(c.test(v) for v in str(value or "").split("\\"))
    return c.test(normalise(c.keyword, value))


def _empty_stats() -> dict[str, Any]:
    return {"instances": 0, "compressed_instances": 0, "bytes_in": 0, "bytes_stored": 0,
            "transfer_syntaxes": {}}


class LmdbIndex(Index):
    """LMDB environment at ``path`` (a directory)."""

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = 1 << 34,
                 sync: bool = True, readonly: bool = False):
        self.path = Path(path)
        try:
            self.env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=len(DATABASES) + 2,
                subdir=True, sync=sync, metasync=sync, readonly=readonly, max_readers=512,
                lock=True,
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

    # -- plumbing ----------------------------------------------------------------
    def _write(self, fn: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run ``fn`` in a write transaction, growing the map when it is full."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.BadValsizeError:  # a key or value LMDB refuses: not the disk's fault
                raise
            except lmdb.Error as exc:  # at put or commit: ENOSPC, EIO, a read-only disk...
                raise ArchiveStorageError(
                    f"index write failed ({self._write_cause()}: {exc}); the transaction "
                    f"was rolled back",
                    hint="free space on the archive's disk or fix it, then retry (a bulk "
                         "import: run it again with --resume); acknowledged data is safe"
                ) from exc

    def _write_cause(self) -> str:
        """What a failed write most likely met: LMDB reports a short write on a full
        disk as EIO, so look at the free space (a few pages of a batch need MBs)."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return "cannot write"
        return "disk full" if st.f_bavail * st.f_frsize < (16 << 20) else "cannot write"

    def _json(self, txn: lmdb.Transaction, db: bytes, key: str) -> dict[str, Any] | None:
        raw = txn.get(key.encode(), db=self.dbs[db])
        return None if raw is None else dict(json.loads(bytes(raw)))

    def _put_json(self, txn: lmdb.Transaction, db: bytes, key: str, value: Any) -> None:
        txn.put(key.encode(), json.dumps(value, separators=(",", ":")).encode(),
                db=self.dbs[db])

    def _index_attrs(self, txn: lmdb.Transaction, level: str, uid: str,
                     attrs: Mapping[str, Any], add: bool) -> None:
        db = self.dbs[b"attr"]
        for kw in ATTR_INDEXED[level]:
            key = attr_key(level, kw, normalise(kw, attrs.get(kw)))
            if add:
                txn.put(key, uid.encode(), db=db, dupdata=True)
            else:
                txn.delete(key, uid.encode(), db=db)

    # -- reads -------------------------------------------------------------------
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        with self.env.begin() as txn:
            raw = txn.get(sop_instance_uid.encode(), db=self.dbs[b"inst"])
        return None if raw is None else InstanceRecord.from_json(bytes(raw))

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
        if level == "patient":
            uid = patient_key(uid)
        with self.env.begin() as txn:
            node = self._json(txn, _LEVEL_DB[level], uid)
        return None if node is None else int(node.get("changed", 0))

    def location_owner(self, location: str) -> str | None:
        with self.env.begin() as txn:
            raw = txn.get(location.encode(), db=self.dbs[b"loc"])
        return None if raw is None else bytes(raw).decode()

    def pending(self) -> list[str]:
        with self.env.begin() as txn:
            return [bytes(k).decode() for k, _ in txn.cursor(db=self.dbs[b"pending"])]

    def _children(self, txn: lmdb.Transaction, level: str, uid: str) -> list[str]:
        cur = txn.cursor(db=self.dbs[b"child"])
        if not cur.set_key(child_key(level, uid)):
            return []
        return [bytes(v).decode() for v in cur.iternext_dup()]

    def instances(self, level: str, uid: str) -> list[str]:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
        with self.env.begin() as txn:
            if level == "instance":
                found = txn.get(uid.encode(), db=self.dbs[b"inst"]) is not None
                return [uid] if found else []
            if level == "patient":
                uid = patient_key(uid)
            ids = [uid] if txn.get(uid.encode(), db=self.dbs[_LEVEL_DB[level]]) else []
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
        return list(self._write(lambda txn: [self._put_one(txn, r, h) for r, h in items]))

    def _put_one(self, txn: lmdb.Transaction, rec: InstanceRecord, header: bytes) -> PutOutcome:
        sop = rec.sop_instance_uid
        raw = txn.get(sop.encode(), db=self.dbs[b"inst"])
        if raw is not None:
            existing = InstanceRecord.from_json(bytes(raw))
            status = "duplicate" if existing.same_instance(rec) else "conflict"
            return PutOutcome(sop, status, existing)
        attrs = rec.attributes
        pkey = patient_key(attrs.get("PatientID"))
        study = self._json(txn, b"study", rec.study_uid)
        series = self._json(txn, b"series", rec.series_uid)
        clash = None
        if study is not None and study["parent"] != pkey:
            clash = f"study {rec.study_uid} belongs to patient ID {study['parent']!r}"
        if series is not None and series["parent"] != rec.study_uid:
            clash = f"series {rec.series_uid} belongs to study {series['parent']}"
        if clash:
            return PutOutcome(sop, "refused", None,
                              f"instance {sop} contradicts the archive: {clash} (hint: "
                              "correct the patient/study identifiers at the source)")
        chain = (("patient", pkey, None), ("study", rec.study_uid, pkey),
                 ("series", rec.series_uid, rec.study_uid))
        for level, uid, parent in chain:
            node = self._json(txn, _LEVEL_DB[level], uid)
            if node is None:
                node = {"parent": parent, "attrs": _level_attrs(level, attrs), "children": 0,
                        "instances": 0, "bytes_in": 0, "bytes_stored": 0, "modalities": []}
                self._index_attrs(txn, level, uid, node["attrs"], add=True)
                if parent is not None:
                    txn.put(child_key(_PARENT[level], parent), uid.encode(),
                            db=self.dbs[b"child"], dupdata=True)
                    up = self._json(txn, _LEVEL_DB[_PARENT[level]], parent)
                    assert up is not None
                    up["children"] += 1
                    self._put_json(txn, _LEVEL_DB[_PARENT[level]], parent, up)
            node["instances"] += 1
            node["changed"] = txn.id()
            node["bytes_in"] += rec.bytes_in
            node["bytes_stored"] += rec.bytes_stored
            modality = attrs.get("Modality")
            if level == "study" and modality and modality not in node["modalities"]:
                node["modalities"] = sorted([*node["modalities"], modality])
            self._put_json(txn, _LEVEL_DB[level], uid, node)
        txn.put(child_key("series", rec.series_uid), sop.encode(), db=self.dbs[b"child"],
                dupdata=True)
        txn.put(sop.encode(), rec.to_json(), db=self.dbs[b"inst"])
        if header:
            txn.put(sop.encode(), header, db=self.dbs[b"hdr"])
        self._index_attrs(txn, "instance", sop, attrs, add=True)
        txn.put(rec.location.encode(), sop.encode(), db=self.dbs[b"loc"])
        txn.delete(rec.location.encode(), db=self.dbs[b"pending"])
        self._count(txn, rec, +1)
        return PutOutcome(sop, "stored")

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
        raw = txn.get(sop.encode(), db=self.dbs[b"inst"])
        if raw is None:
            return None
        rec = InstanceRecord.from_json(bytes(raw))
        attrs = rec.attributes
        txn.delete(sop.encode(), db=self.dbs[b"inst"])
        txn.delete(sop.encode(), db=self.dbs[b"hdr"])
        txn.delete(rec.location.encode(), db=self.dbs[b"loc"])
        txn.put(rec.location.encode(), b"", db=self.dbs[b"pending"])
        self._index_attrs(txn, "instance", sop, attrs, add=False)
        txn.delete(child_key("series", rec.series_uid), sop.encode(), db=self.dbs[b"child"])
        chain = (("series", rec.series_uid), ("study", rec.study_uid),
                 ("patient", patient_key(attrs.get("PatientID"))))
        removed_child = False
        for level, uid in chain:
            node = self._json(txn, _LEVEL_DB[level], uid)
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
                txn.delete(uid.encode(), db=self.dbs[_LEVEL_DB[level]])
                self._index_attrs(txn, level, uid, node["attrs"], add=False)
                if node["parent"] is not None:
                    txn.delete(child_key(_PARENT[level], node["parent"]), uid.encode(),
                               db=self.dbs[b"child"])
                removed_child = True
            else:
                self._put_json(txn, _LEVEL_DB[level], uid, node)
                removed_child = False
        self._count(txn, rec, -1)
        return rec

    # -- queries -----------------------------------------------------------------
    def find(self, level: str, query: Mapping[str, str], *, limit: int | None = None,
             offset: int = 0, fuzzy: bool = False) -> list[dict[str, Any]]:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
        if level == "study" and "Modality" in query:  # C-FIND: ModalitiesInStudy
            query = {("ModalitiesInStudy" if k == "Modality" else k): v
                     for k, v in query.items()}
        constraints = [parse_constraint(k, v, fuzzy=fuzzy) for k, v in query.items()]
        active = [c for c in constraints if c.kind != "universal"]
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        with self.env.begin() as txn:
            for uid in self._candidates(txn, level, active):
                if uid in seen:  # a repeated value in a UID list, or a multi-key hit
                    continue
                seen.add(uid)
                attrs = self._level_view(txn, level, uid)
                if attrs is not None and all(_matches(c, attrs) for c in active):
                    out.append(attrs)
        end = None if limit is None else offset + limit
        return out[offset:end]

    def _level_view(self, txn: lmdb.Transaction, level: str, uid: str) -> dict[str, Any] | None:
        if level == "instance":
            raw = txn.get(uid.encode(), db=self.dbs[b"inst"])
            if raw is None:
                return None
            record = json.loads(bytes(raw))  # a few fields needed: no InstanceRecord
            view = _level_attrs("instance", record["attributes"])
            view["AvailableTransferSyntaxUID"] = record["stored_syntax"]  # (0008,3002)
            layout = record.get("layout") or {}
            view.update((kw, layout[name]) for kw, name in _LAYOUT_VIEW.items()
                        if name in layout)
            return view
        node = self._json(txn, _LEVEL_DB[level], uid)
        if node is None:
            return None
        view = dict(node["attrs"])
        if level == "patient":
            view["NumberOfPatientRelatedStudies"] = node["children"]
            view["NumberOfPatientRelatedInstances"] = node["instances"]
        elif level == "study":
            view["ModalitiesInStudy"] = "\\".join(node["modalities"])
            view["NumberOfStudyRelatedSeries"] = node["children"]
            view["NumberOfStudyRelatedInstances"] = node["instances"]
        else:
            view["NumberOfSeriesRelatedInstances"] = node["instances"]
        return view

    def _candidates(self, txn: lmdb.Transaction, level: str,
                    active: list[Constraint]) -> Iterator[str]:
        """Ids worth testing, from the most selective usable index."""
        by_kw = {c.keyword: c for c in active}
        own = by_kw.get(_OWN_UID[level])
        if own is not None and own.kind in ("single", "list"):
            yield from (patient_key(v) if level == "patient" else v for v in own.values)
            return
        if level == "instance" and "SeriesInstanceUID" in by_kw \
                and by_kw["SeriesInstanceUID"].kind in ("single", "list"):
            for series in by_kw["SeriesInstanceUID"].values:
                yield from self._children(txn, "series", series)
            return
        for kw in ATTR_INDEXED[level]:
            c = by_kw.get(kw)
            if c is None:
                continue
            if c.kind in ("single", "list"):
                for value in c.values:
                    yield from self._attr_exact(txn, level, kw, value)
                return
            if (c.kind == "wildcard" and c.prefix) or c.kind == "range":
                yield from self._attr_range(txn, level, c)
                return
        cur = txn.cursor(db=self.dbs[_LEVEL_DB[level]])
        for key in cur.iternext(keys=True, values=False):
            yield bytes(key).decode()

    def _attr_exact(self, txn: lmdb.Transaction, level: str, kw: str, value: str
                    ) -> Iterator[str]:
        cur = txn.cursor(db=self.dbs[b"attr"])
        if cur.set_key(attr_key(level, kw, value)):
            for v in cur.iternext_dup():
                yield bytes(v).decode()

    def _attr_range(self, txn: lmdb.Transaction, level: str, c: Constraint) -> Iterator[str]:
        """Ids whose indexed value may satisfy a prefix wildcard or a range: one cursor
        walk from the lower bound to the upper one (the matcher has the last word)."""
        base = attr_prefix(level, c.keyword)
        if c.kind == "wildcard":
            start = stop_prefix = base + c.prefix.encode()
            high = None
        else:
            start, stop_prefix = base + c.values[0].encode(), base
            high = base + c.values[1].encode() if c.values[1] else None
        cur = txn.cursor(db=self.dbs[b"attr"])
        if not cur.set_range(start):
            return
        for key, value in cur.iternext(keys=True, values=True):
            k = bytes(key)
            if not k.startswith(stop_prefix) or (high is not None and k[: len(high)] > high):
                return
            yield bytes(value).decode()

    def close(self) -> None:
        self.env.close()
