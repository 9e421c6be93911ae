"""C-STORE data sets received straight into the spool (pacscore.services.dimse._fast.receive):
every PDU size, other messages on the same association, a data set cut short, a lost
spool folder, malformed PDUs.  Peers: pynetdicom as SCU, DCMTK storescu, raw PDUs."""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from pacscore import Archive
from pacscore.services.dimse._fast import wire as dimse_wire
from pacscore.services.dimse._fast.receive import StoreRequest, store_response
from pacscore.services.dimse._fast.scope import SPOOL_PREFIX
from pacscore.services.dimse._fast.send import data_set_offset, store_request
from pacscore.testing import cli, serving

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture()
def files(corpus: Path) -> list[Path]:
    return sorted((corpus / "ct_series/tcia_lung_pet_ct_dx_chest_30sl").iterdir())[:3]


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    cli("ae", "add", "MODALITY", "--host", "127.0.0.1", "--archive", str(root))
    return root


def _associate(port: int) -> object:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSCORE")
    assert assoc.is_established
    return assoc


def _context(assoc: object) -> int:
    return next(int(cx.context_id) for cx in assoc.accepted_contexts  # type: ignore[attr-defined]
                if cx.abstract_syntax == CT)


def _data_set(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[data_set_offset(raw):]


def _pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF PDU holding ``(context ID, control header, value)`` PDVs."""
    body = b"".join(struct.pack(">IBB", 2 + len(v), cid, control) + v
                    for cid, control, v in pdvs)
    return struct.pack(">BxI", 0x04, len(body)) + body


def _send_raw(assoc: object, data: bytes) -> None:
    transport = assoc.dul.socket  # type: ignore[attr-defined]
    with dimse_wire.send_lock(transport):
        transport.socket.sendall(data)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


class _Raw(NamedTuple):
    """An association on which a test writes its own PDUs for one CT instance."""

    assoc: Any
    cid: int
    sop: str
    command: bytes
    data: bytes


def _raw(port: int, path: Path) -> _Raw:
    assoc = _associate(port)
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    return _Raw(assoc, _context(assoc), sop, store_request(CT, sop, 1), _data_set(path))


def _store_on_a_new_association(port: int, path: Path) -> None:
    """The server goes on: a new association stores ``path``."""
    again = _associate(port)
    try:
        assert again.send_c_store(path).Status == 0x0000  # type: ignore[attr-defined]
    finally:
        again.release()  # type: ignore[attr-defined]


def _instances(archive: Path) -> int:
    """Instances the running server's archive holds (read by a second process)."""
    return int(json.loads(cli("stats", "--archive", str(archive), "--json"))["instances"])


def _spooled(spool: Path) -> list[Path]:
    return list(spool.glob(f"{SPOOL_PREFIX}*"))


@pytest.mark.parametrize("max_pdu", ["128", "4096", "0"])
def test_any_pdu_size_stores_the_data_set_as_sent(archive: Path, files: list[Path],
                                                  tmp_path: Path, max_pdu: str) -> None:
    """With 128-byte PDUs the command set itself is split (pynetdicom's path); with
    4 KiB and unlimited PDUs the data set arrives in many or one fragment.  Other
    messages on the same association (C-ECHO) keep working between stores."""
    spool = tmp_path / "spool"
    with serving(archive, "--max-pdu", max_pdu, "--spool", str(spool)) as ports:
        assoc = _associate(ports["dimse"])
        try:
            for path in files:
                assert assoc.send_c_store(path).Status == 0x0000  # type: ignore[attr-defined]
                assert assoc.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
        finally:
            assoc.release()  # type: ignore[attr-defined]
        assert _spooled(spool) == []
    with Archive(archive) as arch:
        for path in files:
            sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            stored = arch.get(sop, "original")
            assert stored[data_set_offset(stored):] == _data_set(path)


def test_a_data_set_cut_short_is_never_stored(archive: Path, files: list[Path],
                                              tmp_path: Path) -> None:
    """The peer aborts halfway through a data set: its spool file goes, nothing is
    stored, and the next association stores normally."""
    spool = tmp_path / "spool"
    with serving(archive, "--spool", str(spool)) as ports:
        assoc, cid, _, command, data = _raw(ports["dimse"], files[0])
        _send_raw(assoc, _pdu((cid, 0x03, command)))
        _send_raw(assoc, _pdu((cid, 0x00, data[:len(data) // 2])))
        _wait_for(lambda: len(_spooled(spool)) == 1, "the data set to be spooled")
        assoc.abort()  # type: ignore[attr-defined]
        _wait_for(lambda: _spooled(spool) == [], "the partial data set to be removed")
        _store_on_a_new_association(ports["dimse"], files[1])
    with Archive(archive) as arch:
        assert arch.stats()["instances"] == 1
        assert arch.instances("series", pydicom.dcmread(
            files[1], stop_before_pixels=True).SeriesInstanceUID) == [
            pydicom.dcmread(files[1], stop_before_pixels=True).SOPInstanceUID]


def test_a_lost_spool_folder_answers_out_of_resources(archive: Path, files: list[Path],
                                                      tmp_path: Path) -> None:
    """The spool folder vanishes (an operator cleaning /dev/shm): the request is
    answered 0xA700 with the association kept; once it is back, stores succeed."""
    spool = tmp_path / "spool"
    with serving(archive, "--spool", str(spool)) as ports:
        assoc = _associate(ports["dimse"])
        try:
            shutil.rmtree(spool)
            assert assoc.send_c_store(files[0]).Status == 0xA700  # type: ignore[attr-defined]
            assert assoc.is_established  # type: ignore[attr-defined]
            spool.mkdir()
            assert assoc.send_c_store(files[1]).Status == 0x0000  # type: ignore[attr-defined]
        finally:
            assoc.release()  # type: ignore[attr-defined]
    with Archive(archive) as arch:
        assert arch.stats()["instances"] == 1


@pytest.mark.parametrize("bad", ["pdv_longer_than_pdu", "command_inside_data_set",
                                 "unaccepted_context", "unknown_pdu_type",
                                 "pdu_over_the_maximum"])
def test_malformed_pdus_abort_the_association_only(archive: Path, files: list[Path],
                                                   tmp_path: Path, bad: str) -> None:
    """A PDV overrunning its PDU, a command fragment in the middle of a data set, a
    C-STORE on a context that was never accepted, a PDU type that does not exist (with
    a 4 GB length nobody sends), a PDU over the 16 MiB the server announced: that
    association is aborted, nothing is stored or left in the spool, and the server
    goes on."""
    spool = tmp_path / "spool"
    with serving(archive, "--spool", str(spool)) as ports:
        assoc, cid, _, command, data = _raw(ports["dimse"], files[0])
        if bad == "pdv_longer_than_pdu":
            pdu = bytearray(_pdu((cid, 0x03, command)))
            struct.pack_into(">I", pdu, 6, len(command) + 100)
            _send_raw(assoc, bytes(pdu))
        elif bad == "command_inside_data_set":
            _send_raw(assoc, _pdu((cid, 0x03, command), (cid, 0x00, data[:1000])))
            _send_raw(assoc, _pdu((cid, 0x03, command)))
        elif bad == "unaccepted_context":
            _send_raw(assoc, _pdu((cid + 100, 0x03, command), (cid + 100, 0x02, data)))
        elif bad == "unknown_pdu_type":
            _send_raw(assoc, struct.pack(">BxI", 0x09, 0xFFFFFFF0))
        else:
            _send_raw(assoc, _pdu((cid, 0x03, command)))
            _send_raw(assoc, struct.pack(">BxI", 0x04, (16 << 20) + 1) + data[:1000])
        _wait_for(lambda: assoc.is_aborted, "the server to abort")  # type: ignore[attr-defined]
        _wait_for(lambda: _spooled(spool) == [], "the spool to be emptied")
        _store_on_a_new_association(ports["dimse"], files[1])
    with Archive(archive) as arch:
        assert arch.stats()["instances"] == 1


def test_store_response_decodes_to_its_fields() -> None:
    request = StoreRequest(3, 77, CT, "1.2.3.4.5", EXPLICIT_LE, Path("x"))
    raw = store_response(request, 0xA700)
    command = pydicom.filereader.read_dataset(io.BytesIO(raw), is_implicit_VR=True,
                                              is_little_endian=True)
    assert command.CommandGroupLength == len(raw) - 12
    assert (command.CommandField, command.MessageIDBeingRespondedTo, command.Status,
            command.CommandDataSetType) == (0x8001, 77, 0xA700, 0x0101)
    assert (command.AffectedSOPClassUID, command.AffectedSOPInstanceUID) == (CT, "1.2.3.4.5")


def test_one_pdu_larger_than_the_read_step_then_small_ones(archive: Path, files: list[Path],
                                                           corpus: Path, tmp_path: Path) -> None:
    """No PDU size limit: a 7.4 MB radiograph arrives as one PDU (over the reader's
    4 MiB step, so its buffer grows as data comes in), then CT slices and an echo."""
    big = corpus / "radiography/cr/WG04_RG2_UNC_2140x1760.dcm"
    meta = pydicom.dcmread(big, stop_before_pixels=True)
    assert len(_data_set(big)) > 4 << 20
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(meta.SOPClassUID, [meta.file_meta.TransferSyntaxUID])
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    ae.add_requested_context(Verification)
    with serving(archive, "--max-pdu", "0", "--spool", str(tmp_path / "spool")) as ports:
        assoc = ae.associate("127.0.0.1", ports["dimse"], ae_title="PACSCORE")
        assert assoc.is_established
        try:
            assert assoc.send_c_store(big).Status == 0x0000
            for path in files:
                assert assoc.send_c_store(path).Status == 0x0000
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    with Archive(archive) as arch:
        stored = arch.get(meta.SOPInstanceUID, "original")
        assert stored[data_set_offset(stored):] == _data_set(big)
        assert arch.stats()["instances"] == 1 + len(files)


def test_a_peer_gone_before_the_response_still_has_its_data_set_stored(
        archive: Path, files: list[Path], tmp_path: Path) -> None:
    """The whole data set arrived, then the connection closed before the response
    could go out: the instance is stored (a resend is a duplicate), nothing is left
    in the spool, and the server goes on."""
    spool = tmp_path / "spool"
    with serving(archive, "--spool", str(spool)) as ports:
        assoc, cid, sop, command, data = _raw(ports["dimse"], files[0])
        _send_raw(assoc, _pdu((cid, 0x03, command), (cid, 0x02, data)))
        assoc.dul.socket.socket.close()  # type: ignore[attr-defined]
        _wait_for(lambda: _instances(archive) == 1, "the data set to be stored")
        assert _spooled(spool) == []
        _store_on_a_new_association(ports["dimse"], files[0])  # the resend: a duplicate
        assoc.abort()  # type: ignore[attr-defined]
    with Archive(archive) as arch:
        assert arch.stats()["instances"] == 1
        stored = arch.get(sop, "original")
        assert stored[data_set_offset(stored):] == data


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pacscore.toml"
    path.write_text(text)
    return str(path)


def test_the_server_timing_out_inside_a_data_set_removes_it(archive: Path, files: list[Path],
                                                            tmp_path: Path) -> None:
    """The peer stalls halfway through a data set; the server's idle timeout (1 s here)
    aborts the association and the partial data set leaves the spool."""
    spool = tmp_path / "spool"
    with serving(archive, "--config", _config(tmp_path, "idle_timeout = 1.0\n"),
                 "--spool", str(spool)) as ports:
        assoc, cid, _, command, data = _raw(ports["dimse"], files[0])
        _send_raw(assoc, _pdu((cid, 0x03, command), (cid, 0x00, data[:1000])))
        _wait_for(lambda: len(_spooled(spool)) == 1, "the data set to be spooled")
        _wait_for(lambda: assoc.is_aborted, "the idle timeout")  # type: ignore[attr-defined]
        _wait_for(lambda: _spooled(spool) == [], "the partial data set to be removed")
        assert _instances(archive) == 0


@pytest.mark.parametrize(("max_pdu", "path"), [(4096, "pacscore"), (128, "pynetdicom")])
def test_stores_slower_than_the_idle_timeout_are_answered(archive: Path, files: list[Path],
                                                          tmp_path: Path, max_pdu: int,
                                                          path: str) -> None:
    """A store that takes longer than the network timeout (a big instance, a slow
    disk) is still answered, on either reading path: pacscore's for whole command
    sets, pynetdicom's when the command set itself is split over PDUs.  A handler
    that fails answers 0xC211, as pynetdicom does."""
    from pacscore.services.dimse.server import DimseServer
    from pacscore.testing import free_port

    calls = {"pacscore": 0, "pynetdicom": 0}
    with Archive(archive) as arch:
        server = DimseServer(arch, max_pdu=max_pdu, idle_timeout=0.5, spool=tmp_path / "s")
        fast, slow, store = server._store_request, server._store, server._store_file

        def fast_path(assoc: object, request: Any, spooled: Any) -> Any:
            calls["pacscore"] += 1
            return fast(assoc, request, spooled)

        def pynetdicom_path(event: object) -> Any:
            calls["pynetdicom"] += 1
            return slow(event)

        def slow_store(assoc: object, spooled: Any, announced: Any) -> Any:
            time.sleep(1.5)
            if sum(calls.values()) == 2:
                raise RuntimeError("a failing handler")
            return store(assoc, spooled, announced)

        server._store_request = fast_path  # type: ignore[method-assign]
        server._store = pynetdicom_path  # type: ignore[method-assign]
        server._store_file = slow_store  # type: ignore[method-assign]
        port = free_port()
        server.start("127.0.0.1", port)
        try:
            assoc = _associate(port)
            try:
                first = assoc.send_c_store(files[0])  # type: ignore[attr-defined]
                second = assoc.send_c_store(files[1])  # type: ignore[attr-defined]
                assert assoc.is_established  # type: ignore[attr-defined]
            finally:
                assoc.release()  # type: ignore[attr-defined]
        finally:
            server.stop()
        assert (first.Status, second.Status) == (0x0000, 0xC211)
        assert calls[path] == 2 and sum(calls.values()) == 2
        assert arch.stats()["instances"] == 1
