"""HL7 v2 orders and patients through ``pacscore serve --hl7-port`` (issue 16.1, its
"Bad input" and 16.7's audit trail), the parts tests/test_hl7.py does not send: OMI^O23
(v2.5, IPC and TQ1), ADT A04, order control DC and SC, a Z-segment, repetitions, other
field separators, and the audit records of each message and of the steps it changed."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacscore.kinds import StepStatus
from pacscore.testing import cli
from pacscore.workflow import Worklist

from .test_hl7 import (
    EB,
    adt,
    err,
    frame,
    mllp_send,
    msa,
    msh,
    orm,
    prepared,
    read_ack,
    server,
    worklist,
)

Running = tuple[Path, dict[str, int], subprocess.Popen[str]]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = prepared(tmp_path_factory.mktemp("hl7orders") / "archive")
    with server(root) as (proc, ports):
        yield root, ports, proc


def omi(ctrl: str, control: str = "NW", acc: str = "ACC1", pid: str = "P1",
        study: str = "1.2.3.4.5", status: str = "SC") -> str:
    """OMI^O23 v2.5 as IHE RAD SWF sends it: the identifiers in IPC, the start in TQ1-7,
    the patient's identifiers repeated in PID-3."""
    return "\r".join([
        msh(ctrl, "OMI^O23^OMI_O23", version="2.5"),
        f"PID|1||{pid}^^^HOSP~999-11-2222^^^SSA^SS||ROE^ANNA^^^^^L~ROE^ANN^^^^^A||19800202|F",
        "PV1|1|O|||||||||||||||||VIS1",
        f"ORC|{control}|PO{acc}|FO{acc}||{status}",
        "TQ1|1||||||20240305081500",
        f"OBR|1|PO{acc}|FO{acc}|MRBRAIN^MR Brain",
        f"IPC|{acc}|RP{acc}|{study}|SPS{acc}|MR||MRSTATION|ROOM 2|MR2AE",
    ]) + "\r"


def statuses(root: Path) -> dict[str, StepStatus]:
    """Accession Number -> status of every step, read beside the running server."""
    steps = Worklist(root, readonly=True)
    try:
        return {ids["accession"][0]: status for _, status, ids in steps.identities()
                if ids["accession"]}
    finally:
        steps.close()


def test_omi_o23_with_ipc_tq1_and_repetitions(running: Running, tmp_path: Path) -> None:
    _, ports, _ = running
    (answer,) = mllp_send(ports["hl7"], tmp_path, omi("I-1", acc="B100", pid="P100",
                                                        study="1.2.826.0.1.3680043.2.1.100"))
    assert msa(answer) == ("AA", "I-1")
    (step,) = worklist(ports["dimse"], AccessionNumber="B100")
    sps = step.ScheduledProcedureStepSequence[0]
    # the first repetition of PID-3 and PID-5 is the one taken (IHE RAD TF-2 B.1)
    assert (step.PatientID, str(step.PatientName), step.PatientSex) == \
        ("P100", "ROE^ANNA", "F")
    assert (step.RequestedProcedureID, step.StudyInstanceUID) == \
        ("RPB100", "1.2.826.0.1.3680043.2.1.100")
    assert (sps.ScheduledProcedureStepID, sps.Modality, sps.ScheduledStationAETitle,
            sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == \
        ("SPSB100", "MR", "MR2AE", "20240305", "081500")


def test_a_z_segment_carries_the_study_instance_uid_of_an_orm(running: Running,
                                                              tmp_path: Path) -> None:
    _, ports, _ = running
    uid = "1.2.826.0.1.3680043.2.1.101"
    (answer,) = mllp_send(ports["hl7"], tmp_path,
                          orm("Z-1", acc="B101", extra=f"ZDS|{uid}^RIS^Application^DICOM"))
    assert msa(answer) == ("AA", "Z-1")
    (step,) = worklist(ports["dimse"], AccessionNumber="B101")
    assert step.StudyInstanceUID == uid


def test_a04_then_an_order_then_sc_and_dc_change_its_status(running: Running,
                                                            tmp_path: Path) -> None:
    root, ports, _ = running
    acks = mllp_send(ports["hl7"], tmp_path, adt("S-1", "A04", "P102", "POE^EDGAR"),
                     orm("S-2", acc="B102", pid="P102", name="POE^EDGAR"),
                     orm("S-3", "SC", acc="B102", pid="P102", status="IP"))
    assert [msa(a) for a in acks] == [("AA", "S-1"), ("AA", "S-2"), ("AA", "S-3")]
    assert statuses(root)["B102"] == StepStatus.IN_PROGRESS
    (step,) = worklist(ports["dimse"], AccessionNumber="B102")  # a started step is listed
    assert str(step.PatientName) == "POE^EDGAR"
    (dc,) = mllp_send(ports["hl7"], tmp_path, orm("S-4", "DC", acc="B102", pid="P102"))
    assert msa(dc) == ("AA", "S-4")
    assert statuses(root)["B102"] == StepStatus.DISCONTINUED
    assert worklist(ports["dimse"], AccessionNumber="B102") == []
    # DC again: nothing listed to discontinue (AE 204); SC with a status Table 0038
    # has that pacscore does not map: AE 103 naming ORC-5; DC of an order never sent: 204
    refused = mllp_send(ports["hl7"], tmp_path, orm("S-5", "DC", acc="B102", pid="P102"),
                        orm("S-6", "SC", acc="B102", pid="P102", status="HD"),
                        orm("S-7", "DC", acc="NEVER", pid="P102"))
    assert [(msa(a)[0], err(a).split("|")[3][:3]) for a in refused] == \
        [("AE", "204"), ("AE", "103"), ("AE", "204")]
    assert "ORC^1^5" in err(refused[1]) and "NEVER" in err(refused[2])
    assert statuses(root)["B102"] == StepStatus.DISCONTINUED


def test_another_field_separator_is_read_and_a_mixed_one_refused(running: Running,
                                                                 tmp_path: Path) -> None:
    """MSH-1 declares the field separator (HL7 v2.5 2.5.4): '#' throughout is a valid
    message; segments written with another one than MSH declares are not read as
    segments, so the order is refused (AR, 100: no ORC) and nothing is scheduled."""
    _, ports, _ = running
    good = orm("F-1", acc="B103").replace("|", "#")
    mixed = orm("F-2", acc="B104").split("\r")
    mixed = "\r".join([mixed[0], *(s.replace("|", "#") for s in mixed[1:])])
    first, second = mllp_send(ports["hl7"], tmp_path, good, mixed)
    assert b"\rMSA#AA#F-1\r" in first, first  # answered with the sender's separators
    assert msa(second) == ("AR", "F-2") and "|100^" in err(second), second
    assert "needs an ORC segment" in err(second)
    assert len(worklist(ports["dimse"], AccessionNumber="B103")) == 1
    assert worklist(ports["dimse"], AccessionNumber="B104") == []


def test_each_message_and_each_step_it_changes_is_audited(running: Running,
                                                          tmp_path: Path) -> None:
    """Issue 16.7: every workflow event in the audit trail.  A message is one Procedure
    Record (PS3.15 A.5.3.11) on the hl7 interface (accepted, resent or refused, with
    its control ID and the error code), and each step it changed one more (serve's
    worklist listener), with the step's key and status, never the patient's name."""
    root, ports, _ = running
    acks = mllp_send(ports["hl7"], tmp_path, orm("U-1", acc="B105", pid="P105",
                                                   name="SECRET^NAME"),
                     orm("U-2", "XO", acc="B105", pid="P105", name="SECRET^NAME",
                         modality="MR"),
                     orm("U-2", "XO", acc="B105", pid="P105", name="SECRET^NAME",
                         modality="MR"),
                     orm("U-3", "CA", acc="B105", pid="P105", name="SECRET^NAME"),
                     orm("U-4", "CA", acc="B105", pid="P105", name="SECRET^NAME"),
                     orm("U-5", acc="B106").replace("ORM^O01", "ORM^O99"))
    assert [msa(a)[0] for a in acks] == ["AA", "AA", "AA", "AA", "AE", "AR"]
    audit = [json.loads(line) for line in
             (root / "audit" / "audit.jsonl").read_text().splitlines()]
    procedure = [e for e in audit if e["event_id"]["code"] == "110111"]
    messages = {e["detail"]: e for e in procedure if e["interface"] == "hl7"
                and "U-" in e["detail"]}
    assert [(d, e["outcome"], e["user"]) for d, e in messages.items()] == [
        ("HL7 ORM^O01 U-1: AA", 0, "RIS^HOSP"),
        ("HL7 ORM^O01 U-2: AA", 0, "RIS^HOSP"),
        ("HL7 ORM^O01 U-2: AA (resent, answered as before)", 0, "RIS^HOSP"),
        ("HL7 ORM^O01 U-3: AA", 0, "RIS^HOSP"),
        ("HL7 ORM^O01 U-4: 204 no scheduled order has the Accession Number 'B105'", 4,
         "RIS^HOSP"),
        ("HL7 ORM^O99 U-5: 201 ORM^O99 is not handled", 4, "RIS^HOSP"),
    ]
    steps = [(e["action"], e["detail"]) for e in procedure if e["interface"] == "serve"
             and "accession B105" in e["detail"]]
    (key,) = {e["objects"][0] for e in procedure if e["interface"] == "serve"
              and "accession B105" in e["detail"]}
    assert steps == [("C", f"worklist item {key} scheduled, accession B105"),
                     ("U", f"worklist item {key} scheduled, accession B105"),
                     ("U", f"worklist item {key} cancelled, accession B105")]
    assert "SECRET" not in json.dumps(audit)


def test_allowing_and_denying_a_sender_is_audited(tmp_path: Path) -> None:
    root = str(tmp_path / "archive")
    cli("hl7", "allow", "10.0.0.5", "--archive", root)
    cli("hl7", "deny", "10.0.0.5", "--archive", root)
    audit = [json.loads(line) for line in
             (tmp_path / "archive" / "audit" / "audit.jsonl").read_text().splitlines()]
    assert [(e["event_id"]["code"], e["interface"], e["detail"]) for e in audit] == [
        ("110113", "cli", "HL7 sender 10.0.0.5 allowed"),
        ("110113", "cli", "HL7 sender 10.0.0.5 denied")]
    assert all(e["user"].startswith("cli:") for e in audit)


def test_pipelined_messages_are_answered_in_order(running: Running) -> None:
    """A sender that does not wait for each ACK: the messages are committed together
    and answered in the order sent, a refusal and a resend among them included."""
    _, ports, _ = running
    with socket.create_connection(("127.0.0.1", ports["hl7"]), timeout=30) as s:
        s.sendall(frame(orm("P-1", acc="A800")) + orm("P-2", acc="A801").encode() + EB
                  + frame(orm("P-3", acc="A802")) + frame(orm("P-1", acc="A800"))
                  + frame(orm("P-4", control="XO", acc="A802", pid="P9")))
        answers = [read_ack(s) for _ in range(5)]
    assert [msa(a) for a in answers] == [("AA", "P-1"), ("AR", "P-2"), ("AA", "P-3"),
                                         ("AA", "P-1"), ("AA", "P-4")]
    assert answers[3] == answers[0]  # the resend: the first answer, nothing changed
    steps = {str(ds.AccessionNumber): ds for ds in worklist(ports["dimse"],
                                                            AccessionNumber="A80*")}
    assert sorted(steps) == ["A800", "A802"]
    assert str(steps["A802"].PatientID) == "P9"  # the change after its order, in order
