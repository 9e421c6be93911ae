"""DICOM attribute matching (PS3.4 C.2.2.2) as pure functions.

Single value, wildcard (``*``, ``?``), range (DA/TM/DT ``a-b``), list of UIDs
(``\\``-separated) and universal (empty) matching.  Person names match without
regard to case, as most PACS do.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["Constraint", "LIST_KEYS", "PN_KEYS", "RANGE_KEYS", "UID_KEYS", "normalise",
           "parse_constraint", "view_matches"]

UID_KEYS = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"})
RANGE_KEYS = frozenset({"StudyDate", "StudyTime", "PatientBirthDate", "SeriesDate"})
PN_KEYS = frozenset({"PatientName", "ReferringPhysicianName"})
LIST_KEYS = UID_KEYS | {"ModalitiesInStudy"}
"""Keys whose value may list alternatives (PS3.4 C.2.2.2.2; C.6.2.1.2: any listed
modality of the study matches)."""


def normalise(keyword: str, value: Any) -> str:
    """The form a value is compared and indexed in."""
    if value is None:
        return ""
    text = str(value)
    return text.upper() if keyword in PN_KEYS else text


@dataclass(frozen=True, slots=True)
class Constraint:
    """One key of a query."""

    keyword: str
    """Attribute keyword."""
    kind: str
    """``universal``, ``single``, ``list``, ``wildcard``, ``range`` or ``fuzzy``."""
    values: tuple[str, ...]
    """Normalised values (two for a range: low, high; '' = open)."""
    test: Callable[[str], bool]
    """Matches one normalised attribute value."""

    @property
    def prefix(self) -> str:
        """Literal prefix of a wildcard pattern (for index range scans)."""
        if self.kind != "wildcard":
            return ""
        return re.split(r"[*?]", self.values[0], maxsplit=1)[0]


@lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


_NAME_PARTS = re.compile(r"[\s^=,_.\-]+")


def _fold(text: str) -> str:
    """Upper case without accents (``Müller`` and ``MULLER`` compare equal)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper()


def _name_words(text: str) -> list[str]:
    return [w for w in _NAME_PARTS.split(_fold(text)) if w]


def _fuzzy_name(keyword: str, value: str) -> Constraint:
    """Fuzzy person-name matching (QIDO-RS ``fuzzymatching=true``, PS3.18 8.3.4.1):
    every word of the query starts some word of the name, in any order, without
    regard to case or accents; ``smi jo`` finds ``Smith^John`` and ``JOHNSON^SMILLA``.
    Wildcards keep their meaning inside a word (``*mith`` finds ``SMITH``), and a query
    with wildcards also matches whatever it matches without fuzzy matching: fuzzy
    matching only ever adds results."""
    words = [w for w in _name_words(value) if w.strip("*?")]
    if not words:
        return Constraint(keyword, "universal", (), lambda v: True)
    plain = parse_constraint(keyword, value) if "*" in value or "?" in value else None
    patterns = [_wildcard(w + "*") for w in words]

    def test(candidate: str) -> bool:
        if plain is not None and plain.test(candidate):
            return True
        have = _name_words(candidate)
        return all(any(p.match(h) for h in have) for p in patterns)

    return Constraint(keyword, "fuzzy", tuple(words), test)


def parse_constraint(keyword: str, raw: str, *, fuzzy: bool = False) -> Constraint:
    """Turn ``KEY=VALUE`` into a constraint (``fuzzy``: person names match loosely)."""
    value = normalise(keyword, raw.strip())
    if value in ("", "*"):
        return Constraint(keyword, "universal", (), lambda v: True)
    if fuzzy and keyword in PN_KEYS:
        return _fuzzy_name(keyword, value)
    if keyword in LIST_KEYS and "\\" in value:
        options = tuple(v for v in value.split("\\") if v)
        allowed = frozenset(options)
        return Constraint(keyword, "list", options, lambda v: v in allowed)
    if keyword in RANGE_KEYS and "-" in value:
        low, _, high = value.partition("-")
        return Constraint(keyword, "range", (low, high),
                          lambda v: bool(v) and (not low or v >= low)
                          and (not high or v[: len(high)] <= high))
    if "*" in value or "?" in value:
        rx = _wildcard(value)
        return Constraint(keyword, "wildcard", (value,), lambda v: rx.match(v) is not None)
    return Constraint(keyword, "single", (value,), lambda v: v == value)


def view_matches(c: Constraint, view: Mapping[str, Any]) -> bool:
    """``view`` (a record's attributes by keyword) satisfies ``c``."""
    value = view.get(c.keyword)
    if c.keyword == "ModalitiesInStudy":  # multi-valued: any value matches
        return any(c.test(v) for v in str(value or "").split("\\"))
    return c.test(normalise(c.keyword, value))
