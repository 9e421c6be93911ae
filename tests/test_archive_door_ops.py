"""The operations the doors used to do with their own DICOM parsing, now the archive's
(issue 15.6): identify a received object, name what a refused one claims, and read
attributes of a stored header for QIDO-RS ``includefield``."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pacscore import Archive, ArchiveConfig
from pacscore.dicom.identity import claimed_uids
from pacscore.errors import InvalidRequestError, NotFoundError

CT = "ct_series/dcmqi_ge_ct_3slice/01.dcm"
SERVICES = Path(__file__).parent.parent / "pacscore" / "services"
STILL_PARSING = {"dimse/retrieve.py"}
"""Doors that still read DICOM with pydicom themselves (C-GET/C-MOVE hand pynetdicom
a Dataset on its slow path, which pynetdicom encodes): to shrink, never to grow."""


@pytest.fixture()
def archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive(tmp_path / "archive", ArchiveConfig(prepare_workers=0)) as a:
        yield a


def test_identify_reads_what_the_object_is_before_it_is_stored(archive: Archive,
                                                              corpus: Path) -> None:
    data = (corpus / CT).read_bytes()
    ds = pydicom.dcmread(corpus / CT)
    header = archive.identify(data, "a STOW-RS part")
    assert header is not None
    assert (header.sop_instance_uid, header.study_uid, header.series_uid) == (
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert archive.stats()["instances"] == 0  # nothing stored
    assert archive.identify(b"DICM" * 40, "junk") is None
    assert archive.identify(data[:300], "cut short") is None


def test_claimed_uids_names_even_a_refused_object(corpus: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(corpus / CT)
    assert claimed_uids(corpus / CT) == (ds.SOPClassUID, ds.SOPInstanceUID)
    stream = io.BytesIO((corpus / CT).read_bytes())
    stream.seek(1000)  # read from the start whatever the position
    assert claimed_uids(stream) == (ds.SOPClassUID, ds.SOPInstanceUID)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\xff" * 64)
    assert claimed_uids(junk) == ("", "")


def test_attributes_of_the_stored_header_in_the_json_model(archive: Archive,
                                                           corpus: Path) -> None:
    r = archive.store(corpus / CT)
    ds = pydicom.dcmread(corpus / CT)
    wanted = ["KVP", "Manufacturer", "ImageOrientationPatient", "PerformedProcedureStepID"]
    got = archive.attributes(r.sop_instance_uid, wanted)
    expected = {kw: ds[kw].to_json_dict(None, 1 << 20) for kw in wanted if kw in ds}
    assert got == expected and {"KVP", "Manufacturer"} <= set(got)
    assert got["Manufacturer"]["vr"] == "LO"


def test_attribute_value_reads_bulk_data_as_received(archive: Archive, corpus: Path) -> None:
    r = archive.store(corpus / CT)
    ds = pydicom.dcmread(corpus / CT)
    assert archive.attribute_value(r.sop_instance_uid, "7FE00010") == ds.PixelData
    assert archive.attribute_value(r.sop_instance_uid, "00100010") == \
        ds["PatientName"].value.original_string  # any value, as received
    with pytest.raises(InvalidRequestError):
        archive.attribute_value(r.sop_instance_uid, "0010/x")
    with pytest.raises(NotFoundError):
        archive.attribute_value(r.sop_instance_uid, "00420011")


def test_doors_do_not_parse_dicom_themselves() -> None:
    """No module of services/ calls pydicom's reader, but the listed ones."""
    parsing = {p.relative_to(SERVICES).as_posix() for p in SERVICES.rglob("*.py")
               if re.search(r"\bdcmread\b", p.read_text(encoding="utf-8"))}
    assert parsing <= STILL_PARSING, parsing - STILL_PARSING
