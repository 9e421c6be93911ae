"""How the DICOMweb front end answers beyond the payload (PS3.18 8.4, 8.5, 8.7.3.4):
the audit outcome of a status, ``Warning`` headers, refusals (401/403) that say why,
the unauthenticated health probe, and which instances may leave the default transfer
syntax.  Pure functions over tables, used by :mod:`.app`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ...dicom.syntaxes import syntax
from ...index import InstanceRecord
from .media import parse_accept

__all__ = ["accepts_json", "healthz", "kept_as_stored", "outcome", "path_uids", "refusal",
           "warning_left_out", "warning_text"]

# The largest value length of Explicit VR Little Endian (a 32-bit field, even, PS3.5
# 7.1.1): native pixel data beyond it cannot be sent in the default syntax.
_MAX_VALUE_LENGTH = 0xFFFFFFFE
# Media ranges of an Accept header under which an error may come as JSON.
_JSON_RANGES = frozenset({"*/*", "application/*", "application/json",
                          "application/dicom+json"})


def outcome(status: int) -> str:
    """PS3.15 A.5.3 EventOutcomeIndicator of an answer with ``status``: all done; part
    done (STOW-RS 202, WADO-RS 206); refused as asked (4xx); nothing done for the
    client's content (STOW-RS 409: no instance stored) or a failure of this server."""
    if status in (202, 206):
        return "minor"
    if status < 400:
        return "success"
    return "serious" if status == 409 or status >= 500 else "minor"


def kept_as_stored(rec: InstanceRecord) -> str | None:
    """Why an instance asked for without a transfer syntax goes out in its stored one
    instead of Explicit VR Little Endian, when PS3.18 8.7.3.4 (note 2) allows it: pixel
    data only held lossy, or native pixel data too long for a 32-bit value length.
    None: it must be Explicit VR Little Endian."""
    if syntax(rec.stored_syntax).lossy:
        return f"its pixel data is lossy ({syntax(rec.stored_syntax).name}), kept as received"
    layout = rec.layout
    if layout is not None:
        size = layout["rows"] * layout["columns"] * layout["samples"] * \
            layout["bits_allocated"] // 8 * layout["frames"]
        if size > _MAX_VALUE_LENGTH:
            return f"its native pixel data ({size} bytes) exceeds a 32-bit value length"
    return None


def accepts_json(request: Request) -> bool:
    """Accept admits a JSON body (an absent Accept admits anything)."""
    accept = request.headers.get("accept", "")
    return any(r.media in _JSON_RANGES for r in parse_accept(accept))


def path_uids(request: Request) -> list[str]:
    """The UIDs a request names (path, or WADO-URI query), for the audit trail."""
    p, q = request.path_params, request.query_params
    named = [p.get("study"), p.get("series"), p.get("sop"), q.get("objectUID")]
    return [uid for uid in named if uid]


def warning_text(text: str) -> str:
    """``text`` as a Warning header value (RFC 7234 5.5, which PS3.18 recommends for
    the details of a status; 299: miscellaneous persistent warning), latin-1 and
    bounded, as header values must be."""
    text = text.replace('"', "'").replace("\r", " ").replace("\n", " ")
    text = text.encode("latin-1", "replace").decode("latin-1")
    return f'299 pacscore "{text[:2000]}"'


def warning_left_out(left_out: list[str], total: int) -> str:
    """A Warning header naming the instances an answer left out, each with its reason."""
    return warning_text(f"{len(left_out)} of {total} instances left out: "
                        + "; ".join(left_out))


def refusal(request: Request, status: int, error: str, reason: str,
            headers: dict[str, str] | None = None) -> Response:
    """401 or 403 with the reason: in a ``Warning`` header (PS3.18 defines no error
    payload and recommends the header for the details of a status) and in a JSON body
    ``{"error", "reason", "status"}`` when Accept admits JSON.  A client that asked only
    for multipart (a WADO-RS retrieve) gets no body: Orthanc's DICOMweb client reads
    any answer by its Content-Type, fails on a JSON one ("Error in the network
    protocol") and never reports the refused credentials."""
    headers = {**(headers or {}), "Warning": warning_text(f"{error}: {reason}")}
    if not accepts_json(request):
        return Response(status_code=status, headers=headers)
    return JSONResponse({"error": error, "reason": reason, "status": status}, status,
                        headers=headers)


async def healthz(request: Request) -> Response:
    """``ok`` while the HTTP service answers; no token needed (orchestrator probes send
    none), so it tells nothing else."""
    return PlainTextResponse("ok")
