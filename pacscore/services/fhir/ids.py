"""FHIR logical ids of what pacscore holds, and back (FHIR R4 2.24.0.2 ``id``:
``[A-Za-z0-9\\-\\.]{1,64}``).

* ImagingStudy: the Study Instance UID itself.  A UID is digits and dots, at most 64
  characters (PS3.5 9.1), so it is a FHIR id as it is: nothing to encode, and an EMR
  that holds the UID can build the URL.  The archive also keeps UIDs it tolerates
  beyond the grammar (letters, ``-``, ``_``: :func:`pacscore.dicom.header.validate_uid`);
  one with a ``_``, which no FHIR id may hold, gets the hashed form below.
* Patient: Patient ID and Issuer of Patient ID (the index's identity of a patient).
  Letters, digits and ``-`` stay; any other byte of their UTF-8 becomes ``.XX`` (two
  upper-case hex digits); ``..`` joins the issuer when there is one
  (``Lung.5FDx-A0002`` is Patient ID ``Lung_Dx-A0002``; ``PAT-1..HOSP`` is ``PAT-1``
  of issuer ``HOSP``).  Readable (UUIDs and most hospital ids stay as they are), and
  reversible without a table: every ``.`` of an escape is followed by two hex
  digits, so ``..`` is only ever the separator.  When that is longer than 64
  characters the id is ``..`` and 40 hex digits of a SHA-256 of both (a readable id
  never starts with ``..``: a Patient ID is never empty); such an id is resolved by
  comparing the digests of the archive's patients.
* ServiceRequest: the worklist item's key (12 digits).
* Endpoint: ``dicomweb``, the one DICOMweb service of this server.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["DICOMWEB_ENDPOINT", "PatientKey", "is_fhir_id", "is_hashed", "study_id",
           "study_uid"]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_ESCAPED = re.compile(r"([A-Za-z0-9\-]|\.[0-9A-F]{2})*")
_HASHED = _ISSUER = ".."
DICOMWEB_ENDPOINT = "dicomweb"
"""The id of the Endpoint resource of this server's DICOMweb service."""


def is_fhir_id(text: str) -> bool:
    """``text`` has the grammar of a FHIR logical id."""
    return _ID.fullmatch(text) is not None


def is_hashed(fhir_id: str) -> bool:
    """``fhir_id`` is the hashed form (of a patient or a study)."""
    return fhir_id.startswith(_HASHED) and is_fhir_id(fhir_id)


def _digest(text: str) -> str:
    return _HASHED + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def study_id(uid: str) -> str:
    """The ImagingStudy id of a Study Instance UID."""
    return uid if is_fhir_id(uid) and not uid.startswith(".") else _digest(uid)


def study_uid(fhir_id: str) -> str | None:
    """The Study Instance UID an ImagingStudy id is; None for a hashed id (resolved by
    comparing digests) or an id no study can have."""
    return None if not is_fhir_id(fhir_id) or fhir_id.startswith(".") else fhir_id


def _escape(text: str) -> str:
    return "".join(chr(b) if b in _PLAIN else f".{b:02X}"
                   for b in text.encode("utf-8", "surrogateescape"))


def _unescape(text: str) -> str | None:
    if _ESCAPED.fullmatch(text) is None:
        return None
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == ".":
            out.append(int(text[i + 1: i + 3], 16))
            i += 3
        else:
            out.append(ord(text[i]))
            i += 1
    return out.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class PatientKey:
    """Who a Patient resource is in the archive."""

    patient_id: str
    """Patient ID (0010,0020)."""
    issuer: str = ""
    """Issuer of Patient ID (0010,0021); '' when none."""

    @property
    def digest(self) -> str:
        """The hashed form of the id (used when the readable one is too long)."""
        return _digest(f"{self.patient_id}\x1f{self.issuer}")

    @property
    def fhir_id(self) -> str | None:
        """The Patient resource's id; None for objects without a Patient ID (each study
        of them is its own patient: no resource, the study's subject is a display)."""
        if not self.patient_id:
            return None
        text = _escape(self.patient_id) + (_ISSUER + _escape(self.issuer) if self.issuer
                                           else "")
        return text if len(text) <= 64 else self.digest

    @classmethod
    def parse(cls, fhir_id: str) -> PatientKey | None:
        """The key of a readable id; None for a hashed id (see :attr:`digest`) or
        anything no patient can have."""
        if not is_fhir_id(fhir_id) or fhir_id.startswith(_HASHED):
            return None
        pid, sep, issuer = fhir_id.partition(_ISSUER)
        patient_id, issuer_text = _unescape(pid), _unescape(issuer)
        if not patient_id or issuer_text is None or (sep and not issuer_text):
            return None
        return cls(patient_id, issuer_text)

    @staticmethod
    def hashed(fhir_id: str) -> bool:
        """``fhir_id`` is the hashed form."""
        return is_hashed(fhir_id)
