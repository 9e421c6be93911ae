"""Retrieve planning as a table (issue 15.6): which plan makes an instance in the
syntax asked for, and that each plan's answer is what that plan promises."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.retrieve import PLANS, Plan

CT = "ct_series/dcmqi_ge_ct_3slice/01.dcm"  # uncompressed: stored as HTJ2K frames
KEPT = "ct_series/single/Siemens_head_j2k_lossy.dcm"  # lossy J2K: kept as received
EXPLICIT_LE, JPEG_LS = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80"


@pytest.fixture()
def archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive(tmp_path / "archive", ArchiveConfig(prepare_workers=0)) as a:
        yield a


def test_every_plan_has_a_row_and_the_last_catches_all() -> None:
    assert [plan for plan, _ in PLANS] == list(Plan)
    assert PLANS[-1][0] is Plan.TRANSCODE


def test_plans_of_an_instance_stored_as_frames(archive: Archive, corpus: Path) -> None:
    original = (corpus / CT).read_bytes()
    sop = archive.store(corpus / CT).sop_instance_uid
    rec = archive.record(sop)
    reader = archive._reader
    assert reader.plan(rec, "stored") == (Plan.REBUILD, rec.stored_syntax)
    assert reader.plan(rec, "original")[0] is Plan.CONVERT
    assert reader.plan(rec, JPEG_LS) == (Plan.TRANSCODE, JPEG_LS)
    assert archive.get(sop, "original") == original  # byte-identical rebuild
    stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(archive.get(sop, "stored")))
    assert stored.file_meta.TransferSyntaxUID == rec.stored_syntax
    again = pydicom.dcmread(pydicom.filebase.DicomBytesIO(archive.get(sop, JPEG_LS)))
    assert again.file_meta.TransferSyntaxUID == JPEG_LS
    assert (again.pixel_array == pydicom.dcmread(corpus / CT).pixel_array).all()


def test_plans_of_an_instance_kept_as_received(archive: Archive, corpus: Path) -> None:
    original = (corpus / KEPT).read_bytes()
    sop = archive.store(corpus / KEPT).sop_instance_uid
    rec = archive.record(sop)
    reader = archive._reader
    assert reader.plan(rec, "stored")[0] is Plan.KEPT
    assert reader.plan(rec, "original")[0] is Plan.KEPT
    assert reader.plan(rec, EXPLICIT_LE) == (Plan.CONVERT, EXPLICIT_LE)
    assert hashlib.sha256(archive.get(sop, "stored")).digest() == \
        hashlib.sha256(original).digest()
    native = pydicom.dcmread(pydicom.filebase.DicomBytesIO(archive.get(sop, EXPLICIT_LE)))
    assert native.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert (native.pixel_array == pydicom.dcmread(corpus / KEPT).pixel_array).all()
