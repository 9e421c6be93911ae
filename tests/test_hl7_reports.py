"""Reports out (issue 16 item 5): every DICOM SR report stored goes to the configured
HL7 receiver as an ORU^R01, through a persistent outbox.

The receiver is hl7apy's MLLP server (an independent HL7 implementation that parses and
checks what pacscore sends); reports arrive through DCMTK's storescu into ``pacscore
serve`` or through ``Archive.store``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pacscore import Archive
from pacscore.dicom.report import read_report
from pacscore.services.auth.security import AuditLog
from pacscore.services.hl7.oru import build_oru, result_status
from pacscore.services.hl7.outbox import OutboxState
from pacscore.services.hl7.reports import ReportSender
from pacscore.testing import cli, free_port, serve_process

hl7apy_mllp = pytest.importorskip("hl7apy.mllp", reason="hl7apy is not installed")
from hl7apy.core import Message  # noqa: E402
from hl7apy.parser import parse_message  # noqa: E402

SR_BASIC = "other/sr/SR_latin2_polish.dcm"
SR_COMPREHENSIVE = "other/sr/test-SR_deep_nesting.dcm"
CT = "ct_series/single/GE_knee_arthroplasty.dcm"


class Receiver:
    """hl7apy's MLLPServer on a free port; answers each ORU^R01 with ``answers``' next
    code (AA once they run out), keeps every message it parsed."""

    def __init__(self, answers: tuple[str, ...] = (), port: int | None = None):
        self.port = port or free_port()
        self.messages: list[str] = []
        self.answers = list(answers)
        receiver = self

        class Handler(hl7apy_mllp.AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                parsed = parse_message(self.incoming_message, find_groups=False)
                receiver.messages.append(self.incoming_message)
                code = receiver.answers.pop(0) if receiver.answers else "AA"
                ack = Message("ACK", version="2.5")
                ack.msh.msh_3 = "RIS"
                ack.msh.msh_9 = "ACK^R01^ACK"
                ack.msh.msh_10 = "R" + parsed.msh.msh_10.value
                ack.msa.msa_1 = code
                ack.msa.msa_2 = parsed.msh.msh_10.value
                if code != "AA":
                    ack.msa.msa_3 = "refused by the test receiver"
                return str(ack.to_mllp())

        self.server = hl7apy_mllp.MLLPServer("127.0.0.1", self.port,
                                             {"ORU^R01^ORU_R01": (Handler,)})
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@contextmanager
def sender(archive: Archive, port: int, retry: float = 0.2) -> Iterator[ReportSender]:
    s = ReportSender(archive, f"127.0.0.1:{port}", audit=AuditLog(archive.root), retry=retry,
                     timeout=5)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_the_oru_of_a_report_parses_in_an_independent_implementation(corpus: Path) -> None:
    """Every value is escaped, non-ASCII text kept (UTF-8), the structure is ORU_R01's."""
    report = read_report((corpus / SR_COMPREHENSIVE).read_bytes())
    text = build_oru(report, "PACSCORE000000000001", receiving="RIS^HOSP")
    parsed = parse_message(text, find_groups=True)
    assert parsed.msh.msh_9.value == "ORU^R01^ORU_R01"
    assert parsed.msh.msh_18.value == "UNICODE UTF-8"
    obr = parsed.oru_r01_patient_result.oru_r01_order_observation.obr
    assert obr.obr_25.value == result_status(report) == "C"  # verified, amends a predecessor
    assert obr.obr_32.value == "&Riesmeier&Jörg"
    obx = parsed.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation
    values = [o.obx.obx_5.value for o in obx]
    assert any("Diameter: 3 cm" in v for v in values)
    assert values[-1] == report.study_uid
    polish = read_report((corpus / SR_BASIC).read_bytes())
    assert polish.patient_id == "P22" and result_status(polish) == "P"  # unverified
    assert "Oddział: sdadasdas" in build_oru(polish, "X1")


def _index_args(url: str | None) -> list[str]:
    return [] if url is None else ["--index", url]


def test_a_stored_report_reaches_the_receiver_and_leaves_the_outbox(
        tmp_path: Path, corpus: Path, workflow_index: str | None) -> None:
    with Archive(tmp_path / "a", index=workflow_index) as archive, Receiver() as receiver, \
            sender(archive, receiver.port) as s:
        archive.store(corpus / CT)  # not a report: nothing goes out
        stored = archive.store(corpus / SR_COMPREHENSIVE)
        wait_for(lambda: receiver.messages)
        wait_for(lambda: s.outbox.known(stored.sop_instance_uid)["what"] == "sent")
        assert s.outbox.entries() == []
    assert len(receiver.messages) == 1
    assert "OBX|1|TX|" in receiver.messages[0].replace("\n", "\r")
    audit = [json.loads(line) for line in (tmp_path / "a" / "audit" / "audit.jsonl").read_text()
             .splitlines()]
    export = [e for e in audit if e["event_id"]["meaning"] == "Export"]
    assert export and export[0]["objects"] == [stored.sop_instance_uid]
    assert "acknowledged AA" in export[0]["detail"]


def test_a_receiver_that_is_down_gets_the_report_after_a_restart(
        tmp_path: Path, corpus: Path, workflow_index: str | None) -> None:
    """Queued while the receiver is down, kept across a restart of pacscore, delivered
    once when the receiver is back; the control ID is the same at every attempt."""
    port = free_port()
    root = tmp_path / "a"
    with Archive(root, index=workflow_index) as archive, sender(archive, port) as s:
        stored = archive.store(corpus / SR_BASIC)
        wait_for(lambda: s.outbox.entries() and s.outbox.entries()[0].attempts >= 2)
        entry = s.outbox.entries()[0]
        assert entry.state == OutboxState.QUEUED and "Connection" in entry.error
        control_id = entry.control_id
    listed = json.loads(cli("hl7", "outbox", "--archive", str(root), "--json",
                            *_index_args(workflow_index)))["reports"]
    assert [r["sop_instance_uid"] for r in listed] == [stored.sop_instance_uid]
    if workflow_index is not None:  # the folder names its index (index.json): enough
        assert json.loads(cli("hl7", "outbox", "--archive", str(root), "--json")
                          )["reports"] == listed
    with Archive(root, index=workflow_index) as archive, Receiver(port=port) as receiver, \
            sender(archive, port) as s:
        wait_for(lambda: not s.outbox.entries())
    assert len(receiver.messages) == 1
    assert f"|{control_id}|" in receiver.messages[0]


def test_a_refused_report_is_kept_listed_and_resent_on_request(
        tmp_path: Path, corpus: Path, workflow_index: str | None) -> None:
    """AR: kept as refused, not retried; AE: retried (the same message); resend."""
    root = tmp_path / "a"
    with Archive(root, index=workflow_index) as archive, Receiver(("AE", "AR")) as receiver, \
            sender(archive, receiver.port) as s:
        archive.store(corpus / SR_BASIC)
        wait_for(lambda: s.outbox.entries()
                 and s.outbox.entries()[0].state == OutboxState.REFUSED)
        time.sleep(0.5)  # a refused entry is not tried again
        assert len(receiver.messages) == 2 and receiver.messages[0] == receiver.messages[1]
        key = s.outbox.entries()[0].key
        assert "AR" in s.outbox.entries()[0].error
        assert cli("hl7", "resend", key, "--archive", str(root),
                   *_index_args(workflow_index)).strip() == f"{key} queued"
        s._wake.set()
        wait_for(lambda: not s.outbox.entries())
    assert len(receiver.messages) == 3
    # issue 16.7: the refusal, the operator's resend and the delivery are audited
    audit = [json.loads(line) for line in (root / "audit" / "audit.jsonl").read_text()
             .splitlines()]
    export = [(e["interface"], e["outcome"], e["detail"].split(": ", 1)[1]) for e in audit
              if e["event_id"]["meaning"] == "Export"]
    assert export[0][:2] == ("hl7", 8) and export[0][2].startswith("refused")
    assert export[1:] == [("cli", 0, "queued again by hand"), ("hl7", 0, "acknowledged AA")]


def test_reports_stored_before_the_first_start_are_not_sent_but_missed_ones_are(
        tmp_path: Path, corpus: Path, workflow_index: str | None) -> None:
    root = tmp_path / "a"
    with Archive(root, index=workflow_index) as archive:
        before = archive.store(corpus / SR_BASIC)
        with Receiver() as receiver, sender(archive, receiver.port) as s:
            assert s.outbox.known(before.sop_instance_uid)["what"] == "before"
            s.stop()  # (the report below is stored while nothing listens: a crash window)
            missed = archive.store(corpus / SR_COMPREHENSIVE)
        with Receiver() as receiver, sender(archive, receiver.port) as s:
            wait_for(lambda: receiver.messages and not s.outbox.entries())
            assert s.outbox.known(missed.sop_instance_uid)["what"] == "sent"
        assert len(receiver.messages) == 1 and missed.study_uid in receiver.messages[0]


@pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="DCMTK is not installed")
def test_serve_sends_a_report_stored_by_storescu(tmp_path: Path, corpus: Path) -> None:
    root = tmp_path / "a"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    with Receiver() as receiver, serve_process(
            root, "--hl7-report-to", f"127.0.0.1:{receiver.port}") as (_, ports):
        sent = subprocess.run(["/usr/bin/storescu", "-aet", "MODALITY", "-aec", "PACSCORE",
                               "127.0.0.1", str(ports["dimse"]), str(corpus / SR_BASIC)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: receiver.messages)
    assert "PID|1||P22" in receiver.messages[0]
    assert json.loads(cli("hl7", "outbox", "--archive", str(root), "--json")) == {
        "reports": []}


def test_a_bad_receiver_address_is_refused_at_start(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pacscore.cli", "serve", "--archive",
                           str(tmp_path / "a"), "--hl7-report-to", "nohostport"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "HL7 report receiver 'nohostport' is not HOST:PORT" in done.stderr


def test_an_enhanced_sr_is_sent_too(tmp_path: Path, corpus: Path) -> None:
    """Issue 16.5 names Basic, Enhanced and Comprehensive Text SR; the corpus has no
    Enhanced SR, so a Basic Text SR's content under the Enhanced SR class stands in."""
    import io
    import warnings

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(corpus / SR_BASIC)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    with warnings.catch_warnings():  # the file's Implementation Class UID ends in '.'
        warnings.simplefilter("ignore", UserWarning)
        ds.save_as(out, enforce_file_format=True)
    with Archive(tmp_path / "a") as archive, Receiver() as receiver, \
            sender(archive, receiver.port) as s:
        stored = archive.store(out.getvalue())
        wait_for(lambda: receiver.messages and not s.outbox.entries())
    (message,) = receiver.messages
    assert "ORU^R01" in message and "Oddział: sdadasdas" in message
    assert stored.sop_instance_uid in json.dumps(
        [json.loads(line) for line in (tmp_path / "a" / "audit" / "audit.jsonl")
         .read_text().splitlines()])


def test_a_folders_outbox_of_before_is_kept_when_the_index_becomes_shared(
        tmp_path: Path, postgres_dsn: str) -> None:
    """Reports queued in ``outbox.lmdb`` before the archive's index was PostgreSQL are
    still queued (and the ledger still knows what was sent) in the shared outbox."""
    pytest.importorskip("psycopg")
    from pacscore.index.postgres import PgIndex
    from pacscore.services.hl7.outbox import Outbox

    old = Outbox(tmp_path)
    queued = old.enqueue(["1.2.3", "1.2.4"], "127.0.0.1:1")
    old.sent(queued[0].key, "AA")
    old.close()
    index = PgIndex(postgres_dsn)
    try:
        shared = Outbox(tmp_path, index=index)
        assert shared.shared and shared.entries() == [queued[1]]
        assert shared.known("1.2.3")["what"] == "sent"  # type: ignore[index]
        assert shared.enqueue(["1.2.3", "1.2.5"], "127.0.0.1:1")[0].key == "000000000003"
    finally:
        index.close()
