"""What the index keeps of each instance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from ..kinds import StoreKind

__all__ = ["InstanceRecord", "StoreKind"]


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One stored instance."""

    sop_instance_uid: str
    """SOP Instance UID (as in the object, or derived when it had none)."""
    sop_class_uid: str
    """SOP Class UID."""
    study_uid: str
    """Study Instance UID."""
    series_uid: str
    """Series Instance UID."""
    attributes: dict[str, Any]
    """Matching keys by keyword."""
    original_syntax: str
    """Transfer syntax as received."""
    stored_syntax: str
    """Transfer syntax of what is stored."""
    kind: StoreKind
    """:class:`StoreKind` value."""
    location: str
    """Opaque FrameStore location id."""
    sha256: str
    """SHA-256 of the object as received."""
    bytes_in: int
    """Size of the object as received."""
    bytes_stored: int
    """Bytes the archive keeps for it (frames + header, or the blob)."""
    layout: dict[str, Any] | None = None
    """Pixel layout (PixelLayout.to_dict) for frame arrays."""
    frame_crc32: tuple[int, ...] = ()
    """CRC-32 of every decoded frame (native little-endian samples)."""
    kept_reason: str | None = None
    """Why the object was kept as received, if it was."""
    warnings: tuple[str, ...] = field(default=())
    """Non-conformances tolerated at ingest."""
    content_sha256: str = ""
    """SHA-256 of the data set without preamble and File Meta (objects kept as received):
    the same object relayed by another system differs only in its File Meta."""

    def same_instance(self, other: InstanceRecord) -> bool:
        """``other`` is certainly this instance again: the same file, or the same data
        set bytes after another File Meta (objects kept as received).  Anything else
        is decided by :meth:`pacscore.commit.Committer._difference`, which compares the data
        sets and the decoded pixels (the duplicate policy, README "Policies")."""
        return self.sha256 == other.sha256 or (
            bool(self.content_sha256) and self.content_sha256 == other.content_sha256)

    @property
    def compressed(self) -> bool:
        """Stored in a compressed syntax."""
        from ..dicom.syntaxes import syntax

        return syntax(self.stored_syntax).encapsulated

    def to_json(self) -> bytes:
        """Serialised form (a shallow dict: asdict's deep copies cost most of a put)."""
        return json.dumps({f: getattr(self, f) for f in _FIELDS},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> InstanceRecord:
        """Inverse of :meth:`to_json`."""
        d = json.loads(raw)
        d["frame_crc32"] = tuple(d["frame_crc32"])
        d["warnings"] = tuple(d["warnings"])
        d["kind"] = StoreKind(d["kind"])
        return cls(**d)


_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(InstanceRecord))
