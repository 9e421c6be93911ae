"""HL7 v2 over MLLP (issue 16.1): ``pacscore serve --hl7-port`` fed by real senders
(python-hl7's ``mllp_send``, node-hl7-client, raw sockets for broken framing), seen by
a modality through Modality Worklist C-FIND (pynetdicom)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from pacscore.services.auth.security import AeRegistry, SenderList
from pacscore.testing import serve_process
from pacscore.workflow import Worklist

SB, EB = b"\x0b", b"\x1c\r"
MLLP_SEND = shutil.which("mllp_send") or str(Path(sys.executable).parent / "mllp_send")
NODE_HL7 = Path(os.environ.get("PACSCORE_NODE_HL7", "/tmp/h7node/node_modules"))


def msh(ctrl: str, kind: str, charset: str = "", version: str = "2.3.1") -> str:
    return (f"MSH|^~\\&|RIS|HOSP|PACS|HOSP|20240101120000||{kind}|{ctrl}|P|{version}"
            + (f"||||||{charset}" if charset else ""))


def orm(ctrl: str, control: str = "NW", acc: str = "ACC1", pid: str = "P1",
        name: str = "DOE^JOHN", modality: str = "CT", station: str = "CT1",
        charset: str = "", status: str = "SC", extra: str = "") -> str:
    obr = [""] * 28
    obr[1], obr[2], obr[4] = "1", f"PO{acc}", "CTHEAD^CT Head"
    obr[18], obr[19], obr[20], obr[21] = acc, f"RP{acc}", f"SPS{acc}", station
    obr[24], obr[27] = modality, "^^^20240102093000"
    return "\r".join([msh(ctrl, "ORM^O01", charset),
                      f"PID|1||{pid}^^^HOSP||{name}||19700101|M",
                      f"ORC|{control}|PO{acc}|FO{acc}||{status}",
                      "OBR|" + "|".join(obr[1:]), *([extra] if extra else [])]) + "\r"


def adt(ctrl: str, event: str, pid: str, name: str = "DOE^JOHN", mrg: str = "") -> str:
    segs = [msh(ctrl, f"ADT^{event}"), f"EVN|{event}",
            f"PID|1||{pid}^^^HOSP||{name}||19700101|M"]
    return "\r".join(segs + ([f"MRG|{mrg}^^^HOSP"] if mrg else [])) + "\r"


def frame(text: str | bytes, encoding: str = "utf-8") -> bytes:
    data = text.encode(encoding) if isinstance(text, str) else text
    return SB + data + EB


_LEFT: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()
"""Bytes read past the last ACK, per socket."""


def read_ack(sock: socket.socket) -> bytes:
    """The next ACK on ``sock``; bytes read past it (the next ACKs, when the server's
    writes arrive together) are kept for the next call."""
    buf = _LEFT.pop(sock, b"")
    while EB not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {buf!r}")
        buf += chunk
    end = buf.index(EB) + len(EB)
    if buf[end:]:
        _LEFT[sock] = buf[end:]
    return buf[1:end - 2]


def msa(ack: bytes) -> tuple[str, str]:
    seg = next(s for s in ack.split(b"\r") if s.startswith(b"MSA")).decode().split("|")
    return seg[1], seg[2]


def err(ack: bytes) -> str:
    return next((s.decode() for s in ack.split(b"\r") if s.startswith(b"ERR")), "")


@contextlib.contextmanager
def server(archive: Path, env: dict[str, str] | None = None, *extra: str
           ) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    output: list[str] = []
    with serve_process(archive, *extra, doors=("dimse", "http", "grpc", "hl7"), env=env,
                       output=output) as (proc, ports):
        assert "HL7 (MLLP)" in output[-1]
        yield proc, ports


def prepared(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    SenderList(root).allow("127.0.0.1")
    AeRegistry(root).add("MODALITY", "127.0.0.1", rights=("worklist",))
    return root


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Path, dict[str, int], subprocess.Popen[str]]]:
    root = prepared(tmp_path_factory.mktemp("hl7") / "archive")
    with server(root, None, "--hl7-max-message", str(8 * 1024**2)) as (proc, ports):
        yield root, ports, proc


def mllp_send(port: int, tmp: Path, *messages: str, encoding: str = "utf-8") -> list[bytes]:
    """The messages through python-hl7's mllp_send; the ACKs it printed."""
    path = tmp / "messages.mllp"
    path.write_bytes(b"".join(frame(m, encoding) for m in messages))
    out = subprocess.run([MLLP_SEND, "-p", str(port), "-f", str(path), "127.0.0.1"],
                         capture_output=True, check=True, timeout=60).stdout
    return [a.strip(b"\n") for a in out.split(b"\n") if a.strip()]


def worklist(port: int, **keys: str) -> list[Dataset]:
    """Modality Worklist C-FIND as a modality sends it."""
    q = Dataset()
    q.PatientName = q.PatientID = q.AccessionNumber = q.StudyInstanceUID = ""
    q.RequestedProcedureID = q.PatientSex = ""
    sps = Dataset()
    sps.Modality = sps.ScheduledStationAETitle = sps.ScheduledProcedureStepID = ""
    sps.ScheduledProcedureStepStartDate = sps.ScheduledProcedureStepStartTime = ""
    q.ScheduledProcedureStepSequence = [sps]
    for k, v in keys.items():
        setattr(q, k, v)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
    assert assoc.is_established
    try:
        found = [ds for status, ds in assoc.send_c_find(q, ModalityWorklistInformationFind)
                 if ds is not None and int(status.Status) == 0xFF00]
    finally:
        assoc.release()
    return found


def test_orders_new_change_cancel_through_mllp_send(running: tuple[Path, dict[str, int],
                                                    subprocess.Popen[str]],
                                                    tmp_path: Path) -> None:
    _, ports, _ = running
    acks = mllp_send(ports["hl7"], tmp_path, orm("O-1", acc="A100"))
    assert msa(acks[0]) == ("AA", "O-1")
    (step,) = worklist(ports["dimse"], AccessionNumber="A100")
    sps = step.ScheduledProcedureStepSequence[0]
    assert (step.PatientID, str(step.PatientName), step.RequestedProcedureID) == \
        ("P1", "DOE^JOHN", "RPA100")
    assert (sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledProcedureStepID,
            sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == \
        ("CT", "CT1", "SPSA100", "20240102", "093000")
    uid = step.StudyInstanceUID
    # XO changes it (modality, station), keeps the Study Instance UID
    acks = mllp_send(ports["hl7"], tmp_path, orm("O-2", "XO", acc="A100", modality="MR",
                                                   station="MR1"))
    assert msa(acks[0]) == ("AA", "O-2")
    (step,) = worklist(ports["dimse"], AccessionNumber="A100")
    assert step.ScheduledProcedureStepSequence[0].Modality == "MR"
    assert step.StudyInstanceUID == uid
    # NW again for the same order: AE 205
    (dup,) = mllp_send(ports["hl7"], tmp_path, orm("O-3", acc="A100"))
    assert msa(dup)[0] == "AE" and "|205^" in err(dup)
    # CA cancels it: gone from the worklist; a resend of the CA gets the same ACK
    first = mllp_send(ports["hl7"], tmp_path, orm("O-4", "CA", acc="A100"))
    assert msa(first[0]) == ("AA", "O-4")
    assert worklist(ports["dimse"], AccessionNumber="A100") == []
    assert mllp_send(ports["hl7"], tmp_path, orm("O-4", "CA", acc="A100")) == first
    # a cancel for an unknown order: AE 204 naming it
    (unknown,) = mllp_send(ports["hl7"], tmp_path, orm("O-5", "CA", acc="NOPE"))
    assert msa(unknown)[0] == "AE" and "|204^" in err(unknown) and "NOPE" in err(unknown)


def test_resend_of_a_control_id_makes_one_step(running: tuple[Path, dict[str, int],
                                               subprocess.Popen[str]], tmp_path: Path) -> None:
    _, ports, _ = running
    acks = mllp_send(ports["hl7"], tmp_path, *[orm("R-1", acc="A200")] * 3)
    assert len(acks) == 3 and acks[0] == acks[1] == acks[2] and msa(acks[0])[0] == "AA"
    assert len(worklist(ports["dimse"], AccessionNumber="A200")) == 1


def test_adt_update_and_merge(running: tuple[Path, dict[str, int], subprocess.Popen[str]],
                              tmp_path: Path) -> None:
    root, ports, _ = running
    acks = mllp_send(ports["hl7"], tmp_path, orm("M-1", acc="A300", pid="P300"),
                     adt("M-2", "A08", "P300", "SMITH^JANE"), adt("M-3", "A01", "P301", "ROE^RICK"))
    assert [msa(a)[0] for a in acks] == ["AA", "AA", "AA"]
    (step,) = worklist(ports["dimse"], AccessionNumber="A300")
    assert str(step.PatientName) == "SMITH^JANE"
    refused = mllp_send(ports["hl7"], tmp_path, adt("M-4", "A40", "P300", mrg="P300"),
                        adt("M-5", "A40", "NOBODY", mrg="P300"),
                        adt("M-6", "A40", "P301", mrg="NOBODY"))
    assert [(msa(a)[0], err(a).split("|")[3][:3]) for a in refused] == \
        [("AE", "205"), ("AE", "204"), ("AE", "204")]
    assert "MRG^1^1" in err(refused[0]) and "PID^1^3" in err(refused[1])
    (merged,) = mllp_send(ports["hl7"], tmp_path, adt("M-7", "A40", "P301", mrg="P300"))
    assert msa(merged)[0] == "AA"
    (step,) = worklist(ports["dimse"], AccessionNumber="A300")
    assert (step.PatientID, str(step.PatientName)) == ("P301", "ROE^RICK")
    audit = (root / "audit" / "audit.jsonl").read_text()
    assert "M-7" in audit and "ROE" not in audit and "SMITH" not in audit


def test_character_sets(running: tuple[Path, dict[str, int], subprocess.Popen[str]],
                        tmp_path: Path) -> None:
    _, ports, _ = running
    latin = mllp_send(ports["hl7"], tmp_path, orm("C-1", acc="A400", name="MÜLLER^JÜRGEN",
                                                    charset="8859/1"), encoding="latin-1")
    utf8 = mllp_send(ports["hl7"], tmp_path, orm("C-2", acc="A401", name="ΑΘΗΝΑ^Δ\\S\\X",
                                                   charset="UNICODE UTF-8"))
    undeclared = mllp_send(ports["hl7"], tmp_path, orm("C-3", acc="A402", name="MÜLLER"),
                           encoding="latin-1")
    assert msa(latin[0])[0] == msa(utf8[0])[0] == "AA"
    assert msa(undeclared[0])[0] == "AR" and "MSH^1^18" in err(undeclared[0])
    (a,) = worklist(ports["dimse"], AccessionNumber="A400")
    (b,) = worklist(ports["dimse"], AccessionNumber="A401")
    assert str(a.PatientName) == "MÜLLER^JÜRGEN"
    assert str(b.PatientName) == "ΑΘΗΝΑ^Δ^X"  # \S\ is the escaped component separator


def test_bad_framing_and_messages_leave_the_connection_up(
        running: tuple[Path, dict[str, int], subprocess.Popen[str]]) -> None:
    _, ports, _ = running
    with socket.create_connection(("127.0.0.1", ports["hl7"]), timeout=30) as s:
        cases = [
            (b"garbage\r\n" + frame(orm("B-1", acc="A500")), "AA", ""),
            (orm("B-2", acc="A501").encode() + EB, "AR", "|100^"),  # no start block
            (frame("PID|1||X\r"), "AR", "|100^"),  # no MSH
            (frame(orm("B-3", acc="A502").replace("|2.3.1", "|9.9")), "AR", "|203^"),
            (frame(orm("B-4").replace("MSH|^~\\&|", "MSH|^^^^|")), "AR", "|102^"),
            (frame(orm("B-5").replace("ORM^O01", "XYZ^Q99")), "AR", "|200^"),
            (frame(orm("B-6").replace("ORM^O01", "ORM^O02")), "AR", "|201^"),
            (SB + orm("B-7").encode()[:40] + frame(orm("B-8", acc="A503")), "AA", ""),
        ]
        for data, code, error in cases:
            s.sendall(data)
            ack = read_ack(s)
            assert msa(ack)[0] == code, (data[:60], ack)
            assert error in err(ack), ack
    assert len(worklist(ports["dimse"], AccessionNumber="A50*")) == 2


def test_large_message_and_one_over_the_limit(
        running: tuple[Path, dict[str, int], subprocess.Popen[str]]) -> None:
    _, ports, proc = running
    big = "OBX|1|ED|PDF^Report||^AP^PDF^Base64^" + "QUJD" * (6 * 1024**2 // 4)
    with socket.create_connection(("127.0.0.1", ports["hl7"]), timeout=60) as s:
        s.sendall(frame(orm("L-1", acc="A600", extra=big)))
        assert msa(read_ack(s)) == ("AA", "L-1")
        s.sendall(frame(orm("L-2", acc="A601", extra=big + big)))  # 12 MB > 8 MiB
        ack = read_ack(s)
        assert msa(ack) == ("AR", "L-2") and "longer than" in err(ack)
        assert s.recv(10) == b""  # closed cleanly after the message was read
    assert len(worklist(ports["dimse"], AccessionNumber="A60*")) == 1
    assert proc.poll() is None


def test_hosts_not_allowed_are_closed(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    with server(root) as (_, ports), \
            socket.create_connection(("127.0.0.1", ports["hl7"]), timeout=10) as s:
        s.sendall(frame(orm("X-1")))
        with contextlib.suppress(ConnectionResetError):  # closed, never answered
            assert s.recv(10) == b""
    audit = (root / "audit" / "audit.jsonl").read_text()
    assert "110113" in audit and "not allowed" in audit


def test_kill_between_commit_and_ack_then_resend_makes_one_step(tmp_path: Path) -> None:
    root = prepared(tmp_path / "archive")
    message = frame(orm("K-1", acc="A700"))
    env = {"PACSCORE_TEST_HL7_KILL_AFTER_COMMIT": "1"}
    with server(root, env) as (proc, ports):
        with socket.create_connection(("127.0.0.1", ports["hl7"]), timeout=30) as s:
            s.sendall(message)
            assert s.recv(10) == b""  # no ACK: the server died after its commit
        assert proc.wait(timeout=30) == -signal.SIGKILL
    with server(root) as (_, ports):
        with socket.create_connection(("127.0.0.1", ports["hl7"]), timeout=30) as s:
            s.sendall(message)
            assert msa(read_ack(s)) == ("AA", "K-1")
        assert len(worklist(ports["dimse"], AccessionNumber="A700")) == 1


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


@pytest.mark.slow
def test_flood_of_10000_messages_on_one_connection(tmp_path: Path) -> None:
    root = prepared(tmp_path / "archive")
    count = 10_000
    with server(root) as (proc, ports):
        with socket.create_connection(("127.0.0.1", ports["hl7"]), timeout=120) as s:
            def send() -> None:  # all at once: the server must hold back, not buffer
                for i in range(count):
                    s.sendall(frame(orm(f"F-{i}", acc=f"F{i:05d}")))
            sender = threading.Thread(target=send)
            sender.start()
            rss = []
            acks = []
            for i in range(count):
                acks.append(msa(read_ack(s)))
                if i % 2000 == 0:
                    rss.append(_rss_kib(proc.pid))
            sender.join()
        assert acks == [("AA", f"F-{i}") for i in range(count)]
        assert max(rss) - rss[0] < 100 * 1024, rss  # KiB: bounded, not per message
    steps = Worklist(root, readonly=True)
    try:
        assert len(steps) == count and steps.check() == []
    finally:
        steps.close()


@pytest.mark.skipif(not shutil.which("node") or not (NODE_HL7 / "node-hl7-client").is_dir(),
                    reason="node or node-hl7-client not installed (npm install "
                           "node-hl7-client in /tmp/h7node or set PACSCORE_NODE_HL7)")
def test_node_hl7_client_sends_an_adt_update(
        running: tuple[Path, dict[str, int], subprocess.Popen[str]], tmp_path: Path) -> None:
    _, ports, _ = running
    assert msa(mllp_send(ports["hl7"], tmp_path, orm("N-1", acc="A800", pid="P800"))[0])[0] \
        == "AA"
    script = """
const { Client, HL7_2_5 } = require("node-hl7-client");
const b = new HL7_2_5();
b.buildMSH({ msh_3: "NODE", msh_4: "HOSP", msh_5: "PACS", msh_6: "HOSP",
             msh_9_1: "ADT", msh_9_2: "A08", msh_10: "N-2", msh_11_1: "P" });
b.buildEVN({ evn_1: "A08" });
b.buildPID({ pid_3: "P800", pid_5: "NODE^NORA", pid_8: "F" });
const client = new Client({ host: "127.0.0.1", version: "2.5" });
const conn = client.createConnection({ port: Number(process.argv[1]) }, async (res) => {
  console.log(JSON.stringify({"msa": res.getMessage().get("MSA.1").toString()}).replace(":", ": "));
  await conn.close(); process.exit(0);
});
conn.sendMessage(b.toMessage());
setTimeout(() => { console.log("timeout"); process.exit(1); }, 20000);
"""
    out = subprocess.run(["node", "-e", script, str(ports["hl7"])], capture_output=True,
                         check=False,
                         text=True, timeout=60, env={**os.environ, "NODE_PATH": str(NODE_HL7)})
    assert out.stdout.strip().splitlines()[-1:] == [json.dumps({"msa": "AA"})], out
    (step,) = worklist(ports["dimse"], AccessionNumber="A800")
    assert str(step.PatientName) == "NODE^NORA" and step.PatientSex == "F"
