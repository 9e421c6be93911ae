"""A worklist item of plain text values (what an HL7 order maps to), written straight
to the worklist's bytes without building a pydicom data set.

An HL7 order gives some twenty short text values; building a pydicom ``Dataset`` of
them and writing it costs ~0.5 ms per message, most of the HL7 door's time.  A
:class:`TextItem` holds the values by keyword and, when every value is of a form that
pydicom writes and reads back unchanged (:data:`FORMS`: printable ASCII within the
VR's length, no backslash), encodes them itself (:meth:`TextItem.encode`) to the same
bytes as :func:`~pacscore.workflow.encoding.encode_dataset` of :meth:`TextItem.dataset`
(a test compares them).  Any other value (non-ASCII, too long, a lower-case code
string: cases where pydicom would add a character set or warn) takes the data set
path, unchanged.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

__all__ = ["FORMS", "TextItem"]

_SPS_TAG = 0x00400100  # Scheduled Procedure Step Sequence
_TEXT = r"[ -\[\]-~]"  # printable ASCII without the backslash (the value separator)
FORMS: dict[str, re.Pattern[str]] = {
    # VR -> values written directly (PS3.5 Table 6.2-1, the part pydicom neither warns
    # about nor changes when it reads them back); other values: the data set path
    "AE": re.compile(rf"{_TEXT}{{1,16}}"),
    "CS": re.compile(r"[A-Z0-9 _]{1,16}"),
    "DA": re.compile(r"\d{8}"),
    "LO": re.compile(rf"{_TEXT}{{1,64}}"),
    "PN": re.compile(r"[ -<>-\[\]-~]{1,64}"),  # one component group (no '=')
    "SH": re.compile(rf"{_TEXT}{{1,16}}"),
    "TM": re.compile(r"\d{2}(?:\d{2}(?:\d{2})?)?"),
    "UI": re.compile(r"(?=.{1,64}\Z)[0-9]+(?:\.[0-9]+)*"),
}


@cache
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword")
    return tag, dictionary_VR(tag)


def _element(keyword: str, value: str) -> tuple[int, bytes]:
    """(tag, Explicit VR Little Endian element) of a value :data:`FORMS` admits."""
    tag, vr = _tag_vr(keyword)
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return tag, struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


@dataclass(frozen=True, slots=True)
class TextItem:
    """A Modality Worklist item of text values: top-level attributes and the one
    Scheduled Procedure Step Sequence item, each keyword -> value (non-empty)."""

    top: Mapping[str, str]
    """Keyword -> value of the top-level attributes."""
    sps: Mapping[str, str] = field(default_factory=dict)
    """Keyword -> value of the Scheduled Procedure Step Sequence item."""

    def __contains__(self, keyword: object) -> bool:
        return keyword in self.top

    def get(self, keyword: str, default: str = "") -> str:
        """A top-level value."""
        return self.top.get(keyword, default)

    def with_values(self, **values: str) -> TextItem:
        """This item with ``values`` added at the top level."""
        return TextItem({**self.top, **values}, self.sps)

    @property
    def direct(self) -> bool:
        """Whether :meth:`encode` can write it (every value of its VR's form)."""
        for values in (self.top, self.sps):
            for keyword, value in values.items():
                form = FORMS.get(_tag_vr(keyword)[1])
                if form is None or not form.fullmatch(value):
                    return False
        return True

    def dataset(self) -> Dataset:
        """The pydicom data set of the same attributes (Specific Character Set
        ISO_IR 192 when a name or text is not ASCII)."""
        ds, sps = Dataset(), Dataset()
        for target, values in ((ds, self.top), (sps, self.sps)):
            for keyword, value in values.items():
                setattr(target, keyword, value)
        ds.ScheduledProcedureStepSequence = [sps]
        if not all(str(v.value).isascii() for v in ds.iterall() if v.VR in ("PN", "LO", "SH")):
            ds.SpecificCharacterSet = "ISO_IR 192"
        return ds

    def encode(self) -> bytes:
        """Explicit VR Little Endian, no File Meta: what ``encode_dataset(self.dataset())``
        writes (a sequence and its item of defined length).  Only when :attr:`direct`."""
        item = b"".join(e for _, e in sorted(_element(k, v) for k, v in self.sps.items()))
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
        sequence = struct.pack("<HH2sHI", _SPS_TAG >> 16, _SPS_TAG & 0xFFFF, b"SQ", 0,
                               len(item)) + item
        elements = [_element(k, v) for k, v in self.top.items()]
        elements.append((_SPS_TAG, sequence))
        return b"".join(e for _, e in sorted(elements))

    def values(self, sps_level: bool, keyword: str) -> set[str]:
        """What :func:`pacscore.workflow.encoding.values` gives of the data set: the
        value (person names upper-cased), none when empty.  Only when :attr:`direct`."""
        value = (self.sps if sps_level else self.top).get(keyword, "").strip()
        if not value:
            return set()
        return {value.upper() if _tag_vr(keyword)[1] == "PN" else value}
