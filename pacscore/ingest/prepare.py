"""Ingest, worker side: parse -> plan -> frames -> encode -> verify -> stage.

Runs in worker processes (or in the caller for single stores).  It touches only the
staging area of the FrameStore; the archive's writer publishes and commits.
Nothing here needs the index, so no LMDB handle ever crosses a process boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..codecs import FrameCodec, by_name
from ..codecs.decoding import decodable, decode_frames
from ..config import ArchiveConfig
from ..dicom.frames import frame_crc32, native_bytes, native_frames
from ..dicom.header import InstanceHeader, read_header
from ..dicom.layout import PixelLayout
from ..dicom.part10 import HeaderParts
from ..dicom.scan import ScannedObject, scan
from ..dicom.syntaxes import TransferSyntax
from ..errors import (
    IdentityMismatchError,
    InvalidDicomError,
    TruncatedFileError,
    UndecodablePixelDataError,
)
from ..index.records import InstanceRecord, StoreKind
from ..kernels import bits_outside_stored
from ..store.base import FrameStore, new_location
from .outcomes import Prepared

__all__ = ["Prepared", "encode_object", "encode_unverified", "native_bytes", "native_frames",
           "prepare", "verified"]

# JPEG 2000 family: codestreams whose tile-part lengths can be checked (ISO 15444-1 A.4.2).
_J2K_FAMILY = ("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20")


def j2k_truncation(stream: bytes) -> str | None:  # noqa: C901
    """Why a JPEG 2000 codestream is cut short, or None (a walk of SOT tile-parts)."""
    start = stream.find(b"\xff\x4f\xff\x51")  # SOC then SIZ (JP2 boxes may precede)
    if start < 0:
        return None  # not a raw codestream: leave it to the decoder
    pos, end = start + 2, len(stream)
    # SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz (A.5.1)
    if end < pos + 38:
        return "codestream shorter than its SIZ marker segment"
    xs, ys, _, _, xt, yt, xto, yto = (int.from_bytes(stream[pos + 6 + 4 * i : pos + 10 + 4 * i],
                                                     "big") for i in range(8))
    tiles = -(-(xs - xto) // max(xt, 1)) * -(-(ys - yto) // max(yt, 1))
    if not 0 < tiles <= 65535:  # Isot is 16 bits: an impossible SIZ is the decoder's call
        return None
    seen: set[int] = set()
    while pos + 2 <= end:
        marker = stream[pos : pos + 2]
        if marker == b"\xff\xd9":
            if len(seen) < tiles:
                return f"only {len(seen)} of {tiles} tiles are present"
            return None
        if pos + 4 > end:
            break
        if marker == b"\xff\x90":  # SOT: Lsot(2) Isot(2) Psot(4) TPsot TNsot
            if pos + 10 > end:
                break
            psot = int.from_bytes(stream[pos + 6 : pos + 10], "big")
            seen.add(int.from_bytes(stream[pos + 4 : pos + 6], "big"))
            if psot == 0:
                return None  # last tile-part runs to EOC
            if pos + psot > end:
                return f"tile-part at byte {pos} declares {psot} bytes, {end - pos} remain"
            pos += psot
            continue
        if marker[0] != 0xFF:
            return f"no marker at byte {pos} of the codestream"
        pos += 2 + int.from_bytes(stream[pos + 2 : pos + 4], "big")
    return "codestream ends before its end-of-codestream marker"


@dataclass(frozen=True, slots=True)
class _Context:
    scanned: ScannedObject
    header: InstanceHeader
    ts: TransferSyntax
    config: ArchiveConfig
    codec: FrameCodec | None


def _pixel_length_problem(ctx: _Context) -> str | None:
    layout, pixel = ctx.header.layout, ctx.scanned.pixel
    assert layout is not None and pixel is not None
    if ctx.ts.encapsulated:
        return None
    extra = pixel.length - layout.native_bytes
    if extra > 1:
        return f"pixel data holds {extra} bytes more than Rows x Columns x Frames needs"
    return None


# Rules that keep an object exactly as received, checked in order (tables, not ladders).
# Each returns the reason to keep, or None.
_KEEP_RULES: tuple[Callable[[_Context], str | None], ...] = (
    lambda c: c.header.layout_problem,
    lambda c: "codec 'keep' configured" if c.codec is None else None,
    lambda c: f"lossy input ({c.ts.name}) is kept as received" if c.ts.lossy else None,
    lambda c: "deflated data set kept as received (byte-exact original)"
    if c.ts.deflated else None,
    lambda c: f"losslessly compressed input ({c.ts.name}) kept as received"
    if c.ts.encapsulated and not c.config.transcode_compressed else None,
    lambda c: f"no decoder for {c.ts.name} here: kept as received"
    if c.ts.encapsulated and not decodable(c.ts.uid) else None,
    lambda c: "YBR_FULL_422 is subsampled: no lossless syntax re-encodes it"
    if c.header.layout and c.header.layout.photometric == "YBR_FULL_422" else None,
    lambda c: c.codec.refuses(c.header.layout) if c.codec and c.header.layout else None,
    _pixel_length_problem,
    lambda c: "8-bit samples in big-endian OW words (PS3.5 Annex A.3 byte swapping) kept "
    "as received" if not c.ts.little_endian and c.header.layout
    and c.header.layout.bits_allocated == 8 else None,
)




def _check_complete(ctx: _Context, source: str) -> None:
    """Refuse a native object whose pixel data is shorter than its header says, or an
    encapsulated one whose last codestream has no end marker (RELIABILITY 1)."""
    pixel, layout = ctx.scanned.pixel, ctx.header.layout
    if pixel is None:
        return
    if pixel.encapsulated != ctx.ts.encapsulated:
        raise InvalidDicomError(
            f"pixel data is {'encapsulated' if pixel.encapsulated else 'native'} but the "
            f"transfer syntax is {ctx.ts.name}", source=source)
    if layout is not None and not ctx.ts.encapsulated and ctx.header.layout_problem is None \
            and pixel.length < layout.native_bytes:
        raise TruncatedFileError(
            f"pixel data holds {pixel.length} bytes but {layout.rows}x{layout.columns}x"
            f"{layout.samples}x{layout.bits_allocated} bits x {layout.frames} frames needs "
            f"{layout.native_bytes}", source=source)
    if pixel.encapsulated and pixel.fragments and ctx.ts.uid.startswith(_J2K_FAMILY) \
            and layout is not None and layout.frames == 1:
        body = ctx.scanned.body
        stream = b"".join(body[o : o + n] for o, n in pixel.fragments)
        problem = j2k_truncation(stream)
        if problem:
            raise TruncatedFileError(f"JPEG 2000 pixel data is cut short: {problem}",
                                     source=source)


def _encode_frames(frames: Any, layout: PixelLayout, codec: FrameCodec) -> list[bytes] | str:
    """Encode every frame; a reason string if one cannot be encoded losslessly."""
    encoded: list[bytes] = []
    for i, source_frame in enumerate(frames):
        frame = np.ascontiguousarray(source_frame)
        if layout.bits_stored < layout.bits_allocated and bits_outside_stored(
                frame.reshape(-1).view(f"u{frame.itemsize}"), layout.bits_stored,
                layout.signed):
            return f"frame {i} has bits set above Bits Stored {layout.bits_stored}"
        try:
            encoded.append(codec.encode(frame, layout))
        except Exception as exc:  # noqa: BLE001 - a codec library's boundary (they raise
            # their own, undocumented types); the object is then kept as received
            return f"frame {i}: {codec.name} failed ({type(exc).__name__}: {exc})"
    return encoded


def _verify_frames(frames: Any, encoded: Sequence[bytes], layout: PixelLayout,
                   codec: FrameCodec) -> list[int] | str:
    """Decode every codestream and compare it with its source frame, bit for bit; the
    CRC-32 of each decoded frame, or a reason string if anything differs."""
    crcs: list[int] = []
    for i, (source_frame, stream) in enumerate(zip(frames, encoded, strict=True)):
        frame = np.asarray(source_frame)
        try:
            back = codec.decode(stream, layout)
        except Exception as exc:  # noqa: BLE001 - a codec library's boundary (as above)
            return f"frame {i}: {codec.name} failed ({type(exc).__name__}: {exc})"
        if back.shape != frame.shape or not np.array_equal(back, frame):
            return f"frame {i}: {codec.name} round trip differs from the source (kept)"
        crcs.append(frame_crc32(back))
    return crcs



@dataclass(frozen=True, slots=True)
class Encoded:
    """One object after the plan, encode and verify steps (nothing written yet)."""

    header: InstanceHeader
    """Identity, matching keys, layout."""
    sha256: str
    """SHA-256 of the object as received."""
    original_syntax: str
    """Transfer syntax as received."""
    notes: tuple[str, ...]
    """Tolerated non-conformances and security notes."""
    codec: FrameCodec | None = None
    """Codec of ``frames``; None when the object is kept as received."""
    frames: tuple[bytes, ...] = ()
    """Verified codestreams, one per frame."""
    crcs: tuple[int, ...] = ()
    """CRC-32 of every decoded frame."""
    parts: HeaderParts | None = None
    """Everything of the object but its pixel values."""
    kept_reason: str | None = None
    """Why the object is kept as received."""
    dataset_start: int = 0
    """Offset where the data set begins (after File Meta)."""


CodecChooser = Callable[[InstanceHeader, Any], FrameCodec]
"""Picks a codec for an object from its header and native frames (``--codec auto``)."""


def encode_object(data: bytes, source: str, config: ArchiveConfig,
                  choose: CodecChooser | None = None) -> Encoded:
    """The ingest pipeline up to verification: scan -> plan -> frames -> encode -> verify.

    ``config.codec == "auto"`` needs ``choose``; the keep rules are then checked
    against HTJ2K's profile (every candidate shares the PS3.5 monochrome/colour rules).

    Raises
    ------
    PacsError
        For input that must be refused.
    """
    return verified(*encode_unverified(data, source, config, choose))


def encode_unverified(data: bytes, source: str, config: ArchiveConfig,
                      choose: CodecChooser | None = None, *,
                      decode_kept: bool = False) -> tuple[Encoded, Any]:
    """:func:`encode_object` but the verification: the result with its codestreams
    (no CRCs yet) or kept as received, and the source frames that :func:`verified`
    checks the codestreams against (None when kept).

    ``decode_kept``: decode an object kept in a compressed syntax too (the archive's
    ingest, :func:`decoded_kept`); refuse it when it does not decode."""
    sha = hashlib.sha256(data).hexdigest()
    scanned = scan(data, config.limits, source)
    header = read_header(scanned, config.limits, source, sha)
    ts = scanned.transfer_syntax
    name = "htj2k" if config.codec == "auto" else config.codec
    codec = None if name == "keep" else by_name(name)
    ctx = _Context(scanned, header, ts, config, codec)
    _check_complete(ctx, source)
    notes = header.warnings
    if scanned.preamble[:2] == b"MZ" or scanned.preamble[:4] == b"\x7fELF":
        notes = (*notes, "SECURITY: the preamble holds an executable header; it is zeroed "
                 "in every output except 'original'")
    kept = Encoded(header, sha, ts.uid, notes, dataset_start=scanned.dataset_start)
    reason = next((r for rule in _KEEP_RULES if (r := rule(ctx))), None)
    layout, pixel = header.layout, scanned.pixel
    if reason is not None or codec is None or layout is None or pixel is None:
        crcs = _kept_crcs(ctx, data, source) if decode_kept and pixel is not None \
            and pixel.encapsulated else _native_crcs(ctx)
        return replace(kept, kept_reason=reason or "nothing to encode", crcs=crcs), None
    frames: Any = (_decoded_input(ctx, data, source) if ts.encapsulated
                   else native_frames(scanned, layout))
    if config.codec == "auto" and choose is not None:
        codec = choose(header, frames)
    encoded = _encode_frames(frames, layout, codec)
    if isinstance(encoded, str):
        return replace(kept, kept_reason=encoded, crcs=_native_crcs(ctx)), None
    parts = HeaderParts(
        prefix=data[: pixel.element_start],
        element_header=data[pixel.element_start : pixel.value_start],
        suffix=data[pixel.value_end :],
        dataset_start=scanned.dataset_start,
        pad=data[pixel.value_start + layout.native_bytes]
        if not ts.encapsulated and pixel.length > layout.native_bytes else -1,
    )
    return replace(kept, codec=codec, frames=tuple(encoded), parts=parts), frames


def _decoded_input(ctx: _Context, data: bytes, source: str) -> list[npt.NDArray[Any]]:
    """Every frame of encapsulated input, decoded; refused when one does not decode
    or does not match the header (size, number of frames)."""
    layout = ctx.header.layout
    assert layout is not None
    try:
        return decode_frames(data, ctx.ts.uid, layout)
    except UndecodablePixelDataError as exc:
        raise InvalidDicomError(
            f"{ctx.ts.name} pixel data cannot be used: {exc.reason}",
            source=source, hint="the sender must send an object whose pixel data decodes; "
            "nothing was stored") from exc


def _kept_crcs(ctx: _Context, data: bytes, source: str) -> tuple[int, ...]:
    """CRC-32 of every decoded frame of an object kept in a compressed syntax decoded
    here (:data:`~pacscore.codecs.decoding.DECODERS`): what :meth:`Archive.verify`
    and the duplicate policy compare.  An object whose pixel data does not decode is
    refused, so that a broken copy never holds the place of a good one; () for
    syntaxes not decoded here and for headers that cannot describe the pixels."""
    layout = ctx.header.layout
    if layout is None or ctx.header.layout_problem or not decodable(ctx.ts.uid):
        return ()
    return tuple(frame_crc32(f) for f in _decoded_input(ctx, data, source))


def _native_crcs(ctx: _Context) -> tuple[int, ...]:
    """CRC-32 of every frame of an object kept as received whose pixel data is native
    and complete (a deflated data set, codec 'keep'), so that the same instance sent
    again in another transfer syntax is known as a duplicate; () otherwise."""
    layout, pixel = ctx.header.layout, ctx.scanned.pixel
    if layout is None or pixel is None or ctx.ts.encapsulated or ctx.header.layout_problem \
            or layout.bits_allocated % 8 or layout.photometric == "YBR_FULL_422" \
            or pixel.length < layout.native_bytes:
        return ()  # (1-bit samples are packed: no array of samples to check)
    return tuple(frame_crc32(f) for f in native_frames(ctx.scanned, layout))


def verified(enc: Encoded, frames: Any) -> Encoded:
    """``enc`` with the CRC-32 of every frame once each codestream decodes to its
    source frame bit for bit; otherwise ``enc`` kept as received, with the reason."""
    layout = enc.header.layout
    if enc.codec is None or layout is None:
        return enc
    crcs = _verify_frames(frames, enc.frames, layout, enc.codec)
    if isinstance(crcs, str):
        return replace(enc, codec=None, frames=(), parts=None, kept_reason=crcs)
    return replace(enc, crcs=tuple(crcs))


def prepare(data: bytes, source: str, config: ArchiveConfig, store: FrameStore, *,
            flush: bool = False, strict_identity: bool = False) -> Prepared:
    """Encode, verify and stage one object for the archive; ``flush``: make the staged
    data durable here too (single stores: in parallel, off the commit path);
    ``strict_identity``: refuse an object whose File Meta names another SOP Class or
    Instance than its data set (single stores, where that name is what the sender
    is told was stored; bulk imports of existing files keep it with a warning).

    The codestreams are staged as soon as they are encoded: with ``flush``, the disk
    makes them durable while the CPU verifies them.  Codestreams that fail the
    verification are removed and the object is kept as received.

    Raises
    ------
    PacsError
        For input that must be refused; nothing is staged then.
    """
    enc, frames = encode_unverified(data, source, config, decode_kept=True)
    header = enc.header
    if strict_identity and header.identity_conflict:
        raise IdentityMismatchError(header.identity_conflict, source=source)
    if enc.codec is not None and enc.parts is not None and header.layout is not None:
        loc = new_location()
        with _discarded_on_error(store, loc):
            written = store.stage_frames(loc, header.layout, enc.codec.transfer_syntax,
                                         list(enc.frames))
            with _durable_meanwhile(store, loc, flush):
                enc = verified(enc, frames)
        if enc.codec is not None and enc.parts is not None:
            packed = enc.parts.pack()
            record = InstanceRecord(
                **_record_fields(enc, data, loc), stored_syntax=enc.codec.transfer_syntax,
                kind=StoreKind.FRAMES, bytes_stored=written + len(packed),
                layout=header.layout.to_dict(), frame_crc32=enc.crcs)
            return Prepared(record, packed, source, durable=flush)
        store.discard([loc])  # the round trip differed: kept as received
    return _stage_blob(data, source, enc, store, flush)


def _stage_blob(data: bytes, source: str, enc: Encoded, store: FrameStore,
                flush: bool) -> Prepared:
    loc = new_location()
    with _discarded_on_error(store, loc):
        written = store.stage_blob(loc, data)
        if flush:
            store.make_durable(loc)
    content = hashlib.sha256(memoryview(data)[enc.dataset_start:]).hexdigest()
    layout = enc.header.layout.to_dict() if enc.crcs and enc.header.layout else None
    record = InstanceRecord(**_record_fields(enc, data, loc),
                            stored_syntax=enc.original_syntax, kind=StoreKind.BLOB,
                            bytes_stored=written, kept_reason=enc.kept_reason,
                            content_sha256=content, layout=layout, frame_crc32=enc.crcs)
    return Prepared(record, b"", source, durable=flush)


def _record_fields(enc: Encoded, data: bytes, loc: str) -> dict[str, Any]:
    header = enc.header
    return {
        "sop_instance_uid": header.sop_instance_uid, "sop_class_uid": header.sop_class_uid,
        "study_uid": header.study_uid, "series_uid": header.series_uid,
        "attributes": header.attributes, "original_syntax": enc.original_syntax,
        "location": loc, "sha256": enc.sha256, "bytes_in": len(data), "warnings": enc.notes,
    }


@contextlib.contextmanager
def _discarded_on_error(store: FrameStore, loc: str) -> Iterator[None]:
    """Whatever fails, nothing of ``loc`` stays staged."""
    try:
        yield
    except BaseException:
        store.discard([loc])
        raise


_flusher: ThreadPoolExecutor | None = None
_flusher_lock = threading.Lock()


def _forget_flusher() -> None:
    global _flusher, _flusher_lock
    _flusher = None  # a forked child has none of its threads: it makes its own
    _flusher_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_flusher)


@contextlib.contextmanager
def _durable_meanwhile(store: FrameStore, loc: str, flush: bool) -> Iterator[None]:
    """With ``flush``: :meth:`FrameStore.make_durable` of ``loc`` runs in a thread
    while the body runs (its fsyncs wait for the disk, the body needs the CPU); the
    exit waits for both and raises the flush's error."""
    global _flusher
    if not flush:
        yield
        return
    with _flusher_lock:  # one per process (worker processes make their own)
        if _flusher is None:
            _flusher = ThreadPoolExecutor(4, thread_name_prefix="pacscore-flush")
        flusher = _flusher
    future = flusher.submit(store.make_durable, loc)
    try:
        yield
    except BaseException:
        wait([future])  # nothing of ``loc`` may be removed while it is flushed
        raise
    future.result()
