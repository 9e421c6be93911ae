"""Modality Worklist matching (PS3.4 K.6.1.2, with the rules of C.2.2.2) over data sets.

:func:`check_identifier` refuses an identifier the SCP cannot match (a key whose VR is
not the data dictionary's, a date or time that is none); :func:`answer` matches one
worklist item against an identifier and returns the response identifier (the
requested attributes, zero-length where the item has none, PS3.4 K.6.1.2.2 and
C.4.1.1.3.1), or None.  :func:`index_plan` picks the indexed keys a query can be
narrowed by (:mod:`pacscore.workflow.worklist` looks them up before matching).

Decisions where the standard leaves a choice:

* Person names match without regard to case (C.2.2.2.1 allows it; the archive's
  C-FIND does the same).
* A multi-valued attribute of the item (``AA32\\AA33`` Scheduled Station AE Title)
  matches when one of its values does.
* A sequence key with no item, or one empty item, asks for the whole sequence
  (C.2.2.2.6): every item, every attribute the worklist item holds.
* A non-empty sequence item matches when one item of the worklist item's sequence
  matches all its keys; the response lists the matching items only, each with the
  requested attributes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from ..errors import InvalidRequestError

__all__ = ["IndexedKey", "SPS", "answer", "check_identifier", "element", "index_plan",
           "text_of"]

SPS = 0x00400100
"""Scheduled Procedure Step Sequence (0040,0100)."""
_SPS_DATE, _SPS_TIME = 0x00400002, 0x00400003
_CHARSET = 0x00080005
# VRs whose values are not text (matched only when universal).
_BINARY = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "US", "SS", "UL", "SL",
                     "FL", "FD", "AT", "UV", "SV"})
# No wildcard matching for these (PS3.4 C.2.2.2.4); DA/TM/DT are range matched.
_NO_WILDCARD = frozenset({"DA", "TM", "DT", "UI"}) | _BINARY
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_FORMS = {  # PS3.5 Table 6.2-1: what a matching value of these VRs may be
    "DA": re.compile(r"\d{8}"),
    "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"),
}


def text_of(value: object) -> str:
    """An element's value as text, several values joined by backslashes."""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def element(ds: Dataset, keyword: str) -> DataElement | None:
    """The element ``keyword`` of ``ds`` (pydicom's ``get(keyword)`` gives the value)."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else ds.get(tag)


def _vr_allowed(tag: int, vr: str) -> str | None:
    """The dictionary VR when ``vr`` is not one it allows; None when it is (or the tag
    is private or unknown: such keys are ignored, never matched)."""
    try:
        expected = dictionary_VR(tag)
    except KeyError:
        return None
    return None if vr in expected.split(" or ") or vr == "UN" else expected


def check_identifier(query: Dataset, depth: int = 0) -> None:
    """Raise :class:`InvalidRequestError` (the peer's error: 0xA900) for a key whose VR
    is not its data dictionary VR, or a date/time matching value that is neither a
    value nor a range of that VR."""
    for elem in query:
        bad = _vr_allowed(elem.tag, elem.VR)
        name = elem.keyword or str(elem.tag)
        if bad is not None:
            raise InvalidRequestError(f"{name} {elem.tag} has VR {elem.VR}, not {bad}",
                                      hint="send the key with its data dictionary VR "
                                           "(PS3.6)")
        if elem.VR == "SQ":
            if depth > 4:
                raise InvalidRequestError("sequences nested too deep in the identifier")
            for item in elem.value:
                check_identifier(item, depth + 1)
        elif elem.VR in _FORMS:
            text = text_of(elem.value).strip()
            form = _FORMS[elem.VR]
            parts = text.split("-", 1) if elem.VR != "DT" else _dt_parts(text)
            if text and text != "*" and not all(not p or form.fullmatch(p) for p in parts):
                raise InvalidRequestError(f"{name} {text!r} is not a {elem.VR} value or range",
                                          hint="dates are YYYYMMDD, times HHMMSS, ranges "
                                               "A-B, A- or -B (PS3.4 C.2.2.2.5)")


_DT = r"\d{4}(?:\d{2}){0,5}(?:\.\d{1,6})?(?:[+-]\d{4})?"
_DT_RANGE = re.compile(rf"({_DT})?-({_DT})?")


def _dt_parts(text: str) -> list[str]:
    """A DT value or range split at the '-' between its ends (a UTC offset has a '-'
    of its own)."""
    m = _DT_RANGE.fullmatch(text)
    return [m.group(1) or "", m.group(2) or ""] if m else text.split("-", 1)


@lru_cache(maxsize=256)
def _wildcard(pattern: str, fold: bool) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z", re.DOTALL | (re.IGNORECASE if fold else 0))


def _values(elem: DataElement | None) -> list[str]:
    if elem is None or elem.value is None:
        return []
    value = elem.value
    if isinstance(value, MultiValue | list | tuple):
        return [str(v).strip() for v in value]
    return [str(value).strip()]


def _in_range(value: str, low: str, high: str) -> bool:
    return bool(value) and (not low or value >= low) and (not high or value[: len(high)] <= high)


def _single(vr: str, key: str, candidates: list[str]) -> bool:
    """Single value, wildcard, list (UIDs) or range matching of one key."""
    if vr in _RANGE_VRS and "-" in key:
        low, high = key.split("-", 1) if vr != "DT" else _dt_parts(key)
        return any(_in_range(c, low, high) for c in candidates)
    if vr == "UI" and "\\" in key:
        allowed = set(key.split("\\"))
        return any(c in allowed for c in candidates)
    fold = vr == "PN"
    if vr not in _NO_WILDCARD and ("*" in key or "?" in key):
        rx = _wildcard(key, fold)
        return any(rx.match(c) is not None for c in candidates)
    if fold:
        return any(c.upper() == key.upper() for c in candidates)
    return key in candidates


def _combined(query: Dataset, item: Dataset) -> bool | None:
    """Combined date-time range matching of SPS Start Date and Time (PS3.4 C.2.2.2.5.1):
    both keys ranges → one range from the first date and time to the second; None when
    the pair is not matched that way."""
    date_q, time_q = query.get(_SPS_DATE), query.get(_SPS_TIME)
    if date_q is None or time_q is None:
        return None
    d, t = text_of(date_q.value).strip(), text_of(time_q.value).strip()
    if "-" not in d or "-" not in t:
        return None
    dlo, dhi = d.split("-", 1)
    tlo, thi = t.split("-", 1)
    date = (_values(item.get(_SPS_DATE)) or [""])[0]
    time = (_values(item.get(_SPS_TIME)) or [""])[0]
    if not date:
        return False
    stamp = date + time.split(".")[0].ljust(6, "0")
    low = (dlo + tlo.ljust(6, "0")) if dlo else ""
    high = (dhi + thi.ljust(6, "9")) if dhi else ""
    return _in_range(stamp, low, high)


def _empty_sequence_key(elem: DataElement) -> bool:
    return len(elem.value) == 0 or (len(elem.value) == 1 and len(elem.value[0]) == 0)


def answer(query: Dataset, item: Dataset) -> Dataset | None:
    """The response identifier for ``item`` when it matches ``query``, else None."""
    out = Dataset()
    combined = _combined(query, item)
    if combined is False:
        return None
    for elem in query:
        tag, vr = elem.tag, elem.VR
        if tag == _CHARSET or tag.is_private or _vr_allowed(tag, vr) is not None \
                or tag.element == 0:
            continue
        have = item.get(tag)
        if vr == "SQ":
            if _empty_sequence_key(elem):
                out[tag] = have if have is not None else DataElement(tag, "SQ", Sequence())
                continue
            matched = [a for i in (have.value if have is not None else [])
                       for a in [answer(elem.value[0], i)] if a is not None]
            if not matched and _has_matching_keys(elem.value[0]):
                return None
            out[tag] = DataElement(tag, "SQ", Sequence(matched))
            continue
        key = text_of(elem.value).strip() if vr not in _BINARY else ""
        if key not in ("", "*") and not (combined and tag in (_SPS_DATE, _SPS_TIME)) \
                and not _single(vr, key, _values(have)):
            return None
        out[tag] = have if have is not None else DataElement(tag, vr, None)
    return out


def _has_matching_keys(query: Dataset) -> bool:
    """A sequence item of the identifier holds a key that is not universal."""
    for elem in query:
        if elem.VR == "SQ":
            if not _empty_sequence_key(elem) and _has_matching_keys(elem.value[0]):
                return True
        elif elem.VR not in _BINARY and text_of(elem.value).strip() not in ("", "*") \
                and elem.tag != _CHARSET:
            return True
    return False


@dataclass(frozen=True, slots=True)
class IndexedKey:
    """A lookup in the worklist's matching index that every match passes."""

    field: str
    """Index field (see :data:`pacscore.workflow.worklist.INDEXED`)."""
    low: str
    """Exact value, prefix, or the low end of a range ('' = open)."""
    high: str | None = None
    """High end of a range (None: an exact or prefix lookup)."""
    prefix: bool = False
    """``low`` is a prefix (a wildcard's literal start)."""


# (tag path, index field): the keys a query can be narrowed by.
INDEXED_PATHS: tuple[tuple[tuple[int, ...], str], ...] = (
    ((SPS, 0x00400001), "station"),
    ((SPS, 0x00080060), "modality"),
    ((SPS, _SPS_DATE), "date"),
    ((0x00100020,), "patient_id"),
    ((0x00100010,), "patient_name"),
    ((0x00080050,), "accession"),
    ((SPS, 0x00400009), "sps_id"),
)


def _key_at(query: Dataset, path: tuple[int, ...]) -> DataElement | None:
    ds: Dataset = query
    for tag in path[:-1]:
        seq = ds.get(tag)
        if seq is None or seq.VR != "SQ" or len(seq.value) != 1:
            return None
        ds = seq.value[0]
    return ds.get(path[-1])


def index_plan(query: Dataset) -> Iterator[IndexedKey]:
    """The index lookups ``query`` can be narrowed by (every match passes each)."""
    for path, name in INDEXED_PATHS:
        elem = _key_at(query, path)
        if elem is None or elem.VR in _BINARY or _vr_allowed(elem.tag, elem.VR) is not None:
            continue
        key = text_of(elem.value).strip()
        if key in ("", "*") or "\\" in key:
            continue
        if name == "patient_name":
            key = key.upper()
        if elem.VR in _RANGE_VRS and "-" in key:
            low, high = key.split("-", 1)
            yield IndexedKey(name, low, high)
        elif "*" in key or "?" in key:
            start = re.split(r"[*?]", key, maxsplit=1)[0]
            if start:
                yield IndexedKey(name, start, prefix=True)
        else:
            yield IndexedKey(name, key)
