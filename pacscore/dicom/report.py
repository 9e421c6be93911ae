"""What a structured report says, as text: the content of a DICOM SR (Basic, Enhanced or
Comprehensive Text SR, PS3.3 A.35) for the hospital's systems (HL7 ORU^R01 out).

The content tree (PS3.3 C.17.3) is flattened in document order into lines
``Concept: value``; containers give their concept as a heading and indent what they
hold.  Value types without a text form (images, waveforms, spatial coordinates) are
named by their type and referenced SOP Instance UID, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

from ..errors import InvalidDicomError

__all__ = ["REPORT_CLASSES", "Report", "ReportLine", "read_report"]

REPORT_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
}
"""SR storage SOP classes whose content is a report for people (sent out as ORU)."""

_MAX_DEPTH = 32
_MAX_LINES = 10_000


@dataclass(frozen=True, slots=True)
class ReportLine:
    """One content item as text."""

    depth: int
    """Nesting below the document's root container (0: its direct children)."""
    concept: str
    """The concept name's meaning (``Findings``), or ``''``."""
    code: tuple[str, str, str]
    """The concept name's (code value, coding scheme, meaning), or empty strings."""
    value: str
    """The value as text (``''`` for a container's heading)."""


@dataclass(frozen=True, slots=True)
class Report:
    """A stored SR document: who, which study, its state and its text."""

    sop_instance_uid: str
    study_uid: str
    accession: str
    patient_id: str
    issuer: str
    patient_name: str
    """As stored (``Family^Given^...``), HL7 XPN uses the same component order."""
    birth_date: str
    sex: str
    study_description: str
    study_datetime: str
    """StudyDate + StudyTime (``YYYYMMDDHHMMSS``, as much as is known)."""
    content_datetime: str
    """ContentDate + ContentTime: when the report was written."""
    title: str
    """The root container's concept meaning (``Radiology Report``)."""
    complete: bool
    """Completion Flag COMPLETE (else PARTIAL)."""
    verified: bool
    """Verification Flag VERIFIED."""
    amends: bool
    """It names a predecessor document (a correction or addendum of an earlier one)."""
    observer: str
    """The verifying observer (or the author), as a person name."""
    lines: tuple[ReportLine, ...]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _code(item: Dataset, keyword: str) -> tuple[str, str, str]:
    seq = item.get(keyword)
    if not seq:
        return "", "", ""
    code = seq[0]
    return (_text(code, "CodeValue") or _text(code, "LongCodeValue")
            or _text(code, "URNCodeValue"), _text(code, "CodingSchemeDesignator"),
            _text(code, "CodeMeaning"))


def _num(item: Dataset) -> str:
    seq = item.get("MeasuredValueSequence")
    if not seq:
        return "(no value)"
    unit = _code(seq[0], "MeasurementUnitsCodeSequence")
    return f"{_text(seq[0], 'NumericValue')} {unit[0] if unit[0] != '1' else ''}".strip()


def _reference(item: Dataset) -> str:
    refs = item.get("ReferencedSOPSequence")
    uid = _text(refs[0], "ReferencedSOPInstanceUID") if refs else ""
    return f"{_text(item, 'ValueType').lower()} {uid}".strip()


_VALUES: dict[str, Callable[[Dataset], str]] = {
    "TEXT": lambda item: _text(item, "TextValue"),
    "CODE": lambda item: _code(item, "ConceptCodeSequence")[2],
    "NUM": _num,
    "PNAME": lambda item: _text(item, "PersonName"),
    "DATE": lambda item: _text(item, "Date"),
    "TIME": lambda item: _text(item, "Time"),
    "DATETIME": lambda item: _text(item, "DateTime"),
    "UIDREF": lambda item: _text(item, "UID"),
    "CONTAINER": lambda item: "",
}
"""Value Type -> the item's value as text; other types are named by :func:`_reference`."""


def _walk(items: Iterable[Dataset], depth: int) -> Iterator[ReportLine]:
    if depth > _MAX_DEPTH:
        raise InvalidDicomError(f"the SR content tree nests deeper than {_MAX_DEPTH} levels")
    for item in items:
        kind = _text(item, "ValueType")
        code = _code(item, "ConceptNameCodeSequence")
        value = _VALUES.get(kind, _reference)(item)
        yield ReportLine(depth, code[2], code, value)
        yield from _walk(item.get("ContentSequence") or [], depth + 1)


def _observer(ds: Dataset) -> str:
    for keyword, name in (("VerifyingObserverSequence", "VerifyingObserverName"),
                          ("AuthorObserverSequence", "PersonName")):
        seq = ds.get(keyword)
        if seq:
            return _text(seq[0], name)
    return ""


def read_report(data: bytes, source: str = "<report>") -> Report:
    """The report in the SR object ``data`` (a Part-10 file); InvalidDicomError when it
    is not one."""
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
    except (PydicomInvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise InvalidDicomError(f"cannot read the report: {exc}", source=source) from exc
    if _text(ds, "SOPClassUID") not in REPORT_CLASSES:
        raise InvalidDicomError(f"SOP class {_text(ds, 'SOPClassUID')!r} is not a text "
                                f"report (SR) class", source=source)
    lines = tuple(_walk(ds.get("ContentSequence") or [], 0))
    if len(lines) > _MAX_LINES:
        raise InvalidDicomError(f"the report has {len(lines)} content items, over "
                                f"{_MAX_LINES}", source=source)
    ids = ds.get("IssuerOfPatientID")
    return Report(
        sop_instance_uid=_text(ds, "SOPInstanceUID"), study_uid=_text(ds, "StudyInstanceUID"),
        accession=_text(ds, "AccessionNumber"), patient_id=_text(ds, "PatientID"),
        issuer="" if ids is None else str(ids).strip(),
        patient_name=_text(ds, "PatientName"), birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"), study_description=_text(ds, "StudyDescription"),
        study_datetime=(_text(ds, "StudyDate") + _text(ds, "StudyTime")).split(".")[0],
        content_datetime=(_text(ds, "ContentDate") + _text(ds, "ContentTime")).split(".")[0],
        title=_code(ds, "ConceptNameCodeSequence")[2],
        complete=_text(ds, "CompletionFlag").upper() == "COMPLETE",
        verified=_text(ds, "VerificationFlag").upper() == "VERIFIED",
        amends="PredecessorDocumentsSequence" in ds, observer=_observer(ds), lines=lines)
