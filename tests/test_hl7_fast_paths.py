"""The HL7 door's fast paths give what the libraries give (issue 16's throughput goal): the
AA written directly equals python-hl7's ``create_ack``; ``messages.field`` equals
python-hl7's ``Segment.extract_field`` on every position of varied messages, and an
order's worklist item written directly (:class:`~pacscore.workflow.textitem.TextItem`)
equals pydicom's encoding of the same data set, byte for byte, and is indexed the same;
values it cannot write directly take pydicom's path."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hl7
import pytest

from pacscore.services.hl7 import actions
from pacscore.services.hl7.messages import ack, field, parse
from pacscore.workflow import Worklist
from pacscore.workflow.encoding import decode_dataset, encode_dataset, values
from pacscore.workflow.textitem import TextItem
from pacscore.workflow.worklist import IDENTIFIERS, INDEXED

from .test_hl7 import adt, msh, orm
from .test_hl7_orders import omi

_OBR = [""] * 28
_OBR[1:5] = ["1", "PO4", "FO4", "CT^Head &amp; neck\\E\\ escape~R2^two"]
_OBR[7], _OBR[16], _OBR[18], _OBR[19], _OBR[20], _OBR[21], _OBR[24], _OBR[27] = \
    "20250105093000", "DOC^ONE^^^DR", "ACC4", "RP4", "SPS4", "CT1~CT2", "CT", "^^^202501050930"
MESSAGES = [
    orm("F-1", acc="A1", pid="P1"),
    omi("F-2", acc="B2", pid="P2", study="1.2.826.0.1.3680043.2.1.7"),
    adt("F-3", "A08", "P3", name="O\\S\\BRIEN^MARY\\T\\JO^^^DR"),
    "\r".join([msh("F-4", "ORM^O01"),
               "PID|1||P4^^^HOSP&1.2.3&ISO~X9^^^OTHER||DOE^JOHN^Q^JR^DR||19700101|U",
               "ZDS|1.2.3.4^100^Application^DICOM",
               "ORC|XO|PO4&sub|FO4||IP",
               "OBR|" + "|".join(_OBR[1:])]) + "\r",
]


def _extract(segment: hl7.Segment, number: int, component: int, sub: int,
             repetition: int) -> str:
    try:
        value = segment.extract_field(1, number, repetition, component, sub)
    except (IndexError, KeyError):
        return ""
    return str(value).strip()


@pytest.mark.parametrize("text", MESSAGES)
def test_field_equals_python_hl7_extract_field(text: str) -> None:
    message = parse(text.encode()).message
    checked = 0
    for segment in message:
        for number in range(0, len(segment) + 2):
            for component in range(0, 7):
                for sub in range(0, 4):
                    for repetition in (1, 2):
                        assert field(segment, number, component, sub, repetition) == \
                            _extract(segment, number, component, sub, repetition), \
                            (str(segment[0]), number, component, sub, repetition)
                        checked += 1
    assert checked > 1000


def _order(text: str) -> TextItem:
    _, groups = actions._groups(parse(text.encode()).message)
    return actions._order_item(groups[0]).with_values(StudyInstanceUID="1.2.3.4")


@pytest.mark.parametrize("text", [m for m in MESSAGES if "ORC|" in m])
def test_an_order_item_written_directly_is_what_pydicom_writes(text: str) -> None:
    item = _order(text)
    assert item.direct
    ds = item.dataset()
    assert item.encode() == encode_dataset(ds)
    back = decode_dataset(item.encode())
    for table in (IDENTIFIERS, INDEXED):
        for sps_level, keyword, _ in table.values():
            assert item.values(sps_level, keyword) == values(back, sps_level, keyword)


@pytest.mark.parametrize("values_", [
    {"PatientName": "MÜLLER^HANS"},  # not ASCII: a character set, pydicom writes it
    {"AccessionNumber": "A" * 17},  # longer than SH allows
    {"PatientID": "P1\\P2"},  # a backslash: two values once read back
    {"PatientName": "A=B=C=D"},  # four component groups
])
def test_values_pydicom_would_change_or_warn_about_take_its_path(
        values_: dict[str, str]) -> None:
    item = _order(MESSAGES[0]).with_values(**values_)
    assert not item.direct


def test_a_direct_item_and_a_data_set_item_are_stored_alike() -> None:
    item = _order(MESSAGES[3])
    with tempfile.TemporaryDirectory() as tmp:
        worklist = Worklist(Path(tmp), sync=False)
        try:
            fast = worklist.change(lambda c: c.add(item))
            slow = worklist.change(lambda c: c.add(item.dataset()))
            a, b = worklist.get(fast), worklist.get(slow)
            assert encode_dataset(a.dataset) == encode_dataset(b.dataset)
            ids = {k: i for k, _, i in worklist.identities()}
            assert ids[fast] == ids[slow]
            assert ids[fast]["accession"] == ["ACC4"]
            assert ids[fast]["requested_procedure_id"] == ["RP4"]
            assert worklist.check() == []
            assert len(list(worklist.items())) == 2
        finally:
            worklist.close()


_HEADERS = [
    *MESSAGES,
    # other separators, v2.7's truncation character, repetitions and components in
    # the header fields, an empty MSH-5/6, an 8859/1 message, MSH-10 with an escape
    "MSH#$*@%#RIS$A#HOSP#PACS$X#HOSP#20250101##ORM$O01$ORM_O01#C*1#P#2.5.1\r"
    "PID#1##P1\r",
    "MSH|^~\\&#|RIS~R2|HO^SP|PACS|HOSP|20250101||ORM^O01~ADT^A01|C\\F\\2|P|2.7"
    "|||||8859/1\rPID|1||P1\r",
    "MSH|^~\\&|RIS|HOSP|||20250101||ORM^O01^^X|C3|D|2.3\rPID|1||P1\r",
]


@pytest.mark.parametrize("text", _HEADERS)
def test_the_direct_aa_is_python_hl7s_create_ack(text: str) -> None:
    incoming = parse(text.encode("latin-1"))
    assert incoming.header
    ours = ack(incoming).decode(incoming.encoding)
    theirs = str(incoming.message.create_ack("AA", application="PACSCORE"))
    sep = text[3]
    # MSH-7 (now) and MSH-10 (a new control ID) differ by design; the rest is equal
    ours_fields, theirs_fields = (x.split("\r")[0].split(sep) for x in (ours, theirs))
    for fields in (ours_fields, theirs_fields):
        assert len(fields[6]) == 14 and len(fields[9]) == 20
        fields[6] = fields[9] = ""
    assert ours_fields == theirs_fields
    assert ours.split("\r", 1)[1] == theirs.split("\r", 1)[1]
    assert ours.endswith("\r") and ours.count("\r") == 2
