"""The DIMSE messages pacscore encodes itself, decoded by pydicom and pynetdicom."""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import create_file_meta

from pacscore.services.dimse._fast.send import data_set_offset, response_command, store_request
from pacscore.services.dimse._fast.wire import command_set, file_meta, frame

CT = "1.2.840.10008.5.1.4.1.1.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"


def _pdus(data: bytes) -> list[tuple[int, list[tuple[int, int, bytes]]]]:
    """(PDU body length, [(context, control, fragment)]) for each P-DATA-TF PDU."""
    out, at = [], 0
    while at < len(data):
        kind, length = struct.unpack_from(">BxI", data, at)
        assert kind == 0x04
        body, at = data[at + 6:at + 6 + length], at + 6 + length
        pdvs, j = [], 0
        while j < len(body):
            item, context, control = struct.unpack_from(">IBB", body, j)
            pdvs.append((context, control, body[j + 6:j + 4 + item]))
            j += 4 + item
        out.append((length, pdvs))
    return out


def _command(raw: bytes) -> pydicom.Dataset:
    ds = read_dataset(io.BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds[0x00000000].value == len(raw) - 12  # group length counts what follows
    assert len(raw) % 2 == 0
    return ds


@pytest.mark.parametrize("max_pdu", [0, 7, 64, 1000, 16384])
def test_frame_keeps_to_the_peer_maximum_and_reassembles(max_pdu: int) -> None:
    command, data = b"c" * 40, bytes(range(256)) * 20
    pdus = _pdus(bytes(frame(3, command, data, max_pdu)))
    if max_pdu:
        assert max(length for length, _ in pdus) <= max_pdu
    pdvs = [pdv for _, items in pdus for pdv in items]
    assert {context for context, _, _ in pdvs} == {3}
    commands = [(control, f) for _, control, f in pdvs if control & 1]
    datas = [(control, f) for _, control, f in pdvs if not control & 1]
    assert b"".join(f for _, f in commands) == command
    assert b"".join(f for _, f in datas) == data
    # only the last fragment of each part says "last"; the command comes first
    assert [c & 2 for c, _ in commands] == [0] * (len(commands) - 1) + [2]
    assert [c & 2 for c, _ in datas] == [0] * (len(datas) - 1) + [2]
    assert pdvs.index(next(p for p in pdvs if not p[1] & 1)) == len(commands)


def test_frame_refuses_a_maximum_that_holds_nothing() -> None:
    with pytest.raises(ValueError, match="holds no data"):
        frame(1, b"cc", None, 6)


def test_file_meta_is_what_pydicom_writes() -> None:
    for uids in ((CT, "1.2.3.4", "1.2.840.10008.1.2.1"), (CT, "1.2.3.45", "1.2.840.10008.1.2")):
        expected = io.BytesIO()
        write_file_meta_info(expected, create_file_meta(
            sop_class_uid=uids[0], sop_instance_uid=uids[1], transfer_syntax=uids[2]))
        assert file_meta(*uids) == expected.getvalue()


def test_store_request_decodes_to_its_fields() -> None:
    ds = _command(store_request(CT, "1.2.3.4.5", 7, 2, b"MOVER ", 9))
    assert (ds.CommandField, ds.MessageID, ds.Priority, ds.CommandDataSetType) == (1, 7, 2, 0)
    assert (ds.AffectedSOPClassUID, ds.AffectedSOPInstanceUID) == (CT, "1.2.3.4.5")
    assert (ds.MoveOriginatorApplicationEntityTitle, ds.MoveOriginatorMessageID) == \
        ("MOVER", 9)
    assert "MoveOriginatorMessageID" not in _command(store_request(CT, "1.2.3", 1))


def test_responses_encoded_here_and_those_left_to_pynetdicom() -> None:
    store = C_STORE()
    store.MessageIDBeingRespondedTo, store.Status = 5, 0xA700
    store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = CT, "1.2.3.4"
    raw = response_command(store)
    assert raw is not None
    ds = _command(raw)
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8001, 5, 0xA700)
    assert ds.CommandDataSetType == 0x0101 and ds.AffectedSOPInstanceUID == "1.2.3.4"
    store.ErrorComment = "disk full"
    assert response_command(store) is None  # pynetdicom encodes the comment

    for kind, field in ((C_GET, 0x8010), (C_MOVE, 0x8021)):
        pending = kind()
        pending.MessageIDBeingRespondedTo, pending.Status = 3, 0xFF00
        pending.AffectedSOPClassUID = GET
        pending.NumberOfRemainingSuboperations = 4
        pending.NumberOfCompletedSuboperations = 6
        pending.NumberOfFailedSuboperations = pending.NumberOfWarningSuboperations = 0
        raw = response_command(pending)
        assert raw is not None
        ds = _command(raw)
        assert (ds.CommandField, ds.Status, ds.NumberOfRemainingSuboperations,
                ds.NumberOfCompletedSuboperations) == (field, 0xFF00, 4, 6)
        pending.Status = 0x0000
        assert response_command(pending) is None  # the final response is pynetdicom's


def test_command_set_orders_tags_and_pads_uids() -> None:
    ds = _command(command_set([(0x0900, 0), (0x0002, "1.2.3")]))
    assert [e.tag for e in ds] == [0x00000000, 0x00000002, 0x00000900]
    assert ds[0x00000002].value == "1.2.3"


def test_data_set_offset_with_and_without_preamble_and_meta() -> None:
    meta = file_meta(CT, "1.2.3.4", "1.2.840.10008.1.2.1")
    data = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    for head in (b"\0" * 128 + b"DICM" + meta, b"DICM" + meta, b""):
        part10 = head + data
        assert part10[data_set_offset(part10):] == data
