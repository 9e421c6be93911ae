"""What a received object says it is, and attributes of a stored header in the DICOM
JSON model: the parsing the doors (STOW-RS, C-STORE answers, QIDO-RS ``includefield``)
used to do themselves, behind :class:`~pacscore.Archive` methods (issue 15.6)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread

from ..config import Limits
from ..errors import PacsError
from .header import InstanceHeader, read_header
from .scan import scan

__all__ = ["claimed_uids", "header_attributes", "identify"]

log = logging.getLogger(__name__)

_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018


def identify(data: bytes, limits: Limits, source: str) -> InstanceHeader | None:
    """Identity, matching keys and layout of a Part-10 object read with the archive's
    own parser, before it is stored; None when it cannot be read (storing it then says
    why)."""
    try:
        return read_header(scan(data, limits, source), limits, source, "")
    except PacsError:
        return None


def claimed_uids(src: Path | BinaryIO) -> tuple[str, str]:
    """SOP Class and Instance UIDs an object claims, read leniently (pydicom, forced,
    before the pixel data) from a file or a stream (read from its start): ``""`` where
    absent or unreadable.  Only to name a refused object in an answer or the audit
    trail: the values are not checked here."""
    try:
        if not isinstance(src, Path):
            src.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(src, force=True, stop_before_pixels=True, defer_size=256,
                         specific_tags=[_SOP_CLASS, _SOP_INSTANCE])
        return str(ds.get("SOPClassUID") or ""), str(ds.get("SOPInstanceUID") or "")
    except Exception:  # catch-all on purpose: pydicom documents no exception set for bytes
        # it cannot read (it raises a dozen kinds); the object is refused already, this
        # only names it: unreadable, it stays unnamed
        log.debug("refused object unreadable", exc_info=True)
        return "", ""


def header_attributes(header: bytes, keywords: Iterable[str],
                      bulk_limit: int = 1 << 20) -> dict[str, dict[str, Any]]:
    """The DICOM JSON model (PS3.18 F.2) of those of ``keywords`` that a stored header
    (:meth:`pacscore.Archive.header`) holds, by keyword; values over ``bulk_limit``
    bytes are left out as the model allows."""
    wanted = sorted(set(keywords))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(header), force=True, stop_before_pixels=True,
                     specific_tags=wanted)
    return {kw: ds[kw].to_json_dict(None, bulk_limit) for kw in wanted if kw in ds}
