"""FrameStore on S3-compatible object storage (through ``obstore``).

Layout under ``s3://<bucket>/<prefix>/`` (the Zarr layout of
:mod:`~pacscore.store.zarr_store`, so ``zarr.open`` over an object store reads the arrays)::

    arrays/<ab>/<loc>/zarr.json        array metadata, codec pacscore.dicom_frame
    arrays/<ab>/<loc>/c.<f>.0.0[.0]    frame f: exactly one DICOM codestream
    blobs/<ab>/<loc>                   an object kept as received
    staging/<loc>                      (only from versions before 2026-12-05: a marker,
                                       <loc> staged and not yet published)

One object per frame: a frame read is one GET of a whole object, no offsets to keep.

S3 has no rename, so the contract's steps map to:

- **stage**: PUT the location's objects, concurrently, every one with conditional
  create (``If-None-Match: *``): nothing is ever overwritten; when one PUT fails,
  those of the call that succeeded are deleted again; an S3 PUT is durable when it
  answers, so ``make_durable``/``flush``/``sync_published`` have nothing left to do;
- **index commit** (the archive's): the point of truth; reads go to the final keys, so
  the location is readable from then on, and it is the archive's because the index
  names it: nothing in the bucket says so;
- **publish**: nothing to move; a location made longer ago than :data:`UNCHECKED_AGE`
  is checked to still be there (gc may have taken it);
- what a crash leaves (objects no committed record names: staged and never committed,
  a delete that stopped midway, a second writer's leftovers) is removed by
  ``pacscore gc`` and by the server's background collection after a grace period
  (:mod:`pacscore.gc`).

Staged and not yet published is known only to the process that staged
(:meth:`~ObjectFrameStore.staged`, :meth:`~ObjectFrameStore.clean_staging`, and what
``locations`` and ``delete`` leave alone); the :class:`~pacscore.store.FrameStore`
contract says so with ``staging_area = False``.  Earlier versions marked every
staging with an object ``staging/<loc>``, PUT beside the data and deleted after the
commit: two more requests per instance, which cost a scaled front end a sixth of its
ingest rate (``benches/test_front_ends.py``: the floor set-up).  Markers such versions
left are still honoured: listed as staged, removed when recovery publishes their
location (the index names it) or cleans it (it does not).

Errors: every request is retried by obstore (5xx, SlowDown, connection errors, read
timeouts; exponential backoff with jitter, ``retries`` times), a PUT that timed out
by :meth:`ObjectFrameStore._put` (same bytes found under the key: it had landed);
what still fails is an :class:`~pacscore.errors.ObjectStorageError` naming the
request.  Credentials come from the standard AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.exceptions import NotFoundError as ObjectNotFound
from obstore.store import S3Store

from ..dicom.layout import PixelLayout
from ..errors import ArchiveStorageError, NotFoundError, ObjectStorageError
from .base import FrameStore, StoredLocation, location_age, validate_location
from .zarr_store import array_metadata

if TYPE_CHECKING:
    from obstore import ObjectMeta
    from obstore.store import ClientConfig, RetryConfig, S3Config

__all__ = ["ObjectFrameStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MISSING = (ObjectNotFound, FileNotFoundError)
_EXISTS = (AlreadyExistsError, FileExistsError)
_FAILED = (BaseError, OSError, RuntimeError)
"""What obstore raises for a request that failed (after its retries)."""


class _Loop:
    """One event loop thread per process for concurrent requests (a frame array's
    PUTs and GETs); started on first use, again in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

        self.pending: dict[tuple[str, str, str], concurrent.futures.Future[None]] = {}
        """Background staging of this process: (bucket, prefix, location) -> its PUTs."""

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                self.pending = {}
                threading.Thread(target=self._loop.run_forever, name="pacscore-s3",
                                 daemon=True).start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()


_LOOP = _Loop()

_UNMARKER: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
_UNMARKER_LOCK = threading.Lock()


def _unmarker() -> concurrent.futures.ThreadPoolExecutor:
    """This process's threads for marker removals after publishing (plain threads, not
    :data:`_LOOP`'s event loop: the interpreter waits for their work at exit, where a
    request left running on the loop's daemon thread aborted the process; four, so
    that a distant S3 does not queue one commit's removal behind another's)."""
    global _UNMARKER
    with _UNMARKER_LOCK:
        if _UNMARKER is None or _UNMARKER[0] != os.getpid():
            _UNMARKER = (os.getpid(), concurrent.futures.ThreadPoolExecutor(
                4, thread_name_prefix="pacscore-s3-unmark"))
        return _UNMARKER[1]


UNCHECKED_AGE = 60.0
"""Seconds: :meth:`ObjectFrameStore.publish` checks that a location's objects are still
there (a HEAD or two each) only for locations made longer ago than this
(:func:`~pacscore.store.base.location_age`).  Only garbage collection removes staged
objects of others, and only once they are older than its grace period (an hour by
default; shorter than this only while nobody writes: :mod:`pacscore.gc`), so younger
staging cannot have vanished; on an S3 20 ms away each C-STORE saves a round trip."""

CONCURRENCY = 16
"""Requests of one call (a multi-frame instance's PUTs or GETs) in flight at once."""


async def _limited(limit: asyncio.Semaphore, call: Awaitable[T]) -> T:
    async with limit:
        return await call


async def _gather(calls: Sequence[Awaitable[T]]) -> list[T]:
    limit = asyncio.Semaphore(CONCURRENCY)
    return list(await asyncio.gather(*(_limited(limit, c) for c in calls)))


async def _settled(calls: Sequence[Awaitable[T]]) -> list[T | BaseException]:
    """Every call's result or exception (all of them run to the end)."""
    limit = asyncio.Semaphore(CONCURRENCY)
    return list(await asyncio.gather(*(_limited(limit, c) for c in calls),
                                     return_exceptions=True))


class ObjectFrameStore(FrameStore):
    """Frames and kept objects in an S3 bucket (see the module docstring).

    Parameters
    ----------
    bucket
        The bucket (it must exist).
    prefix
        Key prefix of this archive inside the bucket (no leading or trailing ``/``).
    endpoint
        ``http(s)://host:port`` of an S3-compatible server; AWS when empty.
    region
        The bucket's region (``us-east-1`` when empty and no ``AWS_REGION`` is set).
    allow_http
        Allow a plain-HTTP endpoint (test servers on loopback).
    timeout
        Seconds one request may take (then it fails, and is retried).
    retries
        Retries of a failed request (5xx, SlowDown, connection errors, timeouts),
        with exponential backoff from 0.1 s.
    background
        Stage in the background: ``stage_*`` return once the PUTs are sent, and
        ``make_durable``/``flush``/``handoff`` (and any read of the location) wait for
        their answers, so a bulk import encodes the next file while the last one
        uploads.  Nothing is committed before its PUTs have answered.
    """

    staging_area = False

    def __init__(self, bucket: str, prefix: str = "", endpoint: str = "", region: str = "",
                 allow_http: bool = False, timeout: float = 30.0, retries: int = 5,
                 background: bool = True):
        if not bucket or "/" in bucket:
            raise ArchiveStorageError(f"invalid bucket name {bucket!r}")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.retries, self.background = retries, background
        self.endpoint = endpoint
        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
        if region or not (os.environ.get("AWS_REGION") or os.environ.get(
                "AWS_DEFAULT_REGION")):
            config["region"] = region or "us-east-1"
        client: dict[str, Any] = {"timeout": timedelta(seconds=timeout),
                                  "connect_timeout": timedelta(seconds=min(timeout, 10.0))}
        if allow_http:
            client["allow_http"] = True
        retry: dict[str, Any] = {
            "max_retries": retries,
            "retry_timeout": timedelta(seconds=timeout * (retries + 1)),
            "backoff": {"init_backoff": timedelta(milliseconds=100),
                        "max_backoff": timedelta(seconds=5), "base": 2},
        }
        self._unmarking: dict[concurrent.futures.Future[None], frozenset[str]] = {}
        """Marker removals still running (:meth:`publish`), with their markers' keys."""
        self._lock = threading.Lock()
        """Guards the sets below and :attr:`_unmarking` (front ends store from several
        threads)."""
        self._staging: set[str] = set()
        """Locations this process staged and has not yet published, discarded or handed
        over (:meth:`handoff`)."""
        self._marked: set[str] = set()
        """Locations whose marker (an earlier version's) a listing found here."""
        self._unmark_failed: set[str] = set()
        """Published locations whose marker removal failed: still listed as staged
        (the next recovery publishes them again), never cleaned as staging."""
        self._taken: set[str] = set()
        """Locations whose staging here found objects there already: not this
        process's to discard (fresh ids make it all but impossible)."""
        self.store = S3Store(bucket, prefix=self.prefix or None,
                             config=cast("S3Config", config),
                             client_options=cast("ClientConfig", client),
                             retry_config=cast("RetryConfig", retry))

    def __repr__(self) -> str:
        return f"ObjectFrameStore(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint!r})"

    # -- keys --------------------------------------------------------------------
    @staticmethod
    def array_key(loc: str) -> str:
        """Key prefix of the frame array ``loc`` (its zarr.json and chunks are under it)."""
        return f"arrays/{validate_location(loc)[:2]}/{loc}/"

    @staticmethod
    def blob_key(loc: str) -> str:
        """Key of the blob ``loc``."""
        return f"blobs/{validate_location(loc)[:2]}/{loc}"

    @staticmethod
    def marker_key(loc: str) -> str:
        """Key of the staging marker of ``loc`` (written by versions before 2026-12-05)."""
        return f"staging/{validate_location(loc)}"

    @staticmethod
    def _chunk(index: int, ndim: int) -> str:
        return ".".join(["c", str(index), *(["0"] * (ndim - 1))])

    def _error(self, exc: Exception, what: str) -> ObjectStorageError:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return ObjectStorageError(f"object storage s3://{self.bucket}/{self.prefix}: {what} "
                                  f"failed ({type(exc).__name__}: {detail})")

    # -- requests ----------------------------------------------------------------
    async def _put(self, key: str, data: bytes) -> str:
        """PUT with conditional create.  obstore retries 5xx and connection errors but
        not a PUT that timed out (it may have landed): that is retried here, and an
        object found under the key then is ours when it holds the same bytes (keys are
        fresh location ids of this process: nothing else writes them)."""
        for attempt in range(self.retries + 1):
            try:
                await obstore.put_async(self.store, key, data, mode="create",
                                        use_multipart=False)
                return key
            except _EXISTS:
                if attempt and await self._read_async(key) == data:
                    return key  # an earlier attempt landed after all
                raise
            except _FAILED as exc:
                if attempt == self.retries or not _timed_out(exc):
                    raise
                await asyncio.sleep(min(0.1 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")

    async def _create_async(self, items: Sequence[tuple[str, bytes]], what: str,
                            loc: str | None = None) -> None:
        """PUT every item with conditional create, concurrently; all or nothing: after a
        failure the objects this call created are deleted again (what existed before
        was never overwritten, so it is no one's to delete here, nor to discard
        later: ``loc`` is then taken)."""
        results = await _settled([self._put(k, d) for k, d in items])
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return
        created = [r for r in results if isinstance(r, str)]
        with contextlib.suppress(*_FAILED):  # else gc collects them
            await obstore.delete_async(self.store, created)
        exc = next((f for f in failed if isinstance(f, _EXISTS)), failed[0])
        if isinstance(exc, _EXISTS):
            if loc is not None:
                with self._lock:
                    self._taken.add(loc)
                    self._staging.discard(loc)
            raise ArchiveStorageError(f"{what}: an object of that location exists already "
                                      f"({exc}); nothing was overwritten") from exc
        if isinstance(exc, _FAILED):
            raise self._error(exc, what) from exc
        raise exc

    def _create(self, items: Sequence[tuple[str, bytes]], what: str,
                loc: str | None = None) -> None:
        _LOOP.run(self._create_async(items, what, loc))

    def _id(self, loc: str) -> tuple[str, str, str]:
        return self.bucket, self.prefix, loc

    def _settle(self, locs: Iterable[str] | None = None) -> None:
        """Wait until the background staging of ``locs`` (None: of every location of
        this store) in this process has ended, well or not (reads: what is there)."""
        ids = ([i for i in list(_LOOP.pending) if i[:2] == (self.bucket, self.prefix)]
               if locs is None else [self._id(loc) for loc in locs])
        futures = [f for i in ids if (f := _LOOP.pending.get(i)) is not None]
        concurrent.futures.wait(futures)

    def _wait(self, locs: Iterable[str] | None = None, *, check: bool = True) -> None:
        """Wait for the background staging of ``locs`` (None: of every location of this
        store) started in this process; raise its error unless ``check`` is false
        (then the location is forgotten: ``discard`` and cleaning)."""
        if locs is None:
            ids = [i for i in list(_LOOP.pending) if i[:2] == (self.bucket, self.prefix)]
        else:
            ids = [self._id(loc) for loc in locs]
        error: BaseException | None = None
        for i in ids:
            future = _LOOP.pending.get(i)
            if future is None:
                continue
            exc = future.exception()  # (waits)
            if exc is None or not check:
                _LOOP.pending.pop(i, None)
            else:  # kept: every later wait (the commit's flush) raises it too
                error = error or exc
        if error is not None:
            raise error

    def _keys(self, prefix: str) -> list[ObjectMeta]:
        try:
            return [meta for chunk in obstore.list(self.store, prefix=prefix)
                    for meta in chunk]
        except _FAILED as exc:
            raise self._error(exc, f"listing {prefix}") from exc

    def _delete(self, keys: Sequence[str], what: str) -> None:
        if not keys:
            return
        try:
            obstore.delete(self.store, list(keys))
        except _MISSING:
            pass
        except _FAILED as exc:
            raise self._error(exc, what) from exc

    async def _has_async(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, key)
        except _MISSING:
            return False
        return True

    def _read(self, key: str) -> bytes | None:
        try:
            return bytes(obstore.get(self.store, key).bytes())
        except _MISSING:
            return None
        except _FAILED as exc:
            raise self._error(exc, f"reading {key}") from exc

    async def _read_async(self, key: str) -> bytes | None:
        try:
            result = await obstore.get_async(self.store, key)
            return bytes(await result.bytes_async())
        except _MISSING:
            return None

    def _staged_set(self) -> set[str]:
        """What this process staged, and the locations of earlier versions' markers."""
        self._drain()
        marked = {m["path"].removeprefix("staging/") for m in self._keys("staging/")}
        with self._lock:
            self._marked |= marked
            return marked | self._staging

    # -- writes ------------------------------------------------------------------
    def stage_frames(self, loc: str, layout: PixelLayout, transfer_syntax: str,
                     frames: Sequence[bytes]) -> int:
        base = self.array_key(loc)
        ndim = 3 if layout.samples == 1 else 4
        meta = json.dumps(array_metadata(layout, transfer_syntax)).encode()
        items = [(base + "zarr.json", meta),
                 *((base + self._chunk(i, ndim), bytes(f)) for i, f in enumerate(frames))]
        self._stage(loc, items, "staging frames")
        return sum(len(d) for _, d in items)

    def stage_blob(self, loc: str, data: bytes) -> int:
        self._stage(loc, [(self.blob_key(loc), bytes(data))], "staging an object")
        return len(data)

    def make_durable(self, loc: str) -> None:
        self._wait([validate_location(loc)])  # an acknowledged PUT is durable

    def flush(self, locs: Sequence[str]) -> None:
        self._wait([validate_location(loc) for loc in locs])

    def handoff(self, loc: str) -> None:
        self._wait([validate_location(loc)])
        with self._lock:  # the committing process publishes or discards it
            self._staging.discard(loc)

    def _stage(self, loc: str, items: Sequence[tuple[str, bytes]], what: str) -> None:
        """Create a location's objects: in the background (:meth:`_wait` collects the
        result) or now."""
        with self._lock:
            self._staging.add(loc)
        if self.background:
            _LOOP.pending[self._id(loc)] = _LOOP.submit(self._create_async(items, what, loc))
        else:
            self._create(items, what, loc)

    def publish(self, locs: Sequence[str]) -> None:
        if not locs:
            return
        self._wait([validate_location(loc) for loc in locs])
        # only locations older than UNCHECKED_AGE (concurrent HEADs): nothing collects
        # younger staging (none to check, the usual case: no trip through the event
        # loop's thread, which cost a C-STORE ~3 ms of waiting for the GIL)
        older = [loc for loc in locs
                 if (age := location_age(loc)) is None or age >= UNCHECKED_AGE]
        try:
            present = _LOOP.run(_gather([self._exists_async(loc) for loc in older])
                                ) if older else []
        except _FAILED as exc:
            raise self._error(exc, "publishing (looking up staged objects)") from exc
        missing = [loc for loc, there in zip(older, present, strict=True) if not there]
        if missing:
            raise ArchiveStorageError(f"staged data vanished before publishing: "
                                      f"{', '.join(missing[:5])}")
        if marked := self._forget(locs):
            self._unmark([self.marker_key(loc) for loc in marked])

    def _forget(self, locs: Sequence[str]) -> list[str]:
        """``locs`` are no longer staged here (published or removed); return those of
        them with an earlier version's marker, whose removal is the caller's."""
        with self._lock:
            self._staging.difference_update(locs)
            marked = [loc for loc in locs if loc in self._marked]
            self._marked.difference_update(marked)
        return marked

    async def _exists_async(self, loc: str) -> bool:
        """A frame array's metadata (gc removes it first) or a blob is there."""
        array, blob = await asyncio.gather(self._has_async(self.array_key(loc) + "zarr.json"),
                                           self._has_async(self.blob_key(loc)))
        return array or blob

    def _unmark(self, markers: list[str]) -> None:
        """Remove published locations' markers (an earlier version's) in the
        background, in one request: the index has made the locations the archive's
        (reads go to their final keys, and :mod:`pacscore.gc` never touches a location
        the index names).  A marker whose removal failed, or was cut
        short by a crash, only leaves its location looking staged: recovery publishes
        it (removes the marker) once the index is found to own it.  Everything that
        lists the staging area waits for these removals first (:meth:`_drain`)."""
        future = _unmarker().submit(self._unmark_now, markers)
        with self._lock:
            self._unmarking[future] = frozenset(markers)
        future.add_done_callback(self._unmarked)

    def _unmark_now(self, markers: list[str]) -> None:
        """The bulk DELETE, again after a failure obstore does not retry (a timed-out
        POST: removing a marker twice is harmless), with backoff."""
        error: BaseException | None = None
        locs = {key.removeprefix("staging/") for key in markers}
        for attempt in range(self.retries + 1):
            try:
                obstore.delete(self.store, markers)
            except _MISSING:
                pass
            except _FAILED as exc:
                error = exc
                if attempt < self.retries:
                    time.sleep(min(0.1 * 2 ** attempt, 5.0))
                continue
            with self._lock:
                self._unmark_failed -= locs
            return
        with self._lock:
            self._unmark_failed |= locs
        log.warning("object storage s3://%s/%s: removing the staging markers of %d "
                    "published locations failed (%s: %s); they keep their markers "
                    "until recovery publishes them again (their instances are stored "
                    "and readable)", self.bucket, self.prefix, len(markers),
                    type(error).__name__, str(error).strip()[:300])

    def _unmarked(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._unmarking.pop(future, None)

    def _drain(self, markers: Iterable[str] | None = None) -> None:
        """Wait for the marker removals of this store's earlier :meth:`publish` calls
        (``markers``: those that remove one of these)."""
        mine = None if markers is None else set(markers)
        with self._lock:
            running = [f for f, keys in self._unmarking.items()
                       if mine is None or not mine.isdisjoint(keys)]
        concurrent.futures.wait(running)

    def close(self) -> None:
        self._drain()

    def sync_published(self, locs: Sequence[str]) -> None:
        for loc in locs:
            validate_location(loc)

    def _remove(self, locs: Sequence[str], what: str) -> None:
        """Delete every object of ``locs`` (markers last: a crash midway leaves them to
        find the rest again)."""
        keys = [m["path"] for loc in locs for m in self._keys(self.array_key(loc))]
        keys += [self.blob_key(loc) for loc in locs]
        self._delete(keys, what)
        self._delete([self.marker_key(loc) for loc in self._forget(locs)], what)

    def discard(self, locs: Sequence[str]) -> None:
        """Remove what ``locs`` hold, staged here or by another process (a worker
        that handed them over): callers discard only locations they staged and the
        index does not name (nothing in the bucket tells a staged location from a
        published one; ``staging_area = False``)."""
        if not locs:
            return
        self._wait([validate_location(loc) for loc in locs], check=False)
        self._drain(self.marker_key(loc) for loc in locs)
        with self._lock:
            taken = self._taken.intersection(locs)
            self._taken -= taken
        self._remove([loc for loc in locs if loc not in taken], "discarding staged frames")

    def delete(self, locs: Sequence[str]) -> None:
        for loc in locs:
            validate_location(loc)
        if not locs:
            return
        self._settle(locs)
        staged = self._staged_set()
        self._remove([loc for loc in locs if loc not in staged], "deleting frames")

    def staged(self) -> list[str]:
        self._settle()
        return [loc for loc in self._staged_set() if _is_location(loc)]

    def clean_staging(self) -> int:
        self._wait(check=False)
        entries = self._staged_set()
        with self._lock:  # published, their markers' removal failed: kept
            entries -= self._unmark_failed
        locs = [e for e in entries if _is_location(e)]
        self._remove(locs, "cleaning the staging area")
        self._delete([f"staging/{e}" for e in entries if not _is_location(e)],
                     "cleaning the staging area")
        return len(entries)

    # -- reads -------------------------------------------------------------------
    def read_frames(self, loc: str, indices: Sequence[int], ndim: int) -> list[bytes]:
        base = self.array_key(loc)
        self._settle([loc])
        keys = [base + self._chunk(i, ndim) for i in indices]
        try:
            if len(keys) == 1:
                found = [self._read(keys[0])]
            else:
                found = _LOOP.run(_gather([self._read_async(k) for k in keys])) if keys else []
        except _FAILED as exc:
            raise self._error(exc, f"reading frames of {loc}") from exc
        for index, data in zip(indices, found, strict=True):
            if data is None:
                raise NotFoundError(f"frame {index} of location {loc} is missing")
        return [d for d in found if d is not None]

    def read_blob(self, loc: str) -> bytes:
        self._settle([validate_location(loc)])
        data = self._read(self.blob_key(loc))
        if data is None:
            raise NotFoundError(f"object at location {loc} is missing")
        return data

    def exists(self, loc: str) -> bool:
        self._settle([validate_location(loc)])
        try:
            return _LOOP.run(self._exists_async(loc))
        except _FAILED as exc:
            raise self._error(exc, f"looking up {loc}") from exc

    def locations(self) -> Iterator[str]:
        self._settle()
        staged = self._staged_set()
        for meta in self._keys("arrays/"):
            path: str = meta["path"]
            if path.endswith("/zarr.json"):
                loc = path.split("/")[2]
                if loc not in staged:
                    yield loc
        for meta in self._keys("blobs/"):
            loc = meta["path"].rsplit("/", 1)[-1]
            if loc not in staged:
                yield loc

    # -- ownership (the Claimable protocol) --------------------------------------
    OWNER_KEY = "pacscore-archive.json"
    """Names the archive this prefix belongs to (outside arrays/, blobs/, staging/)."""

    def claim(self, archive_id: str, *, create: bool) -> None:
        data = self._read(self.OWNER_KEY)
        if data is None and create:
            with contextlib.suppress(ArchiveStorageError):  # lost a race: read it again
                self._create([(self.OWNER_KEY, json.dumps({"archive_id": archive_id})
                               .encode())], "claiming the prefix")
            data = self._read(self.OWNER_KEY)
        if data is None:
            return  # a reader of an archive older than the claim
        try:
            owner = json.loads(data).get("archive_id")
        except (ValueError, AttributeError):
            owner = None
        if owner != archive_id:
            raise ArchiveStorageError(
                f"s3://{self.bucket}/{self.prefix} belongs to another archive (id "
                f"{owner!r}, not {archive_id!r})",
                hint="give every archive its own bucket prefix: two archives on one "
                     "prefix would each remove the other's objects as orphans (several "
                     "front ends of one archive: the same --index postgresql://...)")

    # -- garbage collection (pacscore.gc; the Collectable protocol) ---------------
    def inventory(self) -> Iterator[StoredLocation]:
        """Every location with objects in the bucket, staged or published, with the
        age of its newest object (keys that are no location: ignored)."""
        self._settle()
        self._drain()
        found: dict[str, list[ObjectMeta]] = {}
        with self._lock:
            staged = set(self._staging)
        for top in ("arrays/", "blobs/", "staging/"):
            for meta in self._keys(top):
                parts = meta["path"].split("/")
                loc = parts[1] if top == "staging/" else parts[2] if len(parts) > 2 else ""
                if not _is_location(loc):
                    continue
                found.setdefault(loc, []).append(meta)
                if top == "staging/":
                    staged.add(loc)
                    with self._lock:
                        self._marked.add(loc)
        for loc, metas in found.items():
            yield StoredLocation(loc, tuple(m["path"] for m in metas),
                                 max(m["last_modified"] for m in metas),
                                 sum(int(m["size"]) for m in metas), loc in staged)

    def remove_objects(self, keys: Sequence[str]) -> None:
        """Delete these objects (garbage collection): arrays' metadata first (a location
        without it fails :meth:`publish`'s check), markers last (a collection cut
        short leaves what it finds again)."""
        first = [k for k in keys if k.endswith("/zarr.json")]
        markers = [k for k in keys if k.startswith("staging/")]
        for part in (first, [k for k in keys if not k.endswith("/zarr.json")
                             and not k.startswith("staging/")], markers):
            self._delete(part, "collecting garbage")


def _timed_out(exc: BaseException) -> bool:
    """A request that got no answer in time (obstore names the cause in its message)."""
    text = str(exc)
    return isinstance(exc, TimeoutError) or "TimedOut" in text or "timed out" in text


def _is_location(name: str) -> bool:
    try:
        validate_location(name)
    except ArchiveStorageError:
        return False
    return True
