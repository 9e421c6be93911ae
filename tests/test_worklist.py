"""The Modality Worklist (issue 16.2, 16.7): the API's matching (PS3.4 K.6, C.2.2.2),
the CLI, crash safety of add, and the C-FIND SCP against pynetdicom's SCU (refusals
of identifiers with keys of a wrong VR leave the association and the server up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from pacscore import Archive
from pacscore.config import ArchiveConfig
from pacscore.errors import InvalidRequestError, NotFoundError
from pacscore.kinds import StepStatus
from pacscore.services.auth.security import AeRegistry
from pacscore.services.dimse.server import DimseServer
from pacscore.testing import free_port
from pacscore.workflow import Worklist, item_from_pairs


def step(pid: str, name: str, acc: str, station: str, modality: str, date: str,
         time_: str, sps_id: str = "") -> Dataset:
    return item_from_pairs([f"PatientID={pid}", f"PatientName={name}", f"AccessionNumber={acc}",
                            f"ScheduledStationAETitle={station}", f"Modality={modality}",
                            f"ScheduledProcedureStepStartDate={date}",
                            f"ScheduledProcedureStepStartTime={time_}",
                            f"ScheduledProcedureStepID={sps_id or acc}"])


STEPS = [
    step("P1", "DOE^JANE", "A1", "CT1", "CT", "20250101", "080000"),
    step("P2", "Doe^John", "A2", "CT1\\CT2", "CT", "20250101", "170000"),
    step("P3", "SMITH^ANNA", "A3", "MR1", "MR", "20250102", "090000"),
    step("P4", "SMYTHE^BOB", "A4", "MR1", "MR", "20250103", "230000"),
]


def query(top: dict[str, str] | None = None, **sps: str) -> Dataset:
    q = Dataset()
    q.PatientName = ""
    q.AccessionNumber = ""
    for k, v in (top or {}).items():
        setattr(q, k, v)
    item = Dataset()
    for k in ("ScheduledStationAETitle", "Modality", "ScheduledProcedureStepStartDate",
              "ScheduledProcedureStepStartTime"):
        setattr(item, k, sps.get(k, ""))
    q.ScheduledProcedureStepSequence = [item]
    return q


@pytest.fixture()
def worklist(tmp_path: Path, workflow_index: str | None) -> Iterator[Worklist]:
    with Archive(tmp_path / "a", ArchiveConfig(fsync=False), index=workflow_index) as archive:
        for s in STEPS:
            archive.worklist.add(s)
        yield archive.worklist


def accessions(wl: Worklist, q: Dataset) -> list[str]:
    return [str(r.AccessionNumber) for _, r in wl.find(q)]


@pytest.mark.parametrize(("q", "expected"), [
    (query(), ["A1", "A2", "A3", "A4"]),  # universal
    (query(ScheduledStationAETitle="CT2"), ["A2"]),  # one of a multi-valued AE
    (query(ScheduledStationAETitle="CT*"), ["A1", "A2"]),  # wildcard
    (query(Modality="MR"), ["A3", "A4"]),
    (query(ScheduledProcedureStepStartDate="20250102-"), ["A3", "A4"]),  # open range
    (query(ScheduledProcedureStepStartDate="-20250101"), ["A1", "A2"]),
    (query(ScheduledProcedureStepStartDate="20250101", ScheduledProcedureStepStartTime="1200-"),
     ["A2"]),
    # combined date-time range (C.2.2.2.5.1): 1 Jan 12:00 to 3 Jan 10:00
    (query(ScheduledProcedureStepStartDate="20250101-20250103",
           ScheduledProcedureStepStartTime="1200-1000"), ["A2", "A3"]),
    (query({"PatientName": "doe*"}), ["A1", "A2"]),  # PN without regard to case
    (query({"PatientName": "SM?TH^*"}), ["A3"]),
    (query({"AccessionNumber": "A4"}), ["A4"]),
    (query({"PatientID": "P3"}, Modality="CT"), []),  # every key must match
])
def test_matching(worklist: Worklist, q: Dataset, expected: list[str]) -> None:
    assert accessions(worklist, q) == expected


def test_answers_hold_the_requested_keys_zero_length_when_absent(worklist: Worklist) -> None:
    q = query({"PatientBirthDate": ""}, ScheduledStationAETitle="MR1")
    answers = [r for _, r in worklist.find(q)]
    assert len(answers) == 2
    first = answers[0]
    assert set(first.dir()) == {"AccessionNumber", "PatientBirthDate", "PatientName",
                                "ScheduledProcedureStepSequence"}
    assert not first.PatientBirthDate and str(first.PatientName) == "SMITH^ANNA"
    sps = first.ScheduledProcedureStepSequence[0]
    assert set(sps.dir()) == {"ScheduledStationAETitle", "Modality",
                              "ScheduledProcedureStepStartDate",
                              "ScheduledProcedureStepStartTime"}
    # an empty sequence key asks for the whole sequence (C.2.2.2.6)
    q2 = Dataset()
    q2.AccessionNumber = "A3"
    q2.ScheduledProcedureStepSequence = []
    (_, whole), = worklist.find(q2)
    assert whole.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == "A3"


def test_cancelled_items_are_not_listed_and_the_index_stays_consistent(
        worklist: Worklist) -> None:
    assert worklist.cancel("A1", by="test") == [worklist.lookup("A1")[0]]
    assert accessions(worklist, query()) == ["A2", "A3", "A4"]
    assert accessions(worklist, query(ScheduledStationAETitle="CT1")) == ["A2"]
    with pytest.raises(NotFoundError):
        worklist.cancel("A1")  # nothing scheduled left under it
    key = worklist.lookup("A3")[0]
    worklist.set_status([key], StepStatus.COMPLETED)
    assert accessions(worklist, query()) == ["A2", "A4"]
    assert [i.status for i in worklist.items()] == [
        StepStatus.CANCELLED, StepStatus.SCHEDULED, StepStatus.COMPLETED, StepStatus.SCHEDULED]
    assert worklist.check() == []


def test_keys_of_a_wrong_vr_and_bad_ranges_are_refused(worklist: Worklist) -> None:
    q = query()
    q.add_new(0x00100020, "US", 5)  # Patient ID is LO
    with pytest.raises(InvalidRequestError, match="PatientID"):
        list(worklist.find(q))
    with warnings.catch_warnings():  # pydicom warns about the value it keeps
        warnings.simplefilter("ignore")
        bad_date = query(ScheduledProcedureStepStartDate="2025-01-01x")
    with pytest.raises(InvalidRequestError, match="not a DA"):
        list(worklist.find(bad_date))
    with pytest.raises(InvalidRequestError):
        worklist.add(Dataset())  # no SPS


CRASH = """
import sys
from pathlib import Path
from pacscore.workflow import Worklist, item_from_pairs
index = None
if len(sys.argv) > 2:  # the worklist of a PostgreSQL index
    from pacscore.index.postgres import PgIndex
    index = PgIndex(sys.argv[2])
wl = Worklist(Path(sys.argv[1]), index=index)
n = 0
while True:
    wl.add(item_from_pairs([f"AccessionNumber=K{n}", "Modality=CT", f"PatientID=P{n % 7}",
                            "ScheduledStationAETitle=CT1"]))
    n += 1
    if n == 20:
        print("ready", flush=True)
"""


def test_add_is_whole_or_absent_after_kill_9(tmp_path: Path,
                                            workflow_index: str | None) -> None:
    """Killed in the middle of adding items (LMDB: its write transaction; PostgreSQL: a
    front end gone mid-transaction, rolled back by the server): every item is whole."""
    index = None
    if workflow_index is not None:
        from pacscore.index.postgres import PgIndex

        index = PgIndex(workflow_index)
    for delay in (0.0, 0.05, 0.2):
        with subprocess.Popen([sys.executable, "-c", CRASH, str(tmp_path),
                               *([workflow_index] if workflow_index else [])],
                              stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        wl = Worklist(tmp_path, index=index)
        try:
            assert wl.check() == []
            n = len(wl)
            keys = [i.key for i in wl.items()]
            assert keys == sorted(keys) and len(keys) == n
            assert all(i.dataset.AccessionNumber.startswith("K") for i in wl.items())
        finally:
            wl.close()
    if index is not None:
        index.close()


def pycli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacscore.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_add_list_cancel_and_audit(tmp_path: Path) -> None:
    archive = str(tmp_path / "a")
    item = tmp_path / "item.dcm"
    STEPS[2].save_as(item, implicit_vr=False, little_endian=True)
    added = pycli("worklist", "add", str(item), "--archive", archive)
    assert added.returncode == 0, added.stderr
    pairs = pycli("worklist", "add", "PatientName=DOE^JANE", "AccessionNumber=ACC9",
                  "Modality=US", "ScheduledStationAETitle=US1", "--archive", archive)
    assert pairs.returncode == 0, pairs.stderr
    listed = json.loads(pycli("worklist", "list", "--json", "--archive", archive).stdout)
    assert [(r["accession"], r["station"], r["modality"]) for r in listed["items"]] == [
        ("A3", "MR1", "MR"), ("ACC9", "US1", "US")]
    assert pycli("worklist", "cancel", "ACC9", "--archive", archive).returncode == 0
    missing = pycli("worklist", "cancel", "NOPE", "--archive", archive)
    assert missing.returncode == 1 and "NOPE" in missing.stdout
    text = pycli("worklist", "list", "--archive", archive).stdout
    assert "A3" in text and "ACC9" not in text
    assert "cancelled" in pycli("worklist", "list", "--all", "--archive", archive).stdout
    bad = pycli("worklist", "add", "Nonsense=1", "--archive", archive)
    assert bad.returncode == 2 and "keyword" in bad.stderr
    audit = [json.loads(line) for line in
             (tmp_path / "a" / "audit" / "audit.jsonl").read_text().splitlines()]
    procedure = [(e["action"], e["detail"]) for e in audit
                 if e["event_id"]["code"] == "110111"]
    assert [a for a, _ in procedure] == ["C", "C", "U"]
    assert "DOE" not in json.dumps(audit)  # no patient names in the audit trail


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[DimseServer, int]]:
    archive = Archive(tmp_path / "srv", ArchiveConfig(fsync=False))
    for s in STEPS:
        archive.worklist.add(s)
    AeRegistry(archive.root).add("MODALITY", "127.0.0.1")
    AeRegistry(archive.root).add("VIEWER", "127.0.0.1", rights=("echo", "find"))
    srv = DimseServer(archive, ae_title="PACSCORE")
    port = free_port()
    srv.start("127.0.0.1", port)
    try:
        yield srv, port
    finally:
        srv.stop()
        archive.close()


def c_find(assoc: object, q: Dataset) -> list[tuple[int, Dataset | None]]:
    out = []
    for status, ds in assoc.send_c_find(q, ModalityWorklistInformationFind):  # type: ignore[attr-defined]
        out.append((int(status.Status), ds if ds is not None else status))
    return out


def test_scp_answers_and_refuses_wrong_vr_on_the_same_association(
        server: tuple[DimseServer, int]) -> None:
    srv, port = server
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
    assert assoc.is_established
    try:
        answers = c_find(assoc, query(ScheduledStationAETitle="MR1"))
        assert [s for s, _ in answers] == [0xFF00, 0xFF00, 0x0000]
        assert [str(d.AccessionNumber) for s, d in answers[:2]] == ["A3", "A4"]
        bad = query()
        bad.ScheduledProcedureStepSequence[0].add_new(0x00400002, "US", 7)  # DA key as US
        (status, final), = c_find(assoc, bad)
        assert status == 0xA900 and "ScheduledProcedureStepStartDate" in final.ErrorComment
        assert assoc.is_established
        again = c_find(assoc, query({"AccessionNumber": "A1"}))
        assert [s for s, _ in again] == [0xFF00, 0x0000]
    finally:
        assoc.release()
    audit = [json.loads(line) for line in srv.audit.path.read_text().splitlines()]
    details = [e.get("detail", "") for e in audit if e["event_id"]["code"] == "110112"]
    assert details[0] == "worklist, 2 matches" and "0xA900" in details[1]


def test_scp_needs_the_worklist_right(server: tuple[DimseServer, int]) -> None:
    _, port = server
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
    try:
        (status, _), = c_find(assoc, query())
        assert status == 0x0124
    finally:
        assoc.release()


def test_old_message_answers_are_forgotten_recent_ones_kept(worklist: Worklist,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The HL7 dedup table does not grow without end: answers older than the cut are
    dropped (also those recorded before answers had a time), newer ones still answer a
    resend."""
    clock = [1_000_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    worklist.change(lambda c: [c.remember(f"RIS^H\0old{i}", b"MSH|old") for i in range(25)])
    worklist.change(lambda c: c.txn.put(b"legacy", b"MSH|legacy", db=c.dbs[b"message"]))
    clock[0] += 40 * 86400
    worklist.change(lambda c: c.remember("RIS^H\0new", b"MSH|new"))
    assert worklist.change(lambda c: c.answered("RIS^H\0old3")) == b"MSH|old"
    assert worklist.change(lambda c: c.answered("legacy")) == b"MSH|legacy"
    assert worklist.forget_messages(clock[0] - 30 * 86400, batch=7) == 26
    assert worklist.change(lambda c: (c.answered("RIS^H\0old3"), c.answered("legacy"),
                                      c.answered("RIS^H\0new"))) == (None, None, b"MSH|new")
    assert worklist.forget_messages(clock[0] - 30 * 86400) == 0


def test_a_group_commit_keeps_each_change_whole(worklist: Worklist) -> None:
    """change_many: one transaction for all, each change nested: the one that fails
    leaves nothing (not even what it wrote before failing), the others are kept."""
    before = len(worklist)

    def good(acc: str) -> Any:
        return lambda c: c.add(step("P9", "GROUP^ONE", acc, "CT1", "CT", "20250105", "080000"))

    def bad(c: Any) -> None:
        c.add(step("P9", "GROUP^ONE", "G-HALF", "CT1", "CT", "20250105", "080000"))
        raise InvalidRequestError("refused halfway")

    results = worklist.change_many([(good("G-1"), "t"), (bad, "t"), (good("G-2"), "t")])
    assert isinstance(results[1], InvalidRequestError)
    assert len(worklist) == before + 2
    assert worklist.lookup("G-HALF") == [] and len(worklist.lookup("G-1")) == 1
    assert worklist.check() == []


def test_index_read_from_the_item_is_the_index_of_what_is_read_back(tmp_path: Path) -> None:
    """Changes.add indexes a plain item (ASCII text, UIDs, person names) from the item
    itself instead of decoding its bytes again; the entries must be those of the bytes
    read back, and anything else (non-ASCII text in a character set, a date object)
    takes the decoding path."""
    import datetime

    from pydicom.uid import generate_uid
    from pydicom.valuerep import DA

    from pacscore.workflow.encoding import decode_dataset, encode_dataset, reads_back
    from pacscore.workflow.steps import IDENTIFIERS, INDEXED
    from pacscore.workflow.steps import entries as _entries

    plain = step("P7", "DOE^JANE", "X1", "CT1\\CT2", "CT", "20250101", "080000")
    plain.StudyInstanceUID = generate_uid()
    latin = step("P8", "MÜLLER^JÖRG", "X2", "CT1", "CT", "20250101", "080000")
    latin.SpecificCharacterSet = "ISO_IR 100"
    dated = step("P9", "ROE^RAY", "X3", "CT1", "CT", "20250101", "080000")
    dated.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = \
        DA(datetime.date(2025, 1, 2))
    tables = (IDENTIFIERS, INDEXED)
    assert reads_back(plain, tables)
    assert not reads_back(latin, tables) and not reads_back(dated, tables)
    back = decode_dataset(encode_dataset(plain))
    for table in (IDENTIFIERS, INDEXED):
        assert _entries(plain, table) == _entries(back, table)
    with Archive(tmp_path / "a", ArchiveConfig(fsync=False)) as archive:
        wl = archive.worklist
        for item in (plain, latin, dated):
            wl.add(item)
        assert wl.check() == []
        assert [str(r.AccessionNumber) for _, r in wl.find(query(
            ScheduledStationAETitle="CT2"))] == ["X1"]
        assert [str(r.AccessionNumber) for _, r in wl.find(query(
            ScheduledProcedureStepStartDate="20250102"))] == ["X3"]
        assert next(ids["study_uid"] for _, _, ids in wl.identities()) == \
            [str(plain.StudyInstanceUID)]


def test_a_folders_worklist_of_before_is_copied_once_to_a_shared_index(
        tmp_path: Path, postgres_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """An archive whose index becomes PostgreSQL keeps its worklist, performed steps and
    HL7 answers: the first front end copies its folder's ``workflow.lmdb`` into the
    database; a second folder's own history is not merged, and a warning says so."""
    pytest.importorskip("psycopg")
    from pacscore.index.postgres import PgIndex
    from pacscore.workflow import PerformedSteps

    from .test_mpps import creation

    old = Worklist(tmp_path / "a")
    keys = [old.add(s) for s in STEPS]
    study = "1.2.3.4"
    PerformedSteps(old).create("1.2.3.4.5", creation(study, "NONE", "NONE"))
    old.change(lambda c: c.remember("RIS^H\0M1", b"MSH|ack"))
    old.close()
    other = Worklist(tmp_path / "b")
    other.add(step("P8", "OTHER^ONE", "B1", "CT1", "CT", "20250101", "080000"))
    other.close()
    index = PgIndex(postgres_dsn)
    try:
        shared = Worklist(tmp_path / "a", index=index)
        assert shared.shared and [i.key for i in shared.items()] == keys
        assert accessions(shared, query()) == ["A1", "A2", "A3", "A4"]  # the index too
        assert shared.check() == [] and PerformedSteps(shared).check() == []
        assert PerformedSteps(shared).get("1.2.3.4.5").status == "IN PROGRESS"
        assert shared.change(lambda c: c.answered("RIS^H\0M1")) == b"MSH|ack"
        shared.close()
        with caplog.at_level("WARNING"):
            again = Worklist(tmp_path / "b", index=index)
        assert "not served" in caplog.text and str(tmp_path / "b") in caplog.text
        assert [i.key for i in again.items()] == keys  # nothing merged
        again.close()
    finally:
        index.close()


def test_cli_of_two_front_ends_folders_on_one_postgresql_index(tmp_path: Path,
                                                              postgres_dsn: str) -> None:
    """``pacscore worklist`` and ``pacscore patient`` with ``--index``: a step added and a
    correction made in one front end's folder are what another one's lists."""
    pytest.importorskip("psycopg")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    added = pycli("worklist", "add", "PatientID=PX", "AccessionNumber=ACC-X", "Modality=CT",
                  "ScheduledStationAETitle=CT1", "--archive", one, "--index", postgres_dsn)
    assert added.returncode == 0, added.stderr
    listed = pycli("worklist", "list", "--json", "--archive", two, "--index", postgres_dsn)
    assert [r["accession"] for r in json.loads(listed.stdout)["items"]] == ["ACC-X"]
    fixed = pycli("patient", "correct", "PX", "--name", "ROE^JANE", "--archive", two,
                  "--index", postgres_dsn)
    assert fixed.returncode == 0, fixed.stderr
    log = pycli("patient", "corrections", "--json", "--archive", one, "--index", postgres_dsn)
    assert [e["after"] for e in json.loads(log.stdout)["corrections"]] == [
        {"PatientName": "ROE^JANE"}]
    assert not (tmp_path / "one" / "workflow.lmdb").exists()


def test_a_correction_through_another_front_end_is_served_within_the_stamp_ttl(
        tmp_path: Path, postgres_dsn: str) -> None:
    """Two worklists on one PostgreSQL index (two front ends): the one that made a
    correction serves it at once; the other within STAMP_TTL seconds."""
    pytest.importorskip("psycopg")
    from pacscore.index.postgres import PgIndex
    from pacscore.workflow import corrections
    from pacscore.workflow.worklist import STAMP_TTL

    index = PgIndex(postgres_dsn)
    try:
        a, b = Worklist(tmp_path / "a", index=index), Worklist(tmp_path / "b", index=index)
        a.add(STEPS[0])
        assert not b.corrections()  # read (and trusted for STAMP_TTL) before the change
        a.change(lambda c: corrections.correct(c, "P1", {"PatientName": "ROE^JANE"}))
        assert a.corrections().served["P1"].values == {"PatientName": "ROE^JANE"}
        start = time.monotonic()
        while not b.corrections():
            assert time.monotonic() - start < STAMP_TTL + 0.5
            time.sleep(0.05)
        (item,) = b.items()
        assert str(item.dataset.PatientName) == "ROE^JANE"
    finally:
        index.close()
