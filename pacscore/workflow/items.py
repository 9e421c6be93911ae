"""Worklist items from what an operator gives: a DICOM file, or ``keyword=value`` pairs.

The pairs are placed by :data:`SPS_KEYWORDS`: the attributes of the Scheduled Procedure
Step Sequence item (PS3.4 Table K.6-1) go into its one item, the others at the top.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError
from pydicom.uid import generate_uid

from ..errors import InvalidDicomError, InvalidRequestError
from .matching import SPS, element, text_of

__all__ = ["SPS_KEYWORDS", "SUMMARY", "item_from_pairs", "read_item", "summary"]

SPS_KEYWORDS = frozenset({
    "Modality", "ScheduledStationAETitle", "ScheduledStationName",
    "ScheduledProcedureStepLocation", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
    "ScheduledProcedureStepStatus", "PreMedication", "RequestedContrastAgent",
    "CommentsOnTheScheduledProcedureStep",
})
"""Keywords of the Scheduled Procedure Step Sequence item (PS3.4 Table K.6-1)."""

SUMMARY: tuple[tuple[str, bool, str], ...] = (
    # (column, in the SPS item, keyword): what `pacscore worklist list` shows
    ("accession", False, "AccessionNumber"),
    ("sps_id", True, "ScheduledProcedureStepID"),
    ("station", True, "ScheduledStationAETitle"),
    ("modality", True, "Modality"),
    ("date", True, "ScheduledProcedureStepStartDate"),
    ("time", True, "ScheduledProcedureStepStartTime"),
    ("patient_id", False, "PatientID"),
    ("patient_name", False, "PatientName"),
    ("description", False, "RequestedProcedureDescription"),
)


def read_item(path: str | Path) -> Dataset:
    """A worklist item from a DICOM file (Part-10, or a bare data set as ``dump2dcm``
    writes without ``-g``)."""
    try:
        ds = dcmread(path, force=True)
    except (OSError, PydicomInvalidDicomError, ValueError, EOFError) as exc:
        raise InvalidDicomError(f"{path}: not a readable DICOM worklist item: {exc}",
                                hint="make it with dump2dcm from a dump like DCMTK's "
                                     "wklist*.dump, or give keyword=value pairs") from exc
    ds.file_meta = FileMetaDataset()  # the File Meta describes the file, not the item
    if len(ds) == 0:
        raise InvalidDicomError(f"{path}: no attributes", hint="give a worklist item file")
    return ds


def item_from_pairs(pairs: Sequence[str], *, today: datetime.date | None = None) -> Dataset:
    """An item from ``keyword=value`` pairs.  Missing Study Instance UID: a new one;
    missing SPS Start Date: today; missing SPS Status: SCHEDULED."""
    ds, sps = Dataset(), Dataset()
    for pair in pairs:
        keyword, sep, value = pair.partition("=")
        keyword = keyword.strip()
        tag = tag_for_keyword(keyword) if sep else None
        if tag is None:
            raise InvalidRequestError(f"{pair!r} is not keyword=value with a DICOM keyword",
                                      hint="e.g. PatientName=DOE^JANE Modality=CT "
                                           "ScheduledStationAETitle=CT1")
        vr = dictionary_VR(tag)
        if vr == "SQ":
            raise InvalidRequestError(f"{keyword} is a sequence",
                                      hint="give a DICOM file for items with sequences")
        value_of: Any = value.split("\\") if "\\" in value else value
        (sps if keyword in SPS_KEYWORDS else ds).add_new(tag, vr, value_of)
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    if "ScheduledProcedureStepStartDate" not in sps:
        sps.ScheduledProcedureStepStartDate = (today or datetime.date.today()).strftime("%Y%m%d")
    if "ScheduledProcedureStepStatus" not in sps:
        sps.ScheduledProcedureStepStatus = "SCHEDULED"
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def summary(ds: Dataset) -> dict[str, str]:
    """The columns of :data:`SUMMARY` (first SPS item)."""
    seq = ds.get(SPS)
    first = seq.value[0] if seq is not None and seq.VR == "SQ" and len(seq.value) else Dataset()
    out = {}
    for column, in_sps, keyword in SUMMARY:
        elem = element(first if in_sps else ds, keyword)
        out[column] = text_of(elem.value) if elem is not None else ""
    return out
