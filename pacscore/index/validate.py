"""What a record must satisfy before an index transaction takes it.

Checked for every record of a batch before the write transaction opens, with the key
builders of :mod:`pacscore.index.keys`, so that one record the index cannot take is
refused alone and never fails the others of its group commit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from .base import LEVEL_ATTRIBUTES
from .keys import (
    MAX_KEY_BYTES,
    PATIENT_ID_MAX,
    child_key,
    encode,
    patient_key,
    patient_of_key,
)
from .records import InstanceRecord

__all__ = ["IDENTIFYING", "identifying_problem", "record_problem", "same_patient", "variant"]

IDENTIFYING: dict[str, str] = {"PatientID": "Patient ID",
                               "IssuerOfPatientID": "Issuer of Patient ID"}
"""Attributes of the patient key (LO: at most 64 characters, no control characters)."""
# PS3.5 6.2: LO is the default repertoire or that of (0008,0005), no control
# characters but ESC (and the key separator is one of them).
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")


def variant(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The patient-level values of one study (a patient keeps one per distinct set)."""
    return {kw: attributes.get(kw) for kw in LEVEL_ATTRIBUTES["patient"]}


def same_patient(existing: str, own: str) -> bool:
    """An instance whose patient key is ``own`` may join a study of patient
    ``existing``: the same key, or the same Patient ID with an issuer on one side only
    (a missing issuer is unknown, not different)."""
    if existing == own:
        return True
    a, b = patient_of_key(existing), patient_of_key(own)
    return a is not None and b is not None and a[0] == b[0] and not (a[1] and b[1])


def identifying_problem(keyword: str, value: Any, what: str | None = None) -> str | None:
    """Why a Patient ID or issuer (named ``what`` in the message) cannot be part of a
    patient key, or None."""
    if value is None:
        return None
    what = what or IDENTIFYING[keyword]
    if not isinstance(value, str):
        return f"{what} is not text ({type(value).__name__})"
    if len(value) > PATIENT_ID_MAX:
        return (f"{what} is {len(value)} characters long; its VR LO allows at most "
                f"{PATIENT_ID_MAX} (PS3.5 Table 6.2-1)")
    if _CONTROL.search(value):
        return f"{what} holds control characters (PS3.5 6.2: LO allows none but ESC)"
    return None


def _keys(rec: InstanceRecord) -> Iterator[tuple[str, bytes]]:
    """The LMDB keys (and dupsort values) of a put of ``rec`` whose length depends on
    its values, with what each is.  Matching-index keys are not among them: a value
    longer than HASHED_AFTER bytes is indexed by its hash, so they are always short."""
    attrs = rec.attributes
    pkey = patient_key(attrs.get("PatientID"), attrs.get("IssuerOfPatientID"),
                       rec.study_uid)
    yield "SOP Instance UID", encode(rec.sop_instance_uid)
    yield "Study Instance UID", encode(rec.study_uid)
    yield "Series Instance UID", encode(rec.series_uid)
    yield "location", encode(rec.location)
    yield "patient key", encode(pkey)
    for level, parent in (("patient", pkey), ("study", rec.study_uid),
                          ("series", rec.series_uid)):
        yield f"{level} child list", child_key(level, parent)


def record_problem(rec: InstanceRecord, max_key: int = MAX_KEY_BYTES) -> str | None:
    """Why the index cannot take ``rec`` (a value too long or unencodable for its keys),
    or None."""
    for kw in IDENTIFYING:
        problem = identifying_problem(kw, rec.attributes.get(kw))
        if problem:
            return problem
    try:
        for what, key in _keys(rec):
            if not 0 < len(key) <= max_key:
                return (f"{what} makes an index key of {len(key)} bytes; the index takes "
                        f"1 to {max_key}")
    except (UnicodeError, TypeError, AttributeError) as exc:
        return f"a value cannot be indexed: {exc}"
    return None
