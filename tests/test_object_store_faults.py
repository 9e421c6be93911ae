"""Faults of the object store (issue 17.1, item 4): S3 answering 500/503 SlowDown or
too late, through a fault-injecting proxy on loopback in front of a real SeaweedFS.
Transient faults are retried with backoff; lasting ones end in an ObjectStorageError
with a hint, nothing is acknowledged and nothing shows in the archive; what a timed-out
PUT leaves behind is collected by gc.  And the same instance stored twice at once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import obstore
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.archive import StoreResult
from pacscore.errors import ArchiveStorageError, NotFoundError, ObjectStorageError
from pacscore.gc import collect_garbage
from pacscore.store import StoreSpec, location_age, new_location, validate_location
from pacscore.store.object_store import UNCHECKED_AGE, ObjectFrameStore
from pacscore.testing.s3 import FaultProxy, SeaweedS3

RETRIES = 3


@pytest.fixture()
def ct(corpus: Path) -> list[Path]:
    return sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:2]


@pytest.fixture()
def proxy(seaweedfs: SeaweedS3) -> Iterator[FaultProxy]:
    with FaultProxy(seaweedfs.endpoint) as p:
        yield p


@pytest.fixture()
def archive(tmp_path: Path, seaweedfs: SeaweedS3, proxy: FaultProxy) -> Iterator[Archive]:
    url = (f"s3://{seaweedfs.bucket}/faults/{uuid.uuid4().hex}?endpoint={proxy.endpoint}"
           f"&timeout=1&retries={RETRIES}")
    with Archive(tmp_path / "archive", ArchiveConfig(fsync=False),
                 store=StoreSpec.from_url(url)) as a:
        yield a


def _store(archive: Archive) -> ObjectFrameStore:
    store = archive.store_
    assert isinstance(store, ObjectFrameStore)
    return store


def _tries(proxy: FaultProxy, method: str, part: str) -> list[int]:
    return [status for m, path, status in proxy.seen if m == method and part in path]


def _nothing_stored(archive: Archive) -> None:
    assert archive.stats()["instances"] == 0
    assert archive.find("study") == []
    assert list(archive.index.records()) == []


def test_transient_5xx_and_slowdown_are_retried(archive: Archive, proxy: FaultProxy,
                                                ct: list[Path]) -> None:
    proxy.fail("PUT", "/c.0.0", status=503, times=2)  # SlowDown, twice
    proxy.fail("PUT", "/zarr.json", status=500, times=1)
    result = archive.store(ct[0])
    assert result.status == "stored"
    assert _tries(proxy, "PUT", "/c.0.0") == [503, 503, 200]
    assert _tries(proxy, "PUT", "/zarr.json") == [500, 200]
    proxy.fail("GET", "/c.0.0", status=503, times=2)
    assert archive.frames(result.sop_instance_uid, [0])
    assert _tries(proxy, "GET", "/c.0.0") == [503, 503, 200]
    assert archive.get(result.sop_instance_uid, "original") == ct[0].read_bytes()


def test_a_lasting_5xx_is_a_clear_error_and_nothing_is_acknowledged(
        archive: Archive, proxy: FaultProxy, ct: list[Path]) -> None:
    proxy.fail("PUT", "/c.0.0", status=500)
    started = time.monotonic()
    with pytest.raises(ObjectStorageError, match="staging frames failed") as err:
        archive.store(ct[0])
    assert "S3 endpoint" in str(err.value) and "credentials" in str(err.value)  # the hint
    assert isinstance(err.value, ArchiveStorageError)  # 0xA700 / 507 at the doors
    assert _tries(proxy, "PUT", "/c.0.0") == [500] * (RETRIES + 1)
    assert time.monotonic() - started > 0.1  # backed off between the tries
    _nothing_stored(archive)
    proxy.heal()
    assert list(_store(archive).inventory()) == []  # its marker and zarr.json deleted
    assert archive.store(ct[0]).status == "stored"  # and it works again


def test_a_put_that_timed_out_once_is_retried(archive: Archive, proxy: FaultProxy,
                                              ct: list[Path]) -> None:
    """obstore does not retry a PUT that timed out (it may have landed); the store does,
    and takes an object it finds then as its own only when the bytes are the same."""
    proxy.fail("PUT", "/c.0.0", status=0, delay=1.5, times=1)
    result = archive.store(ct[0])
    assert result.status == "stored"
    deadline = time.monotonic() + 10
    while len(_tries(proxy, "PUT", "/c.0.0")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _tries(proxy, "PUT", "/c.0.0") == [200, 412]  # the retry, then the late one
    assert archive.get(result.sop_instance_uid, "original") == ct[0].read_bytes()


def test_a_read_that_keeps_failing_is_a_clear_error(archive: Archive, proxy: FaultProxy,
                                                    ct: list[Path]) -> None:
    sop = archive.store(ct[0]).sop_instance_uid
    proxy.fail("GET", "/c.0.0", status=503)
    with pytest.raises(ObjectStorageError, match="reading"):
        archive.frames(sop, [0])
    assert _tries(proxy, "GET", "/c.0.0") == [503] * (RETRIES + 1)


def test_a_put_that_times_out_leaves_only_what_gc_collects(
        archive: Archive, proxy: FaultProxy, ct: list[Path]) -> None:
    """The server answers too late (after the client's 1 s timeout) but stores the
    frame: the client fails, nothing is acknowledged or visible; the late objects
    belong to no record and gc removes them."""
    proxy.fail("PUT", "/c.0.0", status=0, delay=1.5)
    with pytest.raises(ObjectStorageError, match="staging frames failed"):
        archive.store(ct[0])
    _nothing_stored(archive)
    proxy.heal()
    store = _store(archive)
    deadline = time.monotonic() + 15
    while len(_tries(proxy, "PUT", "/c.0.0")) < RETRIES + 1 and time.monotonic() < deadline:
        time.sleep(0.2)  # the late PUTs land: one creates, the next are refused (unless
        # the discard of the failed staging removed what had landed before them)
    tries = _tries(proxy, "PUT", "/c.0.0")
    assert len(tries) == RETRIES + 1 and 200 in tries and set(tries) <= {200, 412}, tries
    late = list(store.inventory())
    assert late and all(not i.staged for i in late)  # frames without metadata, no one's
    assert archive.store(ct[1]).status == "stored"  # the same archive goes on
    assert collect_garbage(archive.index, store, grace=timedelta(hours=1)).removed == []
    report = collect_garbage(archive.index, store, grace=timedelta(0))
    assert sorted(report.removed) == sorted(i.location for i in late)
    (kept,) = store.inventory()
    assert kept.location == archive.record(archive.instances("series", archive.find(
        "series")[0]["SeriesInstanceUID"])[0]).location


def test_the_same_instance_stored_twice_at_once(archive: Archive, ct: list[Path]) -> None:
    """Two stores of one instance race: each stages under its own fresh location
    (conditional create: neither can overwrite the other's objects); the index commit
    decides: one stored, one duplicate, and the duplicate's objects are gone."""
    data = ct[0].read_bytes()
    start = threading.Barrier(2)
    results: list[StoreResult | BaseException] = []

    def store() -> None:
        start.wait()
        try:
            results.append(archive.store(data))
        except BaseException as exc:  # the finding is the test's
            results.append(exc)

    threads = [threading.Thread(target=store) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(r.status for r in results if isinstance(r, StoreResult)) == [
        "duplicate", "stored"], results
    (only,) = _store(archive).inventory()
    assert only.location == archive.record(results[0].sop_instance_uid).location  # type: ignore[union-attr]
    assert not only.staged


@pytest.mark.parametrize("workers", [0, 1])
def test_an_acknowledged_instance_is_uploaded_when_acknowledged(
        archive: Archive, proxy: FaultProxy, ct: list[Path], workers: int) -> None:
    """Staging runs in the background (the next file is encoded meanwhile); the commit
    waits for the PUTs: in this process (flush) or in the worker process before it
    hands the instance over (handoff).  Every frame PUT answers 0.4 s late here, so a
    commit that did not wait would name frames not there yet."""
    proxy.fail("PUT", "/c.0.0", status=0, delay=0.4)
    store = _store(archive)
    locs = set()
    for outcome in archive.store_many([str(p) for p in ct], workers=workers):
        assert isinstance(outcome, StoreResult) and outcome.status == "stored", outcome
        loc = archive.record(outcome.sop_instance_uid).location
        assert obstore.head(store.store, store.array_key(loc) + "c.0.0.0")  # there, at once
        locs.add(loc)
    # published: the markers' removal runs in the background (inventory waits for it;
    # a HEAD at once could overtake it on a loaded machine)
    assert {i.location for i in store.inventory() if not i.staged} == locs
    # one frame object per instance went through the proxy (a PUT the loaded machine
    # let time out is retried under the same key: count keys, not requests)
    assert len({path for m, path, _ in proxy.seen if m == "PUT" and "/c.0.0" in path}) \
        == len(ct)


def test_a_background_put_that_fails_shows_at_flush_and_leaves_nothing(
        archive: Archive, proxy: FaultProxy) -> None:
    from pacscore.testing.store import HTJ2K, MONO, frames_of, new_loc

    store = _store(archive)
    proxy.fail("PUT", "/c.1.0", status=500)
    loc = new_loc()
    store.stage_frames(loc, MONO, HTJ2K, frames_of(3, 5))  # returns before the answers
    with pytest.raises(ObjectStorageError, match="staging frames failed"):
        store.flush([loc])
    store.discard([loc])
    proxy.heal()
    assert list(store.inventory()) == []


def test_a_worker_whose_upload_fails_reports_the_file_failed(
        archive: Archive, proxy: FaultProxy, ct: list[Path]) -> None:
    from pacscore.ingest.outcomes import Failed

    proxy.fail("PUT", "/c.0.0", status=500)
    (outcome, *rest) = list(archive.store_many([str(ct[0])], workers=1))
    assert isinstance(outcome, Failed) and "staging frames failed" in outcome.reason
    assert rest == []
    _nothing_stored(archive)
    proxy.heal()
    assert list(_store(archive).inventory()) == []


def test_a_failed_background_put_keeps_failing_until_discarded(
        archive: Archive, proxy: FaultProxy) -> None:
    """A read that comes first finds nothing (the PUTs that succeeded were deleted
    again) and does not hide the failure from the commit's flush."""
    from pacscore.testing.store import HTJ2K, MONO, frames_of, new_loc

    store = _store(archive)
    proxy.fail("PUT", "/c.0.0", status=500)
    loc = new_loc()
    store.stage_frames(loc, MONO, HTJ2K, frames_of(2, 6))
    with pytest.raises(NotFoundError):
        store.read_frames(loc, [1], 3)
    with pytest.raises(ObjectStorageError):
        store.flush([loc])
    with pytest.raises(ObjectStorageError):
        store.make_durable(loc)
    store.discard([loc])
    store.flush([loc])  # forgotten now


def test_a_store_sends_its_objects_and_nothing_else(archive: Archive, proxy: FaultProxy,
                                                    ct: list[Path]) -> None:
    """One PUT per object (the array's metadata and each frame), none of them waited
    for again: no marker, no HEAD, no DELETE on the way to the answer, nor after it."""
    proxy.seen.clear()
    result = archive.store(ct[0])
    assert result.status == "stored"
    _store(archive).close()
    loc = archive.record(result.sop_instance_uid).location
    assert sorted((m, p.rsplit("/", 1)[-1]) for m, p, _ in proxy.seen) == [
        ("PUT", "c.0.0.0"), ("PUT", "zarr.json")], proxy.seen
    assert all(loc in p for _, p, _ in proxy.seen)
    assert archive.get(result.sop_instance_uid, "original") == ct[0].read_bytes()


def test_an_earlier_versions_marker_is_finished_by_recovery(
        archive: Archive, proxy: FaultProxy, ct: list[Path],
        caplog: pytest.LogCaptureFixture) -> None:
    """Versions before 2026-12-05 marked each staging with an object staging/<loc> and
    deleted it after the commit: one left behind (a crash, a failed removal) lists
    the location as staged; recovery publishes it, as the index owns it (its removal
    failing for good is logged and leaves it for the next recovery), and the
    instance stays readable throughout."""
    result = archive.store(ct[0])
    store = _store(archive)
    loc = archive.record(result.sop_instance_uid).location
    obstore.put(store.store, store.marker_key(loc), b"frames")  # as such a version left it
    assert store.staged() == [loc]
    for method in ("POST", "DELETE"):
        proxy.fail(method, "", status=500)
    assert archive._committer.recover() >= 1
    store.close()
    assert "they keep their markers until recovery" in caplog.text
    assert store.staged() == [loc]
    assert archive.get(result.sop_instance_uid, "original") == ct[0].read_bytes()
    proxy.heal()
    assert archive._committer.recover() >= 1
    store.close()
    assert store.staged() == []
    assert archive.get(result.sop_instance_uid, "original") == ct[0].read_bytes()
    assert archive.verify().failed == []


def _made_ago(seconds: float) -> str:
    """A location id as :func:`new_location` makes them, ``seconds`` ago."""
    return new_location()[:20] + f"{int((time.time() - seconds) * 1000):012x}"


def test_publish_checks_the_objects_of_older_locations_only(archive: Archive,
                                                           proxy: FaultProxy) -> None:
    """A location made less than UNCHECKED_AGE ago cannot have lost its objects to gc
    (its grace is longer): publishing it sends no request.  An older one is still
    checked, and objects that vanished are still an error."""
    store = _store(archive)
    young, old, gone = new_location(), _made_ago(UNCHECKED_AGE + 60), _made_ago(7200)
    for loc in (young, old, gone):
        store.stage_blob(loc, loc.encode())
    store.flush([young, old, gone])
    proxy.seen.clear()
    store.publish([young, old])
    assert proxy.seen and {m for m, _, _ in proxy.seen} == {"HEAD"}
    assert all(old in path for _, path, _ in proxy.seen)
    obstore.delete(store.store, store.blob_key(gone))  # as a collection would
    with pytest.raises(ArchiveStorageError, match=f"vanished before publishing: {gone}"):
        store.publish([gone])
    store.close()
    assert store.staged() == [gone]  # (not published: its writer discards it)
    assert store.read_blob(young) == young.encode() and store.read_blob(old) == old.encode()


def test_location_ids_carry_their_time() -> None:
    loc = new_location()
    assert validate_location(loc) == loc and loc != new_location()
    age = location_age(loc)
    assert age is not None and 0 <= age < 5
    assert location_age(_made_ago(600)) == pytest.approx(600, abs=5)
    assert location_age("0" * 32) is None  # (1970)
    assert location_age(_made_ago(-3600)) is None  # a clock far ahead: checked
    assert location_age(_made_ago(2 * 3600)) is None
