"""DIMSE findings of the adversarial audit of 2026-12-03: a C-STORE whose request
names another instance than its data set, request UIDs that are not UIDs, Error
Comments on refusals, audit outcomes of retrieves, idle connections holding every
association slot, and more than 1,024 open files.  Peers: pynetdicom as SCU and SCP
(with command sets written by the test where a real client would not send them),
DCMTK storescu/echoscu, raw sockets."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacscore.services.dimse._fast import wire as dimse_wire
from pacscore.services.dimse._fast.send import data_set_offset, store_request
from pacscore.testing import cli, free_port, serving

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DCMTK = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK keeps Nagle on otherwise (FACTS.md)
needs_dcmtk = pytest.mark.skipif(not (DCMTK / "storescu").exists(),
                                 reason="DCMTK not installed (apt-get install dcmtk)")


@pytest.fixture()
def files(corpus: Path) -> list[Path]:
    return sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").iterdir())


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    return root


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DCMTK / tool), *args], capture_output=True, text=True,
                          env=ENV, timeout=180, check=False)


def _associate(port: int, address: str = "127.0.0.1") -> Any:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    ae.add_requested_context(Verification)
    assoc = ae.associate(address, port, ae_title="PACSCORE")
    assert assoc.is_established
    return assoc


def _context(assoc: Any) -> int:
    return next(int(cx.context_id) for cx in assoc.accepted_contexts
                if cx.abstract_syntax == CT)


def _data_set(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[data_set_offset(raw):]


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@contextlib.contextmanager
def _paused(assoc: Any) -> Iterator[None]:
    """The association's own thread kept off its DIMSE queue (as pynetdicom does
    around its own requests), so that the test reads the response itself."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def _raw_store(assoc: Any, command: bytes, data: bytes, max_pdu: int = 0) -> Any:
    """A C-STORE-RQ written by the test (command set ``command``, data set ``data``,
    in P-DATA-TF PDUs of at most ``max_pdu`` bytes): the response primitive."""
    with _paused(assoc):
        pdus = dimse_wire.frame(_context(assoc), command, data, max_pdu)
        transport = assoc.dul.socket
        with dimse_wire.send_lock(transport):
            transport.socket.sendall(pdus)
        _, rsp = assoc.dimse.get_msg(block=True)
    assert rsp is not None, "no response"
    return rsp


def _offending(rsp: Any) -> list[int]:
    """The Offending Element (0000,0901) tags of a response (one or several)."""
    value = rsp.OffendingElement
    return [int(t) for t in (value if isinstance(value, list | tuple | MultiValue) else [value])]


def _instances(archive: Path) -> int:
    return int(json.loads(cli("stats", "--archive", str(archive), "--json"))["instances"])


def _audit(archive: Path) -> list[dict[str, Any]]:
    lines = (archive / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pacscore.toml"
    path.write_text(text)
    return str(path)


# -- 19.2: the request names another instance than its data set ------------------

@pytest.mark.parametrize("max_pdu", ["0", "128"])  # pacscore's reader / pynetdicom's
def test_a_data_set_under_another_uid_is_refused_not_stored(archive: Path, files: list[Path],
                                                           max_pdu: str) -> None:
    """The C-STORE-RQ announces one SOP Instance UID, the data set is another
    instance: 0xA900 with the data set's UID in the Error Comment and (0008,0018) as
    the Offending Element, nothing stored, an audit line naming both; the association
    goes on and stores the next instance."""
    announced = generate_uid()
    with serving(archive, "--max-pdu", max_pdu) as ports:
        assoc = _associate(ports["dimse"])
        try:
            rsp = _raw_store(assoc, store_request(CT, announced, 7), _data_set(files[0]),
                             int(max_pdu))
            assert rsp.Status == 0xA900
            assert rsp.AffectedSOPInstanceUID == announced
            assert _sop(files[0]) in str(rsp.ErrorComment)
            assert len(str(rsp.ErrorComment)) <= 64
            assert _offending(rsp) == [0x00080018]
            assert _instances(archive) == 0
            assert assoc.send_c_store(files[1]).Status == 0x0000
        finally:
            assoc.release()
        assert _instances(archive) == 1
    refused = [e for e in _audit(archive) if e.get("failed_objects") == [announced]]
    assert len(refused) == 1 and refused[0]["outcome"] == 8
    assert _sop(files[0]) in refused[0]["detail"] and announced in refused[0]["detail"]


def test_a_data_set_of_another_sop_class_is_refused(archive: Path, files: list[Path]) -> None:
    """Affected SOP Class UID MR Image Storage on a CT context, CT data set: 0xA900,
    (0008,0016) offending, nothing stored."""
    with serving(archive) as ports:
        assoc = _associate(ports["dimse"])
        try:
            command = store_request("1.2.840.10008.5.1.4.1.1.4", _sop(files[0]), 1)
            rsp = _raw_store(assoc, command, _data_set(files[0]))
            assert rsp.Status == 0xA900
            assert _offending(rsp) == [0x00080016]
            assert CT in str(rsp.ErrorComment)
        finally:
            assoc.release()
        assert _instances(archive) == 0


def _mismatched_file(src: Path, out: Path) -> tuple[Path, str, str]:
    """A copy of ``src`` whose File Meta names another SOP Instance than its data set."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = meta = generate_uid()
    ds.save_as(out)  # as it is (enforce_file_format would make the File Meta agree)
    return out, str(ds.SOPInstanceUID), meta


def test_a_file_meta_naming_another_instance_is_refused_by_single_stores(
        archive: Path, files: list[Path], tmp_path: Path) -> None:
    """Archive.store with strict_identity (what STOW-RS, gRPC and C-STORE call) refuses a
    Part-10 object whose Media Storage SOP Instance UID is not its SOP Instance UID,
    naming both (without it: stored under the data set's UID, with a warning);
    STOW-RS answers it as failed; a bulk import of existing files keeps it, flagged
    (real public data sets carry such files: 14 of the corpus' good files)."""
    from pacscore import Archive
    from pacscore.errors import IdentityMismatchError

    path, sop, meta = _mismatched_file(files[0], tmp_path / "odd.dcm")
    with Archive(tmp_path / "direct") as arch:
        with pytest.raises(IdentityMismatchError) as refused:
            arch.store(path, strict_identity=True)
        assert sop in str(refused.value) and meta in str(refused.value)
        assert arch.stats()["instances"] == 0
        kept = arch.store(path)
        assert kept.sop_instance_uid == sop and any(meta in w for w in kept.warnings)
    import requests

    with serving(archive) as ports:
        token = (archive / "security" / "admin-token").read_text().strip()
        boundary = "pacscore-test"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
        answer = requests.post(
            f"http://127.0.0.1:{ports['http']}/dicom-web/studies", data=body, timeout=60,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json",
                     "Content-Type": f'multipart/related; type="application/dicom"; '
                                     f"boundary={boundary}"})
        assert answer.status_code == 409, answer.text
        assert _instances(archive) == 0
    report = json.loads(cli("import", str(path), "--archive", str(tmp_path / "bulk"),
                            "--json"))
    assert report["stored"] == 1, report


@needs_dcmtk
def test_storescu_of_a_file_with_a_mismatched_meta_stores_what_it_acknowledges(
        archive: Path, files: list[Path], tmp_path: Path) -> None:
    """DCMTK storescu announces the data set's own UID (it never sends the File
    Meta): the instance is stored under the UID the response names."""
    path, sop, _ = _mismatched_file(files[0], tmp_path / "odd.dcm")
    with serving(archive) as ports:
        stored = dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "127.0.0.1",
                       str(ports["dimse"]), str(path))
        assert stored.returncode == 0, stored.stderr
    from pacscore import Archive

    with Archive(archive, readonly=True) as arch:
        assert arch.record(sop).sop_instance_uid == sop


# -- 19.10: request UIDs that are not UIDs ----------------------------------------

@pytest.mark.parametrize(("max_pdu", "uid"), [("0", "1.2.3;rm -rf"), ("0", "1." * 35),
                                              ("128", "1.2.3;rm -rf")])
def test_a_request_uid_that_is_not_a_uid_fails_that_request_only(
        archive: Path, files: list[Path], max_pdu: str, uid: str) -> None:
    """A C-STORE-RQ whose Affected SOP Instance UID is not a UID (a shell fragment,
    70 characters) is answered 0xC000 with an Error Comment and (0000,1000) offending;
    its data set is dropped, and the same association stores the next instance."""
    with serving(archive, "--max-pdu", max_pdu) as ports:
        assoc = _associate(ports["dimse"])
        try:
            rsp = _raw_store(assoc, store_request(CT, uid, 3), _data_set(files[0]),
                             int(max_pdu))
            assert rsp.Status == 0xC000
            assert "Affected SOP Instance UID" in str(rsp.ErrorComment)
            assert _offending(rsp) == [0x00001000]
            assert assoc.is_established
            assert assoc.send_c_store(files[1]).Status == 0x0000
        finally:
            assoc.release()
        assert _instances(archive) == 1
    assert any(e["outcome"] == 8 and "invalid Affected SOP Instance UID" in e.get("detail", "")
               for e in _audit(archive))


# -- 14.10: Error Comment on refusals ---------------------------------------------

@needs_dcmtk
@pytest.mark.parametrize("max_pdu", ["0", "128"])
def test_a_conflicting_instance_is_answered_with_an_error_comment(
        archive: Path, files: list[Path], tmp_path: Path, max_pdu: str) -> None:
    """The same SOP Instance UID with other content: 0xA900 and an Error Comment that
    pynetdicom and DCMTK storescu show."""
    ds = pydicom.dcmread(files[0])
    ds.PatientName = "OTHER^CONTENT"
    other = tmp_path / "other.dcm"
    ds.save_as(other, enforce_file_format=True)
    with serving(archive, "--max-pdu", max_pdu) as ports:
        assoc = _associate(ports["dimse"])
        try:
            assert assoc.send_c_store(files[0]).Status == 0x0000
            status = assoc.send_c_store(other)
        finally:
            assoc.release()
        assert status.Status == 0xA900
        assert status.ErrorComment == "SOP Instance UID already stored with other content"
        shown = dcmtk("storescu", "-d", "-aet", "MODALITY", "-aec", "PACSCORE", "127.0.0.1",
                      str(ports["dimse"]), str(other))
        assert "already stored with other content" in shown.stdout + shown.stderr
    audit = [e for e in _audit(archive) if e.get("failed_objects") == [ds.SOPInstanceUID]]
    assert audit and all(e["outcome"] == 8 for e in audit)


# -- 14.17: the audit outcome of a retrieve is what the peer was told ------------

def _refusing_destination(port: int, status: int) -> Any:
    """A C-MOVE destination (pynetdicom) that answers every C-STORE with ``status``."""
    ae = AE(ae_title="DEST")
    ae.add_supported_context(CTImageStorage, [EXPLICIT_LE, "1.2.840.10008.1.2",
                                              "1.2.840.10008.1.2.4.202"])
    return ae.start_server(("127.0.0.1", port), block=False,
                           evt_handlers=[(evt.EVT_C_STORE, lambda event: status)])


@pytest.mark.parametrize(("refusal", "outcome", "final"),
                         [(0xA700, 8, 0xA702), (0x0000, 0, 0x0000), (None, 8, 0xA801)])
def test_a_move_audits_the_final_status_and_each_object(
        archive: Path, files: list[Path], refusal: int | None, outcome: int,
        final: int) -> None:
    """C-MOVE to a destination that refuses every instance (0xA702 to the peer:
    serious failure, every UID failed), that stores them (success, every UID sent),
    that does not listen (0xA801: serious failure, none sent)."""
    dest_port = free_port()
    cli("ae", "add", "DEST", "--host", "127.0.0.1", "--port", str(dest_port), "--archive",
        str(archive))
    scp = None if refusal is None else _refusing_destination(dest_port, refusal)
    sops = sorted(_sop(p) for p in files[:3])
    try:
        with serving(archive) as ports:
            assoc = _associate(ports["dimse"])
            try:
                for path in files[:3]:
                    assert assoc.send_c_store(path).Status == 0x0000
            finally:
                assoc.release()
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = ae.associate("127.0.0.1", ports["dimse"], ae_title="PACSCORE")
            identifier = pydicom.Dataset()
            identifier.QueryRetrieveLevel = "SERIES"
            identifier.SeriesInstanceUID = pydicom.dcmread(
                files[0], stop_before_pixels=True).SeriesInstanceUID
            try:
                statuses = [int(s.Status) for s, _ in assoc.send_c_move(
                    identifier, "DEST", StudyRootQueryRetrieveInformationModelMove) if s]
            finally:
                assoc.release()
            assert statuses[-1] == final
    finally:
        if scp is not None:
            scp.shutdown()
    moves = [e for e in _audit(archive) if "C-MOVE" in e.get("detail", "")]
    assert len(moves) == 1, moves
    assert moves[0]["outcome"] == outcome
    assert f"0x{final:04X}" in moves[0]["detail"]
    sent, failed = sorted(moves[0].get("objects", [])), sorted(moves[0].get("failed_objects", []))
    assert (sent, failed) == ((sops, []) if final == 0 else ([], sops))


# -- 19.4: connections that never speak ------------------------------------------

class _Idle:
    """TCP connections from ``address`` to ``port`` that never send a byte, each one
    replaced as soon as the server closes it (as the audit's 25 s renewal, faster)."""

    def __init__(self, port: int, addresses: list[str], per_address: int):
        self.port, self.addresses, self.per_address = port, addresses, per_address
        self.socks: list[socket.socket] = []
        self.closed_by_server = 0
        self.stop = threading.Event()
        for address in addresses:
            for _ in range(per_address):
                self.socks.append(self._open(address))
        self.thread = threading.Thread(target=self._renew, daemon=True)
        self.thread.start()

    def _open(self, address: str) -> socket.socket:
        sock = socket.socket()
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", self.port))
        return sock

    def _renew(self) -> None:
        while not self.stop.wait(0.2):
            for i, sock in enumerate(self.socks):
                sock.setblocking(False)
                try:
                    gone = sock.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    self.closed_by_server += 1
                    address = sock.getsockname()[0]
                    sock.close()
                    with contextlib.suppress(OSError):
                        self.socks[i] = self._open(address)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``seconds``)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return None
    except OSError:
        return time.monotonic() - start
    assert data == b""
    return time.monotonic() - start


@needs_dcmtk
@pytest.mark.slow  # ~18 s: connections must outlive the 5 s request timeout
def test_idle_connections_hold_no_association_slot(archive: Path, files: list[Path]) -> None:
    """24 connections that never send an A-ASSOCIATE-RQ (8 from each of three
    addresses, more than the 16 associations allowed), renewed as soon as they are
    closed: echoscu and storescu still get through for the 8 s the test lasts, each
    idle connection is closed within a few seconds, and a 9th connection from one
    address is closed at once."""
    with serving(archive) as ports:
        idle = _Idle(ports["dimse"], ["127.0.0.2", "127.0.0.3", "127.0.0.4"], 8)
        try:
            ninth = socket.create_connection(("127.0.0.1", ports["dimse"]),
                                             source_address=("127.0.0.2", 0))
            try:
                closed = _closed_within(ninth, 3)
            finally:
                ninth.close()
            assert closed is not None and closed < 3
            end, stored = time.monotonic() + 8, 0
            while time.monotonic() < end:
                echo = dcmtk("echoscu", "-aet", "MODALITY", "-aec", "PACSCORE", "127.0.0.1",
                             str(ports["dimse"]))
                assert echo.returncode == 0, echo.stderr
                store = dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "127.0.0.1",
                              str(ports["dimse"]), str(files[stored % len(files)]))
                assert store.returncode == 0, store.stderr
                stored += 1
                time.sleep(0.5)
            assert idle.closed_by_server >= 24  # each one timed out at least once
        finally:
            idle.close()
        lone = socket.create_connection(("127.0.0.1", ports["dimse"]))
        try:
            closed = _closed_within(lone, 30)
        finally:
            lone.close()
        assert closed is not None and 2 < closed < 20  # the 5 s request timeout


def test_associations_over_the_limit_are_rejected_transient(archive: Path,
                                                            tmp_path: Path) -> None:
    """With max_associations = 2, a third established association is rejected
    (A-ASSOCIATE-RJ transient, local limit exceeded) and audited; once one is released
    the next gets in."""
    with serving(archive, "--config", _config(tmp_path, "max_associations = 2\n")) as ports:
        first, second = _associate(ports["dimse"]), _associate(ports["dimse"])
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        third = ae.associate("127.0.0.1", ports["dimse"], ae_title="PACSCORE")
        assert third.is_rejected
        rj = third.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        first.release()
        time.sleep(0.5)
        fourth = _associate(ports["dimse"])
        assert fourth.send_c_echo().Status == 0x0000
        fourth.release()
        second.release()
    assert any("local limit exceeded" in e.get("detail", "") for e in _audit(archive))


# -- 19.5: more than 1,024 open files ----------------------------------------------

def _server_pid(archive: Path) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                if b"serve" in cmd and str(archive).encode() in cmd:
                    return int(proc.name)
    raise AssertionError("server process not found")


@needs_dcmtk
def test_stores_go_on_with_more_than_1024_open_files(archive: Path, files: list[Path],
                                                     tmp_path: Path) -> None:
    """1,100 idle HTTP connections to the DICOMweb port (no token, no request; the HTTP
    connection cap raised above them): the
    server holds more than 1,024 descriptors, and storescu still stores 50 instances
    (30 CT slices, then 20 of them again under new UIDs) on associations whose sockets
    are numbered above 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}: cannot open 1,100 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    extra = tmp_path / "extra"
    extra.mkdir()
    for i, path in enumerate(files[:20]):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(extra / f"{i}.dcm", enforce_file_format=True)
    # (the HTTP connection cap, 256 by default, would close most of them at once)
    config = tmp_path / "many.toml"
    config.write_text("max_http_connections = 2000\n")
    with serving(archive, "--config", str(config)) as ports:
        pid = _server_pid(archive)
        conns = []
        try:
            for _ in range(1100):
                conns.append(socket.create_connection(("127.0.0.1", ports["http"])))
            deadline = time.monotonic() + 30
            while len(os.listdir(f"/proc/{pid}/fd")) <= 1100:
                assert time.monotonic() < deadline, "the server did not accept them all"
                time.sleep(0.1)
            stored = dcmtk("storescu", "-aet", "MODALITY", "-aec", "PACSCORE", "+sd",
                           "127.0.0.1", str(ports["dimse"]), str(files[0].parent), str(extra))
            assert stored.returncode == 0, stored.stderr
            assert len(os.listdir(f"/proc/{pid}/fd")) > 1024  # still held meanwhile
        finally:
            for conn in conns:
                conn.close()
        assert _instances(archive) == 50
