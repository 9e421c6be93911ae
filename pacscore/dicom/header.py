"""What the archive reads from a scanned object: UIDs, matching keys, pixel layout.

Values are decoded by pydicom from the raw top-level elements the scan captured, so
character sets and person names follow pydicom, while nothing else is parsed twice.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from ..config import Limits
from ..errors import InvalidDicomError, InvalidUIDError, LimitExceededError
from ..index.validate import IDENTIFYING, identifying_problem
from .layout import PixelLayout  # re-exported: its home before pacscore.dicom.layout
from .scan import ScannedObject, dictionary_vr

__all__ = [
    "INDEX_KEYWORDS", "InstanceHeader", "PixelLayout", "derived_uid", "identity_conflict",
    "read_header", "validate_uid",
]

# PS3.5 9.1: components of digits separated by dots, at most 64 characters.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# What real devices send beyond the grammar (hex digests, leading zeros) is tolerated
# and flagged; anything that could mean something elsewhere ('/', NUL, spaces, '..')
# is refused.  UIDs never become paths either way.
_LENIENT_UID = re.compile(r"^[0-9A-Za-z_-]+(\.[0-9A-Za-z_-]+)*$")


def validate_uid(value: str, what: str, source: str | None = None) -> bool:
    """Check ``value``; return True if it follows PS3.5 9.1, False if merely tolerated.

    Raises
    ------
    InvalidUIDError
        For an empty UID, one over 64 characters, or one with characters that are not
        letters, digits, '-', '_' or single dots.
    """
    if value and len(value) <= 64:
        if _UID.fullmatch(value):
            return True
        if _LENIENT_UID.fullmatch(value):
            return False
    raise InvalidUIDError(f"{what} {value[:80]!r} is not a valid UID", source=source)


def derived_uid(*parts: str) -> str:
    """A deterministic UID under the 2.25 root (PS3.5 B.2) for a missing identifier."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


# Tag -> keyword of every top-level attribute the archive reads.  The index keys are
# those QIDO-RS (PS3.18 10.6.1.2.3) and C-FIND (PS3.4 C.6) match on.
_TAGS: dict[int, str] = {
    0x00080005: "SpecificCharacterSet",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080021: "SeriesDate",
    0x00080030: "StudyTime",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00080090: "ReferringPhysicianName",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100021: "IssuerOfPatientID",
    0x00100030: "PatientBirthDate",
    0x00100040: "PatientSex",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200010: "StudyID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00280002: "SamplesPerPixel",
    0x00280004: "PhotometricInterpretation",
    0x00280006: "PlanarConfiguration",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
    0x00280101: "BitsStored",
    0x00280102: "HighBit",
    0x00280103: "PixelRepresentation",
}

INDEX_KEYWORDS: tuple[str, ...] = (
    "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
    "ReferringPhysicianName", "StudyID",
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "NumberOfFrames",
)
"""Attributes stored in the index and matchable by ``find``."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """Identity, matching keys and pixel layout of one instance."""

    sop_instance_uid: str
    """SOP Instance UID."""
    sop_class_uid: str
    """SOP Class UID."""
    study_uid: str
    """Study Instance UID."""
    series_uid: str
    """Series Instance UID."""
    attributes: dict[str, str | int | None]
    """Index keys by keyword (strings as decoded; numbers as int)."""
    layout: PixelLayout | None
    """Pixel layout, None when the object has no (integer) pixel data."""
    layout_problem: str | None
    """Why the pixel data cannot be handled as native samples, if it cannot."""
    warnings: tuple[str, ...] = ()
    """Non-conformances that were tolerated (derived UIDs, meta mismatch, ...)."""
    identity_conflict: str | None = None
    """How the File Meta names another object than the data set is (see
    :func:`identity_conflict`), or None."""


_KEYWORD_TAG = {kw: tag for tag, kw in _TAGS.items()}
# PS3.5 Table 6.2-1: most characters one value may have (PN: per component group; TM
# is 14, but older editions allowed 16).  UIDs are checked by validate_uid.
_VR_MAX_CHARS = {"AE": 16, "CS": 16, "DA": 8, "DS": 16, "IS": 12, "LO": 64, "PN": 64,
                 "SH": 16, "TM": 16}
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_DEFAULT_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})


class _Values:
    """Values of the captured top-level elements, by keyword.

    Plain ASCII and US values (UIDs, dates, numbers) and text in the default
    repertoires are decoded here directly; anything else (other character sets,
    unusual VRs) goes through pydicom, built once on first need.
    """

    def __init__(self, scanned: ScannedObject, source: str):
        self.scanned = scanned
        self.source = source
        self._ds: Dataset | None = None
        charset = self.raw_text(0x00080005)
        self.charset = (charset or "").strip().upper()

    def raw_text(self, tag: int) -> str | None:
        """An element's value as ASCII-compatible text, padding stripped."""
        el = self.scanned.elements.get(tag)
        if el is None:
            return None
        raw = self.scanned.body[el.offset : el.offset + el.length]
        return raw.decode("latin-1").rstrip("\x00 ").lstrip(" ")

    def _vr(self, tag: int) -> str:
        el = self.scanned.elements[tag]
        return dictionary_vr(tag) if self.scanned.transfer_syntax.implicit_vr \
            or el.vr == "UN" else el.vr

    def get(self, keyword: str) -> Any:
        tag = _KEYWORD_TAG[keyword]
        el = self.scanned.elements.get(tag)
        if el is None:
            return None
        vr = self._vr(tag)
        if vr == "US" and el.length == 2:
            raw = self.scanned.body[el.offset : el.offset + 2]
            little = self.scanned.transfer_syntax.little_endian
            return int.from_bytes(raw, "little") if little else int.from_bytes(raw, "big")
        if vr in _ASCII_VRS:
            text = self.raw_text(tag) or ""
            return text if "\\" not in text else text.split("\\")
        if vr in _TEXT_VRS and self.charset in _DEFAULT_CHARSETS:
            raw = self.scanned.body[el.offset : el.offset + el.length]
            encoding = "utf-8" if self.charset == "ISO_IR 192" else "latin-1"
            return raw.decode(encoding, "replace").rstrip("\x00 ").lstrip(" ") or None
        return self._pydicom().get(keyword)

    def _pydicom(self) -> Dataset:
        if self._ds is None:
            self._ds = _dataset(self.scanned)
        return self._ds


def _dataset(scanned: ScannedObject) -> Dataset:
    ts = scanned.transfer_syntax
    raw: dict[Any, Any] = {}
    for tag in _TAGS:
        el = scanned.elements.get(tag)
        if el is None:
            continue
        value = bytes(scanned.body[el.offset : el.offset + el.length])
        # UN (an explicit-VR writer that did not know the VR) is read as the dictionary VR.
        vr = None if ts.implicit_vr else (dictionary_vr(tag) if el.vr == "UN" else el.vr)
        raw[tag] = RawDataElement(
            Tag(tag), vr, el.length, value, el.offset,
            ts.implicit_vr, ts.little_endian,
        )
    ds = Dataset(raw)
    ds.set_original_encoding(ts.implicit_vr, ts.little_endian)
    return ds


def _value(ds: _Values, keyword: str, source: str) -> Any:
    """A value, pydicom's warnings silenced by the caller (see :func:`read_header`)."""
    try:
        return ds.get(keyword)
    except Exception as exc:  # pydicom raises ValueError/TypeError on bad values
        raise InvalidDicomError(f"{keyword} holds an invalid value ({exc})", source=source) from exc


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):  # multi-valued (e.g. ModalitiesInStudy-like)
        return "\\".join(str(v) for v in value)
    return str(value).strip() or None


def _int(value: Any, keyword: str, source: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidDicomError(f"{keyword} {value!r} is not an integer", source=source) from exc


def _layout(ds: _Values, scanned: ScannedObject, limits: Limits,
            source: str) -> tuple[PixelLayout | None, str | None]:
    """Pixel layout with every bound checked in Python integers (no overflow)."""
    pixel = scanned.pixel
    if pixel is None:
        return None, "no pixel data (non-image object)"
    if pixel.tag != 0x7FE00010:
        return None, "float or double pixel data"
    needed = ("Rows", "Columns", "BitsAllocated")
    nums = {k: _int(_value(ds, k, source), k, source) for k in needed}
    missing = [k for k, v in nums.items() if v is None]
    if missing:
        return None, f"pixel data without an Image Pixel module ({', '.join(missing)} missing)"
    rows, columns, bits_allocated = (int(nums[k] or 0) for k in needed)
    samples = _int(_value(ds, "SamplesPerPixel", source), "SamplesPerPixel", source) or 1
    bits_stored = _int(_value(ds, "BitsStored", source), "BitsStored", source) or bits_allocated
    frames = _int(_value(ds, "NumberOfFrames", source), "NumberOfFrames", source) or 1
    signed = (_int(_value(ds, "PixelRepresentation", source), "PixelRepresentation",
                   source) or 0) == 1
    planar = (_int(_value(ds, "PlanarConfiguration", source), "PlanarConfiguration",
                   source) or 0) == 1 and samples > 1
    photometric = _text(_value(ds, "PhotometricInterpretation", source)) or ""
    if rows <= 0 or columns <= 0 or samples <= 0 or frames <= 0:
        raise InvalidDicomError(
            f"impossible geometry {rows}x{columns}x{samples} samples x {frames} frames",
            source=source,
        )
    if rows * columns > limits.max_frame_pixels:
        raise LimitExceededError(
            f"frame of {rows}x{columns} pixels exceeds the {limits.max_frame_pixels} limit",
            source=source,
        )
    layout = PixelLayout(rows, columns, samples, bits_allocated, bits_stored, signed, planar,
                         photometric, frames)
    if (bits_allocated == 1 or bits_allocated % 8 == 0) \
            and layout.native_bytes > limits.max_pixel_bytes:
        raise LimitExceededError(
            f"pixel data of {layout.native_bytes} bytes exceeds the "
            f"{limits.max_pixel_bytes} limit", source=source,
        )
    problem = None
    if bits_allocated not in (1, 8, 16, 32, 64):
        problem = f"Bits Allocated {bits_allocated} is not 1 or a multiple of 8 (PS3.5 8.1.1)"
    elif not 0 < bits_stored <= bits_allocated:
        problem = f"Bits Stored {bits_stored} is outside 1..Bits Allocated {bits_allocated}"
    return layout, problem


def _tag(keyword: str) -> str:
    tag = _KEYWORD_TAG[keyword]
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _check_lengths(ds: _Values, attributes: dict[str, str | int | None],
                   source: str) -> list[str]:
    """Check indexed values against their VR's maximum length (PS3.5 Table 6.2-1).

    The patient's identifiers (Patient ID, Issuer of Patient ID: the patient key) over
    it are refused; any other value over it is kept as received and noted (the index
    takes values of any length: long ones by their hash)."""
    notes: list[str] = []
    for keyword in INDEX_KEYWORDS:
        tag = _KEYWORD_TAG[keyword]
        vr = dictionary_vr(tag)
        oversized = ds.scanned.oversized.get(tag)
        if oversized is not None:  # over 64 KiB: never captured, so never indexed
            if keyword in IDENTIFYING:
                raise InvalidDicomError(
                    f"{IDENTIFYING[keyword]} {_tag(keyword)} is {oversized} bytes long; its "
                    f"VR {vr} allows at most 64 characters (PS3.5 Table 6.2-1)", source=source)
            notes.append(f"{keyword} {_tag(keyword)} of {oversized} bytes is over the "
                         f"{vr} maximum (PS3.5 Table 6.2-1): kept, not indexed")
            continue
        value = attributes.get(keyword)
        if keyword in IDENTIFYING:
            problem = identifying_problem(keyword, value,
                                          f"{IDENTIFYING[keyword]} {_tag(keyword)}")
            if problem:
                raise InvalidDicomError(problem, source=source)
            continue
        limit = _VR_MAX_CHARS.get(vr)
        if value is None or limit is None:
            continue
        text = value if isinstance(value, str) else ds.raw_text(tag) or ""
        values = text.split("\\")
        if vr == "PN":
            values = [group for v in values for group in v.split("=")]
        longest = max(len(v) for v in values)
        if longest > limit:
            notes.append(f"{keyword} {_tag(keyword)} has a value of {longest} characters, "
                         f"over the {limit} its VR {vr} allows (PS3.5 Table 6.2-1): kept "
                         f"as received")
    return notes


def read_header(scanned: ScannedObject, limits: Limits, source: str,
                content_sha256: str) -> InstanceHeader:
    """Read identity, matching keys and pixel layout; validate every UID.

    Identifiers that are missing (test objects, fragments) are derived
    deterministically (from the content hash for the SOP Instance UID, from the SOP
    Instance UID for study and series), recorded as derived, and never written into
    the object: the original bytes stay as received.
    """
    # pydicom warns about odd values; the archive records them as they are.  One
    # filter for the whole read (a filter per value was a tenth of a CT's prepare).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_header(scanned, limits, source, content_sha256)


def _read_header(scanned: ScannedObject, limits: Limits, source: str,
                 content_sha256: str) -> InstanceHeader:
    ds = _Values(scanned, source)
    attributes: dict[str, str | int | None] = {}
    for keyword in INDEX_KEYWORDS:
        value = _value(ds, keyword, source)
        if keyword in ("SeriesNumber", "InstanceNumber", "NumberOfFrames"):
            attributes[keyword] = _int(value, keyword, source)
        else:
            attributes[keyword] = _text(value)
    notes = _check_lengths(ds, attributes, source)
    meta_sop = scanned.meta.get(0x00020003, b"").rstrip(b"\x00 ").decode("ascii", "replace")
    meta_class = scanned.meta.get(0x00020002, b"").rstrip(b"\x00 ").decode("ascii", "replace")
    sop = str(attributes.get("SOPInstanceUID") or meta_sop)
    if not sop:
        sop = derived_uid("sop", content_sha256)
        notes.append(f"SOP Instance UID missing: derived {sop}")
    sop_class = str(attributes.get("SOPClassUID") or meta_class or "1.2.840.10008.5.1.4.1.1.7")
    study = str(attributes.get("StudyInstanceUID") or "")
    if not study:
        study = derived_uid("study", sop)
        notes.append(f"Study Instance UID missing: derived {study}")
    series = str(attributes.get("SeriesInstanceUID") or "")
    if not series:
        series = derived_uid("series", sop)
        notes.append(f"Series Instance UID missing: derived {series}")
    for value, what in ((sop, "SOP Instance UID"), (sop_class, "SOP Class UID"),
                        (study, "Study Instance UID"), (series, "Series Instance UID")):
        if not validate_uid(value, what, source):
            notes.append(f"{what} {value!r} does not follow PS3.5 9.1 (tolerated)")
    conflict = identity_conflict(scanned.meta, sop_class, sop)
    if conflict:
        notes.append(f"{conflict}; the data set's UID is used")
    attributes.update(SOPInstanceUID=sop, SOPClassUID=sop_class, StudyInstanceUID=study,
                      SeriesInstanceUID=series)
    layout, problem = _layout(ds, scanned, limits, source)
    return InstanceHeader(sop, sop_class, study, series, attributes, layout, problem,
                          tuple(notes), conflict)


# File Meta element -> what the data set calls the same identifier (PS3.10 7.1: the
# Media Storage SOP Class/Instance UIDs identify the data set that follows).
_META_IDENTITY = (
    (0x00020002, "Media Storage SOP Class UID (0002,0002)", "SOP Class UID (0008,0016)"),
    (0x00020003, "Media Storage SOP Instance UID (0002,0003)", "SOP Instance UID (0008,0018)"),
)


def identity_conflict(meta: dict[int, bytes], sop_class: str, sop: str) -> str | None:
    """Why the File Meta group ``meta`` names another object than the data set whose
    SOP Class and Instance UIDs are ``sop_class`` and ``sop`` (PS3.10 7.1); None when
    they agree or the File Meta names none.  A C-STORE data set is spooled under a
    File Meta made from the request's Affected SOP Class/Instance UIDs, so this is
    also the check of PS3.4 C.4.2.1.4.2 (the request must name the data set it
    carries)."""
    for (tag, meta_name, name), value in zip(_META_IDENTITY, (sop_class, sop), strict=True):
        named = meta.get(tag, b"").rstrip(b"\x00 ").decode("ascii", "replace")
        if named and named != value:
            return f"the data set's {name} is {value}, the File Meta's {meta_name} {named}"
    return None
