"""STOW-RS (PS3.18 10.5): a multipart/related body, spooled part by part to the
archive's temp folder, each part stored through :meth:`Archive.store`; the answer is
the Store Instances Response Module (PS3.18 Annex I) with 200, 202 or 409 (503 Busy
when nothing was stored because the index could not be reached: the client should
retry), and the request's audit line names every instance with its fate."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ...archive import Archive, StoreResult
from ...dicom.header import InstanceHeader, validate_uid
from ...dicom.identity import claimed_uids
from ...errors import (
    ArchiveStorageError,
    IndexUnavailableError,
    InvalidRequestError,
    PacsError,
)
from ..auth.access import bound_study
from .multipart import TooLargeError, idle_limited, parse_related, related_boundary

__all__ = ["Stow"]

log = logging.getLogger(__name__)

_DICOM_JSON = "application/dicom+json"
# Failure Reason (0008,1197) of a STOW-RS instance (PS3.18 Table I.2-2).  A study
# mismatch has no code of its own there ("additional codes may be used"): A901, in the
# A9xx family, as Microsoft's DICOM service answers it.
_FAILURE_REASON = {"out of resources": 0xA700, "study mismatch": 0xA901,
                   "cannot understand": 0xC000}
_RETRY_AFTER = "10"
"""Seconds a 503 asks the client to wait before sending again."""


class Stow:
    """The handler of ``POST /studies[/{study}]``.

    Parameters
    ----------
    archive
        Where the instances go.
    max_body
        Largest body in bytes (413 beyond, before it is read).
    tmp_dir
        Folder for the parts while they are stored.
    idle_timeout
        Seconds the body may pause (408 beyond).
    base
        The absolute URL of ``/dicom-web`` for a request (Retrieve URLs).
    """

    def __init__(self, archive: Archive, max_body: int, tmp_dir: Path, idle_timeout: float,
                 base: Callable[[Request], str]):
        self.archive, self.max_body, self.tmp_dir = archive, max_body, tmp_dir
        self.idle_timeout, self.base = idle_timeout, base

    def _identify(self, path: Path) -> InstanceHeader | None:
        """Identity of a STOW-RS part, read by the archive before it is stored; None
        when it cannot be read (the store then says why)."""
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return self.archive.identify(data, "STOW-RS part")

    @staticmethod
    def _claimed(path: Path) -> tuple[str | None, str | None]:
        """SOP Instance and Class UIDs a refused STOW-RS part claims (read leniently;
        a value that is not a UID is not repeated), to name it in the answer and the
        audit trail."""
        def uid(value: str) -> str | None:
            try:
                validate_uid(value, "UID")  # raises for what is not a UID (or nothing)
            except PacsError:
                return None
            return value

        sop_class, sop = claimed_uids(path)
        return uid(sop), uid(sop_class)

    async def __call__(self, request: Request) -> Response:
        length = request.headers.get("content-length") or "0"
        if not length.strip().isdigit():
            raise InvalidRequestError(f"Content-Length {length!r} is not a byte count")
        declared = int(length)
        if declared > self.max_body:
            raise TooLargeError(f"request body of {declared} bytes over {self.max_body}")
        boundary = related_boundary(request.headers.get("content-type", ""))
        parts = await parse_related(idle_limited(request.stream(), self.idle_timeout),
                                    boundary, self.max_body, self.tmp_dir)
        # A share link stores into its study only (the path, if any, names it).
        study_filter = request.path_params.get("study") or bound_study(request)
        stored: list[StoreResult] = []
        failed: list[_Failure] = []
        busy: list[str] = []  # reasons of failures because the index was unreachable
        try:
            for part in parts:
                outcome: StoreResult | _Failure | _Busy
                if busy:  # the index is unreachable: the other parts fail at once
                    uid, cls = await run_in_threadpool(self._claimed, part.path)
                    outcome = (uid, cls, _FAILURE_REASON["out of resources"], busy[0])
                else:
                    outcome = await self._part(part.headers, part.path, study_filter)
                if isinstance(outcome, StoreResult):
                    stored.append(outcome)
                else:
                    failed.append(outcome[:4])
                    if len(outcome) > 4 or busy:
                        busy.append(outcome[3])
        finally:
            for part in parts:
                part.path.unlink(missing_ok=True)
        # The audit line names every instance and its fate (PS3.15 A.5.3.2).
        request.state.audit_objects = [r.sop_instance_uid for r in stored] + [
            uid for uid, *_ in failed if uid]
        request.state.audit_detail = f": {len(stored)} stored, {len(failed)} failed" + "".join(
            f"; {uid or 'unreadable part'} failed 0x{code:04X} {why[:200]}"
            for uid, _, code, why in failed[:20])
        body = _answer(stored, failed, self.base(request))
        status = 200 if not failed else 202 if stored else 409
        if failed and not stored and len(busy) == len(failed):
            # PS3.18 10.5.3: 503 Busy, the service is unavailable; each instance's
            # failure is still in the body
            return Response(json.dumps(body), 503, media_type=_DICOM_JSON,
                            headers={"Retry-After": _RETRY_AFTER})
        return Response(json.dumps(body), status, media_type=_DICOM_JSON)

    async def _part(self, headers: Mapping[str, str], path: Path, study_filter: str | None
                    ) -> StoreResult | _Failure | _Busy:
        """Store one part, or say why not (sop, class, failure reason code, why)."""
        ctype = headers.get("content-type", "application/dicom").split(";")[0]
        if ctype.strip().lower() != "application/dicom":
            return (None, None, _FAILURE_REASON["cannot understand"],
                    f"unsupported part type {ctype}: send application/dicom")
        if study_filter:  # checked before anything is stored
            header = await run_in_threadpool(self._identify, path)
            if header is not None and header.study_uid != study_filter:
                return (header.sop_instance_uid, header.sop_class_uid,
                        _FAILURE_REASON["study mismatch"],
                        f"instance {header.sop_instance_uid} is in study "
                        f"{header.study_uid}, not in {study_filter} that the URL names: "
                        f"not stored; send it to /studies/{header.study_uid} or /studies")
        try:
            return await run_in_threadpool(self.archive.store, path, source="STOW-RS part",
                                           strict_identity=True)
        except PacsError as exc:
            code = _FAILURE_REASON["out of resources" if isinstance(
                exc, ArchiveStorageError) else "cannot understand"]
            # Named when it names itself (PS3.18 Table I.2-1 wants the UIDs of a failed
            # instance; the audit trail too).
            uid, cls = await run_in_threadpool(self._claimed, path)
            if isinstance(exc, IndexUnavailableError):  # marked: all so, 503 Busy
                return (uid, cls, code, exc.reason, "busy")
            return (uid, cls, code, exc.reason)


_Failure = tuple[str | None, str | None, int, str]
_Busy = tuple[str | None, str | None, int, str, str]
"""A part not stored because the index could not be reached (a :data:`_Failure` and a
mark)."""
"""A part not stored: (SOP Instance UID, SOP Class UID, failure reason code, why)."""


def _answer(stored: Sequence[StoreResult], failed: Sequence[_Failure], base: str
            ) -> dict[str, Any]:
    """The STOW-RS response body (PS3.18 Table I.2-1): Referenced and Failed SOP
    Sequences, the reason of each failure in a private element."""
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [{
            "00081150": {"vr": "UI", "Value": [r.sop_class_uid]},
            "00081155": {"vr": "UI", "Value": [r.sop_instance_uid]},
            "00081190": {"vr": "UR", "Value": [
                f"{base}/studies/{r.study_uid}/series/{r.series_uid}"
                f"/instances/{r.sop_instance_uid}"]},
        } for r in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [{
            **({"00081150": {"vr": "UI", "Value": [cls]}} if cls else {}),
            **({"00081155": {"vr": "UI", "Value": [uid]}} if uid else {}),
            "00081197": {"vr": "US", "Value": [code]},
            "00090010": {"vr": "LO", "Value": ["PACSCORE"]},
            "00091001": {"vr": "LT", "Value": [reason]},
        } for uid, cls, code, reason in failed]}
    return body
