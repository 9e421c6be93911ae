"""Modality Performed Procedure Step SCP: N-CREATE and N-SET of the MPPS SOP Class
(1.2.840.10008.3.1.2.3.3, PS3.4 F.7), onto :class:`pacscore.workflow.PerformedSteps`.

A mixin of :class:`~pacscore.services.dimse.server.DimseServer`: the peer needs the
``mpps`` right of the AE allow-list; each request is one audit record (Procedure
Record, PS3.15 A.5.3.11: the step's UID and the scheduled steps it moved, no patient
data); each change is committed before its response is sent.  Refusals are answered
by the server's status table (:data:`.server.STATUS`, rows ``mpps``) with an Error
Comment naming the attributes at fault (for N-SET also as its Attribute Identifier
List) and, for an N-SET of a
final step, Error ID A710 (PS3.4 Table F.7.2-2); the association goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset

from ...archive import Archive
from ...errors import PacsError, ProcedureStepError, ProcedureStepFinalError
from ...workflow.mpps import PerformedStep, PerformedSteps
from ..auth.security import AuditLog, outcome_of
from ._fast.wire import error_comment
from .retrieve import NOT_AUTHORIZED

__all__ = ["MPPS_ERROR_ID", "ProcedureStepHandlers"]

log = logging.getLogger(__name__)

MPPS_ERROR_ID = 0xA710
"""Error ID (0000,0903) of an N-SET on a COMPLETED/DISCONTINUED step (Table F.7.2-2),
sent with Error Comment "Performed Procedure Step Object may no longer be updated"."""
_FINAL_COMMENT = "Performed Procedure Step Object may no longer be updated"
_PROCESSING_FAILURE = 0x0110


class ProcedureStepHandlers:
    """The MPPS side of the DIMSE server (a mixin: the attributes are the server's)."""

    archive: Archive
    audit: AuditLog

    def _peer(self, event: Any) -> tuple[str, str]:  # pragma: no cover - the server's
        raise NotImplementedError

    def _allowed(self, event: Any, right: str) -> bool:  # pragma: no cover - the server's
        raise NotImplementedError

    def _mpps_status(self, exc: Exception) -> int:  # pragma: no cover - the server's
        raise NotImplementedError

    def _performed(self) -> PerformedSteps:
        return PerformedSteps(self.archive.worklist)  # a view: nothing to keep

    def _n_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_CREATE: a new performed procedure step, IN PROGRESS."""
        uid = event.request.AffectedSOPInstanceUID
        return self._mpps("N-CREATE", event, str(uid) if uid else None,
                          lambda by: self._performed().create(
                              str(uid) if uid else None, event.attribute_list, by=by))

    def _n_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_SET: attributes of a step IN PROGRESS; COMPLETED/DISCONTINUED final."""
        uid = str(event.request.RequestedSOPInstanceUID or "")
        return self._mpps("N-SET", event, uid,
                          lambda by: self._performed().update(uid, event.modification_list,
                                                              by=by))

    def _mpps(self, op: str, event: Any, uid: str | None,
              run: Callable[[str], tuple[PerformedStep, list[str]]]
              ) -> tuple[int | Dataset, Dataset | None]:
        name, host = self._peer(event)
        if not self._allowed(event, "mpps"):
            return NOT_AUTHORIZED, None
        try:
            step, moved = run(f"DIMSE {name}@{host}")
        except Exception as exc:  # noqa: BLE001 - the request's boundary: answered and
            # audited whatever ended it (a bug: 0x0110, logged with its traceback)
            status, answer = self._mpps_refusal(op, exc)
            self.audit.record("procedure", action="C" if op == "N-CREATE" else "U",
                              outcome=outcome_of(status), user=name, host=host,
                              interface="dimse", failed=[uid] if uid else None,
                              detail=f"MPPS {op} 0x{status:04X}: {answer.ErrorComment}")
            return answer, None
        self.audit.record("procedure", action="C" if op == "N-CREATE" else "U",
                          outcome="success", user=name, host=host, interface="dimse",
                          objects=[step.uid],
                          detail=f"MPPS {op} {step.status}, scheduled steps "
                                 f"{','.join(step.steps) or 'none'}"
                                 + (f" ({','.join(moved)} changed)" if moved else ""))
        reply = Dataset()
        if op == "N-CREATE" and not event.request.AffectedSOPInstanceUID:
            reply.AffectedSOPInstanceUID = step.uid  # PS3.7 10.1.5.1.4: we assigned it
        return 0x0000, reply

    def _mpps_refusal(self, op: str, exc: Exception) -> tuple[int, Dataset]:
        """The status set answering ``exc``: the table's status, an Error Comment,
        the attributes at fault, and Error ID A710 for a final step."""
        answer = Dataset()
        if isinstance(exc, PacsError):
            answer.Status = self._mpps_status(exc)
            comment = _FINAL_COMMENT if isinstance(exc, ProcedureStepFinalError) \
                else exc.reason
        else:
            log.exception("MPPS %s failed", op)
            answer.Status = _PROCESSING_FAILURE
            comment = f"internal error ({type(exc).__name__}), logged"
        answer.ErrorComment = error_comment(comment)
        if isinstance(exc, ProcedureStepFinalError):
            answer.ErrorID = MPPS_ERROR_ID
        elif isinstance(exc, ProcedureStepError) and exc.tags and op == "N-SET":
            # the N-SET-RSP's Attribute Identifier List (PS3.7 10.1.3.1.7); N-CREATE's
            # response has none: its Error Comment names them
            answer.AttributeIdentifierList = list(exc.tags)
        return int(answer.Status), answer
