"""FHIR R4 resources (JSON) made from what the archive and the worklist hold: pure
functions over query answers and worklist data sets, no I/O.

Each element cites the R4 resource it fills.  Values that DICOM holds in a form FHIR
does not take are left out, not guessed: a malformed date has no ``started`` or
``birthDate``; a Study Time has no time zone, which an R4 ``dateTime`` with a time
requires, so ``started`` is the Study Date (day precision).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydicom.dataset import Dataset

from ...kinds import StepStatus
from ...workflow.items import summary
from ...workflow.matching import SPS, element, text_of
from .ids import DICOMWEB_ENDPOINT, PatientKey, study_id

__all__ = ["DCM", "ImagingStudyParts", "ItemColumns", "endpoint", "fhir_date", "imaging_study",
           "operation_outcome", "patient", "patient_key", "service_request", "subject"]

Json = dict[str, Any]
DCM = "http://dicom.nema.org/resources/ontology/DCM"
"""The DICOM code system (PS3.16): modality codes (R4 ImagingStudy.modality)."""
_URN_DICOM_UID = "urn:dicom:uid"  # R4 ImagingStudy.identifier for the Study Instance UID
_RFC3986 = "urn:ietf:rfc:3986"  # R4 ImagingStudy.series.instance.sopClass system
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier types (ACSN)
_ACCESSION_TYPE = {"coding": [{"system": _V2_0203, "code": "ACSN"}]}
# DICOM Patient's Sex (PS3.3 C.7.1.1) -> R4 AdministrativeGender.
_GENDER = {"M": "male", "F": "female", "O": "other"}
# Worklist step status -> R4 ServiceRequest.status (RequestStatus): a step stopped or
# withdrawn before its end is "revoked" (terminated before full completion).
REQUEST_STATUS: dict[StepStatus, str] = {
    StepStatus.SCHEDULED: "active",
    StepStatus.IN_PROGRESS: "active",
    StepStatus.COMPLETED: "completed",
    StepStatus.DISCONTINUED: "revoked",
    StepStatus.CANCELLED: "revoked",
}
# R4 OperationOutcome issue type by HTTP status (IssueType value set).
_ISSUE_TYPE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
               405: "not-supported", 406: "not-supported", 413: "too-costly"}


def fhir_date(value: object) -> str | None:
    """A DICOM DA (``YYYYMMDD``) as an R4 ``date``; None when it is not a real date."""
    text = str(value or "").strip()
    try:
        return datetime.datetime.strptime(text, "%Y%m%d").date().isoformat() \
            if len(text) == 8 else None
    except ValueError:
        return None


def _text(value: object) -> str:
    return str(value).strip() if value not in (None, "") else ""


def patient_key(match: Mapping[str, Any]) -> PatientKey:
    """The patient of a query answer (any level)."""
    return PatientKey(_text(match.get("PatientID")), _text(match.get("IssuerOfPatientID")))


def subject(key: PatientKey, name: object) -> Json:
    """A Reference to the Patient: ``Patient/<id>``, with the Patient ID as its
    identifier and the name as display; objects without a Patient ID get a display
    only (no Patient resource stands for them)."""
    ref: Json = {}
    fhir_id = key.fhir_id
    if fhir_id is not None:
        ref["reference"] = f"Patient/{fhir_id}"
        ref["identifier"] = _patient_identifier(key)
    display = _text(name).replace("^", " ").strip()
    ref["display"] = display or "(no name)"
    return ref


def _patient_identifier(key: PatientKey) -> Json:
    ident: Json = {"type": {"coding": [{"system": _V2_0203, "code": "MR"}]},
                   "value": key.patient_id}
    if key.issuer:
        if ":" in key.issuer:  # a URI (urn:oid:..., https://...): the system
            ident["system"] = key.issuer
        ident["assigner"] = {"display": key.issuer}
    return ident


def _human_name(value: object) -> Json | None:
    """A DICOM PN (alphabetic group: family^given^middle^prefix^suffix, PS3.5 6.2.1)
    as an R4 HumanName."""
    text = _text(value).split("=")[0]
    if not text:
        return None
    parts = (text.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    name: Json = {"text": " ".join(p for p in (prefix, given, middle, family, suffix) if p)}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [g for g in (given, *middle.split()) if g]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


def patient(match: Mapping[str, Any]) -> Json:
    """R4 Patient from a patient-level answer (Patient ID, issuer, name, birth date,
    sex)."""
    key = patient_key(match)
    out: Json = {"resourceType": "Patient", "id": key.fhir_id,
                 "identifier": [_patient_identifier(key)]}
    name = _human_name(match.get("PatientName"))
    if name:
        out["name"] = [name]
    sex = _text(match.get("PatientSex")).upper()
    if sex:
        out["gender"] = _GENDER.get(sex, "unknown")
    born = fhir_date(match.get("PatientBirthDate"))
    if born:
        out["birthDate"] = born
    return out


def _modality(code: str) -> Json:
    return {"system": DCM, "code": code}


def _count(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


class ImagingStudyParts:
    """What an ImagingStudy is made of: the study's answer, its series' answers and
    each series' instance answers (``instances[SeriesInstanceUID]``)."""

    __slots__ = ("instances", "series", "study")

    def __init__(self, study: Mapping[str, Any], series: Iterable[Mapping[str, Any]],
                 instances: Mapping[str, list[dict[str, Any]]]):
        self.study, self.series, self.instances = study, list(series), instances


def _series(match: Mapping[str, Any], instances: list[dict[str, Any]]) -> Json:
    out: Json = {"uid": match["SeriesInstanceUID"]}
    number = _count(match.get("SeriesNumber"))
    if number is not None and number >= 0:
        out["number"] = number
    out["modality"] = _modality(_text(match.get("Modality")) or "OT")
    description = _text(match.get("SeriesDescription"))
    if description:
        out["description"] = description
    out["numberOfInstances"] = len(instances)
    out["instance"] = [_instance(i) for i in sorted(
        instances, key=lambda i: (_count(i.get("InstanceNumber")) or 0,
                                  str(i["SOPInstanceUID"])))]
    return out


def _instance(match: Mapping[str, Any]) -> Json:
    out: Json = {"uid": match["SOPInstanceUID"],
                 "sopClass": {"system": _RFC3986,
                              "code": f"urn:oid:{_text(match.get('SOPClassUID'))}"}}
    number = _count(match.get("InstanceNumber"))
    if number is not None and number >= 0:
        out["number"] = number
    return out


def imaging_study(parts: ImagingStudyParts) -> Json:
    """R4 ImagingStudy: identifiers (Study Instance UID as ``urn:dicom:uid`` /
    ``urn:oid:``, Accession Number typed ACSN), modalities (DCM), subject, started
    (``basedOn``, the orders of its accession, is the app's: it reads the worklist),
    referrer, the DICOMweb endpoint, counts, description, and every series with its
    instances (R4 ImagingStudy.series, .series.instance)."""
    study = parts.study
    uid = study["StudyInstanceUID"]
    identifiers: list[Json] = [{"use": "official", "system": _URN_DICOM_UID,
                                "value": f"urn:oid:{uid}"}]
    accession = _text(study.get("AccessionNumber"))
    if accession:
        identifiers.append({"use": "usual", "type": _ACCESSION_TYPE, "value": accession})
    series = [_series(s, list(parts.instances.get(s["SeriesInstanceUID"], [])))
              for s in sorted(parts.series, key=lambda s: (_count(s.get("SeriesNumber")) or 0,
                                                            str(s["SeriesInstanceUID"])))]
    modalities = sorted({s["modality"]["code"] for s in series})
    out: Json = {"resourceType": "ImagingStudy", "id": study_id(uid), "identifier": identifiers,
                 "status": "available"}
    if modalities:
        out["modality"] = [_modality(m) for m in modalities]
    out["subject"] = subject(patient_key(study), study.get("PatientName"))
    started = fhir_date(study.get("StudyDate"))
    if started:
        out["started"] = started
    referrer = _text(study.get("ReferringPhysicianName")).replace("^", " ").strip()
    if referrer:
        out["referrer"] = {"display": referrer}
    out["endpoint"] = [{"reference": f"Endpoint/{DICOMWEB_ENDPOINT}"}]
    out["numberOfSeries"] = len(series)
    out["numberOfInstances"] = sum(s["numberOfInstances"] for s in series)
    description = _text(study.get("StudyDescription"))
    if description:
        out["description"] = description
    if series:
        out["series"] = series
    return out


def endpoint(dicomweb_root: str) -> Json:
    """R4 Endpoint of the DICOMweb service (connection type ``dicom-wado-rs``; the
    address is the root that QIDO-RS/WADO-RS paths are appended to)."""
    return {
        "resourceType": "Endpoint", "id": DICOMWEB_ENDPOINT, "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs"},
        "name": "pacscore DICOMweb (WADO-RS, QIDO-RS, STOW-RS)",
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom", "application/dicom+json"],
        "address": dicomweb_root,
    }


def _sps(ds: Dataset) -> Dataset:
    seq = ds.get(SPS)
    return seq.value[0] if seq is not None and seq.VR == "SQ" and len(seq.value) \
        else Dataset()


def _code(ds: Dataset, description: str) -> Json | None:
    """R4 ServiceRequest.code: the Requested Procedure Code Sequence (PS3.3 C.4.11)
    as codings, the Requested Procedure Description as text."""
    codings = []
    for item in ds.get("RequestedProcedureCodeSequence", []) or []:
        value, scheme = _text(item.get("CodeValue")), _text(item.get("CodingSchemeDesignator"))
        if value:
            coding: Json = {"system": DCM if scheme == "DCM" else
                            f"urn:dicom:coding-scheme:{scheme or 'unknown'}", "code": value}
            meaning = _text(item.get("CodeMeaning"))
            if meaning:
                coding["display"] = meaning
            codings.append(coding)
    out: Json = {}
    if codings:
        out["coding"] = codings
    if description:
        out["text"] = description
    return out or None


class ItemColumns(Mapping[str, str]):
    """What a ServiceRequest search tests of a worklist item (``key``, ``status``,
    ``accession``, ``patient_id``, ``issuer``), each read from the data set when first
    asked for: converting values is most of what a search over every item costs."""

    __slots__ = ("_cache", "_ds", "_key", "_status")
    _KEYWORDS: Mapping[str, str] = {"accession": "AccessionNumber", "patient_id": "PatientID",
                                    "issuer": "IssuerOfPatientID"}

    def __init__(self, key: str, status: StepStatus, ds: Dataset):
        self._key, self._status, self._ds = key, status, ds
        self._cache: dict[str, str] = {}

    def __getitem__(self, column: str) -> str:
        if column not in self._cache:
            if column == "key":
                self._cache[column] = self._key
            elif column == "status":
                self._cache[column] = REQUEST_STATUS[self._status]
            else:
                found = element(self._ds, self._KEYWORDS[column])
                self._cache[column] = text_of(found.value) if found is not None else ""
        return self._cache[column]

    def __iter__(self) -> Iterator[str]:
        return iter(("key", "status", *self._KEYWORDS))

    def __len__(self) -> int:
        return 2 + len(self._KEYWORDS)


def service_request(key: str, status: StepStatus, ds: Dataset) -> Json:
    """R4 ServiceRequest of a worklist item: accession as identifier (ACSN), status
    (:data:`REQUEST_STATUS`), intent ``order``, code, subject, the scheduled start as
    occurrence, the modality as performerType (DCM)."""
    columns = summary(ds)
    out: Json = {"resourceType": "ServiceRequest", "id": key}
    if columns["accession"]:
        out["identifier"] = [{"use": "usual", "type": _ACCESSION_TYPE,
                              "value": columns["accession"]}]
    out["status"] = REQUEST_STATUS[status]
    out["intent"] = "order"
    code = _code(ds, columns["description"])
    if code:
        out["code"] = code
    if columns["modality"]:
        out["performerType"] = {"coding": [_modality(columns["modality"])]}
    out["subject"] = subject(PatientKey(columns["patient_id"],
                                        text_of(ds.get("IssuerOfPatientID"))),
                             columns["patient_name"])
    when = fhir_date(columns["date"])
    if when:
        out["occurrenceDateTime"] = when
    return out


def operation_outcome(status: int, diagnostics: str) -> Json:
    """R4 OperationOutcome with one issue: severity error, its type by status."""
    return {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": _ISSUE_TYPE.get(status, "exception"),
        "diagnostics": diagnostics}]}
