"""Commit: index a batch of prepared instances, publish their frames, answer.

The write order (the Archive's module docstring): workers have staged each instance's
frames durably; one index transaction inserts the batch's records (the commit); the
FrameStore renames the locations into place, and, outside the commit lock, makes the
renames durable; only then are the results returned.  :class:`GroupCommit` shares one
transaction among the concurrent single stores of the network doors;
:meth:`Committer.recover` finishes or undoes what a crash interrupted.  Everything here
goes through the :class:`~pacscore.index.Index` and :class:`~pacscore.store.FrameStore`
contracts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from .dicom.compare import difference
from .errors import ConflictError, IndexUnavailableError, InvalidDicomError, PacsError
from .index import Index, InstanceRecord, PutOutcome
from .ingest.outcomes import Prepared, Rejected, StoreResult, result
from .kinds import PutStatus, StoreStatus
from .retrieve import Reader
from .store import Collectable, FrameStore

__all__ = ["Committed", "Committer", "GroupCommit"]

log = logging.getLogger(__name__)


class _Waiter:
    __slots__ = ("done", "error", "outcome", "prepared")

    def __init__(self, prepared: Prepared):
        self.prepared = prepared
        self.done = False
        self.outcome: StoreResult | Rejected | None = None
        self.error: BaseException | None = None


Committed = tuple[list[StoreResult | Rejected], list[str]]
"""Outcomes of a batch, and the locations it published (to be made durable)."""


class GroupCommit:
    """Group commit for concurrent single stores (network front ends).

    Leader/follower: a thread that finds no commit running commits everything queued
    (its own instance included) in its own thread; threads arriving meanwhile queue
    up and are committed together by the next leader.  N concurrent stores share one
    index transaction, a lone store is committed at once, and no thread hand-over is
    paid when there is no concurrency.  The next batch may commit while the leader
    makes its batch's renames durable (``finish``); nobody is answered before that.
    """

    def __init__(self, commit: Callable[[Sequence[Prepared]], Committed],
                 finish: Callable[[Sequence[str], Sequence[StoreResult | Rejected]], None],
                 max_batch: int):
        self._commit, self._finish, self._max = commit, finish, max(max_batch, 1)
        self._cv = threading.Condition()
        self._queue: list[_Waiter] = []
        self._busy = False
        self._finishing = 0

    def submit(self, prepared: Prepared) -> StoreResult | Rejected:
        me = _Waiter(prepared)
        with self._cv:
            self._queue.append(me)
            while not me.done:
                if self._busy or not self._queue:
                    self._cv.wait()
                    continue
                self._busy = True
                batch, self._queue = self._queue[:self._max], self._queue[self._max:]
                self._cv.release()
                try:
                    self._run(batch)
                finally:
                    self._cv.acquire()
                    self._cv.notify_all()
        if me.error is not None:
            raise me.error
        assert me.outcome is not None
        return me.outcome

    def _run(self, batch: list[_Waiter]) -> None:
        """Commit ``batch`` as the leader, hand the role on, then finish the batch."""
        try:
            results, published = self._commit([w.prepared for w in batch])
        except BaseException as exc:  # noqa: BLE001 - handed on, not swallowed: every
            # waiter of the batch (this thread too) raises it (Ctrl-C included)
            self._hand_on()
            self._answer(batch, None, exc)
            return
        self._hand_on()
        try:
            self._finish(published, results)
        except BaseException as exc:  # noqa: BLE001 - handed on to every waiter, as above
            self._answer(batch, None, exc)
        else:
            self._answer(batch, results, None)

    def _hand_on(self) -> None:
        with self._cv:
            self._busy = False
            self._finishing += 1
            self._cv.notify_all()

    def _answer(self, batch: list[_Waiter], results: list[StoreResult | Rejected] | None,
                error: BaseException | None) -> None:
        with self._cv:
            for i, w in enumerate(batch):
                w.outcome = None if results is None else results[i]
                w.error, w.done = error, True
            self._finishing -= 1
            self._cv.notify_all()

    def close(self) -> None:
        """Wait for a running commit to finish."""
        with self._cv:
            while self._busy or self._queue or self._finishing:
                self._cv.wait(timeout=1)


class Committer:
    """Commits batches into ``index`` and ``store``, one at a time (:attr:`lock`; the
    network doors store from several threads), and calls ``notify`` with the instances
    of every batch once they are acknowledged."""

    def __init__(self, index: Index, store: FrameStore, reader: Reader,
                 notify: Callable[[Sequence[StoreResult]], None]):
        self.index, self.store, self.reader = index, store, reader
        self._notify = notify
        self.lock = threading.Lock()
        """Held from an index transaction to its renames: nothing is between the two
        while it is held (deletion takes it too)."""

    def recover(self, grace: timedelta | None = None) -> int:
        """Finish or undo what a crash interrupted: staged locations the index owns are
        moved into place, the other staged files removed, and so are the locations of
        interrupted deletions (pending and unowned); return how many were touched.

        ``grace``: the archive has other live writers (front ends sharing its index and
        object store, issue 17.3), see :meth:`_recover_shared`."""
        if grace is not None and isinstance(self.store, Collectable):
            return self._recover_shared(grace)
        owned = [loc for loc in self.store.staged() if self.index.location_owner(loc)]
        self.store.publish(owned)
        self.store.sync_published(owned)
        removed = len(owned) + self.store.clean_staging()
        pending = self.index.pending()
        orphans = [loc for loc in pending if self.index.location_owner(loc) is None]
        self.store.delete(orphans)
        self.index.clear_pending(pending)
        return removed + len(orphans)

    def _recover_shared(self, grace: timedelta) -> int:
        """Recovery beside other live writers: only staged locations whose newest
        object is older than ``grace`` are finished (owned: published) or undone (not
        owned: removed, ownership asked again just before).  A live writer publishes
        or discards its staging within one commit (seconds: the index's statement
        timeout and the store's request timeouts bound it), so what is older belongs to
        a writer that died; younger staging is left to its writer, or to the next
        start or ``pacscore gc`` once it is old.  (An object store lists as staged only
        an earlier version's markers: what a dead writer staged there since is an
        orphan that ``pacscore gc`` and the servers' background collection remove.)
        Interrupted deletions: unowned pending
        locations are deleted and their marks cleared; their records are gone and
        locations are never reused, so a live writer deleting the same ones meanwhile
        only deletes what is already gone."""
        now = datetime.now(UTC)
        assert isinstance(self.store, Collectable)
        old = [item for item in self.store.inventory()
               if item.staged and now - item.newest >= grace]
        owned = [item.location for item in old if self.index.location_owner(item.location)]
        self.store.publish(owned)
        touched = len(owned)
        for item in old:
            if item.location not in owned and self.index.location_owner(item.location) is None:
                self.store.remove_objects(item.keys)
                touched += 1
        orphans = [loc for loc in self.index.pending() if self.index.location_owner(loc) is None]
        self.store.delete(orphans)
        self.index.clear_pending(orphans)
        return touched + len(orphans)

    def commit(self, batch: Sequence[Prepared]) -> list[StoreResult | Rejected]:
        """Index and publish a batch; return outcomes in batch order (acknowledged)."""
        outcomes, published = self.commit_batch(batch)
        self.finish(published, outcomes)
        return outcomes

    def commit_batch(self, batch: Sequence[Prepared]) -> Committed:
        """Index a batch and rename it into place; serialised per Archive (network
        front ends store from several threads)."""
        with self.lock:
            return self._commit_locked(batch)

    def finish(self, published: Sequence[str],
                outcomes: Sequence[StoreResult | Rejected]) -> None:
        """Make a committed batch's renames durable, then tell the listeners."""
        self.store.sync_published(published)
        stored = [o for o in outcomes
                  if isinstance(o, StoreResult) and o.status == StoreStatus.STORED]
        if stored:
            self._notify(stored)

    def _commit_locked(self, batch: Sequence[Prepared]) -> Committed:
        try:
            decided, fresh = self._sort(batch)
        except BaseException:  # the index could not be asked: nothing committed
            self.store.discard([p.record.location for p in batch])
            raise
        self.store.discard([batch[i].record.location for i in decided])
        puts, owned = self._index_and_publish(fresh)
        by_id = {id(p): o for p, o in zip(fresh, puts, strict=True)}
        return [decided[i] if i in decided else _answer(p, by_id.get(id(p)))
                for i, p in enumerate(batch)], owned

    def _sort(self, batch: Sequence[Prepared]
              ) -> tuple[dict[int, StoreResult | Rejected], list[Prepared]]:
        """The batch's duplicates and conflicts (with what is stored, or with an earlier
        instance of the same UID in the batch), decided now by position; the rest,
        fresh, to index.  The index is asked first unless the batch's staged data is
        durable already (no duplicate would be flushed) and no UID comes twice (a later
        one is decided against the earlier, which must be decided against what is
        stored first); then its put decides (it answers with what it holds: one index
        round trip fewer per commit) and the conflicts it reports are compared in
        :meth:`_compared`."""
        seen: dict[str, Prepared] = {}
        fresh: list[Prepared] = []
        decided: dict[int, StoreResult | Rejected] = {}
        uids = [p.record.sop_instance_uid for p in batch]
        asked = not all(p.durable for p in batch) or len(set(uids)) < len(uids)
        known = self.index.get_many(uids) if asked else {}
        for i, p in enumerate(batch):
            rec = p.record
            stored = known.get(rec.sop_instance_uid)
            earlier = None if stored else seen.get(rec.sop_instance_uid)
            existing = stored or (earlier.record if earlier else None)
            if existing is None:
                seen[rec.sop_instance_uid] = p
                fresh.append(p)
            elif (why := self._difference(p, existing, earlier)) is None:
                decided[i] = result(existing, StoreStatus.DUPLICATE, p.source)
            else:
                decided[i] = Rejected(p.source, self._conflict(rec, existing, why),
                                      ConflictError)
        return decided, fresh

    def _index_and_publish(self, fresh: Sequence[Prepared]
                           ) -> tuple[list[PutOutcome], list[str]]:
        """Make the staged data durable, put the records in one index transaction (the
        point of truth), publish the locations the index took; the index's answers and
        the published locations."""
        locs = [p.record.location for p in fresh]
        try:
            if not all(p.durable for p in fresh):
                self.store.flush(locs)
            puts = self.index.put([(p.record, p.header) for p in fresh])
        except IndexUnavailableError as exc:
            if exc.committed is False:  # certainly not: no staged frame may stay behind
                self.store.discard(locs)
                raise
            puts = self._resolve(fresh, exc)  # the put may have committed: ask
        except BaseException:  # nothing committed: no staged frame may stay behind
            self.store.discard(locs)
            raise
        stored = [p.record.location for p, o in zip(fresh, puts, strict=True)
                  if o.status == PutStatus.STORED]
        owned = stored
        try:
            self.store.publish(stored)
        except PacsError:  # committed and readable in staging; the next start moves it
            log.exception("publishing committed locations failed; they stay staged")
            owned = []
        if len(stored) < len(locs):  # stored already (or by another writer since the check)
            puts = [self._compared(p, o) for p, o in zip(fresh, puts, strict=True)]
            self.store.discard(sorted(set(locs) - set(stored)))
        return puts, owned

    def _compared(self, p: Prepared, put: PutOutcome) -> PutOutcome:
        """A conflict the index reports (another SHA-256) compared as :meth:`_sort`
        compares (while ``p``'s staged data is still there): the same instance after
        all is a duplicate, otherwise the reason says what differs."""
        if put.status != PutStatus.CONFLICT or put.existing is None:
            return put
        why = self._difference(p, put.existing, None)
        return PutOutcome(put.sop_instance_uid, PutStatus.DUPLICATE if why is None
                          else PutStatus.CONFLICT, put.existing, why or "")

    def _resolve(self, fresh: Sequence[Prepared], error: IndexUnavailableError
                 ) -> list[PutOutcome]:
        """The index went away during a put: its transaction may have committed (the
        connection lost after the COMMIT went out, the answer never came back).  Ask it
        again which of the batch's locations it owns.  All of them: the batch is stored
        (their outcomes are ``stored``).  Otherwise what it owns is published, what it
        does not is discarded, and ``error`` raised: the sender is told to send again
        (what was committed after all is then a duplicate, whole).  When the index
        cannot say either, everything stays staged and ``error`` is raised: discarding
        could delete the frames of a committed record.  The next start's recovery (or,
        beside other front ends, one after the grace period) publishes what the index
        names and removes the rest; in object storage a committed location is in place
        already (reads go to the final keys) and garbage collection removes the rest."""
        locs = [p.record.location for p in fresh]
        try:
            owners = [self.index.location_owner(loc) for loc in locs]
        except IndexUnavailableError:
            log.warning("the index went away during a commit and cannot tell whether it "
                        "took place: %d staged locations kept for recovery", len(locs))
            raise error from None
        mine = [o == p.record.sop_instance_uid for p, o in zip(fresh, owners, strict=True)]
        if all(mine):
            log.warning("the index went away during a commit that took place: %d "
                        "instances stored", len(locs))
            return [PutOutcome(p.record.sop_instance_uid, PutStatus.STORED) for p in fresh]
        self.store.discard([loc for loc, m in zip(locs, mine, strict=True) if not m])
        self.store.publish([loc for loc, m in zip(locs, mine, strict=True) if m])
        raise error

    @staticmethod
    def _conflict(new: InstanceRecord, old: InstanceRecord, why: str) -> str:
        # what differs first: an Error Comment (0000,0902) is an LO of 64 characters
        # (PS3.7 Annex E, PS3.5 6.2)
        return (f"{why}: SOP Instance UID {new.sop_instance_uid} is already stored with "
                f"different content (sha256 {old.sha256[:12]}… stored, {new.sha256[:12]}… "
                f"received); the stored instance was kept (hint: delete it first to "
                f"replace it)")

    def _difference(self, new: Prepared, old: InstanceRecord, old_staged: Prepared | None
                    ) -> str | None:
        """What differs between a staged instance and the one of the same UID stored
        (or staged earlier in the batch), or None when it is the same instance
        (:func:`~pacscore.dicom.compare.difference`; only when the bytes differ)."""
        rec = new.record
        if rec.sha256 == old.sha256 or (
                rec.content_sha256 and rec.content_sha256 == old.content_sha256):
            return None
        try:
            return difference(self.reader.content(rec, new.header), self.reader.content(
                old, old_staged.header if old_staged is not None else None))
        except PacsError as exc:  # a damaged stored copy: never silently a duplicate
            return f"the two cannot be compared ({exc.reason})"


def _answer(p: Prepared, put: PutOutcome | None) -> StoreResult | Rejected:
    """What the client of a fresh instance is told, from the index's answer."""
    if put is None or put.status == PutStatus.STORED:
        return result(p.record, StoreStatus.STORED, p.source)
    if put.status == PutStatus.DUPLICATE and put.existing is not None:
        return result(put.existing, StoreStatus.DUPLICATE, p.source)
    if put.existing is not None:
        return Rejected(p.source, Committer._conflict(
            p.record, put.existing, put.reason or "its content differs"), ConflictError)
    # refused (contradicts the hierarchy) or invalid (a value it cannot take)
    return Rejected(p.source, put.reason, InvalidDicomError
                    if put.status == PutStatus.INVALID else ConflictError)
