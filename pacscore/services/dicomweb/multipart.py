"""Streaming multipart/related (RFC 2387) for STOW-RS: parts go to temp files.

The body is never held in memory: only a window the size of the boundary is kept
between chunks, and the total is capped (413 before buffering, RELIABILITY 14).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InvalidRequestError, PacsError

__all__ = ["BodyTimeoutError", "MultipartError", "Part", "TooLargeError", "encode_related",
           "idle_limited", "parse_related", "stream_related",
           "related_boundary"]


class MultipartError(InvalidRequestError):
    """The body is not well-formed multipart/related."""

    hint = ("send a multipart/related body (PS3.18 8.6.1.2) with a boundary parameter, "
            "each part after a boundary line, ending with the closing boundary")


class TooLargeError(InvalidRequestError):
    """The body exceeds the configured limit."""

    hint = ("send fewer or smaller instances per request, or raise max_body in the serve "
            "settings")


class BodyTimeoutError(PacsError, TimeoutError):
    """The client sent nothing of the body for longer than the idle timeout."""

    hint = "send the body without long pauses, or raise idle_timeout in the serve settings"


async def idle_limited(chunks: AsyncIterator[bytes], seconds: float
                       ) -> AsyncIterator[bytes]:
    """``chunks``, but :class:`BodyTimeoutError` when the next one takes longer than
    ``seconds`` (a client that stops sending mid-body would else hold the request and
    its spooled parts forever)."""
    it = aiter(chunks)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(it), seconds)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise BodyTimeoutError(
                f"the client sent nothing of the request body for {seconds:g} s: request "
                f"dropped, nothing stored; send the whole body without pausing that "
                f"long") from exc
        yield chunk


@dataclass(slots=True)
class Part:
    """One part, spooled to ``path``."""

    headers: dict[str, str]
    """Lower-cased header names."""
    path: Path
    """Temp file holding the part's body."""
    size: int = 0
    """Body size."""
    extra: dict[str, str] = field(default_factory=dict)


def related_boundary(content_type: str) -> str:
    """The boundary parameter of a multipart/related Content-Type."""
    main, *params = [p.strip() for p in content_type.split(";")]
    if main.lower() != "multipart/related":
        raise MultipartError(f"expected multipart/related, got {main or 'nothing'}")
    for p in params:
        key, _, value = p.partition("=")
        if key.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"')
    raise MultipartError("multipart/related without a boundary parameter")


async def parse_related(chunks: AsyncIterator[bytes], boundary: str, limit: int,  # noqa: C901
                        tmp_dir: Path) -> list[Part]:
    """Split the body into parts spooled under ``tmp_dir`` (caller removes them)."""
    delim = b"--" + boundary.encode()
    sep = b"\r\n" + delim
    buf = b""
    parts: list[Part] = []
    total = 0
    state = "preamble"
    current: Part | None = None
    out = None
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise TooLargeError(f"request body over {limit} bytes")
            buf += chunk
            while True:
                if state == "preamble":
                    i = buf.find(delim)
                    if i < 0:
                        buf = buf[-len(delim):]
                        break
                    buf = buf[i + len(delim):]
                    state = "after-delim"
                if state == "after-delim":
                    if len(buf) < 2:
                        break
                    if buf.startswith(b"--"):
                        return _finish(parts)
                    if not buf.startswith(b"\r\n"):
                        raise MultipartError("boundary not followed by CRLF")
                    buf = buf[2:]
                    state = "headers"
                if state == "headers":
                    i = buf.find(b"\r\n\r\n")
                    if i < 0:
                        if len(buf) > 16384:
                            raise MultipartError("part headers longer than 16 KiB")
                        break
                    headers = {}
                    for line in buf[:i].decode("latin-1").split("\r\n"):
                        if line:
                            k, _, v = line.partition(":")
                            headers[k.strip().lower()] = v.strip()
                    buf = buf[i + 4:]
                    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
                    out = os.fdopen(fd, "wb")
                    current = Part(headers, Path(name))
                    parts.append(current)
                    state = "body"
                if state == "body":
                    assert out is not None and current is not None
                    i = buf.find(sep)
                    if i < 0:
                        keep = len(sep) - 1
                        if len(buf) > keep:
                            out.write(buf[:-keep])
                            current.size += len(buf) - keep
                            buf = buf[-keep:]
                        break
                    out.write(buf[:i])
                    current.size += i
                    out.close()
                    out = None
                    buf = buf[i + len(sep):]
                    state = "after-delim"
        raise MultipartError("body ends before the closing boundary")
    except BaseException:
        for p in parts:
            p.path.unlink(missing_ok=True)
        raise
    finally:
        if out is not None:
            out.close()


def _finish(parts: list[Part]) -> list[Part]:
    if not parts:
        raise MultipartError("multipart/related body without parts")
    return parts


def encode_related(items: Iterable[tuple[str, bytes]], boundary: str) -> bytes:
    """A multipart/related body of (content type, payload) parts."""
    return b"".join(stream_related(items, boundary))


def stream_related(items: Iterable[tuple[str, bytes]], boundary: str,
                   chunk: int = 1 << 21) -> Iterator[bytes]:
    """The same body as chunks of about ``chunk`` bytes, whole parts each (a whole
    study is never in memory).  ASGI servers pull every chunk of a synchronous
    iterator through a worker thread: one hop per ~2 MiB instead of three per part
    (WADO-RS of a 500-instance CT series: ~1,700 -> ~3,000 instances/s here)."""
    b = boundary.encode()
    pending: list[bytes] = []
    size = 0
    for ctype, payload in items:
        pending += (b"--", b, b"\r\nContent-Type: ", ctype.encode(), b"\r\n\r\n", payload,
                    b"\r\n")
        size += len(payload)
        if size >= chunk:
            yield b"".join(pending)
            pending, size = [], 0
    yield b"".join((*pending, b"--", b, b"--\r\n"))
