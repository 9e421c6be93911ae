"""Workers get a store spec, not a hard-coded store (issue 15.5): a small picklable
StoreSpec names the FrameStore and its settings; workers open it and stage through the
FrameStore contract, so another implementation drops in by being named."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.errors import UnknownStoreError
from pacscore.store import STORE_KINDS, StoreSpec, ZarrFrameStore
from tests.helpers.stores import RecordingStore, calls

RECORDING = "tests.helpers.stores:RecordingStore"


def _pixels(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data)).pixel_array


@pytest.fixture()
def ct_series(corpus: Path) -> list[Path]:
    return sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[:6]


def test_a_spec_pickles_small_round_trips_and_opens_the_same_store(tmp_path: Path) -> None:
    spec = StoreSpec.of("zarr", root=str(tmp_path / "frames"), fsync=False)
    data = pickle.dumps(spec)
    assert len(data) < 300, len(data)
    again = pickle.loads(data)
    assert again == spec and hash(again) == hash(spec)
    store = again.open()
    assert type(store) is ZarrFrameStore
    assert (store.root, store.fsync) == (tmp_path / "frames", False)
    assert store.staging.is_dir()  # it is a store like the archive's own
    assert StoreSpec.of("zarr", fsync=False, root=str(tmp_path / "frames")) == spec


def test_an_archive_opens_its_store_from_its_spec(tmp_path: Path) -> None:
    with Archive(tmp_path / "a", ArchiveConfig(fsync=False)) as archive:
        assert archive.store_spec == StoreSpec.of("zarr", root=str(tmp_path / "a/frames"),
                                                  fsync=False)
        assert isinstance(archive.store_, ZarrFrameStore)


def test_an_unknown_store_is_refused_with_the_known_kinds() -> None:
    with pytest.raises(UnknownStoreError, match=r"'nosuchkind'.*s3, zarr"):
        StoreSpec.of("nosuchkind", bucket="b")
    with pytest.raises(LookupError, match="not a FrameStore"):
        StoreSpec("pathlib:Path", (("root", "x"),)).open()
    with pytest.raises(UnknownStoreError, match="cannot load"):
        StoreSpec("pacscore.store.nosuch:Store").open()


@pytest.fixture()
def recording(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[StoreSpec, str]:
    """A FrameStore registered in the table (test-only), delegating to Zarr."""
    monkeypatch.setitem(STORE_KINDS, "recording", RECORDING)
    log = str(tmp_path / "calls.log")
    return StoreSpec.of("recording", root=str(tmp_path / "a" / "frames"), log=log,
                        fsync=False), log


@pytest.mark.parametrize("how", ["store_many", "single stores"])
def test_workers_stage_through_the_store_their_spec_names(
        tmp_path: Path, ct_series: list[Path], recording: tuple[StoreSpec, str],
        how: str) -> None:
    """With a registered store's spec, the worker processes (bulk import, and the
    long-lived workers of single stores) stage into that store, through the FrameStore
    contract; the archive commits and reads through it too."""
    spec, log = recording
    config = ArchiveConfig(fsync=False, prepare_workers=2)
    with Archive(tmp_path / "a", config, store=spec) as archive:
        assert isinstance(archive.store_, RecordingStore)
        if how == "store_many":
            results = list(archive.store_many(map(str, ct_series), workers=2))
        else:
            results = [archive.store(path) for path in ct_series]
        assert {getattr(r, "status", None) for r in results} == {"stored"}
        for r in results:  # (store_many answers in the order the workers finish)
            sop, source = r.sop_instance_uid, Path(r.source)  # type: ignore[union-attr]
            assert np.array_equal(_pixels(archive.get(sop)), _pixels(source.read_bytes()))
    staged = [pid for pid, method in calls(log) if method in ("stage_frames", "stage_blob")]
    assert len(staged) == len(ct_series)
    assert os.getpid() not in staged  # staged in the workers, not here
    published = {pid for pid, method in calls(log) if method == "publish"}
    assert published == {os.getpid()}
