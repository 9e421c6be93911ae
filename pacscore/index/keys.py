"""LMDB key layout, in one place.

Named databases::

    inst      SOP Instance UID  -> InstanceRecord JSON
    hdr       SOP Instance UID  -> original header bytes (frames kind only)
    patient   patient key       -> level record JSON
    study     Study UID         -> level record JSON
    series    Series UID        -> level record JSON
    child     (dupsort) b"P"+patient key / b"S"+study / b"E"+series -> child id
    attr      (dupsort) level char + keyword + value -> level id (matching index)
    loc       location id       -> SOP Instance UID
    pending   location id       -> b""  (may exist on disk without an index entry)
    meta      b"stats"          -> totals JSON
"""

from __future__ import annotations

__all__ = [
    "ATTR_INDEXED",
    "DATABASES",
    "DUPSORT",
    "LEVEL_CHAR",
    "attr_key",
    "attr_prefix",
    "child_key",
    "patient_key",
]

DATABASES: tuple[bytes, ...] = (
    b"inst", b"hdr", b"patient", b"study", b"series", b"child", b"attr", b"loc",
    b"pending", b"meta",
)
DUPSORT = frozenset({b"child", b"attr"})

LEVEL_CHAR = {"patient": "P", "study": "S", "series": "E", "instance": "I"}
_CHILD = {"patient": b"P", "study": b"S", "series": b"E"}

# Keys with a secondary index per level (exact, prefix and range lookups); the
# level's own UID is the primary key of its database.
ATTR_INDEXED: dict[str, tuple[str, ...]] = {
    "patient": ("PatientName",),
    "study": ("PatientID", "PatientName", "AccessionNumber", "StudyDate"),
    "series": ("StudyInstanceUID", "Modality", "PatientID"),
    "instance": ("SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "PatientID"),
}

_MAX_VALUE = 400  # LMDB keys are at most 511 bytes


def patient_key(patient_id: str | None) -> str:
    """Patient-level id: ``#`` + PatientID (LMDB keys cannot be empty; objects without
    a Patient ID share the patient ``#``)."""
    return "#" + (patient_id or "")


def child_key(level: str, parent: str) -> bytes:
    """Key under which the children of ``parent`` (a ``level`` id) are listed."""
    return _CHILD[level] + parent.encode()


def attr_prefix(level: str, keyword: str) -> bytes:
    """Prefix of every matching-index key of ``keyword`` at ``level``."""
    return f"{LEVEL_CHAR[level]}\x1f{keyword}\x1f".encode()


def attr_key(level: str, keyword: str, value: str) -> bytes:
    """Matching-index key of one normalised value."""
    return attr_prefix(level, keyword) + value.encode()[:_MAX_VALUE]
