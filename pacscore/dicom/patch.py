"""Top-level text attributes of a Part-10 object given other values, the rest kept:
how served objects carry corrected patient attributes (:mod:`pacscore.overlay`).

The top-level elements are walked with the element reader of :mod:`.convert` and
copied byte for byte, but those replaced (or added, in tag order, PS3.5 7.1), which are
written in the object's own transfer syntax; sequences and everything from the pixel
data on are copied as they are: nothing is re-encoded, pixels are never decoded.  A
deflated object is inflated, patched and deflated again.  The File Meta is kept (the
transfer syntax and the identifiers do not change).

Values are encoded in the object's Specific Character Set (0008,0005); one the object's
repertoire cannot hold makes an object of the default repertoire UTF-8 (ISO_IR 192, of
which ASCII is a subset) and is otherwise sent with ``?`` for what cannot be encoded,
logged (PS3.5 6.1.2.3).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..config import Limits
from .convert import _Converter, _implicit_walker
from .scan import UNDEFINED, scan
from .syntaxes import EXPLICIT_LE, syntax

__all__ = ["patch_attributes"]

log = logging.getLogger(__name__)

_CHARSET = 0x00080005
_UTF8 = "ISO_IR 192"


def _charset(raw: bytes | None) -> list[str]:
    if raw is None:
        return []
    return [t.strip() for t in raw.decode("ascii", "replace").strip(" \x00").split("\\")]


def _encode(value: str, terms: list[str], source: str) -> tuple[bytes, bool]:
    """``value`` in the character set ``terms``; and whether UTF-8 must be declared."""
    if value.isascii():
        return value.encode("ascii"), False
    if not any(t not in ("", "ISO_IR 6") for t in terms):  # the default repertoire:
        # declare UTF-8 (a superset of it)
        return value.encode("utf-8"), True
    for codec in convert_encodings(terms):
        try:
            return value.encode(codec), False
        except (UnicodeEncodeError, LookupError):
            continue
    log.warning("%s: a corrected value does not fit the object's character set %s; sent "
                "with '?' for what it cannot hold", source, "\\".join(terms))
    return value.encode(convert_encodings(terms)[0], "replace"), False


def patch_attributes(data: bytes, values: Mapping[str, str], limits: Limits,
                     source: str = "<bytes>") -> bytes:
    """``data`` (a Part-10 object, or one cut before its pixel data) with the top-level
    text attributes ``values`` (keyword -> value) written in, replacing or adding."""
    scanned = scan(data, limits, source)
    body = scanned.body
    cut = len(body) if scanned.pixel is None else scanned.pixel.element_start
    start = 0 if scanned.inflated else scanned.dataset_start
    terms = _charset(bytes(body[e.offset:e.offset + e.length])
                     if (e := scanned.elements.get(_CHARSET)) is not None else None)
    replace: dict[int, tuple[str, bytes]] = {}
    utf8 = False
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        encoded, declare = _encode(value, terms, source)
        utf8 |= declare
        replace[tag] = (dictionary_VR(tag), encoded)
    if utf8:
        replace[_CHARSET] = ("CS", _UTF8.encode())
    encoding = syntax(EXPLICIT_LE) if scanned.inflated else scanned.transfer_syntax
    walker = _Converter(body, encoding, encoding)
    out: list[bytes] = []
    pending = sorted(replace.items())
    groups = {t >> 16 for t in replace}
    pos = start
    while pos < cut:
        if cut - pos < 8 and not any(body[pos:cut]):
            break  # trailing padding (tolerated at ingest), kept after what is added
        tag, vr, length, at = walker.header(pos, cut)
        # an explicit UN of undefined length holds implicit VR LE items (PS3.5 6.2.2)
        skip = _implicit_walker(body) if vr == "UN" and not encoding.implicit_vr else walker
        after = skip.skip_undefined(at, cut) if length == UNDEFINED else at + length
        while pending and pending[0][0] < tag:
            out.append(walker.element(pending[0][0], *pending.pop(0)[1]))
        if pending and pending[0][0] == tag:
            out.append(walker.element(tag, *pending.pop(0)[1]))
        elif tag & 0xFFFF == 0 and tag >> 16 in groups:
            pass  # the length of a group that changes: retired, left out (PS3.5 7.2)
        else:
            out.append(bytes(body[pos:after]))
        pos = after
    out.extend(walker.element(t, *new) for t, new in pending)
    out.append(bytes(body[pos:cut]))
    dataset = b"".join(out) + bytes(body[cut:])
    if scanned.inflated:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        dataset = deflater.compress(dataset) + deflater.flush()
    return data[: scanned.dataset_start] + dataset
