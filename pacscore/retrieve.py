"""The retrieve half of :class:`pacscore.Archive`: stored instances read back.

An instance comes back as stored (a read), as received (rebuilt byte for byte), in
any uncompressed syntax (:func:`~pacscore.dicom.part10.uncompressed_part10`), or
decoded and re-encoded; its frames as codestreams or native samples.  Objects kept as
received are parsed once per request (:class:`Kept`).  Which way an instance is made
is a table (:data:`PLANS`: kept as is, rebuilt, converted, transcoded).  Every
failure to decode is an :class:`~pacscore.errors.UndecodablePixelDataError` (a
PacsError), never a codec library's exception.  The verification of one instance
and what the duplicate policy compares of it are here too: both read what is stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from .codecs import by_syntax
from .codecs.decoding import decodable, decode_frames, native_elements, nested_decoder
from .config import Limits
from .dicom.compare import Content
from .dicom.frames import frame_crc32, native_bytes, native_frames
from .dicom.header import read_header
from .dicom.layout import PixelLayout
from .dicom.part10 import HeaderParts, build_part10, uncompressed_part10
from .dicom.part10 import _file_meta as file_meta
from .dicom.scan import PIXEL_DATA, ScannedObject, scan
from .dicom.syntaxes import EXPLICIT_LE, syntax
from .errors import (
    ArchiveCorruptError,
    NoSuchFrameError,
    UndecodablePixelDataError,
    UnsupportedTransferSyntaxError,
)
from .index import Index, InstanceRecord, StoreKind
from .store import FrameStore

__all__ = ["PLANS", "Kept", "Plan", "Reader", "check_frames", "crc_problem"]


class Plan(StrEnum):
    """How a stored instance is made in the transfer syntax asked for (:data:`PLANS`)."""

    KEPT = "kept"
    """Kept as received, asked in its syntax: the stored bytes as they are."""
    REBUILD = "rebuild"
    """Stored as frames, asked in the stored syntax: header and codestreams joined."""
    CONVERT = "convert"
    """An uncompressed syntax: the data set re-encoded, pixel data decoded if need be."""
    TRANSCODE = "transcode"
    """Another compressed syntax: decoded, encoded again."""


@dataclass(frozen=True, slots=True)
class Kept:
    """An object kept as received, read and parsed once for one request."""

    data: bytes
    """The object as stored."""
    scanned: ScannedObject
    """Its structure."""
    layout: PixelLayout | None
    """Its pixel layout (None without pixel data)."""
    layout_problem: str | None = None
    """Why its header cannot describe its pixels, if it cannot."""

    @property
    def decodable(self) -> bool:
        """Its pixel data is encapsulated in a syntax decoded here, and described by
        its header: decoded at ingest (refused if it did not decode) and by verify."""
        pixel = self.scanned.pixel
        return pixel is not None and pixel.encapsulated and self.layout is not None \
            and self.layout_problem is None and decodable(self.scanned.transfer_syntax.uid)

    @property
    def frames(self) -> int:
        """Number of frames of its pixel data (0 without)."""
        if self.scanned.pixel is None:
            return 0
        return 1 if self.layout is None else self.layout.frames


def _encoded(decoded: list[npt.NDArray[Any]], layout: PixelLayout, target: str,
             sop: str) -> list[bytes]:
    """Decoded frames encoded as ``target``; UnsupportedTransferSyntaxError when no
    codec here writes it, its PS3.5 profile refuses the layout, or the codec fails."""
    codec = by_syntax(target)
    refused = "no encoder here" if codec is None else codec.refuses(layout)
    if codec is None or refused:
        raise UnsupportedTransferSyntaxError(
            f"cannot encode instance {sop} as {syntax(target).name} ({target}): {refused}")
    try:
        return [codec.encode(np.ascontiguousarray(f), layout) for f in decoded]
    except Exception as exc:  # codec libraries raise their own types
        raise UnsupportedTransferSyntaxError(
            f"cannot encode instance {sop} as {syntax(target).name}: {codec.name} failed "
            f"({type(exc).__name__}: {exc})") from exc


def check_frames(sop: str, indices: Sequence[int], count: int) -> None:
    """NoSuchFrameError unless every 0-based index names one of the ``count`` frames
    (the message counts frames from 1, as DICOM and every door do)."""
    if bad := [i for i in indices if not 0 <= i < count]:
        raise NoSuchFrameError(f"instance {sop} has no frame {bad[0] + 1}: its frame "
                               f"numbers run from 1 to {count}", source=None)


def crc_problem(decoded: list[npt.NDArray[Any]], crcs: Sequence[int]) -> str | None:
    """The first frame whose CRC-32 is not the recorded one, or None."""
    if len(decoded) != len(crcs):
        return f"{len(decoded)} frames decode, {len(crcs)} were recorded"
    for i, (frame, crc) in enumerate(zip(decoded, crcs, strict=True)):
        if frame_crc32(frame) != crc:
            return f"frame {i} CRC mismatch"
    return None


class Reader:
    """Reads, converts and decodes stored instances for an :class:`~pacscore.Archive`.

    Parameters
    ----------
    store, index
        The archive's FrameStore and Index.
    limits
        Input limits (a kept object is scanned again when it is read).
    """

    def __init__(self, store: FrameStore, index: Index, limits: Limits):
        self.store, self.index, self.limits = store, index, limits

    def kept(self, rec: InstanceRecord) -> Kept:
        """An object kept as received, read and parsed."""
        data = self.store.read_blob(rec.location)
        scanned = scan(data, self.limits, rec.sop_instance_uid)
        header = read_header(scanned, self.limits, rec.sop_instance_uid, rec.sha256)
        return Kept(data, scanned, header.layout, header.layout_problem)

    def header(self, rec: InstanceRecord) -> bytes:
        """:meth:`pacscore.Archive.header` of the instance ``rec`` describes."""
        sop = rec.sop_instance_uid
        if rec.kind == StoreKind.FRAMES:
            return HeaderParts.unpack(self.index.header(sop)).prefix
        data = self.store.read_blob(rec.location)
        scanned = scan(data, self.limits, sop)
        pixel = scanned.pixel
        if scanned.inflated:
            body = scanned.body if pixel is None else scanned.body[: pixel.element_start]
            return file_meta(rec.sop_class_uid, sop, EXPLICIT_LE) + body
        return data if pixel is None else data[: pixel.element_start]

    def headers(self, recs: Sequence[InstanceRecord]) -> dict[str, bytes]:
        """:meth:`header` of each of ``recs`` by SOP Instance UID; those stored as frames
        in one index look-up."""
        frames = [r.sop_instance_uid for r in recs if r.kind == StoreKind.FRAMES]
        found = {sop: HeaderParts.unpack(raw).prefix
                 for sop, raw in self.index.headers(frames).items()}
        missing = [r for r in recs if r.sop_instance_uid not in found]
        return found | {r.sop_instance_uid: self.header(r) for r in missing}

    def pixel_tag(self, rec: InstanceRecord) -> int | None:
        """:meth:`pacscore.Archive.pixel_tag` of the instance ``rec`` describes."""
        if rec.kind == StoreKind.FRAMES:
            return PIXEL_DATA
        pixel = scan(self.store.read_blob(rec.location), self.limits,
                     rec.sop_instance_uid).pixel
        return None if pixel is None else pixel.tag

    def decoded(self, rec: InstanceRecord, indices: Sequence[int] | None = None,
                kept: Kept | None = None) -> tuple[list[npt.NDArray[Any]], PixelLayout]:
        """Decoded frames (native dtype, colour-by-pixel) of an instance (``kept``: the
        object kept as received, when the caller has read it already).

        Raises
        ------
        UnsupportedTransferSyntaxError
            :class:`~pacscore.errors.UndecodablePixelDataError` when its pixel data
            does not decode (never a codec library's own exception).
        """
        sop = rec.sop_instance_uid
        if rec.kind == StoreKind.FRAMES:
            assert rec.layout is not None
            layout = PixelLayout.from_dict(rec.layout)
            codec = by_syntax(rec.stored_syntax)
            if codec is None:
                raise UnsupportedTransferSyntaxError(f"no decoder for {rec.stored_syntax}")
            wanted = range(layout.frames) if indices is None else indices
            streams = self.store.read_frames(rec.location, list(wanted),
                                             2 + (layout.samples > 1) + 1)
            try:
                return [codec.decode(s, layout) for s in streams], layout
            except Exception as exc:  # codec libraries raise their own types
                raise UndecodablePixelDataError(
                    f"instance {sop}: a stored {codec.name} frame does not decode "
                    f"({type(exc).__name__}: {exc})", source=sop,
                    hint="run `pacscore verify`; restore the instance from a replica or "
                    "re-send it") from exc
        kept = kept or self.kept(rec)
        scanned, layout_ = kept.scanned, kept.layout
        if layout_ is None or scanned.pixel is None or kept.layout_problem \
                or layout_.bits_allocated % 8:  # (1-bit samples are packed)
            raise UnsupportedTransferSyntaxError(
                f"instance {sop} has no pixel data this archive can decode "
                f"({kept.layout_problem or rec.kept_reason}); ask for its original or an "
                f"uncompressed transfer syntax")
        if indices is not None:
            check_frames(sop, indices, layout_.frames)
        if scanned.transfer_syntax.encapsulated:
            try:
                chosen = decode_frames(kept.data, scanned.transfer_syntax.uid, layout_,
                                       indices)
            except UndecodablePixelDataError as exc:
                raise UndecodablePixelDataError(
                    f"instance {sop} ({scanned.transfer_syntax.name}): {exc.reason}",
                    source=sop) from exc
            return chosen, layout_
        if layout_.photometric == "YBR_FULL_422":
            raise UnsupportedTransferSyntaxError(
                f"instance {sop} holds native YBR_FULL_422 pixel data "
                f"(two samples of chroma per two pixels): it is sent uncompressed only; "
                f"ask for its original or another uncompressed transfer syntax")
        frames = native_frames(scanned, layout_)
        chosen = list(frames) if indices is None else [frames[i] for i in indices]
        return chosen, layout_

    def parts(self, rec: InstanceRecord, kept: Kept | None) -> HeaderParts:
        if kept is None:
            return HeaderParts.unpack(self.index.header(rec.sop_instance_uid))
        data, scanned = kept.data, kept.scanned
        pixel = scanned.pixel
        if pixel is None:
            raise UnsupportedTransferSyntaxError(
                f"instance {rec.sop_instance_uid} has no pixel data to compress; ask for "
                f"its original or an uncompressed transfer syntax")
        # A deflated object's offsets are in its inflated data set (explicit VR little
        # endian, no File Meta before it): the parts are cut from that.
        src, start = (scanned.body, 0) if scanned.inflated else (data, scanned.dataset_start)
        return HeaderParts(bytes(src[: pixel.element_start]),
                           bytes(src[pixel.element_start:pixel.value_start]),
                           bytes(src[pixel.value_end:]), start, -1)

    def plan(self, rec: InstanceRecord, transfer_syntax: str) -> tuple[Plan, str]:
        """How :meth:`get` makes the instance in ``transfer_syntax`` (``original``,
        ``stored`` or a UID), and the target Transfer Syntax UID: the first row of
        :data:`PLANS` whose rule holds."""
        target = {"original": rec.original_syntax, "stored": rec.stored_syntax}.get(
            transfer_syntax, transfer_syntax)
        return next(plan for plan, rule in PLANS if rule(rec, target)), target

    def get(self, rec: InstanceRecord, transfer_syntax: str) -> bytes:
        """:meth:`pacscore.Archive.get` of the instance ``rec`` describes."""
        plan, target = self.plan(rec, transfer_syntax)
        return _MAKERS[plan](self, rec, target)

    def _kept_as_is(self, rec: InstanceRecord, target: str) -> bytes:
        return self.store.read_blob(rec.location)

    def _rebuilt(self, rec: InstanceRecord, target: str) -> bytes:
        """The header kept in the index around the stored codestreams (no decode)."""
        assert rec.layout is not None
        layout = PixelLayout.from_dict(rec.layout)
        streams = self.store.read_frames(rec.location, range(layout.frames),
                                         3 + (layout.samples > 1))
        parts = HeaderParts.unpack(self.index.header(rec.sop_instance_uid))
        return build_part10(parts, rec.original_syntax, target, rec.sop_class_uid,
                            rec.sop_instance_uid, frames=streams)

    def _transcoded(self, rec: InstanceRecord, target: str) -> bytes:
        """Decoded and encoded again in a compressed syntax (verified lossless)."""
        kept = self.kept(rec) if rec.kind == StoreKind.BLOB else None
        parts = self.parts(rec, kept)
        # the data set the parts hold: a deflated one's is inflated (explicit VR LE)
        source = EXPLICIT_LE if syntax(rec.original_syntax).deflated else rec.original_syntax
        decoded, layout = self.decoded(rec, kept=kept)
        streams = _encoded(decoded, layout, target, rec.sop_instance_uid)
        return build_part10(parts, source, target, rec.sop_class_uid, rec.sop_instance_uid,
                            frames=streams)

    def uncompressed(self, rec: InstanceRecord, target: str) -> bytes:
        """The instance in an uncompressed syntax: the data set re-encoded
        (:func:`~pacscore.dicom.part10.uncompressed_part10`), native pixel data with
        it, compressed pixel data decoded."""
        cls, sop = rec.sop_class_uid, rec.sop_instance_uid
        original = syntax(rec.original_syntax)
        if rec.kind == StoreKind.FRAMES:
            parts = HeaderParts.unpack(self.index.header(sop))
            decoded, layout = self.decoded(rec)
            if original.native:  # the original object, rebuilt (then converted)
                data = parts.original(native_bytes(decoded, layout, original.little_endian))
                if target == rec.original_syntax:
                    if hashlib.sha256(data).hexdigest() != rec.sha256:
                        raise ArchiveCorruptError(
                            f"rebuilt original of {sop} does not match its SHA-256",
                            source=sop)
                    return data
                return uncompressed_part10(data, parts.dataset_start, original.uid, target,
                                           cls, sop)
            body = parts.prefix[parts.dataset_start:] + parts.suffix
            return uncompressed_part10(body, 0, original.uid, target, cls, sop,
                                       native_elements(decoded, layout),
                                       nested_decoder(original.uid))
        kept = self.kept(rec)
        scanned = kept.scanned
        replace = None
        if scanned.pixel is not None and scanned.pixel.encapsulated:
            decoded, layout = self.decoded(rec, kept=kept)
            replace = native_elements(decoded, layout)
        start = 0 if scanned.inflated else scanned.dataset_start
        nested = nested_decoder(original.uid) if original.encapsulated else None
        try:
            return uncompressed_part10(scanned.body, start, rec.original_syntax, target,
                                       cls, sop, replace, nested)
        except UndecodablePixelDataError as exc:
            raise UndecodablePixelDataError(f"instance {sop}: an icon image {exc.reason}",
                                            source=sop) from exc

    def frames(self, rec: InstanceRecord, indices: Sequence[int] | None,
               transfer_syntax: str) -> list[bytes]:
        """:meth:`pacscore.Archive.frames` of the instance ``rec`` describes."""
        sop_instance_uid = rec.sop_instance_uid
        kept = None
        if rec.kind == StoreKind.FRAMES and rec.layout is not None:
            n = rec.layout["frames"]
        else:  # the frame numbers are checked before anything is decoded
            kept = self.kept(rec)
            n = kept.frames
        wanted = list(range(n)) if indices is None else list(indices)
        check_frames(sop_instance_uid, wanted, n)
        if transfer_syntax in ("stored", rec.stored_syntax):
            if kept is None:
                assert rec.layout is not None
                return self.store.read_frames(rec.location, wanted,
                                              3 + (rec.layout["samples"] > 1))
            if syntax(rec.stored_syntax).encapsulated:
                return self.kept_codestreams(rec, wanted, kept)
        decoded, layout = self.decoded(rec, None if kept and indices is None else wanted,
                                       kept=kept)
        target = rec.stored_syntax if transfer_syntax == "stored" else transfer_syntax
        if syntax(target).native or transfer_syntax == "native":
            return [np.ascontiguousarray(f).astype(f.dtype.newbyteorder("<")).tobytes()
                    for f in decoded]
        return _encoded(decoded, layout, target, sop_instance_uid)

    def kept_codestreams(self, rec: InstanceRecord, wanted: list[int] | None,
                         kept: Kept | None = None) -> list[bytes]:
        """The frames of an object kept as received in a compressed syntax, as its
        codestreams are (a read, no transcode; ``kept``: when read already)."""
        from pydicom.encaps import generate_frames

        sop = rec.sop_instance_uid
        kept = kept or self.kept(rec)
        pixel, count = kept.scanned.pixel, kept.frames
        wanted = list(range(count)) if wanted is None else wanted
        check_frames(sop, wanted, count)
        assert pixel is not None  # count > 0
        try:
            streams = list(generate_frames(
                bytes(kept.scanned.body[pixel.value_start:pixel.value_end]),
                number_of_frames=count))
            return [streams[i] for i in wanted]
        except Exception as exc:  # pydicom raises its own types for bad fragments
            raise UndecodablePixelDataError(
                f"instance {sop}: its fragments do not split into {count} frames "
                f"({type(exc).__name__}: {exc})", source=sop) from exc

    def content(self, rec: InstanceRecord, header: bytes | None) -> Content:
        """What the duplicate policy compares of a stored or staged instance
        (``header``: its packed header parts when not in the index yet)."""
        if rec.kind == StoreKind.FRAMES:
            parts = HeaderParts.unpack(header or self.index.header(rec.sop_instance_uid))
            return Content(parts.prefix[parts.dataset_start:] + parts.suffix,
                           syntax(rec.original_syntax), None, rec.frame_crc32, rec.layout)
        scanned = scan(self.store.read_blob(rec.location), self.limits,
                       rec.sop_instance_uid)
        body, pixel = scanned.body, scanned.pixel
        start = 0 if scanned.inflated else scanned.dataset_start
        encoding = syntax(EXPLICIT_LE) if scanned.inflated else scanned.transfer_syntax
        if pixel is None:
            return Content(bytes(body[start:]), encoding, None, rec.frame_crc32, rec.layout)
        return Content(bytes(body[start:pixel.element_start]) + bytes(body[pixel.value_end:]),
                       encoding, bytes(body[pixel.value_start:pixel.value_end]),
                       rec.frame_crc32, rec.layout)

    def verify_kept(self, rec: InstanceRecord) -> str | None:
        """Why an object kept as received fails verification, or None."""
        data = self.store.read_blob(rec.location)
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            return "SHA-256 mismatch"
        if not syntax(rec.stored_syntax).encapsulated:
            return None
        kept = self.kept(rec)
        if not kept.decodable:
            return None
        decoded, _ = self.decoded(rec, kept=kept)
        if syntax(rec.stored_syntax).lossy or not rec.frame_crc32:
            return None  # (kept before pacscore recorded the CRC-32s of kept objects)
        return crc_problem(decoded, rec.frame_crc32)


PLANS: tuple[tuple[Plan, Callable[[InstanceRecord, str], bool]], ...] = (
    (Plan.KEPT, lambda rec, ts: rec.kind == StoreKind.BLOB and ts == rec.stored_syntax),
    (Plan.REBUILD, lambda rec, ts: rec.kind == StoreKind.FRAMES and ts == rec.stored_syntax),
    (Plan.CONVERT, lambda rec, ts: syntax(ts).native),
    (Plan.TRANSCODE, lambda rec, ts: True),
)
"""How :meth:`Reader.get` makes an instance in a transfer syntax: the first row whose
rule holds for (record, target syntax UID)."""

_MAKERS: dict[Plan, Callable[[Reader, InstanceRecord, str], bytes]] = {
    Plan.KEPT: Reader._kept_as_is,
    Plan.REBUILD: Reader._rebuilt,
    Plan.CONVERT: Reader.uncompressed,
    Plan.TRANSCODE: Reader._transcoded,
}
