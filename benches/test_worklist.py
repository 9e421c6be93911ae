"""Modality Worklist C-FIND latency (issue 16.2) with 10,000 scheduled steps (smoke run
with --benchmark-disable: 1,000), next to DCMTK's wlmscpfs on the same items.

Steps are spread over 100 station AE titles and 30 days; the query is what a modality
sends each morning: its station AE title and today's date, with the usual return keys
(one answer per 2,500 steps).

* pacscore p50 through pynetdicom's SCU on one association (target 10 ms): ratio =
  10 ms / p50;
* pacscore p50 through /usr/bin/findscu including its process start (target 100 ms):
  ratio = 100 ms / p50;
* the same findscu query against wlmscpfs on the same items in the same run: ratio =
  wlmscpfs p50 / pacscore p50 (> 1: pacscore faster).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from pacscore import Archive
from pacscore.config import ArchiveConfig
from pacscore.services.auth.security import AeRegistry
from pacscore.services.dimse.server import DimseServer
from pacscore.testing import free_port
from pacscore.workflow import item_from_pairs

BIN = Path("/usr/bin")
STATIONS, DAYS = 100, 30
KEYS = ["PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
        "0040,0100[0].Modality", "0040,0100[0].ScheduledStationAETitle=ST042",
        "0040,0100[0].ScheduledProcedureStepStartDate=20250105",
        "0040,0100[0].ScheduledProcedureStepStartTime",
        "0040,0100[0].ScheduledProcedureStepID"]
ROUNDS = 30


def _item(n: int) -> Dataset:
    return item_from_pairs([
        f"PatientName=PATIENT^{n}", f"PatientID=P{n:06d}", f"AccessionNumber=ACC{n:07d}",
        "Modality=CT", f"ScheduledStationAETitle=ST{n % STATIONS:03d}",
        f"ScheduledProcedureStepStartDate=202501{1 + (n // STATIONS) % DAYS:02d}",
        f"ScheduledProcedureStepStartTime={8 + n % 10:02d}0000",
        f"ScheduledProcedureStepID=SPS{n:07d}", f"RequestedProcedureID=RP{n}"])


def _query() -> Dataset:
    q = Dataset()
    for kw in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID"):
        setattr(q, kw, "")
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = "ST042"
    sps.ScheduledProcedureStepStartDate = "20250105"
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    q.ScheduledProcedureStepSequence = [sps]
    return q


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory, smoke: bool) -> Iterator[dict[str, Any]]:
    if not (BIN / "wlmscpfs").exists():
        pytest.skip("DCMTK not installed")
    n = 1000 if smoke else 10_000
    root = tmp_path_factory.mktemp("mwl-bench")
    db = root / "wlistdb" / "PACSCORE"
    db.mkdir(parents=True)
    (db / "lockfile").touch()
    archive = Archive(root / "archive", ArchiveConfig(fsync=False))
    for i in range(n):
        item = _item(i)
        archive.worklist.add(item)
        item.save_as(db / f"{i:06d}.wl", implicit_vr=False, little_endian=True)
    AeRegistry(archive.root).add("FINDSCU", "127.0.0.1")
    server = DimseServer(archive, ae_title="PACSCORE")
    ours, theirs = free_port(), free_port()
    server.start("127.0.0.1", ours)
    wlm = subprocess.Popen([str(BIN / "wlmscpfs"), "-q", "-dfp", str(root / "wlistdb"),
                            "-dfr", "-s", str(theirs)])
    time.sleep(0.5)
    try:
        yield {"n": n, "ours": ours, "theirs": theirs}
    finally:
        wlm.terminate()
        wlm.wait(10)
        server.stop()
        archive.close()


def _findscu(port: int) -> int:
    out = subprocess.run([str(BIN / "findscu"), "-W", "-aec", "PACSCORE", "127.0.0.1",
                          str(port), *[a for k in KEYS for a in ("-k", k)]],
                         capture_output=True, text=True, check=True)
    return out.stderr.count("Find Response:") + out.stdout.count("Find Response:")


def _p50(fn: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return benchlib.median(times)


def test_worklist_find_latency(benchmark: Any, peers: dict[str, Any], smoke: bool) -> None:
    rounds = 3 if smoke else ROUNDS
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", peers["ours"], ae_title="PACSCORE")
    assert assoc.is_established
    # the SCU's own socket: without TCP_NODELAY each request waits for a delayed ACK
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    query = _query()

    def scu() -> int:
        return sum(1 for s, ds in assoc.send_c_find(query, ModalityWorklistInformationFind)
                   if ds is not None and s.Status == 0xFF00)

    try:
        answers = scu()
        assert answers > 0
        benchmark.pedantic(scu, rounds=rounds, iterations=1)
        scu_p50 = _p50(scu, rounds)
    finally:
        assoc.release()
    ours = _p50(lambda: _findscu(peers["ours"]), rounds)
    theirs = _p50(lambda: _findscu(peers["theirs"]), rounds)
    n = peers["n"]
    benchlib.report(benchmark, f"worklist C-FIND p50, {n} steps, pynetdicom SCU",
                    subject=f"{scu_p50 * 1e3:.2f} ms", baseline="10 ms target",
                    ratio=0.010 / scu_p50, target=">= 1", note=f"{answers} answers")
    benchlib.report(benchmark, f"worklist C-FIND p50, {n} steps, findscu incl. start",
                    subject=f"{ours * 1e3:.1f} ms", baseline="100 ms target",
                    ratio=0.100 / ours, target=">= 1", key="findscu_ratio")
    benchlib.report(benchmark, f"worklist C-FIND p50, {n} steps, vs wlmscpfs",
                    subject=f"pacscore {ours * 1e3:.1f} ms",
                    baseline=f"wlmscpfs {theirs * 1e3:.1f} ms", ratio=theirs / ours,
                    target="> 1 (faster)", key="vs_wlmscpfs")
    print(f"\nworklist {n} steps: SCU p50 {scu_p50 * 1e3:.2f} ms, findscu p50 "
          f"{ours * 1e3:.1f} ms, wlmscpfs findscu p50 {theirs * 1e3:.1f} ms")
