"""Modality Performed Procedure Step SCP (issue 16.3): N-CREATE/N-SET from pynetdicom's
SCU drive the scheduled step, which DCMTK's ``findscu -W`` then sees; every refusal of
PS3.4 F.7.2 is a clear status on a live association, with nothing kept of it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    Verification,
)

from pacscore import Archive
from pacscore.config import ArchiveConfig
from pacscore.errors import ProcedureStepFinalError
from pacscore.kinds import StepStatus
from pacscore.services.auth.security import AeRegistry
from pacscore.services.dimse.server import DimseServer
from pacscore.testing import free_port
from pacscore.workflow import PerformedSteps, Worklist, item_from_pairs

FINDSCU = Path("/usr/bin/findscu")
MPPS = ModalityPerformedProcedureStep
DCMJS_DIMSE = Path(os.environ.get("PACSCORE_DCMJS_DIMSE", "/tmp/mppsnode/node_modules"))


def order(acc: str, sps_id: str, station: str = "CT1") -> Dataset:
    return item_from_pairs([f"PatientID=P-{acc}", "PatientName=DOE^JANE",
                            f"AccessionNumber={acc}", f"ScheduledProcedureStepID={sps_id}",
                            f"RequestedProcedureID=RP-{acc}", "Modality=CT",
                            f"ScheduledStationAETitle={station}",
                            "ScheduledProcedureStepStartDate=20250101"])


def creation(study_uid: str, acc: str = "", sps_id: str = "", **top: Any) -> Dataset:
    """An N-CREATE attribute list as PS3.4 Table F.7.2-1 asks (Type 1 and 2)."""
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = acc
    item.RequestedProcedureID = ""
    item.RequestedProcedureDescription = ""
    item.ScheduledProcedureStepID = sps_id
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P-A1"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferencedPatientSequence = []
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20250101"
    ds.PerformedProcedureStepStartTime = "083000"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    for k, v in top.items():
        setattr(ds, k, v)
    return ds


def completion(status: str = "COMPLETED", series: bool = True) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20250101"
    ds.PerformedProcedureStepEndTime = "091500"
    if series:
        s = Dataset()
        s.SeriesInstanceUID = generate_uid()
        s.ProtocolName = "CHEST"
        s.RetrieveAETitle = "PACSCORE"
        s.PerformingPhysicianName = ""
        s.OperatorsName = ""
        s.SeriesDescription = ""
        s.ReferencedImageSequence = []
        s.ReferencedNonImageCompositeSOPInstanceSequence = []
        ds.PerformedSeriesSequence = [s]
    return ds


@pytest.fixture()
def server(tmp_path: Path, workflow_index: str | None
           ) -> Iterator[tuple[DimseServer, int, dict[str, str]]]:
    archive = Archive(tmp_path / "srv", ArchiveConfig(fsync=False), index=workflow_index)
    keys = {acc: archive.worklist.add(order(acc, f"S-{acc}")) for acc in ("A1", "A2", "A3")}
    registry = AeRegistry(archive.root)
    registry.add("MODALITY", "127.0.0.1")
    registry.add("FINDSCU", "127.0.0.1", rights=("worklist",))
    registry.add("VIEWER", "127.0.0.1", rights=("echo", "find", "worklist"))
    srv = DimseServer(archive, ae_title="PACSCORE")
    port = free_port()
    srv.start("127.0.0.1", port)
    try:
        yield srv, port, keys
    finally:
        srv.stop()
        archive.close()


def associate(port: int, title: str = "MODALITY", handlers: list[Any] | None = None) -> Any:
    ae = AE(ae_title=title)
    ae.add_requested_context(MPPS)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE", evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def worklist_status(port: int, tmp: Path, *keys: str) -> list[tuple[str, str]]:
    """(Accession Number, SPS Status) of each answer of ``findscu -W`` with ``keys``."""
    tmp.mkdir(parents=True)
    args = [str(FINDSCU), "-W", "-X", "-od", str(tmp), "-aec", "PACSCORE", "127.0.0.1",
            str(port), "-k", "AccessionNumber", "-k", "0040,0100[0].ScheduledProcedureStepStatus"]
    for k in keys:
        args += ["-k", k]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "TCP_NODELAY": "1"})
    assert done.returncode == 0, done.stderr
    answers = [pydicom.dcmread(f) for f in sorted(tmp.glob("rsp*.dcm"))]
    return sorted((str(a.AccessionNumber), str(a.ScheduledProcedureStepSequence[0]
                                               .ScheduledProcedureStepStatus))
                  for a in answers)


def audit(srv: DimseServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in srv.audit.path.read_text().splitlines()]


@pytest.mark.skipif(not FINDSCU.exists(), reason="DCMTK findscu not installed")
def test_n_create_and_n_set_drive_the_step_that_findscu_then_sees(
        server: tuple[DimseServer, int, dict[str, str]], tmp_path: Path) -> None:
    srv, port, keys = server
    worklist = srv.archive.worklist
    study = str(worklist.get(keys["A1"]).dataset.StudyInstanceUID)
    uid = generate_uid()
    assoc = associate(port)
    try:
        status, _ = assoc.send_n_create(creation(study, "A1", "S-A1"), MPPS, uid)
        assert status.Status == 0x0000
        assert worklist.status(keys["A1"]) == StepStatus.IN_PROGRESS
        assert worklist_status(port, tmp_path / "started") == [
            ("A1", "STARTED"), ("A2", "SCHEDULED"), ("A3", "SCHEDULED")]
        # an N-SET that stays IN PROGRESS (more attributes as the exam goes on)
        note = Dataset()
        note.PerformedProcedureStepDescription = "CT CHEST"
        status, _ = assoc.send_n_set(note, MPPS, uid)
        assert status.Status == 0x0000
        status, _ = assoc.send_n_set(completion(), MPPS, uid)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    assert worklist.status(keys["A1"]) == StepStatus.COMPLETED
    assert worklist_status(port, tmp_path / "after") == [("A2", "SCHEDULED"),
                                                         ("A3", "SCHEDULED")]
    # asked by status, the completed step is answered, saying so
    assert worklist_status(port, tmp_path / "done",
                           "0040,0100[0].ScheduledProcedureStepStatus=COMPLETED") == [
        ("A1", "COMPLETED")]
    step = PerformedSteps(worklist).get(uid)
    assert step.status == "COMPLETED" and step.steps == (keys["A1"],)
    assert str(step.dataset.PerformedProcedureStepDescription) == "CT CHEST"
    records = [e for e in audit(srv) if e["event_id"]["code"] == "110111"]
    assert [(e["action"], e["outcome"]) for e in records] == [("C", 0), ("U", 0), ("U", 0)]
    assert records[0]["objects"] == [uid] and keys["A1"] in records[0]["detail"]
    assert "DOE" not in json.dumps(records)
    assert worklist.check() == []


def test_an_scu_without_a_uid_is_given_one_and_discontinued_stops_the_step(
        server: tuple[DimseServer, int, dict[str, str]]) -> None:
    srv, port, keys = server
    worklist = srv.archive.worklist
    study = str(worklist.get(keys["A2"]).dataset.StudyInstanceUID)
    commands: list[Dataset] = []  # what the SCU received (pynetdicom hides the UID)
    assoc = associate(port, handlers=[
        (evt.EVT_DIMSE_RECV, lambda event: commands.append(event.message.command_set))])
    try:
        # no Accession Number nor SPS ID: the Study Instance UID names the step
        status, _ = assoc.send_n_create(creation(study), MPPS, None)
        assert status.Status == 0x0000
        uid = str(commands[-1].AffectedSOPInstanceUID)  # PS3.7 10.1.5.1.4
        assert uid and worklist.status(keys["A2"]) == StepStatus.IN_PROGRESS
        status, _ = assoc.send_n_set(completion("DISCONTINUED", series=False), MPPS, uid)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    assert worklist.status(keys["A2"]) == StepStatus.DISCONTINUED
    sps = worklist.get(keys["A2"]).dataset.ScheduledProcedureStepSequence[0]
    assert sps.ScheduledProcedureStepStatus == "DISCONTINUED"
    assert PerformedSteps(worklist).get(uid).status == "DISCONTINUED"


def _missing(keyword: str) -> Dataset:
    ds = creation("1.2.3.4", "A3", "S-A3")
    delattr(ds, keyword)
    return ds


def test_refusals_are_clear_statuses_on_a_live_association_and_keep_nothing(
        server: tuple[DimseServer, int, dict[str, str]]) -> None:
    srv, port, keys = server
    worklist = srv.archive.worklist
    performed = PerformedSteps(worklist)
    study = str(worklist.get(keys["A3"]).dataset.StudyInstanceUID)
    uid = generate_uid()
    assoc = associate(port)
    try:
        # N-SET of an instance nobody created: No such SOP Instance
        status, _ = assoc.send_n_set(completion(), MPPS, generate_uid())
        assert status.Status == 0x0112
        # N-CREATE missing Type 1 attributes: Missing attribute, naming them
        status, _ = assoc.send_n_create(_missing("PerformedStationAETitle"), MPPS, uid)
        assert status.Status == 0x0120 and "PerformedStationAETitle" in status.ErrorComment
        status, _ = assoc.send_n_create(_missing("ScheduledStepAttributesSequence"), MPPS, uid)
        assert status.Status == 0x0120
        # present without a value: Missing attribute value
        status, _ = assoc.send_n_create(creation(study, "A3", "S-A3", Modality=""), MPPS, uid)
        assert status.Status == 0x0121
        # created in another status than IN PROGRESS: Invalid attribute value
        wrong = creation(study, "A3", "S-A3", PerformedProcedureStepStatus="COMPLETED")
        status, _ = assoc.send_n_create(wrong, MPPS, uid)
        assert status.Status == 0x0106
        assert len(performed) == 0 and worklist.status(keys["A3"]) == StepStatus.SCHEDULED
        # a good one, then the same UID again: Duplicate SOP Instance
        status, _ = assoc.send_n_create(creation(study, "A3", "S-A3"), MPPS, uid)
        assert status.Status == 0x0000
        status, _ = assoc.send_n_create(creation(study, "A3", "S-A3"), MPPS, uid)
        assert status.Status == 0x0111
        # N-SET of an attribute Table F.7.2-1 does not allow to change
        other = Dataset()
        other.Modality = "MR"
        status, _ = assoc.send_n_set(other, MPPS, uid)
        assert status.Status == 0x0106 and "Modality" in status.ErrorComment
        assert status.AttributeIdentifierList == 0x00080060
        # a status PS3.3 C.4.14 does not define; no attribute list at all
        odd = Dataset()
        odd.PerformedProcedureStepStatus = "FINISHED"
        status, _ = assoc.send_n_set(odd, MPPS, uid)
        assert status.Status == 0x0106 and "FINISHED" in status.ErrorComment
        status, _ = assoc.send_n_create(None, MPPS, generate_uid())
        assert status.Status == 0x0120
        # COMPLETED without its final-state attributes
        status, _ = assoc.send_n_set(completion(series=False), MPPS, uid)
        assert status.Status == 0x0121 and "PerformedSeriesSequence" in status.ErrorComment
        assert performed.get(uid).status == "IN PROGRESS"
        assert worklist.status(keys["A3"]) == StepStatus.IN_PROGRESS
        status, _ = assoc.send_n_set(completion(), MPPS, uid)
        assert status.Status == 0x0000
        # after COMPLETED: refused as PS3.4 F.7.2.2.2 and Table F.7.2-2 say
        for late in (completion("DISCONTINUED"), completion()):
            status, _ = assoc.send_n_set(late, MPPS, uid)
            assert status.Status == 0x0110 and status.ErrorID == 0xA710
            assert status.ErrorComment == \
                "Performed Procedure Step Object may no longer be updated"
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert len(performed) == 1 and performed.get(uid).status == "COMPLETED"
    assert worklist.status(keys["A3"]) == StepStatus.COMPLETED
    assert worklist.status(keys["A1"]) == StepStatus.SCHEDULED  # untouched
    assert worklist.check() == []
    failures = [e for e in audit(srv) if e["event_id"]["code"] == "110111" and e["outcome"]]
    assert len(failures) == 12 and all("MPPS N-" in e["detail"] for e in failures)


def test_mpps_needs_its_right(server: tuple[DimseServer, int, dict[str, str]]) -> None:
    srv, port, keys = server
    assoc = associate(port, "VIEWER")
    try:
        status, _ = assoc.send_n_create(creation("1.2.3", "A1", "S-A1"), MPPS, generate_uid())
        assert status.Status == 0x0124
    finally:
        assoc.release()
    assert srv.archive.worklist.status(keys["A1"]) == StepStatus.SCHEDULED


CRASH = """
import sys
from pathlib import Path
from tests.test_mpps import completion, creation, order
from pacscore.workflow import PerformedSteps, Worklist
wl = Worklist(Path(sys.argv[1]))
performed = PerformedSteps(wl)
run, n = sys.argv[2], 0
while True:
    acc = f"K{run}-{n}"
    key = wl.add(order(acc, f"S{acc}"))
    step, _ = performed.create(None, creation(str(wl.get(key).dataset.StudyInstanceUID),
                                              acc, f"S{acc}"))
    performed.update(step.uid, completion())
    n += 1
    if n == 10:
        print("ready", flush=True)
"""


def test_create_and_set_are_whole_or_absent_after_kill_9(tmp_path: Path) -> None:
    """A kill at any point leaves each step and the scheduled step it drives agreeing:
    a COMPLETED performed step's scheduled step is completed, an IN PROGRESS one's
    started (they are one transaction)."""
    root = Path(__file__).resolve().parent.parent
    for run, delay in enumerate((0.0, 0.05, 0.2)):
        with subprocess.Popen([sys.executable, "-c", CRASH, str(tmp_path), str(run)], cwd=root,
                              stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        wl = Worklist(tmp_path)
        try:
            performed = PerformedSteps(wl)
            assert wl.check() == [] and performed.check() == []
            expected = {"IN PROGRESS": StepStatus.IN_PROGRESS,
                        "COMPLETED": StepStatus.COMPLETED}
            states = list(performed.states())
            assert len(states) >= 10
            for _, status, keys in states:
                assert [wl.status(k) for k in keys] == [expected[status]]
        finally:
            wl.close()


def _worklist(root: Path, index_url: str | None) -> Worklist:
    """A worklist in ``root`` or, with ``index_url``, in that PostgreSQL database."""
    if index_url is None:
        return Worklist(root)
    from pacscore.index.spec import IndexSpec

    index = IndexSpec.parse(index_url).open()
    wl = Worklist(root, index=index)
    close = wl.close

    def close_both() -> None:
        close()
        index.close()

    wl.close = close_both  # type: ignore[method-assign]
    return wl


def test_set_status_rewrites_the_items_sps_status(tmp_path: Path,
                                                  workflow_index: str | None) -> None:
    wl = _worklist(tmp_path, workflow_index)
    try:
        key = wl.add(order("A9", "S9"))
        for status, said in ((StepStatus.IN_PROGRESS, "STARTED"),
                             (StepStatus.CANCELLED, "CANCELED")):
            wl.set_status([key], status)
            sps = wl.get(key).dataset.ScheduledProcedureStepSequence[0]
            assert sps.ScheduledProcedureStepStatus == said
        assert wl.check() == []
    finally:
        wl.close()


def test_a_final_step_refuses_updates_through_the_api(tmp_path: Path,
                                                     workflow_index: str | None) -> None:
    wl = _worklist(tmp_path, workflow_index)
    try:
        performed = PerformedSteps(wl)
        step, moved = performed.create(None, creation("1.2.3", "NONE", "NONE"))
        assert step.steps == () and moved == []  # unscheduled: kept, drives nothing
        performed.update(step.uid, completion())
        with pytest.raises(ProcedureStepFinalError):
            performed.update(step.uid, completion())
    finally:
        wl.close()


NODE_MPPS = """
// N-CREATE, N-SET COMPLETED, then a late N-SET of one MPPS through dcmjs-dimse
const { Client, Dataset, requests: { NCreateRequest, NSetRequest },
        constants: { SopClass } } = require("dcmjs-dimse");
const [port, uid, studyUid, accession, spsId, seriesUid] = process.argv.slice(1);
const mpps = SopClass.ModalityPerformedProcedureStep;
const create = new NCreateRequest(mpps, uid);
create.setDataset(new Dataset({
  ScheduledStepAttributesSequence: [{
    StudyInstanceUID: studyUid, AccessionNumber: accession, ScheduledProcedureStepID: spsId,
    RequestedProcedureID: "", ReferencedStudySequence: [] }],
  PatientName: "DOE^JANE", PatientID: "P-" + accession, PatientBirthDate: "", PatientSex: "",
  PerformedProcedureStepID: "PPS-JS", PerformedStationAETitle: "CT1",
  PerformedProcedureStepStartDate: "20250101", PerformedProcedureStepStartTime: "101500",
  PerformedProcedureStepStatus: "IN PROGRESS", Modality: "CT",
  PerformedProcedureStepDescription: "", PerformedSeriesSequence: [] }));
const set = new NSetRequest(mpps, uid);
set.setDataset(new Dataset({
  PerformedProcedureStepStatus: "COMPLETED", PerformedProcedureStepEndDate: "20250101",
  PerformedProcedureStepEndTime: "103000",
  PerformedSeriesSequence: [{ SeriesInstanceUID: seriesUid, ProtocolName: "CHEST",
                              RetrieveAETitle: "PACSCORE" }] }));
const late = new NSetRequest(mpps, uid);
late.setDataset(new Dataset({ PerformedProcedureStepStatus: "DISCONTINUED" }));
const out = {};
const client = new Client();
for (const [name, request] of [["create", create], ["set", set], ["late", late]]) {
  request.on("response", (r) => { out[name] = r.getStatus(); });
  client.addRequest(request);
}
client.on("networkError", (e) => { console.log("network error " + e); process.exit(2); });
client.on("associationRejected", (r) => { console.log("rejected"); process.exit(3); });
client.on("closed", () => { console.log(JSON.stringify(out)); process.exit(0); });
client.send("127.0.0.1", Number(port), "JSMODALITY", "PACSCORE");
setTimeout(() => { console.log("timeout"); process.exit(1); }, 30000);
"""


@pytest.mark.skipif(not shutil.which("node") or not (DCMJS_DIMSE / "dcmjs-dimse").is_dir(),
                    reason="node or dcmjs-dimse not installed (npm install dcmjs-dimse in "
                           "/tmp/mppsnode or set PACSCORE_DCMJS_DIMSE to its node_modules)")
def test_dcmjs_dimse_an_independent_scu_creates_and_completes_a_step(
        server: tuple[DimseServer, int, dict[str, str]]) -> None:
    srv, port, keys = server
    AeRegistry(srv.archive.root).add("JSMODALITY", "127.0.0.1", rights=("mpps",))
    worklist = srv.archive.worklist
    study = str(worklist.get(keys["A2"]).dataset.StudyInstanceUID)
    uid = generate_uid()
    out = subprocess.run(["node", "-e", NODE_MPPS, str(port), uid, study, "A2", "S-A2",
                          generate_uid()], capture_output=True, text=True, timeout=60,
                         check=False, env={**os.environ, "NODE_PATH": str(DCMJS_DIMSE)})
    assert out.stdout.strip().splitlines()[-1:] == [
        json.dumps({"create": 0, "set": 0, "late": 0x0110}, separators=(",", ":"))], out
    assert worklist.status(keys["A2"]) == StepStatus.COMPLETED
    step = PerformedSteps(worklist).get(uid)
    assert step.status == "COMPLETED" and step.steps == (keys["A2"],)
    assert str(step.dataset.PerformedSeriesSequence[0].ProtocolName) == "CHEST"
