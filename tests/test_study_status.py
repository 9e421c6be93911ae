"""Study status and reconciliation (issue 16.3, the linking part of 16.4): orders from
the worklist, the performed procedure steps that drove them and the studies the
archive holds give scheduled → arrived → in progress → completed → reported; stored
studies that match no order are unreconciled.  Read through the API, the CLI and
``GET /workflow/studies`` of the DICOMweb app."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from pacscore import Archive
from pacscore.config import ArchiveConfig
from pacscore.kinds import StepStatus, StudyStatus
from pacscore.services.auth.security import AeRegistry
from pacscore.services.auth.tokens import TokenStore
from pacscore.services.dicomweb.app import create_app
from pacscore.services.grpc.generated import load
from pacscore.services.grpc.server import start_grpc
from pacscore.testing import free_port, serve_process
from pacscore.workflow import PerformedSteps, Worklist, item_from_pairs
from pacscore.workflow.studies import requested_procedures, study_states

from .test_auth_middleware import _ask
from .test_mpps import completion, creation

IMAGE = Path("odd/odd_dims/SC_rgb_small_odd.dcm")
REPORT = Path("other/sr/test-SR_deep_nesting.dcm")


def _object(path: Path, study: str, accession: str, patient: str) -> bytes:
    """``path`` as a new instance of ``study`` (new series and SOP Instance UIDs)."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.AccessionNumber, ds.PatientID = study, accession, patient
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture()
def archive(tmp_path: Path, corpus: Path) -> Iterator[tuple[Archive, dict[str, str]]]:
    """Orders O1..O7 in each state the statuses name, and what the archive holds."""
    with Archive(tmp_path / "a", ArchiveConfig(fsync=False)) as archive:
        wl, studies = archive.worklist, dict[str, str]()
        for n in range(1, 8):
            studies[f"O{n}"] = generate_uid()
            wl.add(item_from_pairs([f"AccessionNumber=ACC{n}", f"PatientID=P{n}",
                                    f"StudyInstanceUID={studies[f'O{n}']}", "Modality=CT",
                                    "ScheduledStationAETitle=CT1",
                                    f"ScheduledProcedureStepID=S{n}"]))
        image, report = corpus / IMAGE, corpus / REPORT
        performed = PerformedSteps(wl)
        # O2: images under the order's Study Instance UID, no MPPS: arrived
        archive.store(_object(image, studies["O2"], "ACC2", "P2"))
        # O3: started by MPPS, images sent meanwhile under the modality's own study UID
        own = generate_uid()
        performed.create(None, creation(own, "ACC3", "S3"))
        archive.store(_object(image, own, "", "P3"))
        # O4: MPPS completed, images matched by Accession Number only
        step, _ = performed.create(None, creation(studies["O4"], "ACC4", "S4"))
        performed.update(step.uid, completion())
        archive.store(_object(image, generate_uid(), "ACC4", "P4"))
        # O5: completed, and a report stored: reported
        step, _ = performed.create(None, creation(studies["O5"], "ACC5", "S5"))
        performed.update(step.uid, completion())
        archive.store(_object(image, studies["O5"], "ACC5", "P5"))
        archive.store(_object(report, studies["O5"], "ACC5", "P5"))
        # O6: cancelled; O7: discontinued by MPPS
        wl.cancel("ACC6")
        step, _ = performed.create(None, creation(studies["O7"], "ACC7", "S7"))
        performed.update(step.uid, completion("DISCONTINUED", series=False))
        # a study nobody ordered
        studies["stray"] = generate_uid()
        archive.store(_object(image, studies["stray"], "NOORDER", "PX"))
        yield archive, studies


EXPECTED = {
    "ACC1": StudyStatus.SCHEDULED, "ACC2": StudyStatus.ARRIVED,
    "ACC3": StudyStatus.IN_PROGRESS, "ACC4": StudyStatus.COMPLETED,
    "ACC5": StudyStatus.REPORTED, "ACC6": StudyStatus.CANCELLED,
    "ACC7": StudyStatus.DISCONTINUED, "NOORDER": StudyStatus.UNRECONCILED,
}


def test_each_status_and_the_links_that_give_it(archive: tuple[Archive, dict[str, str]]
                                                ) -> None:
    arc, studies = archive
    states = study_states(arc.worklist, arc.query)
    assert {s.accession: s.status for s in states} == EXPECTED
    by_acc = {s.accession: s for s in states}
    assert by_acc["ACC2"].stored == [studies["O2"]] and by_acc["ACC2"].instances == 1
    assert len(by_acc["ACC3"].stored) == 1 and by_acc["ACC3"].stored[0] != studies["O3"]
    assert len(by_acc["ACC3"].performed) == 1  # linked through the MPPS (rule 2)
    assert by_acc["ACC4"].stored and by_acc["ACC4"].stored[0] != studies["O4"]  # rule 3
    assert by_acc["ACC5"].instances == 2
    assert by_acc["NOORDER"].stored == [studies["stray"]]
    assert [s.accession for s in study_states(arc.worklist, arc.query,
                                              status=StudyStatus.UNRECONCILED)] == ["NOORDER"]
    step_status = {s.accession: set(s.steps.values()) for s in states if s.steps}
    assert step_status["ACC3"] == {str(StepStatus.IN_PROGRESS)}


def test_cli_list_shows_the_study_status_and_unreconciled_lists_the_stray_study(
        archive: tuple[Archive, dict[str, str]]) -> None:
    arc, studies = archive
    root = str(arc.root)

    def cli(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "pacscore.cli", "worklist", *args,
                               "--archive", root, "--json"], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    listed = cli("list", "--all")["items"]
    assert {r["accession"]: r["study_status"] for r in listed} == {
        k: str(v) for k, v in EXPECTED.items() if k != "NOORDER"}
    (stray,) = cli("unreconciled")["studies"]
    assert stray["study_uid"] == studies["stray"] and stray["status"] == "unreconciled"
    arrived = cli("studies", "--status", "arrived")["studies"]
    assert [s["accession"] for s in arrived] == ["ACC2"]
    bad = subprocess.run([sys.executable, "-m", "pacscore.cli", "worklist", "studies",
                          "--status", "nonsense", "--archive", root], capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.returncode != 0 and "reported" in bad.stderr + bad.stdout


def test_dicomweb_workflow_endpoint_answers_by_status_with_a_read_token(
        archive: tuple[Archive, dict[str, str]]) -> None:
    arc, studies = archive
    token = TokenStore(arc.root).create("read")
    auth = {"Authorization": f"Bearer {token}"}
    asks = [("GET", "/workflow/studies", {}), ("GET", "/workflow/studies", auth),
            ("GET", "/workflow/studies?status=reported", auth),
            ("GET", "/workflow/studies?status=bogus", auth),
            ("GET", "/workflow/studies?accession=1", auth)]
    answers = _ask(create_app(arc), asks)
    assert [status for status, _, _ in answers] == [401, 200, 200, 400, 400]
    every, done = (json.loads(body)["studies"] for _, _, body in answers[1:3])
    assert {s["accession"]: s["status"] for s in every} == {
        k: str(v) for k, v in EXPECTED.items()}
    assert [(s["accession"], s["study_uid"]) for s in done] == [("ACC5", studies["O5"])]


def test_grpc_study_status_answers_by_status_with_a_read_token(
        archive: tuple[Archive, dict[str, str]]) -> None:
    """The same states through the gRPC door (``StudyStatus``), with the client
    generated from pacscore.proto; audited as a query."""
    arc, studies = archive
    pb, svc = load()
    read = (("authorization", f"Bearer {TokenStore(arc.root).create('read')}"),)
    port = free_port()
    server = start_grpc(arc, "127.0.0.1", port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = svc.ArchiveStub(channel)
            every = list(stub.StudyStatus(pb.StudyStatusRequest(), metadata=read))
            done = list(stub.StudyStatus(pb.StudyStatusRequest(status="reported"),
                                         metadata=read))
            stray = list(stub.StudyStatus(pb.StudyStatusRequest(status="unreconciled"),
                                          metadata=read))
            with pytest.raises(grpc.RpcError) as bad:
                list(stub.StudyStatus(pb.StudyStatusRequest(status="bogus"), metadata=read))
            with pytest.raises(grpc.RpcError) as anonymous:
                list(stub.StudyStatus(pb.StudyStatusRequest()))
    finally:
        server.stop(None)
    assert {s.accession_number: s.status for s in every} == {
        k: str(v) for k, v in EXPECTED.items()}
    (five,) = done
    assert (five.accession_number, five.study_instance_uid, five.instances) == \
        ("ACC5", studies["O5"], 2)
    assert len(five.performed) == 1 and set(five.steps.values()) == {"completed"}
    assert [(s.study_instance_uid, list(s.stored)) for s in stray] == \
        [(studies["stray"], [studies["stray"]])]
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bogus" in (bad.value.details() or "")
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    audit = [json.loads(line) for line in
             (arc.root / "audit" / "audit.jsonl").read_text().splitlines()]
    queries = [e["detail"] for e in audit if e["interface"] == "grpc"
               and e["event_id"]["code"] == "110112"]
    assert queries == ["study status all, 8 studies", "study status reported, 1 studies",
                       "study status unreconciled, 1 studies"]


def test_served_mpps_then_the_workflow_endpoint_of_the_same_server(tmp_path: Path) -> None:
    """``pacscore serve`` as deployed: MPPS on its DIMSE door, the study status on its
    HTTP door, both audited (the MPPS requests and the step changes they made)."""
    root = tmp_path / "archive"
    root.mkdir()
    wl = Worklist(root)
    try:
        study = generate_uid()
        wl.add(item_from_pairs(["AccessionNumber=ACC1", "PatientID=P1", "Modality=CT",
                                "ScheduledStationAETitle=CT1", "ScheduledProcedureStepID=S1",
                                f"StudyInstanceUID={study}"]))
    finally:
        wl.close()
    AeRegistry(root).add("MODALITY", "127.0.0.1", rights=("mpps",))
    token = TokenStore(root).create("read")
    with serve_process(root, doors=("dimse", "http")) as (_, ports):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        assoc = ae.associate("127.0.0.1", ports["dimse"], ae_title="PACSCORE")
        assert assoc.is_established
        try:
            uid = generate_uid()
            mpps = ModalityPerformedProcedureStep
            assert assoc.send_n_create(creation(study, "ACC1", "S1"), mpps, uid)[0].Status == 0
            assert assoc.send_n_set(completion(), mpps, uid)[0].Status == 0
        finally:
            assoc.release()
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports['http']}/workflow/studies?status=completed",
            headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            (state,) = json.loads(answer.read())["studies"]
    assert (state["accession"], state["study_uid"], state["performed"]) == ("ACC1", study, [uid])
    audit = [json.loads(line) for line in
             (root / "audit" / "audit.jsonl").read_text().splitlines()]
    procedure = [(e["interface"], e["action"]) for e in audit
                 if e["event_id"]["code"] == "110111"]
    # the MPPS requests (dimse) and the step's two changes (serve's worklist listener)
    assert procedure.count(("dimse", "C")) == 1 and procedure.count(("dimse", "U")) == 1
    assert procedure.count(("serve", "U")) == 2


def _requested(path: Path, study: str, patient: str, *requested: str) -> bytes:
    """``path`` as an instance of ``study`` without Accession Number, made for the
    Requested Procedure IDs ``requested`` (Request Attributes Sequence)."""
    ds = pydicom.dcmread(io.BytesIO(_object(path, study, "", patient)))
    items = []
    for rp in requested:
        item = pydicom.Dataset()
        item.RequestedProcedureID = rp
        items.append(item)
    ds.RequestAttributesSequence = items
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_images_are_linked_by_requested_procedure_id(tmp_path: Path, corpus: Path) -> None:
    """Rule 4 of workflow/studies.py: a study with neither the order's Study Instance
    UID nor its Accession Number is linked by the Requested Procedure ID of its series,
    when one order of its patient has that ID; one two orders of the patient share, or
    an order of another patient, links nothing."""
    image = corpus / IMAGE
    with Archive(tmp_path / "a", ArchiveConfig(fsync=False)) as arc:
        for acc, patient, rp in (("R1", "P1", "RP1"), ("R2", "P2", "RPX"), ("R3", "P2", "RPX")):
            arc.worklist.add(item_from_pairs([
                f"AccessionNumber={acc}", f"PatientID={patient}", f"RequestedProcedureID={rp}",
                "Modality=CT", "ScheduledStationAETitle=CT1"]))
        linked, shared, other = generate_uid(), generate_uid(), generate_uid()
        arc.store(_requested(image, linked, "P1", "RP1"))
        arc.store(_requested(image, shared, "P2", "RPX"))
        arc.store(_requested(image, other, "P9", "RP1"))
        states = study_states(arc.worklist, arc.query, requested=requested_procedures(arc))
        by_acc = {s.accession: s for s in states if s.accession}
        assert by_acc["R1"].status == StudyStatus.ARRIVED and by_acc["R1"].stored == [linked]
        assert by_acc["R2"].status == by_acc["R3"].status == StudyStatus.SCHEDULED
        assert sorted(s.study_uid for s in states if s.status == StudyStatus.UNRECONCILED) \
            == sorted([shared, other])
        without = study_states(arc.worklist, arc.query)  # rule 4 only with its reader
        assert {s.accession: s.status for s in without}["R1"] == StudyStatus.SCHEDULED
    done = subprocess.run([sys.executable, "-m", "pacscore.cli", "worklist", "studies",
                           "--status", "arrived", "--archive", str(tmp_path / "a"), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [(s["accession"], s["stored"]) for s in json.loads(done.stdout)["studies"]] \
        == [("R1", [linked])]
