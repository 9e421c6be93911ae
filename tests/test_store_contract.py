"""The FrameStore contract (:class:`pacscore.testing.store.FrameStoreTests`) run on
ZarrFrameStore.

``TestZarrFrameStore`` inherits every contract test and adds what is specific to the
Zarr layout: a published frame array opens with plain ``zarr.open``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pacscore.codecs import by_name
from pacscore.dicom.layout import PixelLayout
from pacscore.store import ZarrFrameStore
from pacscore.testing.store import HTJ2K, MONO, FrameStoreTests, frames_of, new_loc


class TestZarrFrameStore(FrameStoreTests):
    def store_factory(self, tmp_path: Path) -> ZarrFrameStore:
        return ZarrFrameStore(tmp_path / "frames", fsync=False)

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
