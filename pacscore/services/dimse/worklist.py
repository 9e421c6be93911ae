"""Modality Worklist SCP: C-FIND of the Modality Worklist Information Model - FIND SOP
Class (1.2.840.10008.5.1.4.31, PS3.4 K.6), answered from :attr:`Archive.worklist`.

A mixin of :class:`~pacscore.services.dimse.server.DimseServer`: the peer needs the
``worklist`` right of the AE allow-list; every query is one audit record (Query,
PS3.15 A.5.3.3); a refused identifier is answered with a failure status and an Error
Comment by the server's status table (:data:`.server.STATUS`, rows ``worklist``), and
the association goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from ...archive import Archive
from ...errors import LimitExceededError
from ..auth.security import AuditLog, outcome_of
from .retrieve import NOT_AUTHORIZED, status_set

__all__ = ["MODALITY_WORKLIST_FIND", "WorklistHandlers"]

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
"""Modality Worklist Information Model - FIND SOP Class UID (PS3.4 K.6.1.1)."""

class WorklistHandlers:
    """The worklist side of the DIMSE server (a mixin: the attributes are the server's)."""

    archive: Archive
    audit: AuditLog
    worklist_max_answers: int

    def _peer(self, event: Any) -> tuple[str, str]:  # pragma: no cover - the server's
        raise NotImplementedError

    def _allowed(self, event: Any, right: str) -> bool:  # pragma: no cover - the server's
        raise NotImplementedError

    def _failure(self, op: str, exc: Exception) -> tuple[int, str]:  # pragma: no cover
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
        except Exception as exc:  # noqa: BLE001 - the request's boundary: answered and
            # audited whatever ended it (a bug: 0xC000, logged with its traceback)
            status, comment = self._failure("worklist", exc)
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
