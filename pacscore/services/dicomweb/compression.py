"""How answers travel: gzip for the JSON answers of the HTTP door (QIDO-RS, WADO-RS
metadata): ~8-30x smaller on the wire (series metadata is mostly repeated keys),
while frames and rendered pictures, already compressed, pass untouched.

Starlette's ``GZipMiddleware`` compresses every media type (CPU spent on HTJ2K frames
for nothing), so this small ASGI middleware compresses only answers whose media type is
JSON (:data:`COMPRESSED_TYPES`), of at least :data:`MINIMUM` bytes, to clients that
accept ``gzip`` (RFC 9110 12.5.3), and says ``Vary: Accept-Encoding``.

Study and series metadata carry a weak validator (:func:`metadata_etag`) and
:data:`REVALIDATE`: the browser keeps them and asks with ``If-None-Match``; 304 until an
instance under them is stored or deleted.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from ...archive import Archive

__all__ = ["COMPRESSED_TYPES", "MINIMUM", "REVALIDATE", "JsonGzip", "metadata_etag"]

COMPRESSED_TYPES = ("application/dicom+json", "application/json")
MINIMUM = 1024
"""Smaller answers go as they are (gzip's header would eat the gain)."""
REVALIDATE = "private, no-cache"
"""Cache-Control of metadata: kept by this user's browser only (patient data), and
revalidated on every use (it changes when instances arrive)."""
_LEVEL = 5  # 1.8 MB of series metadata: ~10 ms, within a few % of level 9's size


def _accepts_gzip(scope: Scope) -> bool:
    value = Headers(scope=scope).get("accept-encoding", "")
    for item in value.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            return not (params and q.replace(".", "", 1).isdigit() and float(q) == 0)
    return False


class JsonGzip:
    """The middleware (see the module's docstring)."""

    def __init__(self, app: ASGIApp, minimum: int = MINIMUM):
        self.app, self.minimum = app, minimum

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD" or not _accepts_gzip(scope):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def sending(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = Headers(raw=message["headers"])
                media = headers.get("content-type", "").split(";")[0].strip().lower()
                if media in COMPRESSED_TYPES and "content-encoding" not in headers:
                    start = message  # held until the whole body is here
                    return
                await send(message)
            elif start is None:
                await send(message)
            else:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(chunks)
                headers = MutableHeaders(raw=start["headers"])
                headers.add_vary_header("Accept-Encoding")
                if len(body) >= self.minimum:
                    body = gzip.compress(body, _LEVEL, mtime=0)
                    headers["Content-Encoding"] = "gzip"
                headers["Content-Length"] = str(len(body))
                await send(start)
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, sending)


def metadata_etag(archive: Archive, path_params: Mapping[str, str], base: str) -> str | None:
    """A weak validator of a study's or series' metadata: its change stamp
    (:meth:`Archive.changed`, grows with every store or delete under it) and the base URL
    its BulkDataURIs start with; None for one instance or an unknown UID."""
    if "sop" in path_params:
        return None
    level = "series" if "series" in path_params else "study"
    stamp = archive.changed(level, path_params[level])
    digest = hashlib.sha256(base.encode()).hexdigest()[:12]
    return None if stamp is None else f'W/"{level}-{stamp}-{digest}"'
