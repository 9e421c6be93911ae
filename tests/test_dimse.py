"""The DIMSE service against real DCMTK clients (echoscu, storescu, findscu, getscu,
movescu, and storescp as a C-MOVE destination)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from pacscore.testing import cli, free_port, serving

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None and
                                not Path("/usr/bin/storescu").exists(),
                                reason="DCMTK not installed (apt-get install dcmtk)")
# pynetdicom installs scripts with the same names: call DCMTK by absolute path.
DCMTK = Path("/usr/bin")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK keeps Nagle on otherwise (FACTS.md)


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DCMTK / tool), *args], capture_output=True, text=True,
                          env=ENV, timeout=120, check=False)


class Server:
    def __init__(self, archive: Path, port: int, dest_port: int):
        self.archive, self.port, self.dest_port = archive, port, dest_port

    def stats(self) -> dict[str, int]:
        out = subprocess.run([sys.executable, "-m", "pacscore.cli", "stats", "--archive",
                              str(self.archive), "--json"], capture_output=True, text=True,
                             check=True).stdout
        return dict(json.loads(out))

    def audit(self) -> list[dict[str, object]]:
        lines = (self.archive / "audit" / "audit.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    archive = tmp_path / "archive"
    dest_port = free_port()
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    cli("ae", "add", "VIEWER", "--host", "127.0.0.1", "--rights", "echo,find",
        "--archive", str(archive))
    cli("ae", "add", "DEST", "--host", "127.0.0.1", "--port", str(dest_port),
        "--archive", str(archive))
    with serving(archive) as ports:
        yield Server(archive, ports["dimse"], dest_port)


def addr(server: Server) -> list[str]:
    return ["127.0.0.1", str(server.port)]


@pytest.fixture()
def series(corpus: Path) -> Path:
    return corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl"


def pixels(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data)).pixel_array


def test_echo_and_refused_associations(server: Server) -> None:
    assert dcmtk("echoscu", "-aet", "MODALITY", "-aec", "PACSCORE", *addr(server)).returncode == 0
    unknown = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "PACSCORE", *addr(server))
    assert unknown.returncode != 0 and "Calling AE Title Not Recognized" in unknown.stderr
    wrong = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "OTHER", *addr(server))
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stderr
    events = server.audit()
    refused = [e for e in events if e["event_id"]["code"] == "110114"]  # type: ignore[index]
    assert {e["user"] for e in refused} >= {"STRANGER"}


def _got(server: Server, out: Path, *keys: str) -> list[Path]:
    """C-GET (getscu as MODALITY, Study Root) of ``keys`` into ``out``: the files."""
    out.mkdir()
    got = dcmtk("getscu", "-aet", "MODALITY", "-aec", "PACSCORE", "-S",
                *(arg for key in keys for arg in ("-k", key)), "-od", str(out), *addr(server))
    assert got.returncode == 0, got.stderr
    return list(out.iterdir())


def test_store_find_get(server: Server, series: Path, tmp_path: Path) -> None:
    stored = dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "+sd", "+r",
                   *addr(server), str(series))
    assert stored.returncode == 0, stored.stderr
    stats = server.stats()
    assert stats["instances"] == 30 and stats["compressed_instances"] == 30
    found = dcmtk("findscu", "-aet", "VIEWER", "-aec", "PACSCORE", "-S",
                  "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                  "-k", "NumberOfStudyRelatedInstances", "-k", "PatientName=lung*",
                  *addr(server))
    assert found.returncode == 0
    assert "NumberOfStudyRelatedInstances" in found.stderr and "[30]" in found.stderr
    study = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).StudyInstanceUID
    retrieved = _got(server, tmp_path / "got", "QueryRetrieveLevel=STUDY",
                     f"StudyInstanceUID={study}")
    originals = {pydicom.dcmread(p).SOPInstanceUID: p for p in series.iterdir()}
    assert len(retrieved) == 30
    for path in retrieved[:5]:
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert np.array_equal(pixels(path.read_bytes()), pixels(originals[sop].read_bytes()))
    audit = (server.archive / "audit" / "audit.jsonl").read_text()
    assert "Lung_Dx" not in audit  # no patient names in the ordinary log


@pytest.mark.parametrize("syntax", ["-xi", "-xe", "-xb"])  # implicit, explicit LE, BE
def test_find_image_level_in_each_transfer_syntax(server: Server, series: Path,
                                                  tmp_path: Path, syntax: str) -> None:
    """Every instance comes back once, with the values the files hold, whichever
    syntax findscu negotiates (little endian: pacscore's encoder; big endian: pydicom's)."""
    assert dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "+sd",
                 *addr(server), str(series)).returncode == 0
    originals = {ds.SOPInstanceUID: ds for ds in (
        pydicom.dcmread(p, stop_before_pixels=True) for p in series.iterdir())}
    first = next(iter(originals.values()))
    out = tmp_path / "responses"
    out.mkdir()
    found = dcmtk("findscu", syntax, "-X", "-od", str(out), "-aet", "VIEWER", "-aec",
                  "PACSCORE", "-S", "-k", "QueryRetrieveLevel=IMAGE",
                  "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
                  "-k", f"SeriesInstanceUID={first.SeriesInstanceUID}",
                  "-k", "SOPInstanceUID", "-k", "InstanceNumber", "-k", "PatientName",
                  "-k", "StudyDate", "-k", "AccessionNumber", *addr(server))
    assert found.returncode == 0, found.stderr
    responses = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert sorted(r.SOPInstanceUID for r in responses) == sorted(originals)
    for r in responses:
        ds = originals[r.SOPInstanceUID]
        assert r.InstanceNumber == ds.InstanceNumber
        assert str(r.PatientName) == str(ds.PatientName)
        assert r.StudyDate == ds.StudyDate and r.AccessionNumber == ""
        assert r.QueryRetrieveLevel == "IMAGE" and r.RetrieveAETitle == "PACSCORE"


def test_find_non_ascii_names_and_small_pdus(server: Server, series: Path,
                                             tmp_path: Path) -> None:
    """A UTF-8 name comes back as UTF-8 (Specific Character Set named); a peer with a
    64-byte maximum PDU gets each response in fragments it can reassemble (pynetdicom)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
    )

    ds = pydicom.dcmread(next(series.iterdir()))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jörg=山田^太郎"
    ds.PatientID = "UTF8-1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.99.1", "1.2.3.99.2"
    ds.save_as(tmp_path / "utf8.dcm")
    assert dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE",
                 *addr(server), str(tmp_path / "utf8.dcm")).returncode == 0
    ae = AE("VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    sizes: list[int] = []  # the variable part of each P-DATA-TF PDU received

    def received(event: Any) -> None:
        if event.pdu.pdu_type == 0x04:
            sizes.append(len(event.pdu.encode()) - 6)

    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSCORE", max_pdu=64,
                         evt_handlers=[(evt.EVT_PDU_RECV, received)])
    assert assoc.is_established
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID = "1.2.3.99.1", "1.2.3.99.2"
    query.SOPInstanceUID = query.PatientName = query.StudyDescription = ""
    try:
        responses = [(status.Status, ident) for status, ident in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind)]
    finally:
        assoc.release()
    assert [s for s, _ in responses] == [0xFF00, 0x0000]
    match = responses[0][1]
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == "Müller^Jörg=山田^太郎"
    assert match.SOPInstanceUID == ds.SOPInstanceUID
    assert match.StudyDescription == ds.StudyDescription
    assert len(sizes) > 4 and max(sizes) <= 64


def test_get_repeated_on_one_association_with_small_pdus(server: Server,
                                                        series: Path) -> None:
    """Three C-GETs of 10 instances on one association whose SCU takes 4 KB PDUs and
    refuses one instance of the last C-GET: every PDU within 4 KB, the stored HTJ2K
    codestreams arrive with the original pixels, pending responses count down, and the
    refusal comes back as a warning naming the refused instance."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelGet,
    )

    files = sorted(series.iterdir())[:10]
    assert dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", *addr(server),
                 *map(str, files)).returncode == 0
    originals = {pydicom.dcmread(f).SOPInstanceUID: f for f in files}
    refuse: set[str] = set()
    received: list[pydicom.Dataset] = []
    sizes: list[int] = []

    def store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0xA700 if ds.SOPInstanceUID in refuse else 0x0000

    def pdu(event: evt.Event) -> None:
        if event.pdu.pdu_type == 0x04:
            sizes.append(len(event.pdu.encode()) - 6)

    ae = AE("MODALITY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.4.202"])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSCORE", max_pdu=4096,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, store), (evt.EVT_PDU_RECV, pdu)])
    assert assoc.is_established
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID, query.SeriesInstanceUID = (first.StudyInstanceUID,
                                                       first.SeriesInstanceUID)
    rounds = []
    try:
        for attempt in range(3):
            if attempt == 2:
                refuse.add(str(first.SOPInstanceUID))
            rounds.append([(status, ident) for status, ident in assoc.send_c_get(
                query, StudyRootQueryRetrieveInformationModelGet)])
    finally:
        assoc.release()
    assert len(received) == 30 and max(sizes) <= 4096
    assert len(sizes) > sum(len(ds.PixelData) for ds in received) // 4096  # fragmented
    assert sorted({ds.SOPInstanceUID for ds in received}) == sorted(originals)
    assert {ds.file_meta.TransferSyntaxUID for ds in received} == {"1.2.840.10008.1.2.4.202"}
    for ds in received[:3]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.array_equal(ds.pixel_array,
                                  pydicom.dcmread(originals[ds.SOPInstanceUID]).pixel_array)
    for responses in rounds[:2]:
        pending = [s for s, _ in responses if s.Status == 0xFF00]
        assert [s.NumberOfRemainingSuboperations for s in pending] == list(range(9, -1, -1))
        assert [s.NumberOfCompletedSuboperations for s in pending] == list(range(1, 11))
        assert responses[-1][0].Status == 0x0000
    final, identifier = rounds[2][-1]
    assert final.Status == 0xB000  # warning: one sub-operation failed
    assert (final.NumberOfFailedSuboperations, final.NumberOfCompletedSuboperations) == (1, 9)
    assert identifier.FailedSOPInstanceUIDList == first.SOPInstanceUID


def test_rights_are_enforced(server: Server, series: Path) -> None:
    refused = dcmtk("storescu", "-aet", "VIEWER", "-aec", "PACSCORE", *addr(server),
                    str(next(series.iterdir())))
    assert "0x0124" in refused.stderr or refused.returncode != 0
    assert server.stats()["instances"] == 0


def _moved_to_dest(server: Server, out: Path, expected: int, *keys: str) -> list[Path]:
    """C-MOVE (movescu, Study Root) of ``keys`` to DEST, a DCMTK storescp writing into
    ``out``; the files it received once ``expected`` arrived or 10 s passed."""
    out.mkdir()
    scp = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "DEST", "-od", str(out),
                            str(server.dest_port)], env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        moved = dcmtk("movescu", "-aet", "MODALITY", "-aec", "PACSCORE", "-aem", "DEST", "-S",
                      *(arg for key in keys for arg in ("-k", key)), *addr(server))
        assert moved.returncode == 0, moved.stderr
        deadline = time.time() + 10
        while len(list(out.iterdir())) < expected and time.time() < deadline:
            time.sleep(0.1)
    finally:
        scp.terminate()
        scp.wait()
    return list(out.iterdir())


def test_move_to_registered_destination_only(server: Server, series: Path,
                                            tmp_path: Path) -> None:
    dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "+sd", *addr(server), str(series))
    series_uid = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True
                                 ).SeriesInstanceUID
    out = tmp_path / "moved"
    assert len(_moved_to_dest(server, out, 30, "QueryRetrieveLevel=SERIES",
                              f"SeriesInstanceUID={series_uid}")) == 30
    unknown = dcmtk("movescu", "-aet", "MODALITY", "-aec", "PACSCORE", "-aem", "NOWHERE", "-S",
                    "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={series_uid}",
                    *addr(server))
    assert "MoveDestinationUnknown" in unknown.stderr


def test_move_passes_the_stored_codestream_through(server: Server, series: Path) -> None:
    """A destination that accepts HTJ2K gets the stored codestream (no transcode); the
    DCMTK storescp above, which accepts only uncompressed syntaxes, gets Explicit LE."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    one = sorted(series.iterdir())[0]
    assert dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", *addr(server),
                 str(one)).returncode == 0
    received: list[pydicom.Dataset] = []

    def keep(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    dest = AE("DEST")
    dest.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
    scp = dest.start_server(("127.0.0.1", server.dest_port), block=False,
                            evt_handlers=[(evt.EVT_C_STORE, keep)])
    try:
        sop = pydicom.dcmread(one, stop_before_pixels=True).SOPInstanceUID
        moved = dcmtk("movescu", "-aet", "MODALITY", "-aec", "PACSCORE", "-aem", "DEST", "-S",
                      "-k", "QueryRetrieveLevel=IMAGE", "-k", f"SOPInstanceUID={sop}",
                      "-k", f"StudyInstanceUID={pydicom.dcmread(one).StudyInstanceUID}",
                      "-k", f"SeriesInstanceUID={pydicom.dcmread(one).SeriesInstanceUID}",
                      *addr(server))
        assert moved.returncode == 0, moved.stderr
    finally:
        scp.shutdown()
    assert len(received) == 1
    assert received[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.202"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(received[0].pixel_array, pydicom.dcmread(one).pixel_array)


def test_parallel_associations_store_one_copy(server: Server, series: Path) -> None:
    """4 associations storing the same 30 instances at once: one copy, exact bytes."""
    procs = [subprocess.Popen([str(DCMTK / "storescu"), "-aet", "MODALITY", "-aec", "PACSCORE",
                               "+sd", *addr(server), str(series)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    stats = server.stats()
    assert stats["instances"] == 30
    # Received objects carry our own File Meta, so compare with one more, serial store:
    # re-sending is idempotent and the byte totals must not move.
    again = dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "+sd", *addr(server),
                  str(series))
    assert again.returncode == 0
    assert server.stats() == stats


def test_storage_commitment(server: Server, series: Path) -> None:
    """Storage Commitment Push Model with pynetdicom as the SCU: the N-EVENT-REPORT
    lists stored instances as committed and unknown ones as failed (0x0112)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "+sd", *addr(server), str(series))
    stored = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())[:3]]
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: object) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))  # type: ignore[attr-defined]
        return 0x0000, None

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSCORE",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    request = Dataset()
    request.TransactionUID = generate_uid()
    refs = []
    for ds in stored:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        refs.append(ref)
    missing = Dataset()
    missing.ReferencedSOPClassUID = stored[0].SOPClassUID
    missing.ReferencedSOPInstanceUID = "1.2.3.4"
    conflict = Dataset()  # a stored instance named with another SOP class
    conflict.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    conflict.ReferencedSOPInstanceUID = stored[0].SOPInstanceUID
    request.ReferencedSOPSequence = [*refs, missing, conflict]
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                    "1.2.840.10008.1.20.1.1")
    assert status.Status == 0x0000
    deadline = time.time() + 10
    while not reports and time.time() < deadline:
        time.sleep(0.05)
    assoc.release()
    assert len(reports) == 1
    event_type, info = reports[0]
    assert event_type == 2 and info.TransactionUID == request.TransactionUID
    assert {r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence} == {
        d.SOPInstanceUID for d in stored}
    assert [(r.ReferencedSOPInstanceUID, r.FailureReason) for r in info.FailedSOPSequence] == [
        ("1.2.3.4", 0x0112), (stored[0].SOPInstanceUID, 0x0119)]


def test_storage_commitment_report_on_a_new_association(server: Server, series: Path) -> None:
    """The requestor released its association before the report: the report goes on an
    association of pacscore's own to the AE's registered port, pacscore in the SCP role
    (proposed, PS3.4 J.3.3.1.3)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

    dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", *addr(server),
          str(next(series.iterdir())))
    ds = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    port = free_port()
    cli("ae", "add", "COMMITTER", "--host", "127.0.0.1", "--port", str(port),
        "--archive", str(server.archive))
    reports: list[Dataset] = []

    def on_report(event: Any) -> tuple[int, None]:
        reports.append(event.event_information)
        return 0x0000, None

    listener = AE(ae_title="COMMITTER")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    scp = listener.start_server(("127.0.0.1", port), block=False,
                                evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        ae = AE(ae_title="COMMITTER")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSCORE")
        request = Dataset()
        request.TransactionUID = generate_uid()
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, \
            ds.SOPInstanceUID
        request.ReferencedSOPSequence = [ref]
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assoc.release()  # before the report (it waits 50 ms for the N-ACTION response)
        assert status.Status == 0x0000
        deadline = time.time() + 20
        while not reports and time.time() < deadline:
            time.sleep(0.05)
    finally:
        scp.shutdown()
    assert len(reports) == 1 and reports[0].TransactionUID == request.TransactionUID
    assert [r.ReferencedSOPInstanceUID for r in reports[0].ReferencedSOPSequence] == [
        ds.SOPInstanceUID]


def test_malformed_instance_over_dimse_is_refused(server: Server, corpus: Path) -> None:
    """A truncated object sent with pynetdicom: failure status, nothing stored."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(corpus / "malformed/MR_truncated.dcm")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSCORE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0xC000
    assert server.stats()["instances"] == 0


def test_second_server_on_the_same_archive_is_refused(server: Server) -> None:
    """One writer per archive: a second `pacscore serve` exits at once with the reason
    instead of running recovery under the first one's feet."""
    second = subprocess.run(
        [sys.executable, "-m", "pacscore.cli", "serve", "--archive", str(server.archive),
         "--dimse-port", str(free_port()), "--http-port", str(free_port()),
         "--grpc-port", str(free_port())], capture_output=True, text=True, timeout=60,
        check=False)
    assert second.returncode == 2
    assert "already served or written by another process" in second.stderr
    assert dcmtk("echoscu", "-aet", "MODALITY", "-aec", "PACSCORE", *addr(server)
                 ).returncode == 0  # the first one is untouched


def test_pdu_reader_allocates_what_arrives_not_what_a_header_claims() -> None:
    """Our faster PDU reader must keep pynetdicom's contract (all bytes, or what came
    before the peer closed) and must not allocate the 4 GB a hostile header may claim."""
    import socket
    import threading
    import tracemalloc
    from types import SimpleNamespace

    from pacscore.services.dimse._fast.transport import _recv

    data = bytes(range(256)) * 40_000  # 10 MB, over several buffer steps
    ours, peer = socket.socketpair()
    sender = threading.Thread(target=lambda: (peer.sendall(data), peer.close()))
    sender.start()
    assert bytes(_recv(SimpleNamespace(socket=ours), len(data))) == data  # type: ignore[arg-type]
    sender.join()
    ours.close()
    ours, peer = socket.socketpair()
    peer.sendall(b"abc")
    peer.close()
    tracemalloc.start()
    got = _recv(SimpleNamespace(socket=ours), 0xFFFFFFFF)  # type: ignore[arg-type]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ours.close()
    assert bytes(got) == b"abc" and peak < 64 << 20


def test_a_spool_folder_the_user_names_keeps_its_other_files(tmp_path: Path,
                                                             series: Path) -> None:
    """`--spool DIR`: data sets being received go there and are removed once stored;
    what a killed server left there is removed at the next start; the user's own files
    in DIR are never touched, and DIR stays when it holds them."""
    archive, spool = tmp_path / "archive", tmp_path / "shared"
    spool.mkdir()
    (spool / "notes.txt").write_text("not pacscore's")
    (spool / "pacscore-dimse-left-by-a-killed-server").write_bytes(b"\0" * 100)
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(archive))
    with serving(archive, "--spool", str(spool)) as ports:
        assert sorted(p.name for p in spool.iterdir()) == ["notes.txt"]
        first = sorted(series.glob("*.dcm"))[:3]
        stored = dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "127.0.0.1",
                       str(ports["dimse"]), *map(str, first))
        assert stored.returncode == 0, stored.stderr
        assert sorted(p.name for p in spool.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in spool.iterdir()) == ["notes.txt"]
    assert (spool / "notes.txt").read_text() == "not pacscore's"
    assert json.loads(cli("stats", "--archive", str(archive), "--json"))["instances"] == 3


def test_uid_lists_select_each_listed_instance(server: Server, series: Path,
                                               tmp_path: Path) -> None:
    """A key with several values (PS3.4 C.2.2.2.2 list of UID matching; ModalitiesInStudy
    CT\\MR) selects every listed object in C-FIND, C-GET and C-MOVE."""
    dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "+sd", *addr(server), str(series))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    wanted = sorted(h.SOPInstanceUID for h in headers[:3])
    listed = "\\".join(wanted)
    found = dcmtk("findscu", "-aet", "VIEWER", "-aec", "PACSCORE", "-S",
                  "-k", "QueryRetrieveLevel=IMAGE", "-k", f"SOPInstanceUID={listed}",
                  *addr(server))
    assert found.returncode == 0, found.stderr
    assert sorted(set(re.findall(r"\(0008,0018\) UI \[([0-9.]+)\]", found.stderr))) == wanted
    studies = dcmtk("findscu", "-aet", "VIEWER", "-aec", "PACSCORE", "-S",
                    "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                    "-k", "ModalitiesInStudy=MR\\CT", *addr(server))
    assert studies.stderr.count("(0020,000d)") == 1, studies.stderr
    got = _got(server, tmp_path / "got", "QueryRetrieveLevel=IMAGE",
               f"SOPInstanceUID={listed}")
    assert sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                  for p in got) == wanted
    moved = _moved_to_dest(server, tmp_path / "moved", 3, "QueryRetrieveLevel=IMAGE",
                           f"SOPInstanceUID={listed}")
    assert sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                  for p in moved) == wanted



@pytest.mark.parametrize("first, second", [("-xd", "-xe"), ("-xe", "-xd")])
def test_the_same_instance_deflated_and_not_is_one_instance(server: Server, series: Path,
                                                            first: str, second: str) -> None:
    """A deflated data set is kept as received and the plain one re-encoded: sent once
    each way, the second is a duplicate of the first (same pixels, same keys), not a
    conflict, and the first copy is what the archive keeps."""
    path = str(sorted(series.iterdir())[0])
    for syntax in (first, second):
        sent = dcmtk("storescu", "-v", syntax, "-aet", "MODALITY", "-aec", "PACSCORE",
                     *addr(server), path)
        assert sent.returncode == 0 and "Success" in sent.stderr, sent.stderr
    stats = server.stats()
    assert stats["instances"] == 1
    assert stats["compressed_instances"] == (0 if first == "-xd" else 1)


def test_a_peer_registered_by_host_name_is_let_in(server: Server) -> None:
    """`ae add --host localhost`: the peer connecting from 127.0.0.1 is that host; a
    name that resolves nowhere is refused when it is added, saying why."""
    cli("ae", "add", "NAMED", "--host", "localhost", "--rights", "echo",
        "--archive", str(server.archive))
    assert dcmtk("echoscu", "-aet", "NAMED", "-aec", "PACSCORE", *addr(server)).returncode == 0
    bad = subprocess.run([sys.executable, "-m", "pacscore.cli", "ae", "add", "NOWHERE",
                          "--host", "no-such-host.invalid", "--archive", str(server.archive)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0
    assert "no-such-host.invalid" in bad.stderr and "resolves" in bad.stderr
    assert "NOWHERE" not in cli("ae", "list", "--archive", str(server.archive))


def test_study_root_has_no_patient_level(server: Server, series: Path) -> None:
    """C-FIND in the Study Root model at PATIENT level is refused (0xA900, PS3.4 C.6.2);
    in the Patient Root model it matches."""
    dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", *addr(server),
          str(next(series.iterdir())))
    keys = ["-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID"]
    study_root = dcmtk("findscu", "-v", "-aet", "VIEWER", "-aec", "PACSCORE", "-S", *keys,
                       *addr(server))
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in \
        study_root.stderr and "Received Find Response" not in study_root.stderr, \
        study_root.stderr
    patient_root = dcmtk("findscu", "-v", "-aet", "VIEWER", "-aec", "PACSCORE", "-P", *keys,
                         *addr(server))
    assert patient_root.returncode == 0 and patient_root.stderr.count("Find Response") == 2, \
        patient_root.stderr


def test_an_instance_that_cannot_be_sent_fails_alone(server: Server, series: Path,
                                                     corpus: Path, tmp_path: Path) -> None:
    """C-GET of a study whose US object (native YBR_FULL_422) cannot be made in the
    only syntax the peer accepts for it (JPEG-LS): the CT instances are still sent, the
    final status is a warning (0xB000) listing the US object as failed (PS3.4
    C.4.3.3.1)."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    study = "2.25.1" + "".join(str(i % 10) for i in range(30))
    paths = [*sorted(series.iterdir())[:2], corpus / "odd/ybr/US_YBR_FULL_422_uncompressed.dcm"]
    sent: dict[str, str] = {}
    patient = pydicom.dcmread(paths[0], stop_before_pixels=True)
    for i, src in enumerate(paths):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = study  # one study of one patient
        ds.PatientID, ds.PatientName = patient.PatientID, patient.PatientName
        ds.save_as(tmp_path / f"{i}.dcm")
        sent[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
    stored = dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", *addr(server),
                   *(str(tmp_path / f"{i}.dcm") for i in range(3)))
    assert stored.returncode == 0, stored.stderr
    us = next(sop for sop, cls in sent.items() if cls.startswith("1.2.840.10008.5.1.4.1.1.6"))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for sop_class in set(sent.values()):
        syntax = "1.2.840.10008.1.2.4.80" if sop_class == sent[us] else EXPLICIT_LE
        ae.add_requested_context(sop_class, [syntax])
        roles.append(build_role(sop_class, scp_role=True))
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSCORE", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        *_, (final, identifier) = list(assoc.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert sorted(received) == sorted(sop for sop in sent if sop != us)
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert list(identifier.FailedSOPInstanceUIDList) == [us] or \
        identifier.FailedSOPInstanceUIDList == us
