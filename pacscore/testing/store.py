"""The FrameStore contract as a test suite other implementations inherit.

Like ``zarr.testing.store.StoreTests``: a frame store (the coming S3 store, or a third
party's) proves the contract by subclassing :class:`FrameStoreTests` and overriding
:meth:`~FrameStoreTests.store_factory`::

    from pacscore.testing.store import FrameStoreTests

    class TestMyStore(FrameStoreTests):
        def store_factory(self, tmp_path):
            return MyStore(tmp_path / "frames")

The class name must start with ``Test`` for pytest to collect it.  This module needs
pytest (the ``test`` extra: ``pip install pacscore[test]``); ``import pacscore`` never
imports it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ..dicom.layout import PixelLayout
from ..errors import ArchiveStorageError, NotFoundError
from ..store import FrameStore

__all__ = ["HTJ2K", "INVALID_LOCATIONS", "MONO", "RGB", "FrameStoreTests", "frames_of",
           "new_loc"]

HTJ2K = "1.2.840.10008.1.2.4.202"
MONO = PixelLayout(rows=4, columns=5, samples=1, bits_allocated=16, bits_stored=12,
                   signed=False, planar=False, photometric="MONOCHROME2", frames=3)
RGB = PixelLayout(rows=3, columns=2, samples=3, bits_allocated=8, bits_stored=8,
                  signed=False, planar=False, photometric="RGB", frames=2)

INVALID_LOCATIONS = [
    pytest.param("", id="empty"),
    pytest.param("../" + "0" * 29, id="dotdot"),
    pytest.param("A" * 32, id="uppercase"),
    pytest.param("0" * 31, id="short"),
    pytest.param("0" * 33, id="long"),
    pytest.param("g" * 32, id="not-hex"),
    pytest.param("0" * 16 + "/" + "0" * 15, id="slash"),
    pytest.param("/" + "0" * 31, id="absolute"),
    pytest.param("0" * 32 + "\n", id="trailing-newline"),
]


def new_loc() -> str:
    return uuid.uuid4().hex


def frames_of(n: int, seed: int) -> list[bytes]:
    """Distinct opaque 'codestreams' (the store must not interpret them)."""
    rng = np.random.default_rng(seed)
    return [rng.bytes(int(rng.integers(1, 300))) + bytes([i]) for i in range(n)]



class FrameStoreTests:
    """Tests every FrameStore must pass.  Subclasses override :meth:`store_factory` (a
    fresh, empty store under ``tmp_path``) or the ``store`` fixture itself."""

    def store_factory(self, tmp_path: Path) -> FrameStore:
        """A fresh, empty store kept under ``tmp_path``: every implementation overrides
        this (or the ``store`` fixture)."""
        raise NotImplementedError(f"{type(self).__name__} must override store_factory")

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[FrameStore]:
        """A fresh, empty store from :meth:`store_factory`."""
        yield self.store_factory(tmp_path)


    # -- staging: not listed until published, readable meanwhile -----------------------
    def test_staged_frames_are_listed_only_once_published(self, store: FrameStore) -> None:
        """The index owns a location just before its rename: reads find it staged."""
        loc, frames = new_loc(), frames_of(3, 1)
        written = store.stage_frames(loc, MONO, HTJ2K, frames)
        assert written >= sum(map(len, frames))
        assert loc not in set(store.locations())
        assert store.staged() == [loc]
        assert store.exists(loc)
        assert store.read_frames(loc, [2, 0], 3) == [frames[2], frames[0]]
        store.publish([loc])
        store.sync_published([loc])
        assert store.staged() == []
        assert set(store.locations()) == {loc}
        assert store.read_frames(loc, [0, 1, 2], 3) == frames

    def test_staged_blob_is_listed_only_once_published(self, store: FrameStore) -> None:
        loc, data = new_loc(), b"DICM" + bytes(range(256)) * 3
        assert store.stage_blob(loc, data) == len(data)
        assert list(store.locations()) == []
        assert store.staged() == [loc]
        assert store.read_blob(loc) == data
        store.publish([loc])
        assert store.staged() == []
        assert store.exists(loc)
        assert store.read_blob(loc) == data
        assert list(store.locations()) == [loc]

    def test_staged_lists_locations_only(self, store: FrameStore) -> None:
        loc = new_loc()
        store.stage_blob(loc, b"x")
        junk = getattr(store, "staging", None)
        if isinstance(junk, Path):  # a stray file (not a location id) in the staging area
            (junk / "not-a-location").write_bytes(b"?")
        assert store.staged() == [loc]

    def test_empty_blob_round_trips(self, store: FrameStore) -> None:
        loc = new_loc()
        assert store.stage_blob(loc, b"") == 0
        store.publish([loc])
        assert store.exists(loc)
        assert store.read_blob(loc) == b""

    @pytest.mark.parametrize("durable", [False, True])
    def test_publish_many_at_once(self, store: FrameStore, durable: bool) -> None:
        """Bulk batches are flushed at once (flush); single stores one by one by whoever
        staged them (make_durable); publishing renames, sync_published flushes that."""
        locs = [new_loc() for _ in range(6)]
        content: dict[str, object] = {}
        for i, loc in enumerate(locs):
            if i % 2:
                content[loc] = frames_of(2, i)
                store.stage_frames(loc, MONO, HTJ2K, content[loc])  # type: ignore[arg-type]
            else:
                content[loc] = f"blob {i}".encode() * (i + 1)
                store.stage_blob(loc, content[loc])  # type: ignore[arg-type]
            if durable:
                store.make_durable(loc)
        if not durable:
            store.flush(locs)
        store.publish(locs)
        store.sync_published(locs)
        assert set(store.locations()) == set(locs)
        for i, loc in enumerate(locs):
            if i % 2:
                assert store.read_frames(loc, [0, 1], 3) == content[loc]
            else:
                assert store.read_blob(loc) == content[loc]

    def test_publish_nothing_is_a_no_op(self, store: FrameStore) -> None:
        store.publish([])
        assert list(store.locations()) == []

    def test_read_frames_in_requested_order(self, store: FrameStore) -> None:
        loc, frames = new_loc(), frames_of(3, 2)
        store.stage_frames(loc, MONO, HTJ2K, frames)
        store.publish([loc])
        assert store.read_frames(loc, [2, 0, 2], 3) == [frames[2], frames[0], frames[2]]
        assert store.read_frames(loc, [], 3) == []
        assert store.read_frames(loc, range(3), 3) == frames

    def test_colour_frames_use_four_dimensions(self, store: FrameStore) -> None:
        loc, frames = new_loc(), frames_of(2, 3)
        store.stage_frames(loc, RGB, HTJ2K, frames)
        store.publish([loc])
        assert store.read_frames(loc, [1, 0], 4) == [frames[1], frames[0]]

    # -- missing data ---------------------------------------------------------------
    def test_missing_frame_index_raises_not_found(self, store: FrameStore) -> None:
        loc = new_loc()
        store.stage_frames(loc, MONO, HTJ2K, frames_of(3, 4))
        store.publish([loc])
        with pytest.raises(NotFoundError):
            store.read_frames(loc, [3], 3)
        with pytest.raises(NotFoundError):
            store.read_frames(loc, [0, 7], 3)

    def test_unknown_location_raises_not_found(self, store: FrameStore) -> None:
        loc = new_loc()
        assert not store.exists(loc)
        with pytest.raises(NotFoundError):
            store.read_frames(loc, [0], 3)
        with pytest.raises(NotFoundError):
            store.read_blob(loc)
        with pytest.raises(KeyError):  # NotFoundError is also a KeyError
            store.read_blob(loc)

    def test_blob_is_not_a_frame_array(self, store: FrameStore) -> None:
        loc = new_loc()
        store.stage_blob(loc, b"kept as received")
        store.publish([loc])
        with pytest.raises(NotFoundError):
            store.read_frames(loc, [0], 3)

    def test_staged_blob_is_not_a_frame_array(self, store: FrameStore) -> None:
        loc = new_loc()
        store.stage_blob(loc, b"kept as received")
        with pytest.raises(NotFoundError):
            store.read_frames(loc, [0], 3)

    def test_frame_array_is_not_a_blob(self, store: FrameStore) -> None:
        loc = new_loc()
        store.stage_frames(loc, MONO, HTJ2K, frames_of(1, 5))
        store.publish([loc])
        with pytest.raises(NotFoundError):
            store.read_blob(loc)

    def test_publishing_an_unstaged_location_raises(self, store: FrameStore) -> None:
        with pytest.raises(ArchiveStorageError):
            store.publish([new_loc()])
        assert list(store.locations()) == []

    # -- discard ----------------------------------------------------------------------
    def test_discard_forgets_staged_data(self, store: FrameStore) -> None:
        frames_loc, blob_loc, kept = new_loc(), new_loc(), new_loc()
        store.stage_frames(frames_loc, MONO, HTJ2K, frames_of(2, 6))
        store.stage_blob(blob_loc, b"x" * 100)
        store.stage_blob(kept, b"kept")
        store.discard([frames_loc, blob_loc])
        with pytest.raises(ArchiveStorageError):
            store.publish([frames_loc])
        with pytest.raises(ArchiveStorageError):
            store.publish([blob_loc])
        store.publish([kept])  # the other staged entry is untouched
        assert store.read_blob(kept) == b"kept"
        assert set(store.locations()) == {kept}
        assert store.clean_staging() == 0

    def test_discard_of_unknown_location_is_ignored(self, store: FrameStore) -> None:
        store.discard([new_loc()])
        store.discard([])

    def test_discard_does_not_touch_published_data(self, store: FrameStore) -> None:
        if not store.staging_area:
            pytest.skip("no staging area: discard removes what it is given (its callers "
                        "pass only locations they staged and the index does not name)")
        loc = new_loc()
        store.stage_blob(loc, b"published")
        store.publish([loc])
        store.discard([loc])
        assert store.read_blob(loc) == b"published"

    # -- delete -----------------------------------------------------------------------
    def test_delete_removes_published_locations(self, store: FrameStore) -> None:
        a, b, c = new_loc(), new_loc(), new_loc()
        store.stage_frames(a, MONO, HTJ2K, frames_of(3, 7))
        store.stage_blob(b, b"blob")
        store.stage_frames(c, RGB, HTJ2K, frames_of(2, 8))
        store.publish([a, b, c])
        store.delete([a, b])
        assert not store.exists(a) and not store.exists(b)
        assert set(store.locations()) == {c}
        with pytest.raises(NotFoundError):
            store.read_frames(a, [0], 3)
        with pytest.raises(NotFoundError):
            store.read_blob(b)
        assert store.read_frames(c, [0, 1], 4) == frames_of(2, 8)

    def test_delete_ignores_missing_locations(self, store: FrameStore) -> None:
        loc = new_loc()
        store.delete([loc, new_loc()])
        store.stage_blob(loc, b"1")
        store.publish([loc])
        store.delete([loc])
        store.delete([loc])  # twice
        assert list(store.locations()) == []

    def test_delete_does_not_touch_staged_data(self, store: FrameStore) -> None:
        loc = new_loc()
        store.stage_blob(loc, b"staged")
        store.delete([loc])
        store.publish([loc])
        assert store.read_blob(loc) == b"staged"

    def test_location_can_be_reused_after_delete(self, store: FrameStore) -> None:
        loc = new_loc()
        store.stage_blob(loc, b"first")
        store.publish([loc])
        store.delete([loc])
        store.stage_frames(loc, MONO, HTJ2K, frames_of(1, 9))
        store.publish([loc])
        assert store.read_frames(loc, [0], 3) == frames_of(1, 9)

    # -- crash leftovers ----------------------------------------------------------------
    def test_clean_staging_removes_only_staged_entries(self, store: FrameStore) -> None:
        published, staged = new_loc(), [new_loc() for _ in range(3)]
        store.stage_frames(published, MONO, HTJ2K, frames_of(3, 10))
        store.publish([published])
        store.stage_frames(staged[0], MONO, HTJ2K, frames_of(3, 11))
        store.stage_frames(staged[1], RGB, HTJ2K, frames_of(2, 12))
        store.stage_blob(staged[2], b"half an import")
        assert store.clean_staging() == 3
        assert store.clean_staging() == 0
        for loc in staged:
            with pytest.raises(ArchiveStorageError):
                store.publish([loc])
            assert not store.exists(loc)
        assert list(store.locations()) == [published]
        assert store.read_frames(published, [0, 1, 2], 3) == frames_of(3, 10)

    def test_clean_staging_on_an_empty_store(self, store: FrameStore) -> None:
        assert store.clean_staging() == 0
        assert list(store.locations()) == []

    # -- location ids ---------------------------------------------------------------------
    @pytest.mark.parametrize("bad", INVALID_LOCATIONS)
    def test_invalid_location_ids_are_rejected(self, store: FrameStore, bad: str) -> None:
        calls: dict[str, Callable[[], object]] = {
            "stage_frames": lambda: store.stage_frames(bad, MONO, HTJ2K, frames_of(1, 0)),
            "stage_blob": lambda: store.stage_blob(bad, b"x"),
            "publish": lambda: store.publish([bad]),
            "sync_published": lambda: store.sync_published([bad]),
            "make_durable": lambda: store.make_durable(bad),
            "discard": lambda: store.discard([bad]),
            "read_frames": lambda: store.read_frames(bad, [0], 3),
            "read_blob": lambda: store.read_blob(bad),
            "delete": lambda: store.delete([bad]),
            "exists": lambda: store.exists(bad),
        }
        accepted = []
        for name, call in calls.items():
            try:
                call()
            except ArchiveStorageError:
                continue
            except Exception as exc:  # noqa: BLE001 - any other outcome is the finding
                accepted.append(f"{name} raised {type(exc).__name__}: {exc}")
            else:
                accepted.append(f"{name} accepted it")
        assert accepted == [], f"location id {bad!r}: {accepted}"
        assert list(store.locations()) == []
