"""Modality Worklist SCP: C-FIND of the Modality Worklist Information Model - FIND SOP
Class (1.2.840.10008.5.1.4.31, PS3.4 K.6), answered from :attr:`Archive.worklist`.

A mixin of :class:`~pacscore.services.dimse.server.DimseServer`: the peer needs the
``worklist`` right of the AE allow-list; every query is one audit record (Query,
PS3.15 A.5.3.3); a refused identifier is answered with a failure status and an Error
Comment by :data:`WORKLIST_STATUS`, and the association goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from ...archive import Archive
from ...errors import InvalidRequestError, LimitExceededError, PacsError
from ..auth.security import AuditLog, outcome_of
from .retrieve import NOT_AUTHORIZED, UNABLE, status_set

__all__ = ["MODALITY_WORKLIST_FIND", "WORKLIST_STATUS", "WorklistHandlers"]

log = logging.getLogger(__name__)

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
"""Modality Worklist Information Model - FIND SOP Class UID (PS3.4 K.6.1.1)."""

WORKLIST_STATUS: dict[type[Exception], int] = {
    # PS3.4 K.4.1.1.4 (Table K.4-1): "Identifier does not match SOP Class" for keys of
    # another VR or values their VR cannot hold; "Out of resources" for a query that
    # matches more than the server answers (worklist_max_answers).
    InvalidRequestError: 0xA900,
    LimitExceededError: 0xA700,
}
"""Error class -> C-FIND failure status; anything else 0xC000 "unable to process"."""


def _status(exc: Exception) -> int:
    return next((WORKLIST_STATUS[c] for c in type(exc).__mro__ if c in WORKLIST_STATUS),
                UNABLE)


class WorklistHandlers:
    """The worklist side of the DIMSE server (a mixin: the attributes are the server's)."""

    archive: Archive
    audit: AuditLog
    worklist_max_answers: int

    def _peer(self, event: Any) -> tuple[str, str]:  # pragma: no cover - the server's
        raise NotImplementedError

    def _allowed(self, event: Any, right: str) -> bool:  # pragma: no cover - the server's
        raise NotImplementedError

    def _worklist_matches(self, identifier: Dataset) -> list[Dataset]:
        limit = self.worklist_max_answers
        found: list[Dataset] = []
        for _, response in self.archive.worklist.find(identifier):
            found.append(response)
            if limit and len(found) > limit:
                raise LimitExceededError(
                    f"more than {limit} worklist items match: narrow the query",
                    hint="query by Scheduled Station AE Title and date, or raise "
                         "worklist_max_answers in the serve configuration")
        return found

    def _worklist_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """EVT_C_FIND of the Modality Worklist model: pending responses, one per
        matching scheduled procedure step, in the order they were scheduled."""
        name, host = self._peer(event)
        if not self._allowed(event, "worklist"):
            yield NOT_AUTHORIZED, None
            return
        try:
            answers = self._worklist_matches(event.identifier)
        except Exception as exc:
            # audited whatever ended it (a bug: 0xC000, logged with its traceback)
            status = _status(exc)
            if isinstance(exc, PacsError):
                comment = exc.reason
            else:
                log.exception("worklist C-FIND failed")
                comment = f"internal error ({type(exc).__name__}), logged"
            self.audit.record("query", action="E", outcome=outcome_of(status), user=name,
                              host=host, interface="dimse",
                              detail=f"worklist: final status 0x{status:04X}: {comment}")
            yield status_set(status, comment), None
            return
        self.audit.record("query", action="E", outcome="success", user=name, host=host,
                          interface="dimse", detail=f"worklist, {len(answers)} matches")
        for response in answers:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, response
