"""``GET /workflow/studies[?status=...]``: the status of ordered studies (scheduled,
arrived, in_progress, completed, reported, ...) and the stored studies that match no
order (``status=unreconciled``), as JSON (:mod:`pacscore.workflow.studies`).  A read:
the route declares the ``read`` scope in :func:`.app.create_app`."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ...archive import Archive
from ...errors import InvalidRequestError
from ...workflow.studies import parse_status, requested_procedures, study_states

__all__ = ["WorkflowStudies"]


class WorkflowStudies:
    """The endpoint over one archive."""

    def __init__(self, archive: Archive):
        self.archive = archive

    async def __call__(self, request: Request) -> Response:
        request.state.audit_event = ("query", "E")  # PS3.15 A.5.3.7
        unknown = sorted(set(request.query_params) - {"status"})
        if unknown:
            raise InvalidRequestError(f"unknown query parameter {unknown[0]!r}",
                                      hint="the only one is status=<study status>")
        text = request.query_params.get("status")
        wanted = parse_status(text) if text else None
        states = await run_in_threadpool(study_states, self.archive.worklist,
                                         self.archive.query, status=wanted,
                                         requested=requested_procedures(self.archive))
        return Response(json.dumps({"studies": [s.as_json() for s in states]}), 200,
                        media_type="application/json")
