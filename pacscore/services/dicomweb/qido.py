"""QIDO-RS (PS3.18 10.6): the query routes of the DICOMweb app.

A query becomes :meth:`~pacscore.Archive.query` keys (keywords or tags, UID lists split
on commas as well, ``limit``/``offset``, ``fuzzymatching``); ``includefield``
attributes the index does not keep come from the stored header of the first instance.
A share link's holder (:func:`..auth.access.bound_study`) is answered about its one
study only, whatever it asks (OHIF's prior-studies query by PatientID included).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ...archive import Archive
from ...errors import InvalidRequestError
from ..auth.access import bound_study

__all__ = ["DICOM_JSON", "LEVEL_UID", "Qido"]

DICOM_JSON = "application/dicom+json"
LEVEL_UID = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID",
             "instance": "SOPInstanceUID"}


def _count(key: str, value: str) -> int:
    """A QIDO-RS ``limit`` or ``offset`` (PS3.18 8.3.4.4): a non-negative integer."""
    if not value.strip().isdigit():
        raise InvalidRequestError(f"{key}={value!r}: write a whole number, 0 or more")
    return int(value)


def _is_tag(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text)


def _keyword(name: str, what: str) -> str:
    """The keyword a query parameter names (a keyword, or a tag as 8 hex digits)."""
    name = name.strip()
    if name == "all" and what == "includefield":
        return name
    keyword = keyword_for_tag(int(name, 16)) if _is_tag(name) else name
    if not keyword or tag_for_keyword(keyword) is None:
        raise InvalidRequestError(f"{what} {name!r} is not a DICOM attribute: use a "
                                  f"keyword (PatientAge) or a tag as 8 hex digits "
                                  f"(00101010)")
    return keyword


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A value read from a stored header, already in DICOM JSON (PS3.18 F.2)."""

    entry: dict[str, Any]
    """``{"vr": ..., "Value": [...]}``."""


def _json_attr(keyword: str, value: Any) -> tuple[str, dict[str, Any]] | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    if isinstance(value, _Encoded):
        return f"{tag:08X}", value.entry
    vr = dictionary_VR(tag).split(" ")[0]
    entry: dict[str, Any] = {"vr": vr}
    if value not in (None, ""):
        values = str(value).split("\\") if isinstance(value, str) else [value]
        if vr == "PN":
            entry["Value"] = [{"Alphabetic": v} for v in values]
        elif vr in ("IS", "US", "UL", "SS", "SL"):
            entry["Value"] = [int(v) for v in values]
        else:
            entry["Value"] = values
    return f"{tag:08X}", entry


def _match_json(match: dict[str, Any], base: str, level: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kw, value in match.items():
        attr = _json_attr(kw, value)
        if attr:
            out[attr[0]] = attr[1]
    url = f"{base}/studies/{match.get('StudyInstanceUID')}"
    if level in ("series", "instance"):
        url += f"/series/{match.get('SeriesInstanceUID')}"
    if level == "instance":
        url += f"/instances/{match.get('SOPInstanceUID')}"
    out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


class Qido:
    """The handler of every QIDO-RS route.

    Parameters
    ----------
    archive
        What is queried.
    base
        The absolute URL of ``/dicom-web`` for a request (Retrieve URLs).
    """

    def __init__(self, archive: Archive, base: Callable[[Request], str]):
        self.archive, self.base = archive, base

    async def __call__(self, request: Request) -> Response:
        return await self.qido(request)

    async def qido(self, request: Request) -> Response:
        request.state.audit_event = ("query", "E")  # PS3.15 A.5.3.7
        path = request.url.path
        level = ("instance" if path.endswith("/instances") else
                 "series" if path.endswith("/series") else "study")
        keys: dict[str, str] = {}
        limit, offset, include, fuzzy = None, 0, set[str](), False
        for key, value in request.query_params.multi_items():
            if key in ("limit", "offset"):
                number = _count(key, value)
                limit, offset = (number, offset) if key == "limit" else (limit, number)
            elif key == "includefield":
                include.update(_keyword(v, "includefield") for v in value.split(",")
                               if v.strip())
            elif key == "fuzzymatching":
                fuzzy = value.strip().lower() == "true"
            else:
                keyword = _keyword(key, "query key") if _is_tag(key) else key
                tag = tag_for_keyword(keyword)
                uids = tag is not None and dictionary_VR(tag) == "UI"
                # A UID list may be separated by commas as well (PS3.18 8.3.4.1).
                keys[keyword] = value.replace(",", "\\") if uids else value
        for name in ("study", "series"):
            if name in request.path_params:
                keys[LEVEL_UID[name]] = request.path_params[name]
        shared = bound_study(request)
        if shared is not None:  # a share link: its study only (priors by PatientID too)
            asked = keys.get("StudyInstanceUID")
            if asked is not None and shared not in asked.split("\\"):
                return Response("[]", 200, media_type=DICOM_JSON)
            keys["StudyInstanceUID"] = shared
        matches = await run_in_threadpool(self.archive.query, level, keys, limit=limit,
                                          offset=offset, fuzzy=fuzzy)
        extra = include - {"all"}
        if extra:
            await run_in_threadpool(self._complete, matches, level, extra)
        base = self.base(request)
        return Response(json.dumps([_match_json(m, base, level) for m in matches]),
                        200, media_type=DICOM_JSON)

    def _complete(self, matches: list[dict[str, Any]], level: str, wanted: set[str]) -> None:
        """Add to each result the ``includefield`` attributes the index does not keep,
        from the stored header of the instance (of the first instance of the series or
        study), when it has them.  ``includefield=all`` is what the index keeps (at the
        instance level with Rows, Columns, Bits Allocated and Number of Frames of
        images, PS3.18 Table 10.6.3-5): every result already has it."""
        for match in matches:
            missing = {kw for kw in wanted if match.get(kw) is None}
            if not missing:
                continue
            uid = match[LEVEL_UID[level]]
            sops = self.archive.instances(level, uid)
            if not sops:
                continue
            for kw, value in self.archive.attributes(sops[0], missing).items():
                match[kw] = _Encoded(value)
