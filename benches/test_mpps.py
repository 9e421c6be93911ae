"""MPPS latency (issue 16.3): N-CREATE (IN PROGRESS, starts its scheduled step) and
N-SET (COMPLETED, completes it) through pynetdicom's SCU on one association, against
a worklist of 1,000 scheduled steps (smoke run: 100), with fsync on: each answer
waits for its LMDB commit.  Baseline: a C-ECHO round trip on the same association
(the protocol's floor), interleaved round by round; ratio = echo p50 / request p50.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import benchlib
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    Verification,
)

from pacscore import Archive
from pacscore.config import ArchiveConfig
from pacscore.services.auth.security import AeRegistry
from pacscore.services.dimse.server import DimseServer
from pacscore.testing import free_port
from pacscore.workflow import item_from_pairs

MPPS = ModalityPerformedProcedureStep


def _creation(n: int, study: str) -> Dataset:
    ds, item = Dataset(), Dataset()
    item.StudyInstanceUID = study
    item.AccessionNumber = f"ACC{n:06d}"
    item.ScheduledProcedureStepID = f"SPS{n:06d}"
    item.RequestedProcedureID = ""
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName, ds.PatientID = f"PATIENT^{n}", f"P{n:06d}"
    ds.PerformedProcedureStepID = f"PPS{n}"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20250101", "0800"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    return ds


def _completion() -> Dataset:
    ds, series = Dataset(), Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = "20250101", "0900"
    series.SeriesInstanceUID = generate_uid()
    series.ProtocolName = "CHEST"
    ds.PerformedSeriesSequence = [series]
    return ds


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smoke: bool) -> Iterator[dict[str, Any]]:
    n = 100 if smoke else 1000
    root = tmp_path_factory.mktemp("mpps-bench")
    archive = Archive(root / "archive", ArchiveConfig(fsync=True))
    studies = []
    for i in range(n):
        studies.append(generate_uid())
        archive.worklist.add(item_from_pairs([
            f"PatientID=P{i:06d}", f"AccessionNumber=ACC{i:06d}", "Modality=CT",
            f"ScheduledProcedureStepID=SPS{i:06d}", "ScheduledStationAETitle=CT1",
            f"StudyInstanceUID={studies[-1]}"]))
    AeRegistry(archive.root).add("MODALITY", "127.0.0.1")
    srv = DimseServer(archive, ae_title="PACSCORE")
    port = free_port()
    srv.start("127.0.0.1", port)
    try:
        yield {"n": n, "port": port, "studies": studies, "archive": archive}
    finally:
        srv.stop()
        archive.close()


def test_mpps_create_and_set_latency(benchmark: Any, server: dict[str, Any],
                                     smoke: bool) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MPPS)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server["port"], ae_title="PACSCORE")
    assert assoc.is_established
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rounds = 10 if smoke else min(300, server["n"])
    creates, sets, echoes = [], [], []
    uids: list[str] = []

    def timed(fn: Any, into: list[float]) -> Any:
        t = time.perf_counter()
        out = fn()
        into.append(time.perf_counter() - t)
        return out

    def pair() -> None:
        i = len(uids)
        uids.append(generate_uid())
        timed(assoc.send_c_echo, echoes)
        status, _ = timed(lambda: assoc.send_n_create(
            _creation(i, server["studies"][i]), MPPS, uids[-1]), creates)
        assert status.Status == 0x0000
        status, _ = timed(lambda: assoc.send_n_set(_completion(), MPPS, uids[-1]), sets)
        assert status.Status == 0x0000

    try:
        benchmark.pedantic(pair, rounds=rounds, iterations=1)
    finally:
        assoc.release()
    create, update, echo = (benchlib.median(x) for x in (creates, sets, echoes))
    n = server["n"]
    benchlib.report(benchmark, f"MPPS N-CREATE p50 ({n} steps, fsync)",
                    subject=f"{create * 1e3:.2f} ms", baseline=f"C-ECHO {echo * 1e3:.2f} ms",
                    ratio=echo / create,
                    note=f"p95 {benchlib.percentile(creates, 95) * 1e3:.2f} ms")
    benchlib.report(benchmark, f"MPPS N-SET COMPLETED p50 ({n} steps, fsync)",
                    subject=f"{update * 1e3:.2f} ms", baseline=f"C-ECHO {echo * 1e3:.2f} ms",
                    ratio=echo / update, key="set_ratio",
                    note=f"p95 {benchlib.percentile(sets, 95) * 1e3:.2f} ms")
    print(f"\nMPPS ({n} scheduled steps, fsync, {rounds} pairs): N-CREATE p50 "
          f"{create * 1e3:.2f} ms, N-SET p50 {update * 1e3:.2f} ms, C-ECHO p50 "
          f"{echo * 1e3:.2f} ms")
