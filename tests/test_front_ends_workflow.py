"""The workflow state shared by several front ends (issue 17.3): two real ``pacscore
serve`` processes, each its own folder, on one real PostgreSQL (index, worklist,
performed steps, corrections, HL7 dedup and outbox) and one real SeaweedFS (frames).
What one front end is told, the other serves: an HL7 order sent to A is in B's
Modality Worklist (DCMTK ``findscu -W``); an MPPS created on A is completed on B and
then refused by both; an ADT A08 through A is in B's QIDO-RS answers; a stored SR
report reaches a real MLLP receiver once although both front ends run a sender."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

pytest.importorskip("psycopg")

from pacscore import Archive, ArchiveConfig
from pacscore.services.auth.security import AeRegistry
from pacscore.services.hl7.reports import SHARED_POLL, ReportSender
from pacscore.store import StoreSpec
from pacscore.testing import cli, serve_process
from pacscore.testing.s3 import SeaweedS3
from tests.test_hl7 import mllp_send, msa, orm, prepared
from tests.test_hl7 import worklist as worklist_find
from tests.test_hl7_reports import SR_BASIC, SR_COMPREHENSIVE, Receiver
from tests.test_mpps import MPPS, associate, completion, creation, worklist_status

ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK keeps Nagle on otherwise (FACTS.md)
CT_99000 = "ct_series/dcmqi_ge_ct_3slice"  # Patient ID 99000, name JANCT000


@dataclass
class Front:
    root: Path
    ports: dict[str, int]
    lines: list[str] = field(default_factory=list)

    def qido(self, **filters: str) -> list[dict[str, object]]:
        token = (self.root / "security" / "admin-token").read_text().strip()
        got = requests.get(f"http://127.0.0.1:{self.ports['http']}/dicom-web/studies",
                           params=filters, headers={"Authorization": f"Bearer {token}"},
                           timeout=30)
        assert got.status_code in (200, 204), got.text
        return list(got.json()) if got.status_code == 200 else []

    def storescu(self, path: Path) -> None:
        done = subprocess.run(["/usr/bin/storescu", "-aet", "MODALITY", "-aec", "PACSCORE",
                               "127.0.0.1", str(self.ports["dimse"]), str(path)],
                              capture_output=True, text=True, env=ENV, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def front_end(root: Path, index: str, store: str, report_to: str) -> Iterator[Front]:
    prepared(root)  # HL7 sender 127.0.0.1 allowed, MODALITY may query the worklist
    registry = AeRegistry(root)
    registry.add("MODALITY", "127.0.0.1")  # every right: store, MPPS, worklist
    registry.add("FINDSCU", "127.0.0.1", rights=("worklist",))
    with serve_process(root, "--index", index, "--store", store, "--gc-interval", "3600",
                       "--hl7-report-to", report_to,
                       doors=("dimse", "http", "hl7")) as (proc, ports):
        front = Front(root, ports)
        # read what it prints: a full pipe would block the server's logging
        threading.Thread(target=lambda: front.lines.extend(proc.stdout or ()),
                         daemon=True).start()
        try:
            yield front
        finally:  # what the server said, shown with a failure
            print("".join(front.lines[-40:]))
        assert proc.poll() is None, "the server died:\n" + "".join(front.lines[-50:])


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/findscu").exists(), reason="DCMTK is not installed")
def test_two_front_ends_share_the_worklist_mpps_corrections_and_outbox(
        tmp_path: Path, corpus: Path, seaweedfs: SeaweedS3, postgres_dsn: str) -> None:
    store = seaweedfs.url(f"archive/{uuid.uuid4().hex}")
    with Receiver() as receiver, \
            front_end(tmp_path / "a", postgres_dsn, store, f"127.0.0.1:{receiver.port}") as a, \
            front_end(tmp_path / "b", postgres_dsn, store, f"127.0.0.1:{receiver.port}") as b:
        # an order sent to A is in B's worklist, and the resend of it to B is a duplicate
        (ack,) = mllp_send(a.ports["hl7"], tmp_path, orm("FE-1", acc="FE100", pid="PFE"))
        assert msa(ack)[0] == "AA"
        assert worklist_status(b.ports["dimse"], tmp_path / "b-scheduled") == [
            ("FE100", "SCHEDULED")]
        (again,) = mllp_send(b.ports["hl7"], tmp_path, orm("FE-1", acc="FE100", pid="PFE"))
        assert again == ack  # the answer recorded by A (the shared dedup)
        (item,) = worklist_find(b.ports["dimse"], AccessionNumber="FE100")
        study = str(item.StudyInstanceUID)
        sps_id = str(item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID)

        # MPPS: created on A, completed on B, then refused by both
        uid = f"2.25.{uuid.uuid4().int}"
        on_a = associate(a.ports["dimse"])
        try:
            status, _ = on_a.send_n_create(creation(study, "FE100", sps_id), MPPS, uid)
            assert status.Status == 0x0000
        finally:
            on_a.release()
        assert worklist_status(b.ports["dimse"], tmp_path / "b-started") == [
            ("FE100", "STARTED")]
        on_b = associate(b.ports["dimse"])
        try:
            status, _ = on_b.send_n_set(completion(), MPPS, uid)
            assert status.Status == 0x0000
            status, _ = on_b.send_n_set(completion(), MPPS, uid)
            assert status.Status == 0x0110 and status.ErrorID == 0xA710
        finally:
            on_b.release()
        on_a = associate(a.ports["dimse"])
        try:
            status, _ = on_a.send_n_set(completion(), MPPS, uid)
            assert status.Status == 0x0110 and status.ErrorID == 0xA710
        finally:
            on_a.release()
        assert worklist_status(a.ports["dimse"], tmp_path / "a-after") == []

        # a correction (A08) made through A is served by B
        ct = sorted((corpus / CT_99000).glob("*.dcm"))[0]
        b.storescu(ct)
        assert [s["00100010"]["Value"][0]["Alphabetic"]  # type: ignore[index]
                for s in b.qido(PatientID="99000")] == ["JANCT000"]
        (ack,) = mllp_send(a.ports["hl7"], tmp_path, "\r".join([
            "MSH|^~\\&|RIS|HOSP|PACS|HOSP|20240101120000||ADT^A08|FE-2|P|2.3.1",
            "EVN|A08", "PID|1||99000^^^HOSP||ROE^JANE||19700101|F"]) + "\r")
        assert msa(ack)[0] == "AA"
        wait_for(lambda: [s["00100010"]["Value"][0]["Alphabetic"]  # type: ignore[index]
                          for s in b.qido(PatientID="99000")] == ["ROE^JANE"], timeout=5)

        # an SR stored through A: one ORU, received once, whichever front end sends it
        a.storescu(corpus / SR_COMPREHENSIVE)
        wait_for(lambda: receiver.messages)
        time.sleep(SHARED_POLL + 2)  # both senders have looked at the outbox since
        assert len(receiver.messages) == 1
        assert "ORU^R01" in receiver.messages[0]
    listed = cli("hl7", "outbox", "--archive", str(tmp_path / "a"), "--index", postgres_dsn,
                 "--json")
    assert '"reports": []' in listed


def test_senders_of_two_front_ends_send_each_report_once(
        tmp_path: Path, corpus: Path, seaweedfs: SeaweedS3, postgres_dsn: str) -> None:
    """Four passes over one shared outbox at once (two front ends, two threads each):
    each queued report reaches the receiver once; the passes that found the outbox
    being sent by another one sent nothing."""
    store = StoreSpec.from_url(seaweedfs.url(f"archive/{uuid.uuid4().hex}"))
    config = ArchiveConfig(prepare_workers=0, fsync=False)
    with Archive(tmp_path / "a", config, store=store, index=postgres_dsn) as a, \
            Archive(tmp_path / "b", config, store=store, index=postgres_dsn) as b, \
            Receiver() as receiver:
        senders = [ReportSender(x, f"127.0.0.1:{receiver.port}", timeout=5) for x in (a, b)]
        for s in senders:
            s.catch_up()
        sops = [a.store(corpus / p).sop_instance_uid for p in (SR_COMPREHENSIVE, SR_BASIC)]
        assert len(senders[0].outbox.enqueue(sops, senders[0].destination)) == 2
        assert senders[1].outbox.enqueue(sops, senders[1].destination) == []  # one ledger
        barrier = threading.Barrier(4)
        sent: list[int] = []

        def race(s: ReportSender) -> None:
            barrier.wait(30)
            sent.append(s.send_due())

        threads = [threading.Thread(target=race, args=(s,)) for s in senders * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(sent) == 2 and len(receiver.messages) == 2
        assert {senders[1].outbox.known(sop)["what"] for sop in sops} == {"sent"}  # type: ignore[index]
        for s in senders:
            s.outbox.close()
