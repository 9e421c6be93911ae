"""ORU^R01 out: a stored DICOM SR report as an HL7 v2.5.1 observation result (IHE RAD
Reporting Workflow's results to the RIS/EMR), in UTF-8 (MSH-18 ``UNICODE UTF-8``).

Segments: MSH, PID (Patient ID with its issuer, name, birth date, sex), ORC ``RE``
(observations to follow; ORC-3 and OBR-3 the Accession Number as the filler order
number), OBR (OBR-4 the study's description, OBR-7 the study's date and time, OBR-22
when the report was written, OBR-25 the result status, OBR-32 the observer), one OBX
``TX`` per report line (the concept as OBX-3, the text as OBX-5, OBX-11 the status)
and one OBX ``ST`` with the Study Instance UID (DCM 110180, so the receiver can open
the images).  Result status (HL7 Table 0085): ``F`` final for a complete, verified
report, ``C`` for a verified report that amends an earlier one, ``P`` preliminary
otherwise.  Every value is escaped (HL7 v2.5.1 2.7.4), so report text cannot break
the message's structure.
"""

from __future__ import annotations

import datetime

from ...dicom.report import Report, ReportLine

__all__ = ["SENDING_APPLICATION", "build_oru", "result_status"]

SENDING_APPLICATION = "PACSCORE"
_STUDY_UID_CODE = "110180^Study Instance UID^DCM"


_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\",
                          "~": "\\R\\", "\r": " ", "\n": " "})
"""HL7 v2.5.1 2.7.4 escapes of the separators ``|^~\\&`` (MSH-1/MSH-2 as this module
writes them).  python-hl7's ``escape`` is not used: it also rewrites every non-ASCII
character as ``\\Xhh\\`` with at most two hex digits, which garbles names such as
``Łukasz``; the message is UTF-8 (MSH-18), so such characters are sent as they are."""


def _esc(text: str) -> str:
    return text.translate(_ESCAPES)


def result_status(report: Report) -> str:
    """OBR-25 / OBX-11 (HL7 Table 0085)."""
    if not report.verified:
        return "P"
    return "C" if report.amends else "F" if report.complete else "P"


def _line(n: int, line: ReportLine, status: str) -> str:
    value, scheme, meaning = line.code
    concept = f"{_esc(value)}^{_esc(meaning)}^{_esc(scheme)}" if value else _esc(meaning)
    text = ("  " * line.depth) + (f"{line.concept}: {line.value}" if line.value and line.concept
                                  else line.value or line.concept)
    return f"OBX|{n}|TX|{concept}||{_esc(text)}||||||{status}"


def _interpreter(name: str) -> str:
    """OBR-32 (NDL: its first component a CNN, ``ID&Family&Given&...``) of a DICOM
    person name (``Family^Given^...``)."""
    return "&".join(["", *(_esc(part) for part in name.split("^")[:5])]) if name else ""


def build_oru(report: Report, control_id: str, *, receiving: str = "",
              facility: str = "", now: datetime.datetime | None = None) -> str:
    """The ORU^R01 of ``report`` (segments separated by CR, no MLLP framing);
    ``receiving`` is MSH-5^MSH-6 as ``application^facility``."""
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%d%H%M%S")
    status = result_status(report)
    app, _, fac = receiving.partition("^")
    pid3 = _esc(report.patient_id) + (f"^^^{_esc(report.issuer)}" if report.issuer else "")
    name = "^".join(_esc(part) for part in report.patient_name.split("^"))
    accession = _esc(report.accession)
    segments = [
        f"MSH|^~\\&|{SENDING_APPLICATION}|{_esc(facility)}|{_esc(app)}|{_esc(fac)}|{stamp}||"
        f"ORU^R01^ORU_R01|{_esc(control_id)}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        f"PID|1||{pid3}||{name}||{_esc(report.birth_date)}|{_esc(report.sex)}",
        f"ORC|RE||{accession}",
        f"OBR|1||{accession}|^{_esc(report.study_description or report.title)}|||"
        f"{_esc(report.study_datetime)}|||||||||||||||{_esc(report.content_datetime)}||"
        f"|{status}|||||||{_interpreter(report.observer)}",
    ]
    lines = [line for line in report.lines if line.value or line.concept]
    segments += [_line(n, line, status) for n, line in enumerate(lines, 1)]
    segments.append(f"OBX|{len(lines) + 1}|ST|{_STUDY_UID_CODE}||{_esc(report.study_uid)}"
                    f"||||||{status}")
    return "\r".join(segments) + "\r"
