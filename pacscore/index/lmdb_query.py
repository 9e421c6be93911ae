"""Reads of the LMDB index: matching (PS3.4 C.2.2.2) over the level records, with
the attribute index choosing the candidates (key layout in :mod:`.keys`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import lmdb

from .base import LEVEL_ATTRIBUTES, LEVELS
from .keys import ATTR_INDEXED, attr_bound, attr_key, attr_prefix, child_key, encode
from .matching import Constraint, parse_constraint, view_matches

__all__ = ["LEVEL_DB", "LmdbQueries", "instance_view", "level_attrs", "node_attrs"]

_OWN_UID = {"patient": "PatientID", "study": "StudyInstanceUID",
            "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
# Image attributes of an instance's view, from its record's pixel layout (PS3.18
# Table 10.6.3-5 lists them among the attributes of every QIDO-RS instance result).
_LAYOUT_VIEW = {"Rows": "rows", "Columns": "columns", "BitsAllocated": "bits_allocated",
                "NumberOfFrames": "frames"}
LEVEL_DB = {"patient": b"patient", "study": b"study", "series": b"series", "instance": b"inst"}


def level_attrs(level: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
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


def instance_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes an instance matches as and is listed with, from its record's
    JSON form (:meth:`InstanceRecord.to_json`)."""
    view = level_attrs("instance", record["attributes"])
    view["AvailableTransferSyntaxUID"] = record["stored_syntax"]  # (0008,3002)
    layout = record.get("layout") or {}
    view.update((kw, layout[name]) for kw, name in _LAYOUT_VIEW.items() if name in layout)
    return view


def node_attrs(level: str, node: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The attribute sets a level record is indexed and matched by (a patient: one per
    distinct set of patient-level values among its studies)."""
    return list(node["variants"]) if level == "patient" else [node["attrs"]]


class LmdbQueries:
    """The read side of :class:`~pacscore.index.lmdb_index.LmdbIndex`."""

    env: lmdb.Environment
    dbs: dict[bytes, Any]

    def _json(self, txn: lmdb.Transaction, db: bytes, key: str) -> dict[str, Any] | None:
        if not key:  # LMDB keys are never empty (a get of b"" is an error)
            return None
        raw = txn.get(encode(key), db=self.dbs[db])
        return None if raw is None else dict(json.loads(bytes(raw)))

    def _children(self, txn: lmdb.Transaction, level: str, uid: str) -> list[str]:
        cur = txn.cursor(db=self.dbs[b"child"])
        if not cur.set_key(child_key(level, uid)):
            return []
        return [bytes(v).decode("utf-8", "surrogatepass") for v in cur.iternext_dup()]

    def _patients(self, txn: lmdb.Transaction, patient_id: str) -> list[str]:
        """Keys of the patients with this Patient ID (one per issuer); none for ''."""
        return list(dict.fromkeys(self._attr_exact(txn, "patient", "PatientID",
                                                   patient_id))) if patient_id else []

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
                # a patient matches when the values of one of its studies do
                match = next((view for view in self._level_views(txn, level, uid)
                              if all(view_matches(c, view) for c in active)), None)
                if match is not None:
                    out.append(match)
        end = None if limit is None else offset + limit
        return out[offset:end]

    def _level_views(self, txn: lmdb.Transaction, level: str, uid: str
                     ) -> list[dict[str, Any]]:
        """The attribute dicts a record can match as (one per set of values)."""
        if level == "instance":
            raw = txn.get(encode(uid), db=self.dbs[b"inst"])
            if raw is None:
                return []
            # a few fields needed: no InstanceRecord
            return [instance_view(json.loads(bytes(raw)))]
        node = self._json(txn, LEVEL_DB[level], uid)
        if node is None:
            return []
        counts: dict[str, Any]
        if level == "patient":
            counts = {"NumberOfPatientRelatedStudies": node["children"],
                      "NumberOfPatientRelatedInstances": node["instances"]}
        elif level == "study":
            counts = {"ModalitiesInStudy": "\\".join(node["modalities"]),
                      "NumberOfStudyRelatedSeries": node["children"],
                      "NumberOfStudyRelatedInstances": node["instances"]}
        else:
            counts = {"NumberOfSeriesRelatedInstances": node["instances"]}
        return [{**attrs, **counts} for attrs in node_attrs(level, node)]

    def _candidates(self, txn: lmdb.Transaction, level: str,
                    active: list[Constraint]) -> Iterator[str]:
        """Ids worth testing, from the most selective usable index."""
        by_kw = {c.keyword: c for c in active}
        own = by_kw.get(_OWN_UID[level]) if level != "patient" else None
        if own is not None and own.kind in ("single", "list"):
            yield from own.values
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
        cur = txn.cursor(db=self.dbs[LEVEL_DB[level]])
        for key in cur.iternext(keys=True, values=False):
            yield bytes(key).decode("utf-8", "surrogatepass")

    def _attr_exact(self, txn: lmdb.Transaction, level: str, kw: str, value: str
                    ) -> Iterator[str]:
        cur = txn.cursor(db=self.dbs[b"attr"])
        if cur.set_key(attr_key(level, kw, value)):
            for v in cur.iternext_dup():
                yield bytes(v).decode("utf-8", "surrogatepass")

    def _attr_range(self, txn: lmdb.Transaction, level: str, c: Constraint) -> Iterator[str]:
        """Ids whose indexed value may satisfy a prefix wildcard or a range: one cursor
        walk from the lower bound to the upper one (the matcher has the last word).
        Bounds are cut where long values' hashes begin, so those are walked too."""
        base, kw = attr_prefix(level, c.keyword), c.keyword
        if c.kind == "wildcard":
            start = stop_prefix = attr_bound(level, kw, c.prefix)
            high = None
        else:
            start, stop_prefix = attr_bound(level, kw, c.values[0]), base
            high = attr_bound(level, kw, c.values[1]) if c.values[1] else None
        cur = txn.cursor(db=self.dbs[b"attr"])
        if not cur.set_range(start):
            return
        for key, value in cur.iternext(keys=True, values=True):
            k = bytes(key)
            if not k.startswith(stop_prefix) or (high is not None and k[: len(high)] > high):
                return
            yield bytes(value).decode("utf-8", "surrogatepass")

