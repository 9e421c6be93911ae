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
              b"format"         -> key layout version (ASCII digits)

Every key and every value of a dupsort database is at most 511 bytes (LMDB's
``mdb_env_get_maxkeysize``): UIDs are at most 64 characters (PS3.5 9.1), Patient ID
and Issuer of Patient ID at most 64 (LO, PS3.5 Table 6.2-1; longer ones are refused),
and matching values longer than :data:`HASHED_AFTER` bytes are indexed by a prefix and
their SHA-256.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ATTR_INDEXED",
    "DATABASES",
    "DUPSORT",
    "FORMAT_VERSION",
    "HASHED_AFTER",
    "LEVEL_CHAR",
    "MAX_KEY_BYTES",
    "PATIENT_ID_MAX",
    "attr_bound",
    "attr_key",
    "attr_prefix",
    "child_key",
    "encode",
    "patient_key",
    "patient_label",
    "patient_of_key",
]

FORMAT_VERSION = 2
"""Version of this key layout (``meta`` ``format``).  1: patients keyed ``#`` + Patient
ID alone, objects without a Patient ID all under ``#``.  2: Issuer of Patient ID in the
patient key, one patient per study without a Patient ID, every patient-level value of
every study indexed, long matching values hashed."""

DATABASES: tuple[bytes, ...] = (
    b"inst", b"hdr", b"patient", b"study", b"series", b"child", b"attr", b"loc",
    b"pending", b"meta",
)
DUPSORT = frozenset({b"child", b"attr"})

LEVEL_CHAR = {"patient": "P", "study": "S", "series": "E", "instance": "I"}
_CHILD = {"patient": b"P", "study": b"S", "series": b"E"}

# Keys with a secondary index per level (exact, prefix and range lookups); the
# level's own UID is the primary key of its database (the patient's, built from
# Patient ID and issuer, is found through its PatientID entry).
ATTR_INDEXED: dict[str, tuple[str, ...]] = {
    "patient": ("PatientID", "PatientName"),
    "study": ("PatientID", "PatientName", "AccessionNumber", "StudyDate"),
    "series": ("StudyInstanceUID", "Modality", "PatientID"),
    "instance": ("SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "PatientID"),
}

MAX_KEY_BYTES = 511
"""LMDB's default key size limit (also the limit of a value in a dupsort database)."""
HASHED_AFTER = 200
"""Bytes of a matching value indexed as they are; a longer value is indexed as its
first HASHED_AFTER bytes, NUL and its SHA-256 (exact matching stays an index lookup;
a prefix or range beyond those bytes is tested by the matcher on a wider scan)."""
PATIENT_ID_MAX = 64
"""Characters of a Patient ID or an Issuer of Patient ID (LO, PS3.5 Table 6.2-1)."""
_SEPARATOR = "\x1f"  # not allowed in LO values (PS3.5 6.2: no control characters)
_NO_ID = "~"


def encode(text: str) -> bytes:
    """Key bytes of a text (lone surrogates pydicom may leave are kept, not refused)."""
    return text.encode("utf-8", "surrogatepass")


def patient_key(patient_id: str | None, issuer: str | None, study_uid: str) -> str:
    """Patient-level id.

    ``#`` + Patient ID, then the separator and the Issuer of Patient ID when there is
    one: a Patient ID is unique only within the authority that issued it (PS3.3
    Table C.7-1; IHE ITI PIX and RAD PIR identify a patient by ID and assigning
    authority), so two issuers' equal IDs are two patients.  An object without a
    Patient ID is a patient of its own study (``~`` + Study Instance UID): patients
    are never merged on a missing ID.  The key is never shown as a Patient ID.
    """
    if not patient_id:
        return _NO_ID + study_uid
    return "#" + patient_id + (_SEPARATOR + issuer if issuer else "")


def patient_of_key(key: str) -> tuple[str, str] | None:
    """(Patient ID, issuer or '') of a patient key; None for a study's own patient."""
    if key.startswith(_NO_ID):
        return None
    patient_id, _, issuer = key[1:].partition(_SEPARATOR)
    return patient_id, issuer


def patient_label(key: str) -> str:
    """How a patient key is named in messages."""
    ident = patient_of_key(key)
    if ident is None:
        return f"without a Patient ID (of study {key[1:]})"
    return f"ID {ident[0]!r}" + (f" (issuer {ident[1]!r})" if ident[1] else "")


def child_key(level: str, parent: str) -> bytes:
    """Key under which the children of ``parent`` (a ``level`` id) are listed."""
    return _CHILD[level] + encode(parent)


def attr_prefix(level: str, keyword: str) -> bytes:
    """Prefix of every matching-index key of ``keyword`` at ``level``."""
    return f"{LEVEL_CHAR[level]}\x1f{keyword}\x1f".encode()


def attr_key(level: str, keyword: str, value: str) -> bytes:
    """Matching-index key of one normalised value (long values: prefix + SHA-256)."""
    raw = encode(value)
    if len(raw) > HASHED_AFTER:
        raw = raw[:HASHED_AFTER] + b"\x00" + hashlib.sha256(raw).digest()
    return attr_prefix(level, keyword) + raw


def attr_bound(level: str, keyword: str, value: str) -> bytes:
    """Scan bound of a prefix or range (cut where long values' hashes begin)."""
    return attr_prefix(level, keyword) + encode(value)[:HASHED_AFTER]
