"""The worklist: scheduled procedure steps kept with the archive.

Its own key-value environment (:mod:`pacscore.kv`): by default the LMDB environment
``<archive>/workflow.lmdb`` beside the archive's index (the instance index stays the
archive writer's, while worklist items may be added by another process at any time:
``pacscore worklist add`` while ``pacscore serve`` runs; LMDB serialises writers
between processes); on an archive whose index is PostgreSQL, tables of that database
(:mod:`pacscore.index.postgres.kv`), shared by all its front ends.  Every change is one
transaction, durable at commit.  Named databases::

    item    key -> the item's data set (Explicit VR Little Endian, no File Meta)
    state   key -> JSON: status, identifiers, times
    match   (dupsort) field NUL value -> key, for listed items only (the query index)
    ident   (dupsort) field NUL value -> key, every item (cancel and look-ups by id)
    meta    b"next" -> the next key (decimal); b"format" -> layout version
    patient Patient ID -> JSON demographics (HL7 ADT; ``merged_into`` after an A40)
    message sender NUL facility NUL message control ID -> the ACK sent (HL7 dedup)
    mpps    Performed Procedure Step SOP Instance UID -> its data set (MPPS,
            :mod:`pacscore.workflow.mpps`)
    mpps_state  the same UID -> JSON: status, the steps it drives, times
    correction, correction_log   the patient corrections overlay (:mod:`.corrections`)

Keys are 12-digit decimal counters, so they sort in the order items were added.  Index
values are cut at :data:`~.steps.INDEXED_BYTES` (every lookup is confirmed by the
matcher).  The model (statuses, identifiers, items) is :mod:`.steps`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from ..errors import ArchiveStorageError, NotFoundError
from ..kinds import StepStatus
from ..kv import STORE_FAILURES, KvEnv, LmdbKv, Txn, adopt, shared_env
from . import corrections
from .corrections import CORRECTION_DATABASES, Correction, CorrectionTable, PatientEvent
from .encoding import decode_dataset, encode_dataset, reads_back
from .matching import IndexedKey, answer, check_identifier, index_plan
from .steps import (
    IDENTIFIERS,
    INDEXED,
    INDEXED_BYTES,
    KEY_DIGITS,
    LISTED,
    SPS_STATUS,
    WorkflowEvent,
    WorklistItem,
    accession,
    answer_of,
    asks_status,
    check_item,
    entries,
    identifiers,
    text_key,
    with_status,
)
from .textitem import TextItem

__all__ = ["DATABASES", "DUPSORT", "IDENTIFIERS", "INDEXED", "LISTED", "SPS_STATUS", "Changes",
           "WorkflowEvent", "Worklist", "WorklistItem"]

DATABASES = (b"item", b"state", b"match", b"ident", b"meta", b"patient", b"message",
             b"mpps", b"mpps_state", *CORRECTION_DATABASES)
"""The named databases of the worklist's environment (module docstring)."""
DUPSORT = frozenset({b"match", b"ident"})
"""Those of them with several values per key."""
_FORMAT = b"1"
T = TypeVar("T")
STAMP_TTL = 1.0
"""Seconds a shared worklist's correction stamp is trusted before it is read again
(:meth:`Worklist.corrections`)."""


class Worklist:
    """The scheduled procedure steps of one archive: ``<root>/workflow.lmdb``, or the
    database of ``index`` when that is shared (PostgreSQL; :func:`pacscore.kv.shared_env`)."""

    def __init__(self, root: Path, *, sync: bool = True, readonly: bool = False,
                 map_size: int = 1 << 30, index: object = None):
        self.path = root / "workflow.lmdb"
        shared = shared_env(index, "workflow", DATABASES, dupsort=DUPSORT)
        self.env: KvEnv = shared if shared is not None else LmdbKv(
            self.path, DATABASES, what="worklist", dupsort=DUPSORT, sync=sync,
            readonly=readonly, map_size=map_size, optional=CORRECTION_DATABASES)
        self.shared = shared is not None
        """Kept in the shared index (every front end of the archive sees it)."""
        self.dbs = self.env.dbs
        self._listeners: list[Callable[[WorkflowEvent | PatientEvent], None]] = []
        self._table = corrections.EMPTY
        self._stamp_ttl = STAMP_TTL if self.shared else 0.0
        self._fresh_until = 0.0
        if not readonly and shared is not None:  # the folder's worklist of before: copied
            adopt(shared, self.path, what="worklist", dupsort=DUPSORT,  # once
                  marker=(b"meta", b"format", _FORMAT))
        elif not readonly:
            self._write(lambda txn: txn.put(b"format", _FORMAT, db=self.dbs[b"meta"],
                                            overwrite=False))

    def close(self) -> None:
        """Close the environment (idempotent)."""
        self.env.close()

    # -- plumbing ----------------------------------------------------------------
    def _write(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` in one write transaction (ArchiveStorageError when the store
        fails: nothing of it is kept)."""
        try:
            return self.env.write(fn)
        finally:
            self._fresh_until = 0.0  # this process's corrections are served at once

    def _value(self, txn: Txn, key: bytes, db: bytes) -> bytes:
        """A value that the transaction's other records say exists."""
        raw = txn.get(key, db=self.dbs[db])
        if raw is None:
            raise ArchiveStorageError(f"worklist {self.env.where}: item {key.decode()} has "
                                      f"no {db.decode()} record", hint="report it: the "
                                      "worklist is inconsistent (Worklist.check lists the "
                                      "problems)")
        return bytes(raw)

    def on_change(self, listener: Callable[[WorkflowEvent | PatientEvent], None]) -> None:
        """Call ``listener`` after every committed change (the audit trail): steps
        (:class:`WorkflowEvent`) and patient corrections (:class:`PatientEvent`)."""
        self._listeners.append(listener)

    def _notify(self, events: Iterable[WorkflowEvent | PatientEvent]) -> None:
        for event in events:
            for listener in self._listeners:
                listener(event)

    # -- writes ------------------------------------------------------------------
    def change(self, fn: Callable[[Changes], T], *, by: str = "api") -> T:
        """Run ``fn`` with the :class:`Changes` of one write transaction: everything it
        does is committed together (or nothing, when it raises); the listeners hear of
        the changes after the commit."""
        events: list[WorkflowEvent | PatientEvent] = []

        def run(txn: Txn) -> T:
            events.clear()  # a map-full retry runs it again
            return fn(Changes(self, txn, by, events))

        result: T = self._write(run)
        self._notify(events)
        return result

    def change_many(self, work: Sequence[tuple[Callable[[Changes], T], str]]
                    ) -> list[T | Exception]:
        """Group commit: run each ``(fn, by)`` of ``work`` as :meth:`change` would, each
        in a transaction nested in one that commits them all (one flush to disk for the
        lot).  A ``fn`` that raises leaves nothing behind and its exception is its
        result; the others are committed.  The listeners hear of the changes after the
        commit."""
        events: list[WorkflowEvent | PatientEvent] = []

        def run(txn: Txn) -> list[T | Exception]:
            events.clear()  # a map-full retry runs it again
            results: list[T | Exception] = []
            for fn, by in work:
                mine: list[WorkflowEvent | PatientEvent] = []
                child = self.env.begin(write=True, parent=txn)
                try:
                    results.append(fn(Changes(self, child, by, mine)))
                except STORE_FAILURES:  # the whole transaction's (a full map, a lost
                    with contextlib.suppress(*STORE_FAILURES):  # connection): all again
                        child.abort()
                    raise
                except Exception as exc:  # noqa: BLE001 - the message's own failure
                    child.abort()
                    results.append(exc)
                    continue
                child.commit()
                events.extend(mine)
            return results

        results: list[T | Exception] = self._write(run)
        self._notify(events)
        return results

    def add(self, item: Dataset, *, status: StepStatus = StepStatus.SCHEDULED,
            by: str = "api") -> str:
        """Add one scheduled procedure step; its key.  The item is checked (keys of
        their dictionary VR, an SPS item) and written in one transaction with its
        index entries: after a crash it is there whole or not at all."""
        return self.change(lambda c: c.add(item, status=status), by=by)

    def _index(self, txn: Txn, key: str, ds: Dataset | TextItem, db: bytes,
               table: dict[str, tuple[bool, str, bytes]], *, add: bool) -> None:
        for entry in entries(ds, table):
            if add:
                txn.put(entry, key.encode(), db=self.dbs[db], dupdata=True)
            else:
                txn.delete(entry, key.encode(), db=self.dbs[db])

    def set_status(self, keys: Iterable[str], status: StepStatus, *, by: str = "api"
                   ) -> list[str]:
        """Give the items ``keys`` the status ``status`` (one transaction); the keys
        whose status changed.  NotFoundError naming an unknown key (nothing changed)."""
        wanted = list(dict.fromkeys(keys))
        return self.change(lambda c: [k for k in wanted if c.set_status(k, status)], by=by)

    def cancel(self, which: str, *, by: str = "api") -> list[str]:
        """Cancel the items ``which`` names: a key, an Accession Number or a Scheduled
        Procedure Step ID (every listed item it names); the keys cancelled."""
        keys = [k for k in self.lookup(which) if self.status(k) in LISTED]
        if not keys:
            raise NotFoundError(f"no scheduled worklist item has the key, Accession Number "
                                f"or SPS ID {which!r}",
                                hint="list them with `pacscore worklist list`")
        return self.set_status(keys, StepStatus.CANCELLED, by=by)

    # -- reads -------------------------------------------------------------------
    def forget_messages(self, before: float, *, batch: int = 10_000) -> int:
        """Drop the answers recorded for messages committed before ``before`` (seconds
        since the epoch), a transaction per ``batch``; how many.  A sender resends
        within minutes, never weeks later: the table must not grow without end."""
        dropped, resume = 0, b""

        def run(txn: Txn) -> tuple[int, bytes | None]:
            cur, gone, seen = txn.cursor(db=self.dbs[b"message"]), 0, 0
            ok = cur.set_range(resume) if resume else cur.first()
            while ok:
                if seen == batch:
                    return gone, bytes(cur.key())  # go on from here, in a new transaction
                seen += 1
                if answer_of(bytes(cur.value()))[0] < before:
                    cur.delete()  # moves to the next record; past the last: an empty key
                    ok = bool(cur.key())
                    gone += 1
                else:
                    ok = cur.next()
            return gone, None

        while True:
            gone, after = self._write(run)
            dropped += gone
            if after is None:
                return dropped
            resume = after

    def lookup(self, which: str) -> list[str]:
        """Keys of the items whose key, Accession Number or SPS ID is ``which``."""
        with self.env.begin() as txn:
            if which.isdigit() and len(which) == KEY_DIGITS \
                    and txn.get(which.encode(), db=self.dbs[b"state"]) is not None:
                return [which]
            found: list[str] = []
            cur = txn.cursor(db=self.dbs[b"ident"])
            for char in (b"c", b"s"):
                if cur.set_key(char + b"\0" + which.encode()[:INDEXED_BYTES]):
                    found.extend(bytes(v).decode() for v in cur.iternext_dup())
            return sorted(set(found))

    def status(self, key: str) -> StepStatus:
        """The status of item ``key`` (NotFoundError if none)."""
        with self.env.begin() as txn:
            raw = txn.get(key.encode(), db=self.dbs[b"state"])
        if raw is None:
            raise NotFoundError(f"no worklist item {key!r}")
        return StepStatus(json.loads(bytes(raw))["status"])

    def get(self, key: str) -> WorklistItem:
        """One item (NotFoundError if none)."""
        with self.env.begin() as txn:
            raw = txn.get(key.encode(), db=self.dbs[b"state"])
            data = txn.get(key.encode(), db=self.dbs[b"item"])
            if raw is None or data is None:
                raise NotFoundError(f"no worklist item {key!r}",
                                    hint="list them with `pacscore worklist list`")
            return WorklistItem(key, StepStatus(json.loads(bytes(raw))["status"]),
                                decode_dataset(bytes(data)))

    def _candidates(self, txn: Txn, plan: list[IndexedKey]) -> list[bytes] | None:
        """Keys every indexed key of ``plan`` admits (sorted), or None without one."""
        found: set[bytes] | None = None
        cur = txn.cursor(db=self.dbs[b"match"])
        for k in plan:
            char = INDEXED[k.field][2] + b"\0"
            low = char + k.low.encode("utf-8", "surrogateescape")[:INDEXED_BYTES]
            keys: set[bytes] = set()
            if k.high is None and not k.prefix:
                if cur.set_key(low):
                    keys.update(bytes(v) for v in cur.iternext_dup())
            else:
                high = None if k.high is None else char + k.high.encode()[:INDEXED_BYTES]
                ok = cur.set_range(low)
                while ok:
                    entry = bytes(cur.key())
                    if not entry.startswith(char) or (k.prefix and not entry.startswith(low)) \
                            or (high is not None and k.high and entry[: len(high)] > high):
                        break
                    keys.add(bytes(cur.value()))
                    ok = cur.next()
            found = keys if found is None else found & keys
            if not found:
                return []
        return None if found is None else sorted(found)

    def find(self, query: Dataset, *, statuses: frozenset[StepStatus] = LISTED
             ) -> Iterator[tuple[WorklistItem, Dataset]]:
        """Items matching the Modality Worklist identifier ``query`` (PS3.4 K.6.1.2),
        each with its response identifier; in the order they were added.  Scheduled and
        started steps (:data:`LISTED`) unless the identifier matches on Scheduled
        Procedure Step Status (``COMPLETED`` lists the steps done: the item's data set
        says where it stands, :data:`SPS_STATUS`).  InvalidRequestError for an
        identifier that cannot be matched."""
        check_identifier(query)
        if statuses == LISTED and asks_status(query):
            statuses = frozenset(StepStatus)  # e.g. COMPLETED: see the steps done
        plan = list(index_plan(query)) if statuses <= LISTED else []
        table = self.corrections()
        if table:  # patient keys match the served values (.corrections): not the index's
            plan = [k for k in plan if k.field not in ("patient_id", "patient_name")]
        with self.env.begin() as txn:
            keys = self._candidates(txn, plan)
            if keys is None:
                keys = [bytes(k) for k in txn.cursor(db=self.dbs[b"state"]).iternext(values=False)]
            rows = []
            for k in keys:
                state = json.loads(self._value(txn, k, b"state"))
                status = StepStatus(state["status"])
                if status in statuses:
                    rows.append((k.decode(), status, self._value(txn, k, b"item")))
        for key, status, data in rows:
            ds = corrections.served_item(decode_dataset(data), table)
            response = answer(query, ds)
            if response is not None:
                if "SpecificCharacterSet" in ds:  # PS3.4 C.4.1.1.3.2: the answer's encoding
                    response.SpecificCharacterSet = ds.SpecificCharacterSet
                yield WorklistItem(key, status, ds), response

    def items(self, query: Dataset | None = None, *,
              statuses: frozenset[StepStatus] = frozenset(StepStatus)) -> Iterator[WorklistItem]:
        """Items of ``statuses`` (default: all) matching ``query`` (default: every one)."""
        for item, _ in self.find(query if query is not None else Dataset(), statuses=statuses):
            yield item

    def identities(self) -> Iterator[tuple[str, StepStatus, dict[str, list[str]]]]:
        """(key, status, :data:`IDENTIFIERS` values) of every item in the order they
        were added, from the state records alone (no data set is decoded)."""
        with self.env.begin() as txn:
            rows = [(bytes(k).decode(), json.loads(bytes(v)))
                    for k, v in txn.cursor(db=self.dbs[b"state"])]
        for key, state in rows:
            yield key, StepStatus(state["status"]), {f: list(state.get(f, []))
                                                     for f in IDENTIFIERS}

    def check(self) -> list[str]:
        """Consistency problems (none expected, even after a crash): an item without
        its data set or the reverse, index entries naming a missing or unlisted item,
        a listed item missing from the index."""
        problems: list[str] = []
        with self.env.begin() as txn:
            states = {bytes(k): json.loads(bytes(v))
                      for k, v in txn.cursor(db=self.dbs[b"state"])}
            datas = {bytes(k): bytes(v) for k, v in txn.cursor(db=self.dbs[b"item"])}
            if set(states) != set(datas):
                problems.append(f"state without data set or the reverse: "
                                f"{sorted(set(states) ^ set(datas))[:5]}")
            match = {(bytes(k), bytes(v)) for k, v in txn.cursor(db=self.dbs[b"match"])}
            expected = {(e, k) for k, s in states.items() if StepStatus(s["status"]) in LISTED
                        and k in datas for e in entries(decode_dataset(datas[k]), INDEXED)}
            if match != expected:
                problems.append(f"matching index differs: {len(match - expected)} extra, "
                                f"{len(expected - match)} missing")
            nxt = int(bytes(txn.get(b"next", b"1", db=self.dbs[b"meta"])))
            if states and int(max(states)) >= nxt:
                problems.append("key counter behind the keys")
        return problems

    def corrections(self) -> CorrectionTable:
        """The patient corrections in force (:mod:`.corrections`), read again only
        when the correction stamp moved.  The stamp is read at every call (one LMDB
        read) on a worklist of this folder; on a shared one (PostgreSQL) at most every
        :data:`STAMP_TTL` seconds, and at once after a change made through this process:
        the overlay asks for it per object served, a round trip each would slow every
        retrieval, and a correction made through another front end is then served here
        within that second."""
        now = time.monotonic()
        if now < self._fresh_until:
            return self._table
        raw = self.env.get(corrections.STAMP, db=self.dbs[b"meta"])
        if (0 if raw is None else int(raw)) != self._table.stamp:
            with self.env.begin() as txn:
                self._table = corrections.load_table(txn, self.dbs)
        self._fresh_until = now + self._stamp_ttl
        return self._table

    def correction_log(self) -> list[Correction]:
        """Every correction, merge and undo, oldest first."""
        with self.env.begin() as txn:
            return list(corrections.entries(txn, self.dbs))

    def __len__(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self.dbs[b"state"])["entries"])


class Changes:
    """The writes of one transaction (:meth:`Worklist.change`): steps, patients and
    the HL7 messages already answered, committed together."""

    def __init__(self, worklist: Worklist, txn: Txn, by: str,
                 events: list[WorkflowEvent | PatientEvent]):
        self.worklist, self.txn, self.by, self.events = worklist, txn, by, events
        self.dbs = worklist.dbs

    def add(self, item: Dataset | TextItem, *, status: StepStatus = StepStatus.SCHEDULED
            ) -> str:
        """Add one step (see :meth:`Worklist.add`); its key.  A :class:`TextItem` of
        values it can write directly (an HL7 order) is written and indexed without a
        pydicom data set (its forms are what :func:`_check_item` allows)."""
        ds: Dataset | TextItem
        if isinstance(item, TextItem) and item.direct:
            data, ds = item.encode(), item
        else:
            item = item.dataset() if isinstance(item, TextItem) else item
            check_item(item)
            data = encode_dataset(item)
            # index what will be read back (the item itself when that is the same text)
            ds = item if reads_back(item, (IDENTIFIERS, INDEXED)) else decode_dataset(data)
        state = {"status": str(status), "created": time.time(), **identifiers(ds)}
        txn, meta = self.txn, self.dbs[b"meta"]
        number = int(bytes(txn.get(b"next", b"1", db=meta)))
        txn.put(b"next", str(number + 1).encode(), db=meta)
        key = f"{number:0{KEY_DIGITS}d}"
        txn.put(key.encode(), data, db=self.dbs[b"item"])
        txn.put(key.encode(), json.dumps(state).encode(), db=self.dbs[b"state"])
        self.worklist._index(txn, key, ds, b"ident", IDENTIFIERS, add=True)
        if status in LISTED:
            self.worklist._index(txn, key, ds, b"match", INDEXED, add=True)
        self.events.append(WorkflowEvent("C", key, status, accession(ds), self.by))
        return key

    def _state(self, key: str) -> dict[str, Any]:
        raw = self.txn.get(key.encode(), db=self.dbs[b"state"])
        if raw is None:
            raise NotFoundError(f"no worklist item {key!r}",
                                hint="list them with `pacscore worklist list`")
        state: dict[str, Any] = json.loads(bytes(raw))
        return state

    def get(self, key: str) -> WorklistItem:
        """One item as this transaction sees it."""
        state = self._state(key)
        data = self.worklist._value(self.txn, key.encode(), b"item")
        return WorklistItem(key, StepStatus(state["status"]), decode_dataset(data))

    def set_status(self, key: str, status: StepStatus) -> bool:
        """Give item ``key`` the status ``status``; False when it had it already."""
        state = self._state(key)
        old = StepStatus(state["status"])
        if old == status:
            return False
        ds = decode_dataset(self.worklist._value(self.txn, key.encode(), b"item"))
        if (old in LISTED) != (status in LISTED):
            self.worklist._index(self.txn, key, ds, b"match", INDEXED, add=status in LISTED)
        state.update(status=str(status), updated=time.time())
        self.txn.put(key.encode(), json.dumps(state).encode(), db=self.dbs[b"state"])
        self.txn.put(key.encode(), encode_dataset(with_status(ds, status)),
                     db=self.dbs[b"item"])
        self.events.append(WorkflowEvent("U", key, status, accession(ds), self.by))
        return True

    def replace(self, key: str, item: Dataset) -> None:
        """Replace the attributes of item ``key`` (an order change, a patient update),
        its index entries with them; its status stays."""
        check_item(item)
        state = self._state(key)
        status = StepStatus(state["status"])
        old = decode_dataset(self.worklist._value(self.txn, key.encode(), b"item"))
        data = encode_dataset(item)
        if status != StepStatus.SCHEDULED:  # the new attributes, the status it has
            ds = decode_dataset(data)
            data = encode_dataset(with_status(ds, status))
        else:
            ds = item if reads_back(item, (IDENTIFIERS, INDEXED)) else decode_dataset(data)
        index = self.worklist._index
        index(self.txn, key, old, b"ident", IDENTIFIERS, add=False)
        index(self.txn, key, ds, b"ident", IDENTIFIERS, add=True)
        if status in LISTED:
            index(self.txn, key, old, b"match", INDEXED, add=False)
            index(self.txn, key, ds, b"match", INDEXED, add=True)
        state.update(identifiers(ds), updated=time.time())
        self.txn.put(key.encode(), data, db=self.dbs[b"item"])
        self.txn.put(key.encode(), json.dumps(state).encode(), db=self.dbs[b"state"])
        self.events.append(WorkflowEvent("U", key, status, accession(ds), self.by))

    def lookup(self, field: str, value: str) -> list[str]:
        """Keys of every item whose identifier ``field`` (of :data:`IDENTIFIERS`) is
        ``value``, in the order they were added."""
        char = IDENTIFIERS[field][2]
        cur = self.txn.cursor(db=self.dbs[b"ident"])
        entry = char + b"\0" + value.encode("utf-8", "surrogateescape")[:INDEXED_BYTES]
        found = [bytes(v).decode() for v in cur.iternext_dup()] if cur.set_key(entry) else []
        return sorted(k for k in set(found) if value in self._state(k).get(field, []))

    def status(self, key: str) -> StepStatus:
        """The status of item ``key`` in this transaction."""
        return StepStatus(self._state(key)["status"])

    # -- patients (HL7 ADT) and answered messages (HL7 dedup) --------------------
    def patient(self, patient_id: str) -> dict[str, Any] | None:
        """The demographics kept for ``patient_id``, or None."""
        raw = self.txn.get(text_key(patient_id), db=self.dbs[b"patient"])
        return None if raw is None else dict(json.loads(bytes(raw)))

    def put_patient(self, patient_id: str, record: dict[str, Any]) -> None:
        """Keep ``record`` as the demographics of ``patient_id``."""
        self.txn.put(text_key(patient_id), json.dumps(record).encode(), db=self.dbs[b"patient"])

    def answered(self, message_id: str) -> bytes | None:
        """The answer given to message ``message_id`` when it was committed, or None."""
        raw = self.txn.get(text_key(message_id), db=self.dbs[b"message"])
        return None if raw is None else answer_of(bytes(raw))[1]

    def remember(self, message_id: str, answer: bytes) -> None:
        """Record the answer to message ``message_id`` with the changes it made (and
        when, for :meth:`Worklist.forget_messages`)."""
        stamp = b"T%010d\n" % int(time.time())
        self.txn.put(text_key(message_id), stamp + answer, db=self.dbs[b"message"])


