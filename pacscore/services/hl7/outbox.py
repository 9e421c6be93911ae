"""The HL7 outbox: reports waiting to be sent, kept with the archive so that they
survive restarts (``<archive>/outbox.lmdb``; on an archive whose index is PostgreSQL,
in that database, one outbox for all its front ends: :mod:`pacscore.kv`).

Named databases::

    queue   key -> JSON entry (see :class:`OutboxEntry`); sent entries are removed
    ledger  SOP Instance UID -> JSON: what became of it (queued, sent, refused, before)
    meta    b"next" -> the next key

A report is queued once (the ledger is checked in the same transaction), its message
is built once and kept in the entry, so every resend is the same message with the same
control ID (MSH-10): a receiver that got it but whose ACK was lost sees a duplicate it
can recognise.  An entry leaves the queue only in the transaction that records its
acknowledgement: nothing acknowledged is sent again, nothing unacknowledged is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ...errors import NotFoundError
from ...kv import KvEnv, LmdbKv, Txn, adopt, shared_env

__all__ = ["Outbox", "OutboxEntry", "OutboxState"]

_DATABASES = (b"queue", b"ledger", b"meta")
_KEY_DIGITS = 12


class OutboxState(StrEnum):
    """Where a queued report stands."""

    QUEUED = "queued"
    """To be sent (at :attr:`OutboxEntry.next_try`)."""
    REFUSED = "refused"
    """The receiver answered AR/CR (the message as such is refused): kept, not retried
    until ``pacscore hl7 resend``."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One report on its way out."""

    key: str
    """Its place in the queue (12 digits, in the order reports were stored)."""
    sop_instance_uid: str
    """The SR instance."""
    destination: str
    """``host:port`` of the receiver."""
    control_id: str
    """MSH-10 of its message (the same at every attempt)."""
    state: OutboxState = OutboxState.QUEUED
    attempts: int = 0
    """Attempts made so far."""
    next_try: float = 0.0
    """When to try next (seconds since the epoch)."""
    error: str = ""
    """Why the last attempt failed."""
    message: str = ""
    """The message, once built (empty before the first attempt)."""
    queued_at: float = 0.0


def _encode(entry: OutboxEntry) -> bytes:
    return json.dumps(asdict(entry), separators=(",", ":")).encode()


def _decode(raw: bytes | memoryview) -> OutboxEntry:
    data: dict[str, Any] = json.loads(bytes(raw))
    data["state"] = OutboxState(data["state"])
    return OutboxEntry(**data)


class Outbox:
    """The reports of one archive waiting for their receiver: ``<root>/outbox.lmdb``,
    or in the database of ``index`` when that is shared (PostgreSQL)."""

    def __init__(self, root: Path, *, sync: bool = True, index: object = None):
        self.path = root / "outbox.lmdb"
        shared = shared_env(index, "outbox", _DATABASES)
        self.env: KvEnv = shared if shared is not None else LmdbKv(
            self.path, _DATABASES, what="HL7 outbox", sync=sync, map_size=1 << 28)
        self.shared = shared is not None
        """One outbox for every front end of the archive."""
        self.dbs = self.env.dbs
        if shared is not None:  # the folder's outbox of before: copied once
            adopt(shared, self.path, what="HL7 outbox", marker=(b"meta", b"format", b"1"))

    def close(self) -> None:
        """Close the environment (idempotent)."""
        self.env.close()

    def _write(self, fn: Any) -> Any:
        return self.env.write(fn)

    def _ledger(self, txn: Txn, sop: str, what: str, **detail: Any) -> None:
        txn.put(sop.encode(), json.dumps({"what": what, "time": time.time(), **detail},
                                         separators=(",", ":")).encode(),
                db=self.dbs[b"ledger"])

    # -- queueing ----------------------------------------------------------------
    def enqueue(self, sops: Sequence[str], destination: str) -> list[OutboxEntry]:
        """Queue a report of each instance the ledger does not know yet (one
        transaction); return the new entries."""
        def run(txn: Txn) -> list[OutboxEntry]:
            meta, ledger = self.dbs[b"meta"], self.dbs[b"ledger"]
            number = int(txn.get(b"next", b"1", db=meta))
            added = []
            for sop in dict.fromkeys(sops):
                if txn.get(sop.encode(), db=ledger) is not None:
                    continue
                key = f"{number:0{_KEY_DIGITS}d}"
                number += 1
                entry = OutboxEntry(key, sop, destination, f"PACSCORE{key}",
                                    queued_at=time.time())
                txn.put(key.encode(), _encode(entry), db=self.dbs[b"queue"])
                self._ledger(txn, sop, "queued", key=key)
                added.append(entry)
            txn.put(b"next", str(number).encode(), db=meta)
            return added
        result: list[OutboxEntry] = self._write(run)
        return result

    def mark_before(self, sops: Sequence[str]) -> int:
        """Record instances stored before reports went out (never sent); how many were
        new to the ledger."""
        def run(txn: Txn) -> int:
            ledger = self.dbs[b"ledger"]
            fresh = [s for s in dict.fromkeys(sops) if txn.get(s.encode(), db=ledger) is None]
            for sop in fresh:
                self._ledger(txn, sop, "before")
            return len(fresh)
        count: int = self._write(run)
        return count

    def started(self) -> bool:
        """Reports went out from this archive before (the ledger was begun)."""
        return self.env.get(b"started", db=self.dbs[b"meta"]) is not None

    def start(self) -> None:
        """Record that reports go out from now on (see :meth:`started`)."""
        self._write(lambda txn: txn.put(b"started", str(time.time()).encode(),
                                        db=self.dbs[b"meta"]))

    def known(self, sop: str) -> dict[str, Any] | None:
        """What the ledger says of an instance."""
        raw = self.env.get(sop.encode(), db=self.dbs[b"ledger"])
        return None if raw is None else dict(json.loads(raw))

    # -- reading ------------------------------------------------------------------
    def entries(self) -> list[OutboxEntry]:
        """Every entry, in queue order."""
        with self.env.begin() as txn:
            return [_decode(raw) for _, raw in txn.cursor(db=self.dbs[b"queue"])]

    def due(self, now: float) -> list[OutboxEntry]:
        """Queued entries whose time has come, in queue order."""
        return [e for e in self.entries()
                if e.state == OutboxState.QUEUED and e.next_try <= now]

    def next_try(self) -> float | None:
        """When the earliest queued entry is due."""
        times = [e.next_try for e in self.entries() if e.state == OutboxState.QUEUED]
        return min(times) if times else None

    # -- outcomes -------------------------------------------------------------------
    def _update(self, key: str, **changes: Any) -> OutboxEntry:
        def run(txn: Txn) -> OutboxEntry:
            raw = txn.get(key.encode(), db=self.dbs[b"queue"])
            if raw is None:
                raise NotFoundError(f"no report {key} in the HL7 outbox",
                                    hint="list them with `pacscore hl7 outbox`")
            entry = replace(_decode(raw), **changes)
            txn.put(key.encode(), _encode(entry), db=self.dbs[b"queue"])
            if entry.state == OutboxState.REFUSED:
                self._ledger(txn, entry.sop_instance_uid, "refused", key=key,
                             reason=entry.error)
            return entry
        result: OutboxEntry = self._write(run)
        return result

    def built(self, key: str, message: str) -> OutboxEntry:
        """Keep the message built for an entry (every attempt sends it)."""
        return self._update(key, message=message)

    def failed(self, key: str, reason: str, retry_at: float) -> OutboxEntry:
        """An attempt failed for a passing reason: try again at ``retry_at``."""
        entry = self._entry(key)
        return self._update(key, attempts=entry.attempts + 1, error=reason,
                            next_try=retry_at)

    def refused(self, key: str, reason: str) -> OutboxEntry:
        """The receiver refused the message as such: keep it, stop trying."""
        entry = self._entry(key)
        return self._update(key, attempts=entry.attempts + 1, error=reason,
                            state=OutboxState.REFUSED)

    def resend(self, key: str) -> OutboxEntry:
        """Queue an entry again now (after a refusal was dealt with at the receiver)."""
        return self._update(key, state=OutboxState.QUEUED, next_try=0.0)

    def sent(self, key: str, answer: str) -> None:
        """The receiver acknowledged the entry: it leaves the queue and the ledger says
        so, in one transaction."""
        def run(txn: Txn) -> None:
            raw = txn.get(key.encode(), db=self.dbs[b"queue"])
            if raw is None:
                return
            entry = _decode(raw)
            txn.delete(key.encode(), db=self.dbs[b"queue"])
            self._ledger(txn, entry.sop_instance_uid, "sent", key=key,
                         control_id=entry.control_id, destination=entry.destination,
                         answer=answer, attempts=entry.attempts + 1)
        self._write(run)

    def _entry(self, key: str) -> OutboxEntry:
        raw = self.env.get(key.encode(), db=self.dbs[b"queue"])
        if raw is None:
            raise NotFoundError(f"no report {key} in the HL7 outbox",
                                hint="list them with `pacscore hl7 outbox`")
        return _decode(raw)
