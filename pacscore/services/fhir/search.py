"""FHIR R4 search (http.html#search, search.html): the parameters each resource type
supports, as tables of parameter -> archive query keys (or, where the archive has no
key, a test of each answer), and the parsing of their values.

* Values of one parameter separated by commas are alternatives (OR); a parameter given
  twice must hold both times (AND: ``started=ge2020&started=lt2021``).
* ``date`` values take the prefixes eq, gt, ge, lt, le (search.html 3.1.1.4.1); a value
  is the period its precision names (``2020-03`` is all of March) and becomes a DICOM
  date range (PS3.4 C.2.2.2.5) over whole days: a time in the value is compared at the
  precision of the DICOM date (the day).  ne, sa, eb, ap are refused (400).
* ``token`` values are ``[system|]code``; a system other than the parameter's is a
  valid query that matches nothing.
* Unknown parameters, modifiers and prefixes: refused with 400 by default (the
  strict handling of http.html#search: an EMR's filter that is silently ignored
  returns other patients' studies); ``Prefer: handling=lenient`` ignores them, and the
  answer's ``self`` link shows only what was used.
* Paging: ``_count`` (default :data:`DEFAULT_COUNT`, at most :data:`MAX_COUNT`; 0
  gives the total only, as ``_summary=count`` does) and ``_offset``, which the
  ``next``/``previous`` links carry.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import InvalidRequestError
from .ids import PatientKey, is_hashed, study_uid

__all__ = ["DEFAULT_COUNT", "MAX_COUNT", "PARAMS", "Criteria", "SearchParam", "parse_search"]

DEFAULT_COUNT = 50
"""Entries per page when ``_count`` is not given."""
MAX_COUNT = 500
"""The largest page; a larger ``_count`` gets this many (search.html: a server may
return fewer than asked)."""
# Result parameters that change nothing here: the format (JSON only), pretty printing,
# and _total (the total is always counted exactly).
_RESULT_PARAMS = frozenset({"_format", "_pretty", "_total"})
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?"
                   r"(?:Z|[+-]\d{2}:\d{2})?)?)?)?")
_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_GENDER = {"male": "M", "female": "F", "other": "O"}
Match = Mapping[str, Any]


@dataclass
class Criteria:
    """What a search asks of the archive (or the worklist)."""

    keys: dict[str, str] = field(default_factory=dict)
    """Archive query keys (DICOM keywords, PS3.4 C.2.2.2 matching)."""
    tests: list[Callable[[Match], bool]] = field(default_factory=list)
    """Tests each answer must pass (what no archive key expresses)."""
    fuzzy: bool = False
    """Person names match word by word from the start (FHIR string search)."""
    nothing: bool = False
    """No answer can match (e.g. a token of another system)."""
    resolve: Callable[[str], PatientKey | None] = lambda _: None
    """The patient of a hashed Patient id (set by the app)."""
    resolve_study: Callable[[str], str | None] = lambda _: None
    """The Study Instance UID of a hashed ImagingStudy id (set by the app)."""

    def key(self, keyword: str, value: str, test: Callable[[Match], bool] | None) -> None:
        """Match ``keyword`` with ``value``; when another parameter took that key
        already (``patient`` and ``subject``, ``_id`` and ``identifier``: an AND), the
        answers must pass ``test`` instead (None: the caller's own test covers it)."""
        if keyword not in self.keys:
            self.keys[keyword] = value
        elif test is not None:
            self.tests.append(test)


# -- value parsers -----------------------------------------------------------------
def _options(name: str, value: str) -> list[str]:
    options = [v.strip() for v in value.split(",")]
    if not all(options):
        raise InvalidRequestError(f"{name}={value!r}: an empty value",
                                  hint="give one value, or several separated by commas")
    return options


def _token(value: str) -> tuple[str | None, str]:
    """``system|code`` -> (system, code); ``code`` -> (None, code); ``|code`` -> ('', code)."""
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code
    return None, value


def _period(name: str, text: str) -> tuple[datetime.date, datetime.date]:
    found = _DATE.fullmatch(text)
    if found is None:
        raise InvalidRequestError(f"{name}={text!r} is not a FHIR date",
                                  hint="write YYYY, YYYY-MM, YYYY-MM-DD or a dateTime, "
                                       "optionally after a prefix: ge2020-01-01")
    year, month, day = (int(g) if g else 0 for g in found.groups())
    try:
        if not month:
            return datetime.date(year, 1, 1), datetime.date(year, 12, 31)
        if not day:
            last = calendar.monthrange(year, month)[1]
            return datetime.date(year, month, 1), datetime.date(year, month, last)
        return datetime.date(year, month, day), datetime.date(year, month, day)
    except ValueError as exc:
        raise InvalidRequestError(f"{name}={text!r} is not a date: {exc}") from None


_DAY = datetime.timedelta(days=1)
# Prefix -> the dates (low, high; None: open) of a value's period (low, high) that
# match (search.html 3.1.1.4.1, at day precision).
_DATE_BOUNDS: dict[str, Callable[[datetime.date, datetime.date],
                                  tuple[datetime.date | None, datetime.date | None]]] = {
    "eq": lambda lo, hi: (lo, hi),
    "ge": lambda lo, hi: (lo, None),
    "gt": lambda lo, hi: (hi + _DAY, None),
    "le": lambda lo, hi: (None, hi),
    "lt": lambda lo, hi: (None, lo - _DAY),
}


def date_bounds(name: str, value: str) -> tuple[datetime.date | None, datetime.date | None]:
    """The matching dates of one ``date`` value (with its prefix)."""
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    if prefix not in _DATE_BOUNDS:
        raise InvalidRequestError(f"{name}: the prefix {prefix!r} is not supported",
                                  hint=f"use one of {', '.join(_DATE_BOUNDS)}")
    low, high = _period(name, text)
    return _DATE_BOUNDS[prefix](low, high)


def _da(day: datetime.date | None) -> str:
    return f"{day:%Y%m%d}" if day else ""


def _in_range(value: str, low: str, high: str) -> bool:
    return bool(value) and (not low or value >= low) and (not high or value <= high)


def _date_key(keyword: str) -> Callable[[Criteria, str, list[str]], None]:
    def apply(c: Criteria, name: str, values: list[str]) -> None:
        low: datetime.date | None = None
        high: datetime.date | None = None
        for value in values:  # AND: the intersection
            if "," in value:
                raise InvalidRequestError(f"{name}: alternatives (commas) of dates are not "
                                          f"supported", hint="use one range per search")
            lo, hi = date_bounds(name, value)
            low = lo if low is None or (lo is not None and lo > low) else low
            high = hi if high is None or (hi is not None and hi < high) else high
        if low is not None and high is not None and low > high:
            c.nothing = True
        c.key(keyword, f"{_da(low)}-{_da(high)}", lambda m: _in_range(
            str(m.get(keyword) or ""), _da(low), _da(high)))
    return apply


def _patient_ref(c: Criteria, name: str, value: str) -> PatientKey | None:
    """The patient a reference names (``Patient/ID``, ``ID``, or an absolute URL)."""
    ref = value.rstrip("/")
    if "/" in ref:
        kind, _, ref = ref.rpartition("/")
        if not kind.endswith("Patient"):
            raise InvalidRequestError(f"{name}={value!r} does not name a Patient",
                                      hint="write Patient/<id>")
    if PatientKey.hashed(ref):
        return c.resolve(ref)
    return PatientKey.parse(ref)


def _patients(c: Criteria, name: str, values: list[str]) -> None:
    """``patient``, ``subject``, Patient ``_id``: Patient ID as a key, the issuer as a
    test (an id without issuer names the patient without one)."""
    for value in values:
        keys = {k for v in _options(name, value) if (k := _patient_ref(c, name, v))}
        if not keys:
            c.nothing = True
        elif len(keys) == 1:
            (key,) = keys
            c.key("PatientID", key.patient_id, None)  # the test below
        allowed = {(k.patient_id, k.issuer) for k in keys}
        c.tests.append(lambda m, allowed=allowed: (  # type: ignore[misc]
            str(m.get("PatientID") or ""), str(m.get("IssuerOfPatientID") or "")) in allowed)


def _study_ids(c: Criteria, name: str, values: list[str]) -> None:
    for value in values:
        uids = [u for v in _options(name, value)
                if (u := c.resolve_study(v) if is_hashed(v) else study_uid(v))]
        if not uids:
            c.nothing = True
        c.key("StudyInstanceUID", "\\".join(uids),
              lambda m, u=frozenset(uids): m.get("StudyInstanceUID") in u)  # type: ignore[misc]


def _study_identifiers(c: Criteria, name: str, values: list[str]) -> None:
    """ImagingStudy ``identifier``: ``urn:dicom:uid|urn:oid:<uid>`` (or ``urn:oid:<uid>``)
    is the Study Instance UID; any other value without a system (or ``|value``) is the
    Accession Number."""
    for value in values:
        uids, accessions = set(), set()
        for option in _options(name, value):
            system, code = _token(option)
            if system in (None, "urn:dicom:uid") and code.startswith("urn:oid:"):
                uids.add(code[len("urn:oid:"):])
            elif system in (None, ""):
                accessions.add(code)
        if not uids and not accessions:
            c.nothing = True
        elif not accessions:
            c.key("StudyInstanceUID", "\\".join(sorted(uids)),
                  lambda m, u=uids: m.get("StudyInstanceUID") in u)  # type: ignore[misc]
        elif not uids and len(accessions) == 1:
            (accession,) = accessions
            c.key("AccessionNumber", accession,
                  lambda m, a=accession: str(m.get("AccessionNumber") or "") == a)  # type: ignore[misc]
        else:
            c.tests.append(lambda m, u=uids, a=accessions: (  # type: ignore[misc]
                m.get("StudyInstanceUID") in u or str(m.get("AccessionNumber") or "") in a))


def _modalities(c: Criteria, name: str, values: list[str]) -> None:
    for value in values:
        codes = [code for system, code in map(_token, _options(name, value))
                 if system in (None, "", _DCM)]
        if not codes:
            c.nothing = True
        c.key("ModalitiesInStudy", "\\".join(codes),  # multi-valued: any of them
              lambda m, w=frozenset(codes): bool(  # type: ignore[misc]
                  w & set(str(m.get("ModalitiesInStudy") or "").split("\\"))))


def _patient_identifiers(c: Criteria, name: str, values: list[str]) -> None:
    """Patient ``identifier``: ``value`` (any issuer), ``issuer|value``, ``|value`` (no
    issuer)."""
    for value in values:
        wanted = [_token(o) for o in _options(name, value)]
        if len({code for _, code in wanted}) == 1:
            c.key("PatientID", wanted[0][1], None)  # the test below
        c.tests.append(lambda m, w=wanted: any(  # type: ignore[misc]
            str(m.get("PatientID") or "") == code
            and (system is None or str(m.get("IssuerOfPatientID") or "") == system)
            for system, code in w))


def _names(c: Criteria, name: str, values: list[str]) -> None:
    for value in values:
        if "," in value:
            raise InvalidRequestError(f"{name}: alternatives (commas) of names are not "
                                      f"supported", hint="search once per name")
        c.fuzzy = True
        c.key("PatientName", value, lambda m, v=value: _name_starts(  # type: ignore[misc]
            str(m.get("PatientName") or ""), v))


def _name_starts(name: str, value: str) -> bool:
    """Every word of ``value`` starts a word of ``name`` (case-insensitive)."""
    words = re.split(r"[\s^=,]+", name.upper())
    return all(any(w.startswith(v) for w in words) for v in value.upper().split() if v)


def _genders(c: Criteria, name: str, values: list[str]) -> None:
    for value in values:
        codes = {code for system, code in map(_token, _options(name, value))
                 if system in (None, "", "http://hl7.org/fhir/administrative-gender")}
        sexes = {_GENDER.get(code, "") for code in codes}
        c.tests.append(lambda m, s=sexes, unknown="unknown" in codes: (  # type: ignore[misc]
            (str(m.get("PatientSex") or "").upper() in s - {""})
            or (unknown and str(m.get("PatientSex") or "").upper() not in _GENDER.values())))


# Worklist items (ServiceRequest) are tested on the summary of each item.
def _items(column: str, hint: str | None = None
           ) -> Callable[[Criteria, str, list[str]], None]:
    """A test of ``column``; with ``hint``, one value also becomes that key, which the
    app looks up in the worklist's identity index instead of reading every item."""
    def apply(c: Criteria, name: str, values: list[str]) -> None:
        for value in values:
            allowed = {code for system, code in map(_token, _options(name, value))
                       if system in (None, "")}
            if hint and len(allowed) == 1:
                c.key(hint, next(iter(allowed)), None)  # the test below
            c.tests.append(lambda m, a=allowed: str(m.get(column) or "") in a)  # type: ignore[misc]
    return apply


def _item_patients(c: Criteria, name: str, values: list[str]) -> None:
    for value in values:
        keys = {k for v in _options(name, value) if (k := _patient_ref(c, name, v))}
        allowed = {(k.patient_id, k.issuer) for k in keys}
        c.tests.append(lambda m, a=allowed: (  # type: ignore[misc]
            str(m.get("patient_id") or ""), str(m.get("issuer") or "")) in a)


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter of a resource type."""

    type: str
    """Its R4 SearchParamType (CapabilityStatement ``searchParam.type``)."""
    documentation: str
    """What it matches in pacscore (CapabilityStatement ``searchParam.documentation``)."""
    apply: Callable[[Criteria, str, list[str]], None]
    """Adds the parameter's values (one per occurrence) to the criteria."""


PARAMS: dict[str, dict[str, SearchParam]] = {
    "ImagingStudy": {
        "_id": SearchParam("token", "Study Instance UID (the resource id)", _study_ids),
        "identifier": SearchParam(
            "token", "urn:dicom:uid|urn:oid:<Study Instance UID>, or the Accession Number",
            _study_identifiers),
        "patient": SearchParam("reference", "Patient/<id>: the study's patient", _patients),
        "subject": SearchParam("reference", "Patient/<id>: as patient", _patients),
        "started": SearchParam("date", "Study Date (day precision; eq ge gt le lt)",
                               _date_key("StudyDate")),
        "modality": SearchParam("token", f"{_DCM}|<code>: a modality of the study",
                                _modalities),
    },
    "Patient": {
        "_id": SearchParam("token", "the Patient id", _patients),
        "identifier": SearchParam("token", "[<Issuer of Patient ID>|]<Patient ID>",
                                  _patient_identifiers),
        "name": SearchParam("string", "any part of the name starts with the value "
                                      "(case-insensitive)", _names),
        "birthdate": SearchParam("date", "Patient's Birth Date (eq ge gt le lt)",
                                 _date_key("PatientBirthDate")),
        "gender": SearchParam("token", "male, female, other, unknown (Patient's Sex)",
                              _genders),
    },
    "ServiceRequest": {
        "_id": SearchParam("token", "the worklist item's key", _items("key", "ItemKey")),
        "identifier": SearchParam("token", "the Accession Number",
                                  _items("accession", "AccessionNumber")),
        "patient": SearchParam("reference", "Patient/<id>", _item_patients),
        "subject": SearchParam("reference", "Patient/<id>", _item_patients),
        "status": SearchParam("token", "active, completed, revoked", _items("status")),
    },
    "Endpoint": {
        "_id": SearchParam("token", "dicomweb", _items("id")),
    },
}
"""Search parameters per resource type (also what the CapabilityStatement lists)."""


@dataclass
class Search:
    """A parsed search."""

    criteria: Criteria
    count: int
    offset: int
    used: list[tuple[str, str]]
    """The parameters applied (for the ``self`` and paging links)."""


def _whole(name: str, value: str) -> int:
    if not value.strip().isdigit():
        raise InvalidRequestError(f"{name}={value!r}: write a whole number, 0 or more")
    return int(value)


def parse_search(kind: str, items: list[tuple[str, str]], *, strict: bool,
                 resolve: Callable[[str], PatientKey | None],
                 resolve_study: Callable[[str], str | None]) -> Search:
    """The criteria of a search of ``kind`` from its query ``items``.

    Raises
    ------
    InvalidRequestError
        A malformed value; with ``strict``, an unknown parameter or modifier.
    """
    table = PARAMS[kind]
    criteria = Criteria(resolve=resolve, resolve_study=resolve_study)
    count, offset = DEFAULT_COUNT, 0
    grouped: dict[str, list[str]] = {}
    used: list[tuple[str, str]] = []
    for name, value in items:
        if name in ("_count", "_offset"):
            number = _whole(name, value)
            count, offset = (min(number, MAX_COUNT), offset) if name == "_count" \
                else (count, number)
        elif name == "_summary" and value == "count":  # the total only
            count = 0
        elif name in _RESULT_PARAMS:
            continue
        elif name in table:
            grouped.setdefault(name, []).append(value)
            used.append((name, value))
        elif strict:
            base = name.partition(":")[0]
            what = f"the modifier of {name!r}" if base in table else f"the parameter {name!r}"
            raise InvalidRequestError(
                f"{kind} search: {what} is not supported",
                hint=f"use {', '.join(sorted(table))} (and _count, _offset); or send "
                     f"'Prefer: handling=lenient' to have unknown parameters ignored")
    for name, values in grouped.items():
        table[name].apply(criteria, name, values)
    return Search(criteria, count, offset, used)
