"""A refusal met in a worker comes back as the error class the worker met (15.7c).

Outcomes carry the exception class itself (pickled by reference), not its name: a
``LimitExceededError`` in a worker used to travel as ``"LimitExceeded"`` and come back
as a plain ``InvalidDicomError``."""

from __future__ import annotations

import importlib
import inspect
import pickle
from pathlib import Path

import pytest

import pacscore.errors
from pacscore import Archive, ArchiveConfig
from pacscore.config import Limits
from pacscore.errors import ArchiveStorageError, InvalidDicomError, LimitExceededError, PacsError
from pacscore.ingest import pool
from pacscore.ingest.outcomes import Failed, Rejected
from pacscore.store import ZarrFrameStore

PACS_ERRORS = sorted((c for _, c in inspect.getmembers(pacscore.errors, inspect.isclass)
                      if issubclass(c, PacsError)), key=lambda c: c.__name__)
pipeline = importlib.import_module("pacscore.ingest.prepare")  # pool imports prepare() on use
DICOM = b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\x00"  # passes the sniff


@pytest.mark.parametrize("cls", PACS_ERRORS, ids=lambda c: c.__name__)
def test_every_pacs_error_round_trips_through_an_outcome(
        cls: type[PacsError], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise cls("it went wrong")

    monkeypatch.setattr(pipeline, "prepare", failing)
    store = ZarrFrameStore(tmp_path / "frames", fsync=False)
    outcome = pool._prepare_data(DICOM, "in.dcm", ArchiveConfig(), store, False, False)
    assert isinstance(outcome, Failed if issubclass(cls, ArchiveStorageError) else Rejected)
    assert outcome.error is cls
    back = pickle.loads(pickle.dumps(outcome))  # what crosses the process boundary
    assert back == outcome and back.error is cls
    raised = back.exception("client")
    assert type(raised) is cls
    assert raised.source == "client" and "it went wrong" in raised.reason


def test_an_internal_error_is_kept_and_raised_as_invalid_dicom(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def buggy(*args: object, **kwargs: object) -> None:
        raise KeyError("library bug")

    monkeypatch.setattr(pipeline, "prepare", buggy)
    store = ZarrFrameStore(tmp_path / "frames", fsync=False)
    outcome = pool._prepare_data(DICOM, "in.dcm", ArchiveConfig(), store, False, False)
    assert isinstance(outcome, Rejected) and outcome.error is KeyError
    assert not outcome.permanent
    assert type(outcome.exception()) is InvalidDicomError


def test_limit_exceeded_in_a_worker_comes_back_as_limit_exceeded(tmp_path: Path,
                                                                 corpus: Path) -> None:
    ct = sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").glob("*.dcm"))[0]
    big = Limits(max_file_bytes=ct.stat().st_size - 1)  # refused before it is read
    many = Limits(max_frame_pixels=100)  # refused while it is prepared
    for limits in (big, many):
        config = ArchiveConfig(prepare_workers=1, limits=limits)
        with Archive(tmp_path / f"a{limits.max_frame_pixels}", config) as archive:
            with pytest.raises(LimitExceededError) as refused:
                archive.store(ct)  # a path: prepared in the worker process
            assert type(refused.value) is LimitExceededError
            assert archive.stats()["instances"] == 0
            [outcome] = archive.store_many([str(ct)], workers=1)
            assert isinstance(outcome, Rejected) and outcome.error is LimitExceededError
            assert outcome.permanent
