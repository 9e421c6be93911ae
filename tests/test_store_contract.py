"""The FrameStore contract, as an abstract test class every implementation inherits.

``FrameStoreContract`` holds the tests; a concrete class only provides the ``store``
fixture (a fresh, empty store).  ``TestZarrFrameStore`` adds what is specific to the
Zarr layout: a published frame array opens with plain ``zarr.open``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pacscore.codecs import by_name
from pacscore.dicom.header import PixelLayout
from pacscore.errors import ArchiveStorageError, NotFoundError
from pacscore.store import FrameStore, ZarrFrameStore

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


class FrameStoreContract:
    """Tests every FrameStore must pass.  Subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> FrameStore:  # pragma: no cover - overridden
        raise NotImplementedError

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
        calls = {
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
            except Exception as exc:
                accepted.append(f"{name} raised {type(exc).__name__}: {exc}")
            else:
                accepted.append(f"{name} accepted it")
        assert accepted == [], f"location id {bad!r}: {accepted}"
        assert list(store.locations()) == []


class TestZarrFrameStore(FrameStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ZarrFrameStore]:
        yield ZarrFrameStore(tmp_path / "frames", fsync=False)

    def test_fsync_store_publishes_too(self, tmp_path: Path) -> None:
        store = ZarrFrameStore(tmp_path / "synced", fsync=True)
        blob, array, bulk = new_loc(), new_loc(), new_loc()
        store.stage_blob(blob, b"durable")
        store.stage_frames(array, MONO, HTJ2K, frames_of(2, 14))
        store.make_durable(blob)
        store.make_durable(array)
        store.stage_blob(bulk, b"bulk")
        store.flush([bulk])
        store.publish([blob, array, bulk])
        store.sync_published([blob, array, bulk])
        assert store.read_blob(blob) == b"durable"
        assert store.read_blob(bulk) == b"bulk"
        assert store.read_frames(array, [1], 3) == frames_of(2, 14)[1:]

    def test_a_name_both_staged_and_published_is_set_aside(self, store: ZarrFrameStore
                                                           ) -> None:
        """A crash can leave a location under both names; publishing it again keeps the
        published copy and moves the staged one aside: nothing is deleted."""
        loc = new_loc()
        store.stage_blob(loc, b"published")
        store.publish([loc])
        store.stage_blob(loc, b"staged again")
        store.publish([loc])
        assert store.read_blob(loc) == b"published"
        assert store.staged() == []
        assert (store.root / "lost+found" / loc).read_bytes() == b"staged again"

    def test_reads_find_a_location_renamed_while_they_look(self, store: ZarrFrameStore,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
        """A reader that misses the published name and then the staged one (renamed in
        between) looks at the published name again."""
        loc, frames = new_loc(), frames_of(2, 15)
        store.stage_frames(loc, MONO, HTJ2K, frames)
        published = store.array_path(loc)
        real = ZarrFrameStore._read_chunk
        calls: list[Path] = []

        def racing(self: ZarrFrameStore, array: Path, index: int, ndim: int) -> bytes:
            calls.append(array)
            if array == published and len(calls) == 1:
                raise FileNotFoundError(array)  # not renamed yet
            if array == store.staging / loc and store.staged():
                store.publish([loc])  # the rename happens now
            return real(self, array, index, ndim)

        monkeypatch.setattr(ZarrFrameStore, "_read_chunk", racing)
        assert store.read_frames(loc, [0, 1], 3) == frames
        assert calls[0] == published and calls[1] == store.staging / loc
        assert calls[-1] == published

    @pytest.mark.parametrize(("dtype", "bits_stored"), [
        (np.uint16, 16), (np.uint16, 12), (np.int16, 16), (np.int16, 12), (np.uint8, 8),
    ])
    def test_published_array_opens_with_plain_zarr(self, store: ZarrFrameStore,
                                                   dtype: type, bits_stored: int) -> None:
        zarr = pytest.importorskip("zarr")
        info = np.iinfo(dtype)
        signed = info.min < 0
        lo, hi = ((-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed
                  else (0, (1 << bits_stored) - 1))
        rng = np.random.default_rng(bits_stored + 100 * signed)
        layout = PixelLayout(rows=33, columns=47, samples=1, bits_allocated=info.bits,
                             bits_stored=bits_stored, signed=signed, planar=False,
                             photometric="MONOCHROME2", frames=3)
        pixels = rng.integers(lo, hi, (3, 33, 47), endpoint=True).astype(dtype)
        pixels[0, 0, :3] = (lo, hi, 0)  # extremes, and the sign bit for signed data
        codec = by_name("htj2k")
        loc = new_loc()
        store.stage_frames(loc, layout, codec.transfer_syntax,
                           [codec.encode(np.ascontiguousarray(f), layout) for f in pixels])
        store.publish([loc])
        arr = zarr.open(str(store.array_path(loc)), mode="r")
        assert arr.shape == (3, 33, 47)
        assert arr.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(arr[...], pixels)
        np.testing.assert_array_equal(arr[1], pixels[1])

    def test_colour_array_opens_with_plain_zarr(self, store: ZarrFrameStore) -> None:
        zarr = pytest.importorskip("zarr")
        layout = PixelLayout(rows=16, columns=24, samples=3, bits_allocated=8, bits_stored=8,
                             signed=False, planar=False, photometric="RGB", frames=2)
        pixels = np.random.default_rng(5).integers(0, 255, (2, 16, 24, 3), endpoint=True,
                                                   dtype=np.uint8)
        codec = by_name("htj2k")
        loc = new_loc()
        store.stage_frames(loc, layout, codec.transfer_syntax,
                           [codec.encode(np.ascontiguousarray(f), layout) for f in pixels])
        store.publish([loc])
        arr = zarr.open(str(store.array_path(loc)), mode="r")
        assert arr.shape == (2, 16, 24, 3)
        np.testing.assert_array_equal(arr[...], pixels)

    def test_chunks_are_the_codestreams(self, store: ZarrFrameStore) -> None:
        """Retrieval in the stored syntax is a file read: chunk bytes == codestream."""
        loc, frames = new_loc(), frames_of(3, 13)
        store.stage_frames(loc, MONO, HTJ2K, frames)
        store.publish([loc])
        base = store.array_path(loc)
        assert [(base / f"c.{i}.0.0").read_bytes() for i in range(3)] == frames

    def test_arrays_of_earlier_builds_still_read(self, store: ZarrFrameStore) -> None:
        """Arrays written with the "/" chunk key separator (c/0/0/0) read as before."""
        zarr = pytest.importorskip("zarr")
        loc, frames = new_loc(), frames_of(2, 13)
        store.stage_frames(loc, MONO, HTJ2K, frames)
        store.publish([loc])
        base = store.array_path(loc)
        meta = json.loads((base / "zarr.json").read_text())
        meta["chunk_key_encoding"]["configuration"]["separator"] = "/"
        (base / "zarr.json").write_text(json.dumps(meta))
        for i in range(2):
            nested = base / "c" / str(i) / "0"
            nested.mkdir(parents=True)
            (base / f"c.{i}.0.0").rename(nested / "0")
        assert store.read_frames(loc, [0, 1], 3) == frames
        key = zarr.open(str(base), mode="r").metadata.encode_chunk_key((1, 0, 0))
        assert (base / key).read_bytes() == frames[1]  # zarr-python finds them too
